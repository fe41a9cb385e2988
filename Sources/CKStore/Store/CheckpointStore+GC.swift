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

        enum CodingKeys: String, CodingKey {
            case budgetBytes = "budget_bytes"
            case diskBytesBefore = "disk_bytes_before"
            case diskBytesAfter = "disk_bytes_after"
            case deletedForBudget = "deleted_for_budget"
        }
    }

    enum CodingKeys: String, CodingKey {
        case kept, deleted, budget
        case dryRun = "dry_run"
        case deletedCheckpoints = "deleted_checkpoints"
        case bytesFreed = "bytes_freed"
        case bytesUnreferenced = "bytes_unreferenced"
        case chunksFreed = "chunks_freed"
        case packsDeleted = "packs_deleted"
        case packsRewritten = "packs_rewritten"
        case orphansRemoved = "orphans_removed"
        case chunksReencoded = "chunks_reencoded"
    }
}

extension CheckpointStore {
    /// Applies the retention policies and sweeps what nothing needs any more.
    ///
    /// Deleting checkpoints and unreferenced chunks happens in one short write transaction; a concurrent
    /// put that reused a swept chunk notices in its own commit and writes the chunk again (I-8). Pack
    /// files are deleted only under the store's exclusive lock, after that commit, so no put or get that
    /// is still running loses a pack it uses.
    ///
    /// ```swift
    /// let report = try await store.gc(GCOptions(dryRun: true))
    /// print(report.deleted.count, report.bytesFreed)
    /// ```
    public func gc(_ options: GCOptions = GCOptions()) async throws -> GCReport {
        do {
            return try gcChecked(options)
        } catch let error as CKStoreError {
            throw error
        } catch {
            throw CKStoreError.wrap(error)
        }
    }

    /// Throws `notFound` when `run` is given and the store has no such run.
    func requireRun(_ run: String?) throws {
        if let run, try withCatalogue({ try $0.runID(named: run) }) == nil {
            throw CKStoreError(.notFound, "no run \(run) in the store")
        }
    }

    /// The retention decision for every run (or one), without side effects, with the run and step of
    /// every checkpoint considered.
    func retentionPlans(run: String?, policyOverride: RetentionPolicy? = nil) throws -> (plans: [(run: String, plan: RetentionPlanner.Plan, policy: RetentionPolicy)], steps: [CheckpointID: (run: String, step: Int64)]) {
        try withCatalogue { catalogue in
            var steps = [CheckpointID: (run: String, step: Int64)]()
            let runs = try run.map { [$0] } ?? catalogue.runNames()
            let plans = try runs.map { name in
                let policy = try policyOverride ?? catalogue.effectivePolicy(run: name).0
                let candidates = try catalogue.summaries(where: "r.name = ?", [.text(name)]).map { summary in
                    steps[summary.id] = (name, summary.step)
                    return RetentionPlanner.Candidate(summary)
                }
                return (name, RetentionPlanner.plan(policy, candidates), policy)
            }
            return (plans, steps)
        }
    }

    /// What a part rule takes from one kept checkpoint: whole files, and tensors of safetensors files.
    private struct PartDrop {
        var manifest: Manifest
        var files: [String]
        var tensors: [String: [String]]

        /// `model.safetensors:opt.w`-style names of everything dropped, for reports.
        var names: [String] {
            files + tensors.sorted { $0.key < $1.key }.flatMap { path, names in names.map { "\(path):\($0)" } }
        }
    }

