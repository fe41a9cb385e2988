import Foundation

/// A parsed and validated safetensors file.
///
/// Validation follows the reference reader (the `safetensors` crate): an 8-byte little-endian header
/// length of at most 100,000,000; a UTF-8 JSON object header that starts with `{`; every tensor with a
/// known dtype, a shape and `data_offsets` `[begin, end]`; the tensors, sorted by offset, contiguous from 0
/// with no gap or overlap; each byte range exactly shape × dtype size; and the data ending exactly at the
/// end of the file (no trailing bytes).
struct SafetensorsFile: Sendable {
    struct Tensor: Sendable, Equatable {
        var name: String
        var dtype: DType
        var shape: [Int]
        /// Offsets relative to the start of the data section.
        var dataBegin: Int64
        var dataEnd: Int64
    }

    /// The reference reader's limit on the header length.
    static let maximumHeaderLength: UInt64 = 100_000_000

    var headerLength: Int
    var tensors: [Tensor]
    var metadata: [String: String]?
    var size: Int64

    /// The offset of the data section in the file.
    var dataStart: Int64 { 8 + Int64(headerLength) }

    var layout: FileLayout {
        let regions = tensors.map {
            FileLayout.Region(kind: .tensor(name: $0.name, dtype: $0.dtype, shape: $0.shape), begin: dataStart + $0.dataBegin, end: dataStart + $0.dataEnd)
        }
        var layout = FileLayout.covering(format: .safetensors, size: size, tensors: regions.filter { $0.length > 0 })
        layout.emptyTensors = regions.filter { $0.length == 0 }
        return layout
    }

    static func parse(_ file: some ByteSource, size: Int64, name: String) throws -> SafetensorsFile {
        guard size >= 8 else {
            throw malformed(name, "file is \(size) bytes long, too short for the 8-byte header length")
        }
        let lengthBytes = try file.read(count: 8, at: 0)
        let headerLength = lengthBytes.loadLittleEndian(UInt64.self, at: 0)
        guard headerLength <= maximumHeaderLength else {
            throw malformed(name, "header length \(headerLength) exceeds the limit of \(maximumHeaderLength) bytes")
        }
        guard Int64(headerLength) <= size - 8 else {
            throw malformed(name, "header length \(headerLength) runs past the end of the file (\(size) bytes)")
        }
        let header = try file.read(count: Int(headerLength), at: 8)
        return try parse(header: header, size: size, name: name)
    }

    /// Parses and validates the JSON header of a file of `size` bytes.
    static func parse(header: [UInt8], size: Int64, name: String) throws -> SafetensorsFile {
        guard header.first == UInt8(ascii: "{") else {
            throw malformed(name, "header does not start with '{'")
        }
        guard String(validating: header, as: UTF8.self) != nil else {
            throw malformed(name, "header is not valid UTF-8")
        }
        let object: [String: JSONValue]
        do {
            guard case .object(let members) = try JSONDecoder().decode(JSONValue.self, from: Data(header)) else {
                throw malformed(name, "header is not a JSON object")
            }
            object = members
        } catch let error as CKStoreError {
            throw error
        } catch {
            throw malformed(name, "header is not valid JSON")
        }

        var metadata: [String: String]?
        var tensors = [Tensor]()
        for (key, value) in object {
            if key == "__metadata__" {
                guard case .object(let map) = value else { throw malformed(name, "__metadata__ is not an object of strings") }
                var strings = [String: String]()
                for (metaKey, metaValue) in map {
                    guard case .string(let text) = metaValue else {
                        throw malformed(name, "__metadata__ value for \(metaKey) is not a string")
                    }
                    strings[metaKey] = text
                }
                metadata = strings
                continue
            }
            tensors.append(try parseTensor(key, value, file: name))
        }
        tensors.sort { ($0.dataBegin, $0.dataEnd, $0.name) < ($1.dataBegin, $1.dataEnd, $1.name) }

        var position: Int64 = 0
        for tensor in tensors {
            guard tensor.dataBegin == position else {
                if tensor.dataBegin < position {
                    throw malformed(name, "tensor \(tensor.name): data_offsets [\(tensor.dataBegin), \(tensor.dataEnd)] overlap the previous tensor, which ends at \(position)")
                }
                throw malformed(name, "tensor \(tensor.name): data_offsets start at \(tensor.dataBegin), leaving a gap after \(position)")
            }
            position = tensor.dataEnd
        }
        let dataLength = size - 8 - Int64(header.count)
        guard position == dataLength else {
            if position > dataLength {
                throw malformed(name, "tensors need \(position) bytes of data but the file holds \(dataLength) after the header (out of range)")
            }
            throw malformed(name, "file has \(dataLength - position) trailing bytes after the last tensor")
        }
        return SafetensorsFile(headerLength: header.count, tensors: tensors, metadata: metadata, size: size)
    }

