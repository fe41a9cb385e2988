/// What to record with a checkpoint and how to store it.
public struct PutOptions: Sendable, BoundsBytesInFlight {
    /// The run the checkpoint belongs to.
    public var run: String
    /// The training step; when nil, taken from `trainer_state.json` (`global_step`) or a
    /// `checkpoint-N` folder name.
    public var step: Int64?
    /// The epoch; when nil, taken from `trainer_state.json` if present.
    public var epoch: Double?
    /// Metrics such as `loss`; they override the last logged values from `trainer_state.json`.
    public var metrics: [String: Double] = [:]
    /// Tags to record.
    public var tags: [String] = []
    /// Free-form metadata.
    public var metadata: [String: String] = [:]
    /// The zstd level for new chunks; nil for the store's (``StoreSettings/compressionLevel``).
    public var compressionLevel: CompressionLevel?
    /// The longest delta chain this put may extend; nil for the store's (``StoreSettings/maxDeltaDepth``),
    /// 0 to store every new chunk in full.
    public var maxDeltaDepth: Int?
    /// Store links that point outside the folder as the files they point to, instead of refusing.
    public var followSymlinks = false
    /// How many bytes of chunks may be read, hashed or compressed at once. This, not the number of cores,
    /// bounds a put's memory (at about three times this); every core works while it allows a few chunks
    /// per core (1 MiB each for tensors).
    public var maxBytesInFlight = PutOptions.defaultBytesInFlight
    /// The default of ``maxBytesInFlight`` and of restores' and verifies' windows: 64 MiB.
    public static let defaultBytesInFlight = 64 << 20
    /// Told how many of the checkpoint's bytes have been read and stored, as the put goes.
    public var progress: ProgressHandler?
    /// Store the files as this shard of the checkpoint (`--shard I/N`): the checkpoint becomes visible only
    /// once all its shards are committed (docs/design.md, "Sharded checkpoints").
    public var shard: ShardSpec?

    /// Options for a put to `run`, with step and epoch when known.
    public init(run: String, step: Int64? = nil, epoch: Double? = nil) {
        self.run = run
        self.step = step
        self.epoch = epoch
    }
}

/// What a put did.
public struct PutResult: Sendable, Codable, Equatable {
    /// The checkpoint id.
    public var id: CheckpointID
    /// The run.
    public var run: String
    /// The step.
    public var step: Int64
    /// The input's size: the sum of its files.
    public var logicalBytes: Int64
    /// Bytes this put added to the store (frames, headers included).
    public var storedBytesAdded: Int64
    /// Chunk references in the manifest, repeats included.
    public var chunksTotal: Int
    /// Chunks this put stored for the first time.
    public var chunksNew: Int
    /// How long the put took.
    public var seconds: Double
    /// True when the same content was already stored under this run and step, so nothing was written.
    public var alreadyStored: Bool
    /// Files stored as opaque because they did not parse as their name says.
    public var warnings: [String]
    /// For a shard's put: which shard (``id`` is then the shard manifest's id).
    public var shard: ShardSpec?
    /// For a shard's put: the checkpoint's id once every shard is committed, nil while it is pending.
    public var checkpoint: CheckpointID?
    /// For a shard's put: the shards still missing (empty once the checkpoint is complete).
    public var missingShards: [Int]?
}

/// Options that bound the bytes of chunks in flight, which bounds an operation's memory (puts, restores).
public protocol BoundsBytesInFlight {
    var maxBytesInFlight: Int { get set }
}

extension BoundsBytesInFlight {
    /// The bound before 0.7, in chunks of 1 MiB.
    @available(*, deprecated, renamed: "maxBytesInFlight", message: "work in flight is bounded by bytes since 0.7")
    public var maxChunksInFlight: Int {
        get { maxBytesInFlight >> 20 }
        set { maxBytesInFlight = max(1, newValue) << 20 }
    }
}
