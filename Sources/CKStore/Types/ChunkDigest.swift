/// The SHA-256 of a chunk's decoded bytes: its identity in the store (invariant I-1).
///
/// Stored as four 64-bit words so that it is cheap to hash and compare; prints as 64 hex characters.
public struct ChunkDigest: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The length of a digest in bytes.
    public static let byteCount = 32

    private var words: (UInt64, UInt64, UInt64, UInt64)

    /// Creates a digest from 32 bytes.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == Self.byteCount else { return nil }
        var words: [UInt64] = [0, 0, 0, 0]
        for (index, byte) in bytes.enumerated() {
            words[index / 8] = (words[index / 8] << 8) | UInt64(byte)
        }
        self.words = (words[0], words[1], words[2], words[3])
    }

    /// The all-zero digest (written where a frame has no base).
    static let zero = ChunkDigest(words: (0, 0, 0, 0))

    private init(words: (UInt64, UInt64, UInt64, UInt64)) { self.words = words }

    /// Loads a digest from exactly 32 bytes (a hash function's output, a fixed header field).
    init(loading buffer: UnsafeRawBufferPointer) {
        precondition(buffer.count == Self.byteCount, "a digest is 32 bytes")
        func word(_ index: Int) -> UInt64 { UInt64(bigEndian: buffer.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self)) }
        words = (word(0), word(1), word(2), word(3))
    }

    /// Parses 64 hex characters.
    public init?(hex: some StringProtocol) {
        guard hex.utf8.count == Self.byteCount * 2, let bytes = [UInt8](hexString: hex) else { return nil }
        self.init(bytes: bytes)
    }

    /// The 32 bytes, most significant first.
    public var bytes: [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(Self.byteCount)
        for word in [words.0, words.1, words.2, words.3] {
            for shift in stride(from: 56, through: 0, by: -8) {
                out.append(UInt8(truncatingIfNeeded: word >> UInt64(shift)))
            }
        }
        return out
    }

    /// The digest as 64 lowercase hex characters.
    public var hex: String { bytes.hexString }
    public var description: String { hex }

    public static func == (lhs: ChunkDigest, rhs: ChunkDigest) -> Bool {
        lhs.words == rhs.words
    }

    /// The first 64 bits: uniformly distributed for SHA-256 output, a ready-made hash for tables that
    /// index millions of digests without running `Hasher` on each.
    var prefix: UInt64 { words.0 }

    public func hash(into hasher: inout Hasher) {
        // The words are already uniformly distributed; one is enough to spread buckets.
        hasher.combine(words.0)
        hasher.combine(words.1)
    }

    public static func < (lhs: ChunkDigest, rhs: ChunkDigest) -> Bool {
        (lhs.words.0, lhs.words.1, lhs.words.2, lhs.words.3) < (rhs.words.0, rhs.words.1, rhs.words.2, rhs.words.3)
    }
}

extension ChunkDigest: Codable {
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let digest = ChunkDigest(hex: text) else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "not a 64-character hex digest: \(text)")
        }
        self = digest
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(hex)
    }
}

extension Array where Element == UInt8 {
    /// Parses an even number of hex characters.
    init?(hexString: some StringProtocol) {
        let utf8 = Array<UInt8>(hexString.utf8)
        guard utf8.count % 2 == 0 else { return nil }
        var out = [UInt8]()
        out.reserveCapacity(utf8.count / 2)
        var index = 0
        while index < utf8.count {
            guard let high = hexValue(utf8[index]), let low = hexValue(utf8[index + 1]) else { return nil }
            out.append(high << 4 | low)
            index += 2
        }
        self = out
    }

    /// Lowercase hex.
    var hexString: String {
        let digits = Array<UInt8>("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(count * 2)
        for byte in self {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

private func hexValue(_ character: UInt8) -> UInt8? {
    switch character {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): return character - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): return character - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): return character - UInt8(ascii: "A") + 10
    default: return nil
    }
}