    private static func parseTensor(_ tensorName: String, _ value: JSONValue, file: String) throws -> Tensor {
        guard case .object(let info) = value else {
            throw malformed(file, "tensor \(tensorName): entry is not an object")
        }
        guard case .string(let dtypeName)? = info["dtype"] else {
            throw malformed(file, "tensor \(tensorName): missing dtype")
        }
        guard let dtype = DType(safetensorsName: dtypeName) else {
            throw malformed(file, "tensor \(tensorName): unknown dtype \(dtypeName)")
        }
        guard let shape = integers(info["shape"]) else {
            throw malformed(file, "tensor \(tensorName): shape is missing or not a list of non-negative integers")
        }
        guard let offsets = integers(info["data_offsets"]), offsets.count == 2 else {
            throw malformed(file, "tensor \(tensorName): data_offsets is missing or not two non-negative integers")
        }
        let begin = Int64(offsets[0]), end = Int64(offsets[1])
        guard begin <= end else {
            throw malformed(file, "tensor \(tensorName): data_offsets [\(begin), \(end)] end before they begin")
        }
        var elements = 1
        for dimension in shape {
            let (product, overflow) = elements.multipliedReportingOverflow(by: dimension)
            guard !overflow else { throw malformed(file, "tensor \(tensorName): shape \(shape) overflows") }
            elements = product
        }
        guard let expected = dtype.byteCount(elements: elements), Int64(expected) == end - begin else {
            throw malformed(file, "tensor \(tensorName): shape \(shape) of \(dtype) needs \(dtype.byteCount(elements: elements).map(String.init) ?? "a fractional number of") bytes but data_offsets [\(begin), \(end)] hold \(end - begin)")
        }
        return Tensor(name: tensorName, dtype: dtype, shape: shape, dataBegin: begin, dataEnd: end)
    }

    private static func integers(_ value: JSONValue?) -> [Int]? {
        guard case .array(let values)? = value else { return nil }
        var out = [Int]()
        for value in values {
            guard case .integer(let integer) = value, integer >= 0, integer <= Int64(Int.max) else { return nil }
            out.append(Int(integer))
        }
        return out
    }

    static func malformed(_ file: String, _ what: String) -> CKStoreError {
        CKStoreError(.malformedFile, "\(file): \(what)")
    }

    /// Serializes a header for `tensors` laid out contiguously in order, padded with spaces to a multiple
    /// of 8 bytes as the reference writer does.
    static func header(tensors: [(name: String, dtype: DType, shape: [Int], length: Int64)], metadata: [String: String]?) -> [UInt8] {
        var object = [String: Any]()
        if let metadata { object["__metadata__"] = metadata }
        var offset: Int64 = 0
        for tensor in tensors {
            object[tensor.name] = ["dtype": tensor.dtype.name, "shape": tensor.shape, "data_offsets": [offset, offset + tensor.length]] as [String: Any]
            offset += tensor.length
        }
        var json = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])).map(Array.init) ?? Array("{}".utf8)
        while json.count % 8 != 0 { json.append(UInt8(ascii: " ")) }
        var out = [UInt8]()
        out.appendLittleEndian(UInt64(json.count))
        return out + json
    }
}
