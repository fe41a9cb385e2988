import Foundation

extension CheckpointStore {
    /// The gc planner over this store.
    func gcPlanner() -> GCPlanner {
        GCPlanner(catalogue: catalogue, committer: Committer(catalogue: catalogue, layout: layout), layout: layout, reader: chunkReader(), contexts: contexts)
    }

    /// What removing `ids` would do, changing nothing: the checkpoints, and what the next gc would then
    /// free because of them alone (no retention rule, no orphans) — `rm --dry-run`.
    ///
    /// - Throws: as ``remove(_:force:)`` would.
    public func planRemoval(_ ids: [CheckpointID], force: Bool = false) throws -> GCReport {
        try checkRemovable(ids, force: force)
        var options = GCOptions(dryRun: true)
        options.removing = ids
        return try gcPlanner().plan(options).report(dryRun: true)
    }

    /// Applies the retention policies and sweeps what nothing needs any more.
    ///
    /// Plans first (``GCPlanner``), then, unless `options.dryRun`, executes that plan: a dry run reports
    /// exactly what the real gc would do. Deleting checkpoints and unreferenced chunks happens in one
    /// short write transaction; a concurrent put that reused a swept chunk notices in its own commit and
    /// writes the chunk again (I-8). Pack files are deleted only under the store's exclusive lock, after
    /// that commit, so no put or get that is still running loses a pack it uses.
    ///
    /// ```swift
    /// let report = try await store.gc(GCOptions(dryRun: true))
    /// print(report.deleted.count, report.bytesFreed)
    /// ```
    public func gc(_ options: GCOptions = GCOptions()) async throws(CKStoreError) -> GCReport {
        try CKStoreError.wrapping("gc") {
            let plan = try gcPlanner().plan(options)
            if options.dryRun { return plan.report(dryRun: true) }
            return try GCExecutor(catalogue: catalogue, committer: Committer(catalogue: catalogue, layout: layout), layout: layout, annotations: annotations,
                                  reader: chunkReader(), contexts: contexts, progress: options.progress).execute(plan)
        }
    }
}

/// Decides what a gc does (``GCPlan``) without changing anything: the retention decision per run, the
/// parts to drop, a budget's extra deletions, the sweep, the delta frames to store in full, the packs to
/// delete or rewrite and the orphans. `gc --dry-run` prints its plan; `audit --what-if` reports it.
///
/// Its seams: the catalogue's ``GCPlanQueries``, the store's ``Committer`` (its check that every commit is
/// listed), the store's layout (its packs, for orphans), a ``ChunkReader`` (manifests, and the frames it
/// weighs re-encoding) and the zstd contexts to encode with.
struct GCPlanner {
    let catalogue: any GCPlanQueries
    let committer: Committer
    let layout: StoreLayout
    let reader: ChunkReader
    let contexts: ZstdContextPool

    /// The retention decision for every run (or one), without side effects, with the run and step of
    /// every checkpoint considered.
    func retentionPlans(run: String?, policyOverride: RetentionPolicy? = nil) throws -> (plans: [GCPlan.RunRetention], steps: [CheckpointID: (run: String, step: Int64)]) {
        var steps = [CheckpointID: (run: String, step: Int64)]()
        let plans = try catalogue.retentionInputs(run: run).map { name, effective, summaries in
            let policy = policyOverride ?? effective
            let candidates = summaries.map { summary in
                steps[summary.id] = (name, summary.step)
                return RetentionPlanner.Candidate(summary)
            }
            return GCPlan.RunRetention(run: name, plan: RetentionPlanner.plan(policy, candidates), policy: policy)
        }
        return (plans, steps)
    }

