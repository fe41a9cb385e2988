import Foundation

/// Any JSON value, kept as parsed so that it can be embedded in a manifest (a model's `config.json`, a
/// trainer's `trainer_state.json`) and handed back to the caller.
public enum JSONValue: Sendable, Hashable, Codable {
    case null
    case bool(Bool)
    case integer(Int64)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Int64.self) {
            self = .integer(value)
        } else if let value = try? container.decode(Double.self) {
            self = .number(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .integer(let value): try container.encode(value)
        case .number(let value):
            // JSON has no NaN or infinity: the encoder's strategy writes them (manifests: "NaN", "Infinity",
            // "-Infinity"); an encoder without one fails rather than changing the value.
            try container.encode(value)
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }

    /// The value as a number, if it is one.
    public var doubleValue: Double? {
        switch self {
        case .integer(let value): Double(value)
        case .number(let value): value
        default: nil
        }
    }

    /// The member `key` of an object.
    public subscript(key: String) -> JSONValue? {
        if case .object(let members) = self { return members[key] }
        return nil
    }
}

/// NaN and ±Infinity, which Python's `json` writes as bare `NaN`, `Infinity` and `-Infinity` and JSON has
/// no literal for: ckstore writes and reads them as the strings `"NaN"`, `"Infinity"` and `"-Infinity"`.
enum NonFiniteJSON {
    static let encoding = JSONEncoder.NonConformingFloatEncodingStrategy.convertToString(positiveInfinity: "Infinity", negativeInfinity: "-Infinity", nan: "NaN")
    static let decoding = JSONDecoder.NonConformingFloatDecodingStrategy.convertFromString(positiveInfinity: "Infinity", negativeInfinity: "-Infinity", nan: "NaN")

    /// Decodes JSON that may hold Python's bare non-finite numbers.
    static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        let decoder = JSONDecoder()
        decoder.nonConformingFloatDecodingStrategy = decoding
        return try decoder.decode(type, from: Data(quotingBareTokens(bytes)))
    }

    /// `bytes` with every bare `NaN`, `Infinity` and `-Infinity` outside strings put in quotes.
    static func quotingBareTokens(_ bytes: [UInt8]) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(bytes.count + 16)
        var index = 0, inString = false, escaped = false
        let tokens: [[UInt8]] = [Array("-Infinity".utf8), Array("Infinity".utf8), Array("NaN".utf8)]
        while index < bytes.count {
            let byte = bytes[index]
            if inString {
                if escaped { escaped = false } else if byte == UInt8(ascii: "\\") { escaped = true } else if byte == UInt8(ascii: "\"") { inString = false }
                out.append(byte)
                index += 1
                continue
            }
            if byte == UInt8(ascii: "\"") { inString = true }
            if let token = tokens.first(where: { bytes[index...].starts(with: $0) }) {
                out.append(UInt8(ascii: "\""))
                out += token
                out.append(UInt8(ascii: "\""))
                index += token.count
                continue
            }
            out.append(byte)
            index += 1
        }
        return out
    }
}