    func gcChecked(_ options: GCOptions) throws -> GCReport {
        try requireRun(options.run)
        let (plans, steps) = try retentionPlans(run: options.run, policyOverride: options.policyOverride)

        // Part rules: which files, and which tensors of the remaining safetensors files, each slimmed
        // checkpoint loses (what an earlier gc dropped already is left out).
        var drops = [CheckpointID: PartDrop]()
        for (_, plan, policy) in plans {
            for id in plan.slimmed {
                let manifest = try manifest(of: id)
                let (already, alreadyTensors) = try withCatalogue { (try $0.droppedFiles(of: id), try $0.droppedTensors(of: id)) }
                let globs = policy.optimizerGlobs
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
                if !files.isEmpty || !tensors.isEmpty { drops[id] = PartDrop(manifest: manifest, files: files, tensors: tensors) }
            }
        }
        var deleted = plans.flatMap(\.plan.deleted)
        var options = options
        var budgetOutcome: GCReport.BudgetOutcome?
        if let budget = options.budget {
            budgetOutcome = try planBudget(budget, plans: plans, deleted: deleted, drops: drops)
            deleted += budgetOutcome?.deletedForBudget.map(\.id) ?? []
            options.repackThreshold = 0
        }
        let deletedSet = Set(deleted)
        drops = drops.filter { !deletedSet.contains($0.key) }
        var report = GCReport(
            dryRun: options.dryRun,
            kept: plans.flatMap { run, plan, _ in
                plan.kept.filter { !deletedSet.contains($0.key) }.map { id, reasons in
                    GCReport.Kept(id: id, run: run, step: steps[id]?.step ?? -1, reasons: reasons, dropped: drops[id]?.names ?? [])
                }
            }.sorted { ($0.run, $0.step) < ($1.run, $1.step) },
            deleted: deleted,
            deletedCheckpoints: deleted.map { GCReport.Deleted(id: $0, run: steps[$0]?.run ?? "", step: steps[$0]?.step ?? -1) },
            bytesFreed: 0, bytesUnreferenced: 0, chunksFreed: 0, packsDeleted: 0, packsRewritten: 0, orphansRemoved: 0,
            budget: budgetOutcome
        )

        // Decide (and unless dry-run, commit) in one transaction: the live set is computed where the dead
        // are deleted, so a put that committed meanwhile is seen. Set-wise SQL over a temporary table:
        // a sweep of a million chunks is a few statements, not a million.
        let annotations: [Annotation] = options.dryRun ? [] : deleted.map { .remove($0) } + drops.sorted { $0.key < $1.key }.map {
            .drop($0.key, paths: $0.value.files, part: "optimizer", tensors: $0.value.tensors)
        }
        let outcome: Catalogue.SweepOutcome
        do {
            outcome = try commitAnnotated(annotations) { catalogue -> Catalogue.SweepOutcome in
                try catalogue.prepareSweep(deleting: deleted)
                for (id, drop) in drops {
                    try catalogue.drop(drop.files, tensors: drop.tensors, part: "optimizer", from: id, manifest: drop.manifest, dryRun: options.dryRun, sweep: true)
                }
                let outcome = try catalogue.sweep(dryRun: options.dryRun)
                if options.dryRun { throw DryRun(value: outcome) }
                return outcome
            }
        } catch let dryRun as DryRun {
            outcome = dryRun.value
        }
        guard !options.dryRun else { return try finishSweep(options, report: &report, outcome: outcome) }
        // Delta frames whose bases only they keep alive now: re-encode them in full when that frees more
        // than it costs, and sweep again to let the bases go.
        let rebased = try rebaseOrphanedDeltas()
        report.chunksReencoded = rebased.chunks
        guard rebased.chunks > 0 else { return try finishSweep(options, report: &report, outcome: outcome) }
        var second = try withCatalogue { catalogue in
            try catalogue.database.transaction { () throws -> Catalogue.SweepOutcome in
                try catalogue.prepareSweep(deleting: [])
                return try catalogue.sweep(dryRun: false)
            }
        }
        second.deadChunks += outcome.deadChunks
        second.deadBytes += outcome.deadBytes
        return try finishSweep(options, report: &report, outcome: second)
    }