    /// Decides everything a gc with `options` does, changing nothing: the plan `gc --dry-run` prints,
    /// `audit --what-if` reports and ``GCExecutor`` runs.
    func plan(_ options: GCOptions) throws -> GCPlan {
        try catalogue.requireRun(options.run)
        try checkNoCommittedCheckpointIsMissing()
        var (plans, steps) = try retentionPlans(run: options.run, policyOverride: options.policyOverride)
        var deleted = plans.flatMap(\.plan.deleted)
        if let removing = options.removing {
            plans = []
            deleted = removing
        }
        var drops = try partDrops(plans)
        var repackThreshold = options.repackThreshold
        var budgetOutcome: GCReport.BudgetOutcome?
        if let budget = options.budget {
            budgetOutcome = try planBudget(budget, plans: plans, deleted: deleted, drops: drops)
            deleted += budgetOutcome?.deletedForBudget.map(\.id) ?? []
            repackThreshold = 0
        }
        let deletedSet = Set(deleted)
        drops = drops.filter { !deletedSet.contains($0.key) }
        // Pending checkpoints too old to complete go with their shards (a rank died before its put).
        let now = Date().timeIntervalSince1970
        let stale = options.removing != nil ? [] : PendingCheckpoint.grouping(try catalogue.pendingShards(run: options.run))
            .filter { now - $0.createdAt >= options.pendingAge }
        let kept = plans.flatMap { retention in
            retention.plan.kept.filter { !deletedSet.contains($0.key) }.map { id, reasons in
                GCReport.Kept(id: id, run: retention.run, step: steps[id]?.step ?? -1, reasons: reasons.map(\.description), dropped: drops[id]?.names ?? [])
            }
        }.sorted { ($0.run, $0.step) < ($1.run, $1.step) }

        // The sweep as it would run, in one transaction rolled back: the live set is computed where the
        // dead would be deleted, so what a put committed before is seen.
        let sweep = try catalogue.sweepView(deleting: deleted + stale.flatMap(\.shardIDs), drops: drops)
        let reencodes = try planReencodes(sweep)
        let final = sweep.afterReencoding(reencodes)

        var packsToDelete = [Catalogue.PackRow]()
        var packsToRewrite = [GCPlan.Repack]()
        for pack in sweep.outcome.packs {
            guard let frames = final.live[pack.id], frames.count > 0 else {
                packsToDelete.append(pack)
                continue
            }
            let rewritten = PackFormat.packSize(frames: frames.count, frameBytes: frames.bytes)
            if Double(pack.size - rewritten) / Double(max(pack.size, 1)) > repackThreshold {
                packsToRewrite.append(GCPlan.Repack(pack: pack, liveFrames: frames.count, newSize: rewritten))
            }
        }
        let orphans = options.removing != nil ? [] : try PackDirectory(layout: layout).orphans(olderThan: options.orphanGrace, known: Set(sweep.outcome.packs.map(\.id)))
        return GCPlan(
            kept: kept,
            deleted: deleted.map { GCReport.Deleted(id: $0, run: steps[$0]?.run ?? "", step: steps[$0]?.step ?? -1) },
            stalePending: stale,
            drops: drops, budget: budgetOutcome, reencodes: reencodes,
            packsToDelete: packsToDelete, packsToRewrite: packsToRewrite, orphans: orphans, orphanGrace: options.orphanGrace,
            chunksFreed: final.deadChunks, bytesUnreferenced: final.deadBytes
        )
    }

    /// Refuses to plan when a commit record names a checkpoint the catalogue does not list: its packs would
    /// look like orphans and its chunks like dead ones, and gc must never delete what a committed checkpoint
    /// needs (I-9). `repair` brings such checkpoints back. The check is the committer's, ordered with
    /// every commit: a put committing beside this gc is never taken for a lost checkpoint.
    private func checkNoCommittedCheckpointIsMissing() throws {
        try committer.requireEveryCommitListed(doing: "nothing was deleted")
    }

