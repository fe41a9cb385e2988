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

        enum CodingKeys: String, CodingKey {
            case run, checkpoints, policy, share
            case logicalBytes = "logical_bytes"
            case storedBytes = "stored_bytes"
            case exclusiveBytes = "exclusive_bytes"
            case addedBytes = "added_bytes"
            case keptByPolicy = "kept_by_policy"
            case averageAddedBytes = "average_added_bytes"
        }
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

        enum CodingKeys: String, CodingKey {
            case id, run, step, pinned, metrics
            case createdAt = "created_at"
            case logicalBytes = "logical_bytes"
            case addedBytes = "added_bytes"
            case exclusiveBytes = "exclusive_bytes"
            case sharedBytes = "shared_bytes"
        }
    }

    /// Bytes of one part: weights, optimizer or other.
    public struct Part: Sendable, Codable, Equatable {
        /// The part's name.
        public var part: String
        /// What the part's pieces take in the checkpoints as plain files.
        public var logicalBytes: Int64
        /// Frames of the part's chunks.
        public var storedBytes: Int64

        enum CodingKeys: String, CodingKey {
            case part
            case logicalBytes = "logical_bytes"
            case storedBytes = "stored_bytes"
        }
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

        enum CodingKeys: String, CodingKey {
            case run, file, tensor
            case storedBytes = "stored_bytes"
            case logicalBytes = "logical_bytes"
        }
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
            /// The most checkpoints its policy keeps; nil when the policy lets the run grow.
            public var keptAtSteadyState: Int?
            /// The run's size once its policy keeps at most `keptAtSteadyState` checkpoints; nil when it grows.
            public var steadyStateBytes: Int64?
            /// Further checkpoints of this run that fit; nil when its policy keeps it under the budget.
            public var moreCheckpoints: Int?

            enum CodingKeys: String, CodingKey {
                case run
                case bytesPerCheckpoint = "bytes_per_checkpoint"
                case keptAtSteadyState = "kept_at_steady_state"
                case steadyStateBytes = "steady_state_bytes"
                case moreCheckpoints = "more_checkpoints"
            }

            // "Unbounded" is an explicit null in JSON, not a missing key.
            public func encode(to encoder: any Encoder) throws {
                var container = encoder.container(keyedBy: CodingKeys.self)
                try container.encode(run, forKey: .run)
                try container.encode(bytesPerCheckpoint, forKey: .bytesPerCheckpoint)
                try container.encode(keptAtSteadyState, forKey: .keptAtSteadyState)
                try container.encode(steadyStateBytes, forKey: .steadyStateBytes)
                try container.encode(moreCheckpoints, forKey: .moreCheckpoints)
            }
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
        public var steadyStateBytes: Int64?
        /// Checkpoints, of any growing run, that fit before the budget is exceeded; nil for no limit.
        public var moreCheckpoints: Int?
        /// Per run.
        public var runs: [RunProjection]

        enum CodingKeys: String, CodingKey {
            case fits, runs
            case budgetBytes = "budget_bytes"
            case diskBytes = "disk_bytes"
            case headroomBytes = "headroom_bytes"
            case steadyStateBytes = "steady_state_bytes"
            case moreCheckpoints = "more_checkpoints"
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(budgetBytes, forKey: .budgetBytes)
            try container.encode(diskBytes, forKey: .diskBytes)
            try container.encode(headroomBytes, forKey: .headroomBytes)
            try container.encode(fits, forKey: .fits)
            try container.encode(steadyStateBytes, forKey: .steadyStateBytes)
            try container.encode(moreCheckpoints, forKey: .moreCheckpoints)
            try container.encode(runs, forKey: .runs)
        }
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

        enum CodingKeys: String, CodingKey {
            case policy, run, deleted, slimmed
            case storedBytesFreed = "stored_bytes_freed"
            case diskBytesFreed = "disk_bytes_freed"
        }
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

    enum CodingKeys: String, CodingKey {
        case store, run, runs, checkpoints, parts, budget
        case generatedAt = "generated_at"
        case logicalBytes = "logical_bytes"
        case storedBytes = "stored_bytes"
        case diskBytes = "disk_bytes"
        case packBytes = "pack_bytes"
        case catalogueBytes = "catalogue_bytes"
        case deadBytes = "dead_bytes"
        case annotationBytes = "annotation_bytes"
        case uniqueBytes = "unique_bytes"
        case dedupRatio = "dedup_ratio"
        case compressionRatio = "compression_ratio"
        case runCount = "run_count"
        case checkpointCount = "checkpoint_count"
        case chunkCount = "chunk_count"
        case packCount = "pack_count"
        case missingReferences = "missing_references"
        case largestTensors = "largest_tensors"
        case whatIf = "what_if"
    }
}

