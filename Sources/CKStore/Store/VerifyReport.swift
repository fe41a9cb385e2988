/// How deep `verify` looks.
public enum VerifyDepth: Sendable, Equatable {
    /// Catalogue integrity, every referenced chunk present in an existing pack at a valid offset, pack
    /// sizes and trailers agreeing with the catalogue, manifests parsing. Reads no chunk payloads.
    case quick
    /// Quick, plus every frame read, checksummed, decoded and re-hashed.
    case full
    /// Quick, plus a random share of the packs (at least one) checked fully.
    case sample(percent: Double)
}

/// What to verify.
public struct VerifyOptions: Sendable {
    public var depth: VerifyDepth
    /// When not empty: exactly what restoring these checkpoints needs, fully; `depth` is ignored.
    public var checkpoints: [CheckpointID]
    /// How many frames may be checked at once.
    public var maxChunksInFlight = 8

    public init(depth: VerifyDepth = .quick, checkpoints: [CheckpointID] = []) {
        self.depth = depth
        self.checkpoints = checkpoints
    }
}

/// What `verify` found.
public struct VerifyReport: Sendable, Codable, Equatable {
    /// A checkpoint, file and tensor that a damaged or missing chunk belongs to.
    public struct Affected: Sendable, Codable, Equatable {
        public var checkpoint: CheckpointID
        public var run: String
        public var step: Int64
        public var file: String?
        public var tensor: String?
    }

    /// One damaged or missing chunk and what it breaks.
    public struct Damage: Sendable, Codable, Equatable {
        public var chunk: ChunkDigest
        public var missing: Bool
        public var problem: String
        public var affects: [Affected]
    }

    public var ok: Bool
    public var mode: String
    public var packsChecked: Int
    /// Frames read, decoded and re-hashed (0 for a quick check, which reads no payloads).
    public var chunksChecked: Int
    /// Stored bytes read by the full checks.
    public var storedBytesChecked: Int64
    /// Decoded bytes the full checks re-hashed.
    public var logicalBytesChecked: Int64
    public var damagedChunks: [ChunkDigest]
    public var missingChunks: [ChunkDigest]
    public var affectedCheckpoints: [CheckpointID]
    /// Problems of the catalogue or of whole packs, in words.
    public var problems: [String]
    public var damage: [Damage]
    public var seconds: Double

    enum CodingKeys: String, CodingKey {
        case ok, mode, problems, damage, seconds
        case packsChecked = "packs_checked"
        case chunksChecked = "chunks_checked"
        case storedBytesChecked = "stored_bytes_checked"
        case logicalBytesChecked = "logical_bytes_checked"
        case damagedChunks = "damaged_chunks"
        case missingChunks = "missing_chunks"
        case affectedCheckpoints = "affected_checkpoints"
    }
}