    /// Part rules: which files, and which tensors of the remaining safetensors files, each slimmed
    /// checkpoint loses (what an earlier gc dropped already is left out).
    private func partDrops(_ plans: [GCPlan.RunRetention]) throws -> [CheckpointID: GCPlan.PartDrop] {
        var drops = [CheckpointID: GCPlan.PartDrop]()
        for retention in plans {
            for id in retention.plan.slimmed {
                let manifest = try reader.manifest(of: id)
                let (already, alreadyTensors) = try catalogue.droppedParts(of: id)
                let globs = retention.policy.optimizerGlobs
                let files = manifest.files.map(\.path).filter { path in
                    already[path] == nil && globs.contains { fnmatch($0, path, 0) == 0 }
                }
                var tensors = [String: [String]]()
                for file in manifest.files where file.format == .safetensors && !files.contains(file.path) && already[file.path] == nil {
                    let names = (file.tensors ?? []).map(\.name).filter { name in
                        alreadyTensors[file.path]?.contains(name) != true && globs.contains { fnmatch($0, name, 0) == 0 }
                    }
                    if !names.isEmpty { tensors[file.path] = names }
                }
                if !files.isEmpty || !tensors.isEmpty {
                    drops[id] = GCPlan.PartDrop(manifest: manifest, part: .optimizer, files: files, tensors: tensors)
                }
            }
        }
        return drops
    }

    /// Re-encoding is not worth a new pack, and the dead frames it leaves until repacking, unless it frees
    /// at least this much in all.
    static let minimumRebaseSaving: Int64 = 1 << 20

    /// The live delta frames to store again in full: those whose bases no checkpoint names any more (their
    /// checkpoints are being deleted) and that alone keep those bases alive, when the bases take more than
    /// the full frame adds.
    ///
    /// Without this a chain's dead keyframe stays as long as any later delta needs it (I-4): with
    /// `keep_last 3` and chains of 4, the store would keep deleted checkpoints' full frames forever. Each
    /// candidate is read and encoded to learn its full size; the executor encodes it again the same way.
    private func planReencodes(_ sweep: SweepView) throws -> [GCPlan.Reencode] {
        var dependents = [ChunkDigest: Int]()
        for delta in sweep.deltas.values { dependents[delta.base, default: 0] += 1 }
        let codec = FrameCodec(level: try catalogue.settings().compressionLevel, contexts: contexts)
        var planned = [GCPlan.Reencode]()
        var saved: Int64 = 0
        for (digest, delta) in sweep.deltas.sorted(by: { $0.key < $1.key }) where sweep.direct.contains(digest) && !sweep.direct.contains(delta.base) {
            // The bases only this chain keeps: up the chain while a base is not named by a checkpoint and
            // has no other dependent.
            var pinned: Int64 = 0
            var base: ChunkDigest? = delta.base
            while let current = base, !sweep.direct.contains(current), dependents[current] == 1, let frame = sweep.frames[current] {
                pinned += frame.frameBytes
                base = sweep.deltas[current]?.base
            }
            guard pinned > 0, let location = sweep.frames[digest] else { continue }
            guard let full = try Self.fullFrame(of: location, reader: reader, codec: codec) else { continue }
            let growth = Int64(full.payload.count) - Int64(location.storedLength)
            guard growth < pinned else { continue }
            planned.append(GCPlan.Reencode(digest: digest, base: delta.base, encoding: full.encoding, storedLength: full.payload.count))
            saved += pinned - growth
        }
        return saved >= Self.minimumRebaseSaving ? planned : []
    }