    /// The checkpoints `gc --budget` deletes beyond the policies, oldest first, so that packs and catalogue
    /// fit in `budget` once the sweep has rewritten every pack with a dead frame.
    ///
    /// - Throws: ``CKStoreError/Code/overBudget`` when even deleting every unprotected checkpoint is not
    ///   enough; nothing is deleted then.
    private func planBudget(_ budget: Int64, plans: [(run: String, plan: RetentionPlanner.Plan, policy: RetentionPolicy)], deleted: [CheckpointID], drops: [CheckpointID: PartDrop]) throws -> GCReport.BudgetOutcome {
        let (usage, remaining) = try withCatalogue { catalogue -> (StoreUsage, [CheckpointID: [ChunkDigest]]) in
            var remaining = [CheckpointID: [ChunkDigest]]()
            for (id, drop) in drops {
                let paths = Set(try catalogue.droppedFiles(of: id).keys).union(drop.files)
                var tensors = try catalogue.droppedTensors(of: id)
                for (path, names) in drop.tensors { tensors[path, default: []].formUnion(names) }
                remaining[id] = Array(Catalogue.remainingUses(of: id, manifest: drop.manifest, droppedPaths: paths, droppedTensors: tensors).keys)
            }
            return (try StoreUsage.load(catalogue, layout: layout, packs: true), remaining)
        }
        let index = Dictionary(usage.checkpoints.enumerated().map { ($1.summary.id, $0) }, uniquingKeysWith: { first, _ in first })
        var slimmed = [Int: [Int32]]()
        for (id, digests) in remaining { if let checkpoint = index[id] { slimmed[checkpoint] = digests.compactMap { usage.number(of: $0) } } }
        var simulation = UsageSimulation(usage, deleted: Set(deleted.compactMap { index[$0] }), remaining: slimmed)

        // Unprotected: kept only because the run has no policy. Oldest first.
        let candidates = plans.flatMap { $0.plan.kept.filter { $0.value == ["no policy"] }.keys }
            .compactMap { index[$0] }
            .sorted { (usage.checkpoints[$0].summary.createdAt, usage.checkpoints[$0].summary.step) < (usage.checkpoints[$1].summary.createdAt, usage.checkpoints[$1].summary.step) }
        let before = usage.catalogueBytes + usage.packBytes
        // The annotation pack recording the deletions is written before the sweep.
        func projected() -> Int64 {
            usage.catalogueBytes + simulation.packBytes + Int64(PackFormat.headerSize + PackFormat.footerSize) + Int64(simulation.deleted.count + drops.count) * 512
        }
        var extra = [Int]()
        for candidate in candidates where projected() > budget {
            simulation.delete(candidate)
            extra.append(candidate)
        }
        let after = projected()
        guard after <= budget else {
            throw CKStoreError(
                .overBudget,
                "the store cannot fit in \(ByteCount(budget)): with every checkpoint deleted that no rule protects (the newest of each run, pinned ones, those a policy keeps) it would still take \(ByteCount(after)), \(ByteCount(after - budget)) over; nothing was deleted"
            )
        }
        return GCReport.BudgetOutcome(
            budgetBytes: budget, diskBytesBefore: before, diskBytesAfter: after,
            deletedForBudget: extra.map { GCReport.Deleted(id: usage.checkpoints[$0].summary.id, run: usage.checkpoints[$0].summary.run, step: usage.checkpoints[$0].summary.step) }
        )
    }

    /// Thrown out of the transaction to roll a dry run back while keeping what it computed.
    private struct DryRun: Error {
        var value: Catalogue.SweepOutcome
    }