extension CheckpointStore {
    /// What the store costs: totals, runs, checkpoints (exclusive and shared bytes), parts, the largest
    /// tensors, and on request a budget projection and a simulated policy. Reads the catalogue only.
    ///
    /// ```swift
    /// let report = try await store.audit(AuditOptions(budget: 500 << 30))
    /// for checkpoint in report.checkpoints { print(checkpoint.step, checkpoint.exclusiveBytes) }
    /// ```
    public func audit(_ options: AuditOptions = AuditOptions()) async throws(CKStoreError) -> AuditReport {
        try CKStoreError.wrapping("audit") { try auditChecked(options) }
    }

    private func auditChecked(_ options: AuditOptions) throws -> AuditReport {
        try requireRun(options.run)
        let (usage, policies) = try withCatalogue { catalogue in
            let usage = try StoreUsage.load(catalogue, layout: layout)
            let policies = try usage.runs.map { try catalogue.effectivePolicy(run: $0).0 }
            return (usage, policies)
        }
        let (byCheckpoint, byRun) = usage.owners()
        let chunkCount = usage.digests.count

        var exclusive = Array(repeating: Int64(0), count: usage.checkpoints.count)
        var runExclusive = Array(repeating: Int64(0), count: usage.runs.count)
        var dead: Int64 = 0, annotations: Int64 = 0, unique: Int64 = 0, liveFrames: Int64 = 0
        var storedByLabel = Array(repeating: Int64(0), count: usage.labels.count)
        var unlabelled: Int64 = 0
        for chunk in 0..<chunkCount {
            let frame = usage.frameBytes[chunk]
            if usage.kinds[chunk] == .annotation {
                annotations += frame
                continue
            }
            let label = Int(usage.chunkLabels[chunk])
            if label >= 0 { storedByLabel[label] += frame } else { unlabelled += frame }
            let owner = byCheckpoint[chunk]
            if owner == StoreUsage.none {
                dead += frame
                continue
            }
            unique += usage.rawBytes[chunk]
            liveFrames += frame
            if owner >= 0 { exclusive[Int(owner)] += frame }
            if byRun[chunk] >= 0 { runExclusive[Int(byRun[chunk])] += frame }
        }
        let stored = usage.storedBytes
        let logical = usage.checkpoints.reduce(Int64(0)) { $0 + $1.logicalBytes }
        let disk = usage.packBytes + usage.catalogueBytes

        let checkpoints = usage.checkpoints.enumerated().map { index, checkpoint in
            let shared = checkpoint.chunks.reduce(Int64(0)) { total, chunk in
                byCheckpoint[Int(chunk)] == Int32(index) ? total : total + usage.frameBytes[Int(chunk)]
            }
            let summary = checkpoint.summary
            return AuditReport.Checkpoint(
                id: summary.id, run: summary.run, step: summary.step, createdAt: summary.createdAt,
                logicalBytes: checkpoint.logicalBytes, addedBytes: summary.storedBytesAdded,
                exclusiveBytes: exclusive[index], sharedBytes: shared, pinned: summary.pinned, metrics: summary.metrics
            )
        }

        let needed = usage.neededBytesByRun()
        let checkpointsByRun = usage.checkpointsByRun()
        var runs = [AuditReport.Run]()
        for (index, name) in usage.runs.enumerated() {
            let mine = checkpointsByRun[index].map(\.summary)
            let plan = RetentionPlanner.plan(policies[index], mine.map(RetentionPlanner.Candidate.init))
            let newest = mine.sorted { ($0.step, $0.createdAt) > ($1.step, $1.createdAt) }.prefix(10)
            runs.append(AuditReport.Run(
                run: name, checkpoints: mine.count,
                logicalBytes: checkpointsByRun[index].reduce(0) { $0 + $1.logicalBytes },
                storedBytes: needed[index], exclusiveBytes: runExclusive[index],
                addedBytes: mine.reduce(0) { $0 + $1.storedBytesAdded },
                policy: policies[index].summary, keptByPolicy: plan.kept.count,
                averageAddedBytes: newest.isEmpty ? 0 : newest.reduce(0) { $0 + $1.storedBytesAdded } / Int64(newest.count),
                share: stored > 0 ? Double(needed[index]) / Double(stored) : 0
            ))
        }

        // Parts: each label classified by its run's policy; frames no label names (manifests) are "other".
        let runIndex = Dictionary(usage.runs.enumerated().map { ($1, $0) }, uniquingKeysWith: { first, _ in first })
        var partBytes = [String: (logical: Int64, stored: Int64)]()
        for (index, label) in usage.labels.enumerated() {
            let policy = runIndex[label.run].map { policies[$0] } ?? RetentionPolicy()
            let part = policy.part(path: label.path, tensor: label.tensor)
            partBytes[part, default: (0, 0)].logical += usage.labelLogicalBytes[index]
            partBytes[part, default: (0, 0)].stored += storedByLabel[index]
        }
        partBytes["other", default: (0, 0)].stored += unlabelled
        // Checkpoints put before pieces were recorded have no labels: their logical bytes count as other.
        let labelledLogical = usage.labelLogicalBytes.reduce(0, +)
        if logical > labelledLogical { partBytes["other", default: (0, 0)].logical += logical - labelledLogical }
        let order = ["weights", "optimizer", "other"]
        let parts = partBytes.map { AuditReport.Part(part: $0.key, logicalBytes: $0.value.logical, storedBytes: $0.value.stored) }
            .sorted { (order.firstIndex(of: $0.part) ?? order.count, $0.part) < (order.firstIndex(of: $1.part) ?? order.count, $1.part) }

        let tensors = usage.labels.indices
            .filter { !usage.labels[$0].tensor.isEmpty && (options.run == nil || usage.labels[$0].run == options.run) && storedByLabel[$0] > 0 }
            .sorted { (storedByLabel[$0], $1) > (storedByLabel[$1], $0) }
            .prefix(options.largestTensors)
            .map { AuditReport.Tensor(run: usage.labels[$0].run, file: usage.labels[$0].path, tensor: usage.labels[$0].tensor, storedBytes: storedByLabel[$0], logicalBytes: usage.labelLogicalBytes[$0]) }

        var report = AuditReport(
            generatedAt: Date().timeIntervalSince1970, store: path, run: options.run,
            logicalBytes: logical, storedBytes: stored, diskBytes: disk, packBytes: usage.packBytes, catalogueBytes: usage.catalogueBytes,
            deadBytes: dead, annotationBytes: annotations, uniqueBytes: unique,
            dedupRatio: unique > 0 ? Double(logical) / Double(unique) : 1,
            compressionRatio: liveFrames > 0 ? Double(unique) / Double(liveFrames) : 1,
            runCount: usage.runs.count, checkpointCount: usage.checkpoints.count, chunkCount: chunkCount, packCount: usage.packs.count,
            missingReferences: usage.missingReferences,
            runs: runs.filter { options.run == nil || $0.run == options.run },
            checkpoints: checkpoints.filter { options.run == nil || $0.run == options.run },
            parts: parts, largestTensors: Array(tensors)
        )
        if let budget = options.budget {
            report.budget = projection(budget, usage: usage, policies: policies, runs: runs, diskBytes: disk, storedBytes: stored, only: options.run)
        }
        if let policy = options.whatIf {
            var gc = GCOptions(run: options.run, dryRun: true)
            gc.policyOverride = policy
            let outcome = try planGC(gc).report(dryRun: true)
            report.whatIf = AuditReport.WhatIf(
                policy: policy.summary, run: options.run, deleted: outcome.deletedCheckpoints,
                slimmed: outcome.kept.filter { !$0.dropped.isEmpty }.count,
                storedBytesFreed: outcome.bytesUnreferenced, diskBytesFreed: outcome.bytesFreed
            )
        }
        return report
    }

