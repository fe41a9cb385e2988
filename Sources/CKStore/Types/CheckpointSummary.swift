/// One row of `ckstore ls`: what the catalogue knows of a checkpoint without reading its manifest.
public struct CheckpointSummary: Sendable, Equatable, Codable {
    /// The checkpoint id: the SHA-256 of its manifest.
    public var id: CheckpointID
    /// The run it belongs to.
    public var run: String
    /// The training step.
    public var step: Int64
    /// The epoch, when known.
    public var epoch: Double?
    /// Seconds since 1970, UTC.
    public var createdAt: Double
    /// The size of its files as the trainer wrote them.
    public var logicalBytes: Int64
    /// Frame bytes its put added to the store.
    public var storedBytesAdded: Int64
    /// Chunk references in its manifest, repeats included.
    public var chunkCount: Int
    /// Files in it.
    public var fileCount: Int
    /// Tensors (and torch storages) in it.
    public var tensorCount: Int
    /// The previous checkpoint of the run when it was put.
    public var parent: CheckpointID?
    /// Metrics such as `loss`.
    public var metrics: [String: Double]
    /// Its tags.
    public var tags: [String]
    /// Parts a retention rule dropped (`optimizer`); their files are no longer stored.
    @DefaultWhenMissing public var droppedParts: [String] = []
    /// Pinned checkpoints are never deleted by a retention rule.
    @DefaultWhenMissing public var pinned = false
}
