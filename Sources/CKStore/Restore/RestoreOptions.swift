/// What to restore and how.
public struct RestoreOptions: Sendable, BoundsBytesInFlight {
    /// Restore only these files (paths as in the manifest); empty restores every file.
    public var files: [String] = []
    /// Write, for each safetensors file holding matching tensors, a safetensors file with only the
    /// tensors whose names match one of these glob patterns (`*`, `?`, `[…]`).
    public var tensors: [String] = []
    /// Restore into a folder that is not empty, replacing files with the same paths.
    public var force = false
    /// How many bytes of chunks may be read and decoded at once: this, not the number of cores, bounds a
    /// restore's memory.
    public var maxBytesInFlight = PutOptions.defaultBytesInFlight
    /// Restore setuid, setgid and sticky bits as stored; without this only the permission bits (0o777)
    /// are applied, so that a crafted manifest cannot make a restored file setuid.
    public var keepSpecialModeBits = false
    /// Told how many bytes have been restored, as the restore goes.
    public var progress: ProgressHandler?
    /// Only the files this shard of a checkpoint put as shards holds (`get --shard I/N`): what rank I wrote.
    public var shard: ShardSpec?

    /// Whether the whole checkpoint is restored: no file, tensor or shard chosen.
    public var isWhole: Bool { files.isEmpty && tensors.isEmpty && shard == nil }

    /// Restore only `files`, or a safetensors file of only `tensors` (globs); `force` allows a non-empty target.
    public init(files: [String] = [], tensors: [String] = [], force: Bool = false) {
        self.files = files
        self.tensors = tensors
        self.force = force
    }
}

/// What a restore wrote.
public struct RestoreResult: Sendable, Codable, Equatable {
    /// The checkpoint restored.
    public var id: CheckpointID
    /// The paths written, relative to the destination.
    public var files: [String]
    /// Bytes written.
    public var bytes: Int64
    /// How long it took.
    public var seconds: Double
}
