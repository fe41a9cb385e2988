import Foundation

/// How `gc` runs.
public struct GCOptions: Sendable {
    /// Only this run's policy is applied (the sweep still covers the whole store).
    public var run: String?
    /// Decide and report, change nothing.
    public var dryRun = false
    /// A pack whose dead share exceeds this is rewritten with its live frames only.
    public var repackThreshold = 0.3
    /// Packs and temporary files that no committed checkpoint knows are removed once older than this.
    public var orphanGrace: Double = 3600
    /// Bytes on disk (packs and catalogue) the store must fit in: after the policies, the oldest
    /// checkpoints no rule protects are deleted until it does, and every pack with a dead frame is
    /// rewritten. Never the newest of a run, a pinned one, or one a policy rule keeps.
    public var budget: Int64?
    /// Plans with this policy instead of the stored ones (what `audit --what-if` simulates).
    public var policyOverride: RetentionPolicy?
    /// Told how many bytes of packs have been rewritten, as gc repacks.
    public var progress: ProgressHandler?
    /// A pending checkpoint (some of its shards committed, not all) whose oldest shard is at least this
    /// old is removed, shards and all: a rank that died never sends its shard. 24 hours by default.
    public var pendingAge: Double = PendingCheckpoint.defaultMaximumAge
    /// Plans the deletion of exactly these checkpoints, with no retention rule and no orphans: what
    /// `rm --dry-run` reports the next gc would free.
    var removing: [CheckpointID]?

    /// Options for a gc of one run (or all) that may be a dry run.
    public init(run: String? = nil, dryRun: Bool = false) {
        self.run = run
        self.dryRun = dryRun
    }
}

/// What `gc` decided and did.
public struct GCReport: Sendable, Codable, Equatable {
    /// A checkpoint gc keeps.
    public struct Kept: Sendable, Codable, Equatable {
        /// The checkpoint.
        public var id: CheckpointID
        /// Its run.
        public var run: String
        /// Its step.
        public var step: Int64
        /// The rules that keep it (`newest`, `pinned`, `keep-last 2`, …).
        public var reasons: [String]
        /// Files dropped from it by a part rule in this gc.
        public var dropped: [String]
    }

    /// A checkpoint gc deletes.
    public struct Deleted: Sendable, Codable, Equatable {
        /// The checkpoint.
        public var id: CheckpointID
        /// Its run.
        public var run: String
        /// Its step.
        public var step: Int64
    }

    /// Whether nothing was changed.
    public var dryRun: Bool
    /// Kept checkpoints with their reasons.
    public var kept: [Kept]
    /// Ids of the deleted checkpoints.
    public var deleted: [CheckpointID]
    /// Deleted checkpoints with run and step.
    public var deletedCheckpoints: [Deleted]
    /// How much smaller the store is on disk afterwards (exact for the packs and files gc removes or
    /// rewrites; the catalogue's own size is not counted).
    public var bytesFreed: Int64
    /// Frame bytes no checkpoint needs any more, including those left in packs below the repack threshold.
    public var bytesUnreferenced: Int64
    /// Chunk rows swept.
    public var chunksFreed: Int
    /// Pack files removed.
    public var packsDeleted: Int
    /// Packs rewritten without their dead frames.
    public var packsRewritten: Int
    /// Orphan packs and temporary files removed.
    public var orphansRemoved: Int
    /// Delta frames stored again in full because the bases they alone kept alive belonged to deleted
    /// checkpoints and took more than the full frames add.
    public var chunksReencoded = 0
    /// What `--budget` decided, when given.
    public var budget: BudgetOutcome?
    /// Pending checkpoints removed because they were older than ``GCOptions/pendingAge``.
    public var pendingRemoved: [PendingCheckpoint] = []

    /// How `gc --budget` brought the store under its budget.
    public struct BudgetOutcome: Sendable, Codable, Equatable {
        /// The budget.
        public var budgetBytes: Int64
        /// Packs and catalogue before.
        public var diskBytesBefore: Int64
        /// Packs and catalogue once the sweep is done, as planned.
        public var diskBytesAfter: Int64
        /// Checkpoints deleted beyond the policies to fit, oldest first.
        public var deletedForBudget: [Deleted]
    }
}

extension GCReport.Deleted {
    /// The checkpoint `summary` lists, deleted.
    public init(_ summary: CheckpointSummary) {
        self.init(id: summary.id, run: summary.run, step: summary.step)
    }
}