    private func finishSweep(_ options: GCOptions, report: inout GCReport, outcome: Catalogue.SweepOutcome) throws -> GCReport {
        let live = outcome.live, packs = outcome.packs
        report.chunksFreed = outcome.deadChunks
        report.bytesUnreferenced = outcome.deadBytes
        var toDelete = [Catalogue.PackRow]()
        var toRewrite = [Catalogue.PackRow]()
        for pack in packs {
            guard let frames = live[pack.id] else {
                toDelete.append(pack)
                continue
            }
            let rewritten = Self.packSize(frames: frames.count, frameBytes: frames.bytes)
            if Double(pack.size - rewritten) / Double(max(pack.size, 1)) > options.repackThreshold {
                toRewrite.append(pack)
            }
        }
        var freed = toDelete.reduce(Int64(0)) { $0 + $1.size }
        for pack in toRewrite {
            if let frames = live[pack.id] { freed += pack.size - Self.packSize(frames: frames.count, frameBytes: frames.bytes) }
        }
        let orphans = try orphanFiles(olderThan: options.orphanGrace, known: Set(packs.map(\.id)))
        freed += orphans.reduce(Int64(0)) { $0 + $1.size }
        report.bytesFreed = freed
        report.packsDeleted = toDelete.count
        report.packsRewritten = toRewrite.count
        report.orphansRemoved = orphans.count
        if options.dryRun { return report }

        // Rewrite mostly-dead packs: copy live frames out, then point the catalogue at the copies.
        var retired = toDelete.map(\.id)
        // One scan finds the live frames of every pack being rewritten (there is no index by pack).
        let rewriting = Set(toRewrite.map(\.id))
        var framesByPack = [PackID: [Catalogue.ChunkLocation]]()
        if !rewriting.isEmpty {
            for location in try withCatalogue({ try $0.chunkLocations() }) where rewriting.contains(location.pack) {
                framesByPack[location.pack, default: []].append(location)
            }
        }
        for pack in toRewrite {
            let frames = (framesByPack[pack.id] ?? []).sorted { $0.offset < $1.offset }
            let reader = try PackReader(id: pack.id, path: layout.packPath(pack.id))
            let writer = try PackWriter(layout: layout)
            var moved = [(ChunkDigest, Int64)]()
            for frame in frames {
                let (header, payload) = try reader.readFrame(at: frame.offset, storedLength: frame.storedLength, expected: frame.digest)
                let written = try writer.append(EncodedChunk(digest: header.digest, encoding: header.encoding, rawLength: header.rawLength, payload: payload.array, base: header.base), kind: header.kind)
                moved.append((frame.digest, written.offset))
            }
            let sealed = try writer.seal()
            try withCatalogue { catalogue in
                try catalogue.database.transaction {
                    try catalogue.statement("INSERT INTO packs (id, size, frame_count, created_at) VALUES (?, ?, ?, ?)")
                        .run([.text(sealed.id.hex), .integer(sealed.size), .integer(Int64(sealed.frames.count)), .real(Date().timeIntervalSince1970)])
                    let move = try catalogue.statement("UPDATE chunks SET pack_id = ?, offset = ? WHERE digest = ? AND pack_id = ?")
                    for (digest, offset) in moved { try move.run([.text(sealed.id.hex), .integer(offset), .blob(digest.bytes), .text(pack.id.hex)]) }
                }
            }
            retired.append(pack.id)
        }
        // Files go only under the exclusive lock: no put or get is running then. What is known must be
        // read under the lock too: a put that committed while gc waited for it owns packs that an
        // earlier reading would take for orphans.
        let lock = try StoreLock(path: layout.lockPath, mode: .exclusive)
        defer { withExtendedLifetime(lock) {} }
        // Retire packs that hold no live frame: their rows first (one transaction), files after.
        try withCatalogue { catalogue in
            try catalogue.database.transaction {
                let used = Set(try catalogue.statement("SELECT DISTINCT pack_id FROM chunks").rows([]) { $0.text(0) })
                let delete = try catalogue.statement("DELETE FROM packs WHERE id = ?")
                for id in retired where !used.contains(id.hex) {
                    try delete.run([.text(id.hex)])
                }
            }
        }
        let stillKnown = Set(try withCatalogue { try $0.packRows() }.map(\.id))
        for id in retired where !stillKnown.contains(id) {
            try FileSystem.removeFile(layout.packPath(id))
        }
        for orphan in try orphanFiles(olderThan: options.orphanGrace, known: stillKnown) {
            try FileSystem.removeFile(orphan.path)
        }
        // The removals are not fsynced: a removal a crash undoes leaves an orphan the next gc removes.
        // Fold the sweep's log into the catalogue file so the store's size on disk reflects it now.
        try withCatalogue { try $0.database.execute("PRAGMA wal_checkpoint(TRUNCATE)") }
        return report
    }

