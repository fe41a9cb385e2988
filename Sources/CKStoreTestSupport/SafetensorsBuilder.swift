import Foundation

/// Builds safetensors files byte by byte, as the reference writer does: an 8-byte little-endian header
/// length, a JSON header padded with spaces to a multiple of 8, then the tensors' bytes in order.
public struct SafetensorsBuilder: Sendable {
    public struct Tensor: Sendable {
        public var name: String
        public var dtype: String
        public var shape: [Int]
        public var data: [UInt8]

        public init(name: String, dtype: String, shape: [Int], data: [UInt8]) {
            self.name = name
            self.dtype = dtype
            self.shape = shape
            self.data = data
        }
    }

    public var tensors: [Tensor] = []
    public var metadata: [String: String]?
    /// Pad the header to a multiple of this many bytes (the reference writer uses 8).
    public var headerAlignment = 8

    public init(metadata: [String: String]? = nil) { self.metadata = metadata }

    public mutating func add(_ name: String, dtype: String, shape: [Int], data: [UInt8]) {
        tensors.append(Tensor(name: name, dtype: dtype, shape: shape, data: data))
    }

    /// The header JSON object (before padding), with offsets laid out in order.
    public func headerJSON() -> String {
        var parts = [String]()
        if let metadata {
            let members = metadata.sorted { $0.key < $1.key }.map { "\(Self.quote($0.key)):\(Self.quote($0.value))" }
            parts.append("\"__metadata__\":{\(members.joined(separator: ","))}")
        }
        var offset = 0
        for tensor in tensors {
            let shape = tensor.shape.map(String.init).joined(separator: ",")
            parts.append("\(Self.quote(tensor.name)):{\"dtype\":\"\(tensor.dtype)\",\"shape\":[\(shape)],\"data_offsets\":[\(offset),\(offset + tensor.data.count)]}")
            offset += tensor.data.count
        }
        return "{" + parts.joined(separator: ",") + "}"
    }

    public func build() -> [UInt8] {
        Self.assemble(header: headerJSON(), alignment: headerAlignment, data: tensors.flatMap(\.data))
    }

    /// A file from an arbitrary header text and data section: for building malformed files.
    public static func assemble(header: String, alignment: Int = 8, data: [UInt8]) -> [UInt8] {
        var json = Array(header.utf8)
        while alignment > 1 && json.count % alignment != 0 { json.append(UInt8(ascii: " ")) }
        var out = [UInt8]()
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        return out + json + data
    }

    static func quote(_ text: String) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: [text], options: [.withoutEscapingSlashes])) ?? Data("[\"\"]".utf8)
        let array = String(decoding: data, as: UTF8.self)
        return String(array.dropFirst().dropLast())
    }
}