    /// The frame a delta chunk gets when stored in full: byte planes, or raw unless planes save what any
    /// frame must (``FrameCodec/minimumSaving``), as a put decides. Nil for a chunk that is not byte planes.
    static func fullFrame(of location: ChunkLocation, reader: ChunkReader, codec: FrameCodec) throws -> EncodedChunk? {
        // The element width is the first byte of a byte-plane payload; read it before decoding anything
        // (unchecked: the read below checks the whole frame).
        let (_, payload) = try reader.packs.reader(for: location.pack).readFrame(at: location.offset, storedLength: location.storedLength, expected: location.digest, checkChecksum: false)
        guard let width = payload.withUnsafeBytes({ $0.first.map(Int.init) }), ByteGrouping.widths.contains(width) else { return nil }
        let bytes = try reader.read(at: location, what: "re-encoding chunk \(location.digest)")
        let (full, _) = try bytes.withUnsafeBytes { try codec.encodePlanes($0, base: nil, width: width, tryCompressing: Array(repeating: true, count: width)) }
        return Double(full.count) <= Double(bytes.count) * (1 - FrameCodec.minimumSaving)
            ? EncodedChunk(digest: location.digest, encoding: .planes, rawLength: bytes.count, payload: full)
            : EncodedChunk(digest: location.digest, encoding: .raw, rawLength: bytes.count, payload: bytes.array)
    }
}

/// What the sweep of a planned gc sees, read in one transaction: its outcome, every live delta frame,
/// which chunks checkpoints name directly, and where the frames of the deltas and their bases are.
struct SweepView: Sendable {
    var outcome: Catalogue.SweepOutcome
    /// Live delta frames by digest.
    var deltas: [ChunkDigest: Catalogue.LiveDelta]
    /// Of the deltas and their bases, those a remaining checkpoint names itself.
    var direct: Set<ChunkDigest>
    /// Where the deltas and their bases are.
    var frames: [ChunkDigest: ChunkLocation]

    /// Runs the sweep that deleting `deleting` and dropping `drops` amounts to, inside the caller's
    /// transaction, and reads what planning needs of it.
    init(_ catalogue: Catalogue, deleting: [CheckpointID], drops: [CheckpointID: GCPlan.PartDrop]) throws {
        try catalogue.prepareSweep(deleting: deleting)
        for (id, drop) in drops {
            try catalogue.drop(drop.files, tensors: drop.tensors, part: drop.part, from: id, manifest: drop.manifest, sweep: true)
        }
        outcome = try catalogue.sweep()
        deltas = [:]
        for delta in try catalogue.liveDeltas() { deltas[delta.digest] = delta }
        direct = []
        frames = [:]
        // What live predicted frames decode from stays: to re-encoding it is as good as named directly.
        let pinned = try catalogue.livePredictionSources()
        for digest in Set(deltas.keys).union(deltas.values.map(\.base)) {
            if try pinned.contains(digest) || catalogue.isDirectlyReferenced(digest) { direct.insert(digest) }
            if let location = try catalogue.location(of: digest) { frames[digest] = location }
        }
    }

    /// What is live and dead once `reencodes` are stored in full: their old frames leave their packs, and
    /// the bases nothing reaches any more die.
    func afterReencoding(_ reencodes: [GCPlan.Reencode]) -> (live: [PackID: (count: Int, bytes: Int64)], deadChunks: Int, deadBytes: Int64) {
        var live = outcome.live
        var deadChunks = outcome.deadChunks, deadBytes = outcome.deadBytes
        func leave(_ location: ChunkLocation) {
            guard var frames = live[location.pack] else { return }
            frames.count -= 1
            frames.bytes -= location.frameBytes
            live[location.pack] = frames
        }
        let rebased = Set(reencodes.map(\.digest))
        for digest in rebased { if let location = frames[digest] { leave(location) } }
        // Reachability among the bases: a base stays live when a checkpoint names it or a live delta
        // still encodes against it.
        var reached = direct
        var changed = true
        while changed {
            changed = false
            for (digest, delta) in deltas where !rebased.contains(digest) && reached.contains(digest) && !reached.contains(delta.base) {
                reached.insert(delta.base)
                changed = true
            }
        }
        let bases = Set(deltas.values.map(\.base))
        for base in bases where !reached.contains(base) {
            guard let location = frames[base] else { continue }
            leave(location)
            deadChunks += 1
            deadBytes += location.frameBytes
        }
        return (live, deadChunks, deadBytes)
    }
}
