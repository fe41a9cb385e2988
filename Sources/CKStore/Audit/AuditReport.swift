import Foundation

/// What `audit` reports on.
public struct AuditOptions: Sendable {
    /// Only this run's checkpoints, tensors and projection (store totals stay store-wide).
    public var run: String?
    /// A budget for the store on disk: headroom and a projection.
    public var budget: Int64?
    /// A policy to simulate on the store (on `run`, or on every run) without changing anything.
    public var whatIf: RetentionPolicy?
    /// How many of the largest tensors to list.
    public var largestTensors = 10

    /// What to audit: one run or all, with an optional budget and simulated policy.
    public init(run: String? = nil, budget: Int64? = nil, whatIf: RetentionPolicy? = nil) {
        self.run = run
        self.budget = budget
        self.whatIf = whatIf
    }
}

/// What a store costs, from the catalogue alone. Every byte figure is exact for the catalogue as it is:
/// "stored" counts frames (payload and header) of checkpoint data, "disk" adds pack framing, annotation
/// packs and the catalogue's files.
public struct AuditReport: Sendable, Codable, Equatable {
    /// What one run costs.
    public struct Run: Sendable, Codable, Equatable {
        /// The run.
        public var run: String
        /// How many checkpoints it has.
        public var checkpoints: Int
        /// What the checkpoints would take as plain files.
        public var logicalBytes: Int64
        /// Frames the run's checkpoints need, shared ones included.
        public var storedBytes: Int64
        /// What deleting the whole run would free.
        public var exclusiveBytes: Int64
        /// What its checkpoints' puts added.
        public var addedBytes: Int64
        /// Its policy, summarized.
        public var policy: String
        /// Checkpoints its policy keeps now.
        public var keptByPolicy: Int
        /// Mean bytes added per checkpoint over its newest 10.
        public var averageAddedBytes: Int64
        /// `storedBytes` over the store's stored bytes (shared frames count for every run needing them).
        public var share: Double
    }

    /// What one checkpoint costs.
    public struct Checkpoint: Sendable, Codable, Equatable {
        /// The checkpoint.
        public var id: CheckpointID
        /// The run.
        public var run: String
        /// Its step.
        public var step: Int64
        /// When it was put (seconds since 1970).
        public var createdAt: Double
        /// What `get` restores for it now.
        public var logicalBytes: Int64
        /// Frame bytes its put wrote.
        public var addedBytes: Int64
        /// What deleting it alone would free now, delta bases included.
        public var exclusiveBytes: Int64
        /// Frames it needs that other checkpoints need too.
        public var sharedBytes: Int64
        /// Whether it is pinned.
        public var pinned: Bool
        /// Its metrics.
        public var metrics: [String: Double]
    }

    /// Bytes of one part: weights, optimizer or other.
    public struct Part: Sendable, Codable, Equatable {
        /// The part's name.
        public var part: String
        /// What the part's pieces take in the checkpoints as plain files.
        public var logicalBytes: Int64
        /// Frames of the part's chunks.
        public var storedBytes: Int64
    }

    /// A tensor and what its chunks take in the store.
    public struct Tensor: Sendable, Codable, Equatable {
        /// The run.
        public var run: String
        /// The file holding it.
        public var file: String
        /// The tensor's name.
        public var tensor: String
        /// Frames first stored for this tensor, over all checkpoints.
        public var storedBytes: Int64
        /// Its size summed over the checkpoints that have it.
        public var logicalBytes: Int64
    }