    /// Headroom and steady state under `budget`, from each run's policy and observed growth.
    private func projection(_ budget: Int64, usage: StoreUsage, policies: [RetentionPolicy], runs: [AuditReport.Run], diskBytes: Int64, storedBytes: Int64, only: String?) -> AuditReport.Budget {
        let headroom = budget - diskBytes
        // What the store holds beyond frames (pack framing, annotations, catalogue), per checkpoint.
        let overhead = usage.checkpoints.isEmpty ? 0 : max(0, diskBytes - storedBytes) / Int64(usage.checkpoints.count)
        var projections = [AuditReport.Budget.RunProjection]()
        var steadyTotal: Int64? = 0
        let checkpointsByRun = usage.checkpointsByRun()
        for (index, run) in runs.enumerated() {
            let mine = checkpointsByRun[index].map(\.summary)
            let growth = run.averageAddedBytes + overhead
            let bound = policies[index].steadyStateCount(pinned: mine.filter(\.pinned).count, tagged: mine.filter { !$0.tags.isEmpty }.count)
            // The oldest checkpoint's excess over the usual growth (a frozen base it stored) stays.
            let base = max(0, (mine.min { $0.createdAt < $1.createdAt }?.storedBytesAdded ?? 0) - run.averageAddedBytes)
            let steady = bound.map { Int64($0) * growth + base }
            steadyTotal = steadyTotal.flatMap { total in steady.map { total + $0 } }
            projections.append(AuditReport.Budget.RunProjection(run: run.run, bytesPerCheckpoint: growth, keptAtSteadyState: bound, steadyStateBytes: steady, moreCheckpoints: nil))
        }
        let settles = steadyTotal.map { $0 <= budget } ?? false
        for index in projections.indices {
            let growth = max(projections[index].bytesPerCheckpoint, 1)
            if projections[index].keptAtSteadyState != nil && settles && headroom >= 0 { continue }
            projections[index].moreCheckpoints = Int(max(0, headroom) / growth)
        }
        let growing = projections.filter { $0.moreCheckpoints != nil }
        let fastest = growing.map(\.bytesPerCheckpoint).max() ?? 0
        return AuditReport.Budget(
            budgetBytes: budget, diskBytes: diskBytes, headroomBytes: headroom, fits: headroom >= 0,
            steadyStateBytes: steadyTotal,
            moreCheckpoints: growing.isEmpty ? nil : Int(max(0, headroom) / max(fastest, 1)),
            runs: projections.filter { only == nil || $0.run == only }
        )
    }
}
