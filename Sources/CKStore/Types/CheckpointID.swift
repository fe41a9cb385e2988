/// A checkpoint's identity: the SHA-256 of its canonical manifest.
public struct CheckpointID: Hashable, Sendable, Comparable, CustomStringConvertible, Codable {
    /// The manifest's digest.
    public var digest: ChunkDigest

    /// The id whose bytes are `digest`.
    public init(_ digest: ChunkDigest) { self.digest = digest }

    /// Parses 64 hex characters.
    public init?(hex: some StringProtocol) {
        guard let digest = ChunkDigest(hex: hex) else { return nil }
        self.digest = digest
    }

    /// The full id as 64 hex characters.
    public var hex: String { digest.hex }
    /// The first 12 hex characters, as `ls` shows them.
    public var short: String { String(hex.prefix(12)) }
    public var description: String { hex }

    public static func < (lhs: CheckpointID, rhs: CheckpointID) -> Bool { lhs.digest < rhs.digest }

    public init(from decoder: any Decoder) throws { digest = try ChunkDigest(from: decoder) }
    public func encode(to encoder: any Encoder) throws { try digest.encode(to: encoder) }
}
