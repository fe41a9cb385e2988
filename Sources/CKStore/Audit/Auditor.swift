import Foundation

extension CheckpointStore {
    /// What the store costs: totals, runs, checkpoints (exclusive and shared bytes), parts, the largest
    /// tensors, and on request a budget projection and a simulated policy. Reads the catalogue only.
    ///
    /// ```swift
    /// let report = try await store.audit(AuditOptions(budget: 500 << 30))
    /// for checkpoint in report.checkpoints { print(checkpoint.step, checkpoint.exclusiveBytes) }
    /// ```
    public func audit(_ options: AuditOptions = AuditOptions()) async throws(CKStoreError) -> AuditReport {
        try CKStoreError.wrapping("audit") {
            try Auditor(catalogue: catalogue, layout: layout, planner: gcPlanner()).audit(options)
        }
    }
}

/// What an audit asks the catalogue: whether the run it names exists, and in one read, what the store
/// holds and each run's effective policy.
protocol AuditQueries: Sendable {
    /// Throws `notFound` unless `run` is nil or a run of the store.
    func requireRun(_ run: String?) throws
    /// What the catalogue says every checkpoint and pack holds, and the policy of each of its runs.
    func usageAndPolicies(layout: StoreLayout) throws -> (StoreUsage, [RetentionPolicy])
}

extension LockedCatalogue: AuditQueries {
    func requireRun(_ run: String?) throws {
        try with { try $0.requireRun(run) }
    }

    func usageAndPolicies(layout: StoreLayout) throws -> (StoreUsage, [RetentionPolicy]) {
        try with { catalogue in
            let usage = try StoreUsage.load(catalogue, layout: layout)
            return (usage, try usage.runs.map { try catalogue.effectivePolicy(run: $0).0 })
        }
    }
}

/// Says what a store costs (`audit`): every number from the catalogue, none from the packs.
///
/// Its seams: the catalogue's ``AuditQueries``, the store's layout (the catalogue's size on disk) and the
/// gc planner, whose plan `--what-if` reports.
struct Auditor {
    let catalogue: any AuditQueries
    let layout: StoreLayout
    let planner: GCPlanner

    /// The audit `options` ask for.
    func audit(_ options: AuditOptions) throws -> AuditReport {
        try catalogue.requireRun(options.run)
        let (usage, policies) = try catalogue.usageAndPolicies(layout: layout)
        let (byCheckpoint, byRun) = usage.owners()
        let chunkCount = usage.digests.count

        var exclusive = Array(repeating: Int64(0), count: usage.checkpoints.count)
        var runExclusive = Array(repeating: Int64(0), count: usage.runs.count)
        var dead: Int64 = 0, pending: Int64 = 0, annotations: Int64 = 0, unique: Int64 = 0, liveFrames: Int64 = 0
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
                if usage.pendingChunks.contains(Int32(chunk)) { pending += frame } else { dead += frame }
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
        var partBytes = [CheckpointPart: (logical: Int64, stored: Int64)]()
        for (index, label) in usage.labels.enumerated() {
            let policy = runIndex[label.run].map { policies[$0] } ?? RetentionPolicy()
            let part = policy.part(path: label.path, tensor: label.tensor)
            partBytes[part, default: (0, 0)].logical += usage.labelLogicalBytes[index]
            partBytes[part, default: (0, 0)].stored += storedByLabel[index]
        }
        partBytes[.other, default: (0, 0)].stored += unlabelled
        // Checkpoints put before pieces were recorded have no labels: their logical bytes count as other.
        let labelledLogical = usage.labelLogicalBytes.reduce(0, +)
        if logical > labelledLogical { partBytes[.other, default: (0, 0)].logical += logical - labelledLogical }
        let parts = partBytes.sorted { $0.key < $1.key }
            .map { AuditReport.Part(part: $0.key.rawValue, logicalBytes: $0.value.logical, storedBytes: $0.value.stored) }

        let tensors = usage.labels.indices
            .filter { !usage.labels[$0].tensor.isEmpty && (options.run == nil || usage.labels[$0].run == options.run) && storedByLabel[$0] > 0 }
            .sorted { (storedByLabel[$0], $1) > (storedByLabel[$1], $0) }
            .prefix(options.largestTensors)
            .map { AuditReport.Tensor(run: usage.labels[$0].run, file: usage.labels[$0].path, tensor: usage.labels[$0].tensor, storedBytes: storedByLabel[$0], logicalBytes: usage.labelLogicalBytes[$0]) }

        var report = AuditReport(
            generatedAt: Date().timeIntervalSince1970, store: layout.root, run: options.run,
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
        report.pendingBytes = pending
        if let budget = options.budget {
            report.budget = projection(budget, usage: usage, policies: policies, runs: runs, diskBytes: disk, storedBytes: stored, only: options.run)
        }
        if let policy = options.whatIf {
            var gc = GCOptions(run: options.run, dryRun: true)
            gc.policyOverride = policy
            let outcome = try planner.plan(gc).report(dryRun: true)
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
            projections.append(AuditReport.Budget.RunProjection(run: run.run, bytesPerCheckpoint: growth, baseBytes: base, keptAtSteadyState: bound,
                                                                steadyStateBytes: steady, moreCheckpoints: nil))
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