    /// Headroom under a budget and where the policies take the store.
    public struct Budget: Sendable, Codable, Equatable {
        /// What one run costs.
        public struct RunProjection: Sendable, Codable, Equatable {
            /// The run.
            public var run: String
            /// Observed growth on disk per checkpoint: mean bytes added by the newest 10, plus the
            /// store's non-frame bytes (pack framing, catalogue) per checkpoint.
            public var bytesPerCheckpoint: Int64
            /// What the run holds beyond its checkpoints' usual growth: the oldest checkpoint's excess over
            /// it (a frozen base it stored), which stays whatever the policy deletes.
            public var baseBytes: Int64
            /// The most checkpoints its policy keeps; nil when the policy lets the run grow.
            @NullWhenNil public var keptAtSteadyState: Int?
            /// The run's size once its policy keeps at most `keptAtSteadyState` checkpoints; nil when it grows.
            @NullWhenNil public var steadyStateBytes: Int64?
            /// Further checkpoints of this run that fit; nil when its policy keeps it under the budget.
            @NullWhenNil public var moreCheckpoints: Int?
        }

        /// The budget.
        public var budgetBytes: Int64
        /// Packs and catalogue now.
        public var diskBytes: Int64
        /// Budget minus disk bytes (negative when over).
        public var headroomBytes: Int64
        /// Whether the store fits now.
        public var fits: Bool
        /// The store's size once every run's policy has reached its steady state; nil when some run grows
        /// without bound.
        @NullWhenNil public var steadyStateBytes: Int64?
        /// Checkpoints, of any growing run, that fit before the budget is exceeded; nil for no limit.
        @NullWhenNil public var moreCheckpoints: Int?
        /// Per run.
        public var runs: [RunProjection]
    }

    /// A policy simulated on the store.
    public struct WhatIf: Sendable, Codable, Equatable {
        /// The simulated policy, summarized.
        public var policy: String
        /// The run the policy was simulated on; nil for every run.
        public var run: String?
        /// The checkpoints it would delete.
        public var deleted: [GCReport.Deleted]
        /// Checkpoints that would lose a part.
        public var slimmed: Int
        /// Frames a gc with that policy would free.
        public var storedBytesFreed: Int64
        /// Bytes on disk it would free (packs below the repack threshold keep their dead frames).
        public var diskBytesFreed: Int64
    }

    /// When the audit ran (seconds since 1970).
    public var generatedAt: Double
    /// The store's folder.
    public var store: String
    /// The run audited; nil for the whole store.
    public var run: String?
    /// What the checkpoints would take as plain files.
    public var logicalBytes: Int64
    /// Frames of checkpoint data (chunks and manifests), dead ones included.
    public var storedBytes: Int64
    /// Packs plus catalogue.
    public var diskBytes: Int64
    /// Pack files as catalogued.
    public var packBytes: Int64
    /// `ckstore.db` and its write-ahead log.
    public var catalogueBytes: Int64
    /// Frames no checkpoint needs: what `gc` would sweep.
    public var deadBytes: Int64
    /// Frames only pending shards need (checkpoints whose other shards have not arrived): kept by gc until
    /// their checkpoint completes or gets older than the pending age.
    public var pendingBytes: Int64 = 0
    /// Frames recording policies, pins, tags and deletions.
    public var annotationBytes: Int64
    /// Decoded bytes of the distinct live chunks.
    public var uniqueBytes: Int64
    /// Logical over unique bytes: what content addressing saves.
    public var dedupRatio: Double
    /// Unique bytes over their frames: what encoding saves.
    public var compressionRatio: Double
    /// Runs in the store.
    public var runCount: Int
    /// Checkpoints in the store.
    public var checkpointCount: Int
    /// Chunk rows, manifests and annotations included.
    public var chunkCount: Int
    /// Packs.
    public var packCount: Int
    /// References to chunks the catalogue lacks (see `ckstore verify`).
    public var missingReferences: Int
    /// Per run.
    public var runs: [Run]
    /// Per checkpoint.
    public var checkpoints: [Checkpoint]
    /// Per part, store-wide.
    public var parts: [Part]
    /// The tensors whose chunks take the most stored bytes.
    public var largestTensors: [Tensor]
    /// Headroom and projection, with a budget.
    public var budget: Budget?
    /// The simulated policy, when one was given.
    public var whatIf: WhatIf?
}