    /// Pack files no catalogue row knows and temporary files, older than `grace` seconds.
    private func orphanFiles(olderThan grace: Double, known: Set<PackID>) throws -> [(path: String, size: Int64)] {
        var out = [(path: String, size: Int64)]()
        let cutoff = Date().addingTimeInterval(-grace)
        func consider(_ path: String) {
            guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
                  let modified = attributes[.modificationDate] as? Date, modified < cutoff,
                  let size = (attributes[.size] as? NSNumber)?.int64Value else { return }
            out.append((path, size))
        }
        for folder in try FileSystem.contents(of: layout.packsRoot) where FileSystem.isDirectory(layout.packsRoot + "/" + folder) {
            for name in try FileSystem.contents(of: layout.packsRoot + "/" + folder) where name.hasSuffix(".pack") {
                if let id = PackID(hex: String(name.dropLast(5))), known.contains(id) { continue }
                consider(layout.packsRoot + "/" + folder + "/" + name)
            }
        }
        if FileSystem.isDirectory(layout.temporaryRoot) {
            for name in try FileSystem.contents(of: layout.temporaryRoot) { consider(layout.temporaryRoot + "/" + name) }
        }
        return out
    }

    /// The size of a pack holding `frames` frames of `frameBytes` (headers included).
    static func packSize(frames: Int, frameBytes: Int64) -> Int64 {
        Int64(PackFormat.headerSize + PackFormat.footerSize + frames * PackFormat.trailerEntrySize) + frameBytes
    }

    /// Deletes checkpoints explicitly; pinned ones only with `force`. Their chunks stay until `gc`.
    public func remove(_ ids: [CheckpointID], force: Bool = false) throws {
        try withCatalogue { catalogue in
            for id in ids {
                guard try catalogue.summary(of: id) != nil else { throw CKStoreError(.notFound, "no checkpoint \(id.short)") }
                if try catalogue.isPinned(id) && !force {
                    throw CKStoreError(.invalidArgument, "checkpoint \(id.short) is pinned; unpin it or pass --force to remove it")
                }
            }
        }
        try commitAnnotated(ids.map { .remove($0) }) { catalogue in
            for id in ids { try catalogue.deleteCheckpoint(id) }
        }
    }

    /// Pins or unpins a checkpoint.
    public func setPinned(_ id: CheckpointID, _ pinned: Bool) throws {
        try commitAnnotated([.pin(id, pinned: pinned)]) { try $0.setPinned(id, pinned) }
    }

    /// Adds or removes a tag.
    public func setTag(_ id: CheckpointID, _ tag: String, present: Bool) throws {
        guard !tag.isEmpty else { throw CKStoreError(.invalidArgument, "a tag may not be empty") }
        try commitAnnotated([.tag(id, tag: tag, present: present)]) { try $0.setTag(id, tag, present) }
    }

    /// Stores the policy of `run`, or the store default when `run` is nil.
    public func setPolicy(_ policy: RetentionPolicy, run: String?) throws {
        if let run { try Self.validateRunName(run) }
        try commitAnnotated([.policy(scope: run ?? "*", policy: policy)]) { try $0.setPolicy(policy, scope: run ?? "*") }
    }

    /// Removes the policy of `run` (or the default); returns whether there was one.
    public func clearPolicy(run: String?) throws -> Bool {
        guard try withCatalogue({ try $0.policy(scope: run ?? "*") }) != nil else { return false }
        return try commitAnnotated([.policy(scope: run ?? "*", policy: nil)]) { try $0.clearPolicy(scope: run ?? "*") }
    }

    /// The policy that applies to `run` and where it comes from (`run`, `default`, `none`); the store
    /// default when `run` is nil.
    public func policy(run: String?) throws -> (RetentionPolicy, source: String) {
        try withCatalogue { catalogue in
            if let run { return try catalogue.effectivePolicy(run: run) }
            return (try catalogue.policy(scope: "*") ?? RetentionPolicy(), "default")
        }
    }

    /// Runs that have a policy of their own.
    public func runsWithPolicies() throws -> [String] {
        try withCatalogue { try $0.policyScopes().filter { $0 != "*" } }
    }

    /// Files a part rule dropped from a checkpoint (path → part).
    public func droppedFiles(of id: CheckpointID) throws -> [String: String] {
        try withCatalogue { try $0.droppedFiles(of: id) }
    }

    /// Whether a checkpoint is pinned.
    public func isPinned(_ id: CheckpointID) throws -> Bool {
        try withCatalogue { try $0.isPinned(id) }
    }
}
