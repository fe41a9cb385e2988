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
    /// How much to read.
    public var depth: VerifyDepth
    /// When not empty: exactly what restoring these checkpoints needs, fully; `depth` is ignored.
    public var checkpoints: [CheckpointID]
    /// How many bytes of frames (decoded) may be checked at once: this, not the number of cores, bounds
    /// a verify's memory.
    public var maxBytesInFlight = PutOptions.defaultBytesInFlight
    /// The bound before 0.7, in chunks of 1 MiB.
    @available(*, deprecated, renamed: "maxBytesInFlight", message: "work in flight is bounded by bytes since 0.7")
    public var maxChunksInFlight: Int {
        get { maxBytesInFlight >> 20 }
        set { maxBytesInFlight = max(1, newValue) << 20 }
    }
    /// Told how many bytes of frames have been read and checked, as a full or sampled check goes.
    public var progress: ProgressHandler?
    /// Pending checkpoints whose oldest shard is at least this old are reported (``VerifyReport/stalePending``).
    public var pendingAge: Double = PendingCheckpoint.defaultMaximumAge

    /// Verify `checkpoints` (all when empty) at `depth`.
    public init(depth: VerifyDepth = .quick, checkpoints: [CheckpointID] = []) {
        self.depth = depth
        self.checkpoints = checkpoints
    }
}

/// How much a `verify` read.
public enum VerifyMode: String, Sendable, Codable, CustomStringConvertible {
    /// Catalogue, packs and trailers; no payloads.
    case quick
    /// Every frame read, decoded and re-hashed.
    case full
    /// Every frame of a random share of the packs.
    case sample
    /// Exactly what restoring some checkpoints needs, fully.
    case checkpoints

    public var description: String { rawValue }
}

/// What `verify` found.
public struct VerifyReport: Sendable, Codable, Equatable {
    /// A checkpoint, file and tensor that a damaged or missing chunk belongs to.
    public struct Affected: Sendable, Codable, Equatable {
        /// The damaged checkpoint.
        public var checkpoint: CheckpointID
        /// Its run.
        public var run: String
        /// Its step.
        public var step: Int64
        /// The file the chunk belongs to.
        public var file: String?
        /// The tensor, when the chunk is inside one.
        public var tensor: String?
    }

    /// One damaged or missing chunk and what it breaks.
    public struct Damage: Sendable, Codable, Equatable {
        /// The chunk.
        public var chunk: ChunkDigest
        /// Whether it is missing rather than corrupt.
        public var missing: Bool
        /// What is wrong.
        public var problem: String
        /// What it breaks.
        public var affects: [Affected]
    }

    /// True when no damage was found.
    public var ok: Bool
    /// What was checked: `quick`, `full`, `sample` or `checkpoints` in JSON and text.
    public var mode: VerifyMode
    /// Packs checked.
    public var packsChecked: Int
    /// Frames read, decoded and re-hashed (0 for a quick check, which reads no payloads).
    public var chunksChecked: Int
    /// Stored bytes read by the full checks.
    public var storedBytesChecked: Int64
    /// Decoded bytes the full checks re-hashed.
    public var logicalBytesChecked: Int64
    /// Chunks that fail their checks.
    public var damagedChunks: [ChunkDigest]
    /// Chunks that are not where the catalogue says.
    public var missingChunks: [ChunkDigest]
    /// Checkpoints that need a damaged or missing chunk.
    public var affectedCheckpoints: [CheckpointID]
    /// Problems of the catalogue or of whole packs, in words.
    public var problems: [String]
    /// Each problem and what it breaks.
    public var damage: [Damage]
    /// How long it took.
    public var seconds: Double
    /// Pending checkpoints older than ``VerifyOptions/pendingAge``: shards of them were committed and the
    /// rest never came (a rank died, or its put failed). Not damage, so `ok` does not count them; the next
    /// `gc` removes them.
    public var stalePending: [PendingCheckpoint] = []
}
