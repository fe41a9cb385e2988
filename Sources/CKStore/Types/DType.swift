/// A tensor element type, as safetensors names them.
public struct DType: Hashable, Sendable, CustomStringConvertible, Codable {
    /// The safetensors name (`F32`, `BF16`, …).
    public var name: String
    /// The size of one element in bits (4 and 6 for the sub-byte float formats).
    public var bitWidth: Int

    /// Every dtype the safetensors reference reader accepts.
    public static let known: [String: Int] = [
        "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
        "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
        "I32": 32, "U32": 32, "F32": 32, "C64": 64,
        "F64": 64, "I64": 64, "U64": 64,
        "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    ]

    /// Looks up a dtype by its safetensors name; nil for names the reference reader rejects.
    public init?(safetensorsName name: String) {
        guard let bits = Self.known[name] else { return nil }
        self.name = name
        self.bitWidth = bits
    }

    /// The number of bytes `elementCount` elements take, or nil when they do not fill whole bytes.
    public func byteCount(elements elementCount: Int) -> Int? {
        let (bits, overflow) = elementCount.multipliedReportingOverflow(by: bitWidth)
        guard !overflow, bits % 8 == 0 else { return nil }
        return bits / 8
    }

    public var description: String { name }

    public init(from decoder: any Decoder) throws {
        let name = try decoder.singleValueContainer().decode(String.self)
        guard let value = DType(safetensorsName: name) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "unknown dtype \(name)"))
        }
        self = value
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(name)
    }
}
