import Foundation

/// Carries out a ``GCPlan``: records the deletions and dropped parts and sweeps, stores the planned delta
/// frames in full and sweeps the bases they freed, rewrites the planned packs, and deletes packs and
/// orphans under the store's exclusive lock.
///
/// The sweeps are computed again inside their own transactions, so a put that committed after planning
/// keeps what it reused (I-8); with nothing running beside it, the report equals the plan's.
///
/// Its seams: the catalogue's ``GCExecuteQueries``, the store's ``Committer`` (which withdraws the deleted
/// checkpoints' records with the first sweep), the store's layout (packs and lock), the annotation log
/// that records deletions in packs before the catalogue, a ``ChunkReader`` (frames to store in full) and
/// the zstd contexts to encode with.
struct GCExecutor {
    let catalogue: any GCExecuteQueries
    let committer: Committer
    let layout: StoreLayout
    let annotations: AnnotationLog
    let reader: ChunkReader
    let contexts: ZstdContextPool
    /// Told how many bytes of packs have been rewritten.
    var progress: ProgressHandler? = nil

    /// Executes `plan`; returns what was done, counted as it was done.
    func execute(_ plan: GCPlan) throws -> GCReport {
        var report = plan.report(dryRun: false)
        let annotations: [Annotation] = plan.deleted.map { .remove($0.id) } + plan.drops.sorted { $0.key < $1.key }.map {
            .drop($0.key, paths: $0.value.files, part: $0.value.part.rawValue, tensors: $0.value.tensors)
        }
        // Records go first, under the commit lock with the catalogue's deletion (``Committer/withdraw``).
        // Stale pending checkpoints' shard records go with them, and so do the records of shards whose
        // checkpoint is committed (a combine that stopped before retiring them).
        try committer.retireCombinedShardRecords()
        let first = try committer.withdraw(plan.deleted.map { (id: $0.id, run: $0.run, step: $0.step) },
                                           pendingSteps: plan.stalePending.map { (run: $0.run, step: $0.step) }) {
            try self.annotations.commit(annotations) { catalogue -> Catalogue.SweepOutcome in
                try catalogue.prepareSweep(deleting: plan.deleted.map(\.id) + plan.stalePending.flatMap(\.shardIDs))
                for (id, drop) in plan.drops {
                    try catalogue.drop(drop.files, tensors: drop.tensors, part: drop.part, from: id, manifest: drop.manifest, sweep: true)
                }
                return try catalogue.sweep()
            }
        }
        report.chunksFreed = first.deadChunks
        report.bytesUnreferenced = first.deadBytes
        var freed: Int64 = 0

        // Delta frames stored in full, then a second sweep lets their bases go.
        let (reencoded, reencodedPack) = try reencode(plan.reencodes)
        report.chunksReencoded = reencoded
        if let reencodedPack {
            freed -= reencodedPack
            let second = try catalogue.sweepAgain()
            report.chunksFreed += second.deadChunks
            report.bytesUnreferenced += second.deadBytes
        }

        // Rewrite mostly-dead packs: copy live frames out, then point the catalogue at the copies.
        var retired = plan.packsToDelete.map(\.id)
        report.packsRewritten = 0
        let meter = ProgressMeter("gc", total: plan.packsToRewrite.reduce(0) { $0 + $1.pack.size }, handler: progress)
        for repack in plan.packsToRewrite {
            let frames = try catalogue.chunkLocations(inPack: repack.pack.id)
            let sink = PackSink(layout: layout, targetSize: .max)
            let copier = FrameCopier(packs: PackReaderCache(layout: layout), sink: sink)
            let moved = try frames.map { ($0.digest, try copier.copy($0)) }
            let sealed = try sink.seal()
            try catalogue.recordRewrite(of: repack.pack.id, sealed: sealed, moved: moved)
            freed += repack.pack.size - sealed.reduce(0) { $0 + $1.size }
            retired.append(repack.pack.id)
            report.packsRewritten += 1
            meter.add(repack.pack.size)
        }

        // Files go only under the exclusive lock: no put or get is running then. What is known must be
        // read under the lock too: a put that committed while gc waited for it owns packs that an
        // earlier reading would take for orphans.
        let lock = try StoreLock(path: layout.lockPath, mode: .exclusive)
        defer { withExtendedLifetime(lock) {} }
        // Retire packs that hold no live frame: their rows first (one transaction), files after.
        let gone = try catalogue.retirePacks(retired)
        let planned = Set(plan.packsToDelete.map(\.id))
        report.packsDeleted = 0
        for id in gone {
            let path = layout.packPath(id)
            let size = FileSystem.size(of: path)
            try FileSystem.removeFile(path)
            if planned.contains(id) {
                freed += size
                report.packsDeleted += 1
            }
        }
        let stillKnown = Set(try catalogue.packRows().map(\.id))
        let orphans = Set(try PackDirectory(layout: layout).orphans(olderThan: plan.orphanGrace, known: stillKnown).map(\.path))
        report.orphansRemoved = 0
        for orphan in plan.orphans where orphans.contains(orphan.path) {
            let size = FileSystem.size(of: orphan.path)
            try FileSystem.removeFile(orphan.path)
            freed += size
            report.orphansRemoved += 1
        }
        report.bytesFreed = freed
        // The removals are not fsynced: a removal a crash undoes leaves an orphan the next gc removes.
        // Fold the sweep's log into the catalogue file so the store's size on disk reflects it now.
        try catalogue.truncateLog()
        // Space was freed: keep the full-disk reserve again if it was given back.
        try? CheckpointStore.makeReserve(layout)
        return report
    }

    /// Stores the planned delta frames in full in a new pack and points the catalogue at them; returns
    /// how many were and the new pack's size (nil when none were).
    private func reencode(_ planned: [GCPlan.Reencode]) throws -> (Int, Int64?) {
        guard !planned.isEmpty else { return (0, nil) }
        let codec = FrameCodec(level: try catalogue.settings().compressionLevel, contexts: contexts)
        let sink = PackSink(layout: layout, targetSize: .max)
        var moved = [(digest: ChunkDigest, base: ChunkDigest, location: ChunkLocation)]()
        for frame in planned {
            // A frame that changed since planning (another gc) is left as it is.
            guard let location = try catalogue.location(of: frame.digest), location.encoding.hasBase,
                  let full = try GCPlanner.fullFrame(of: location, reader: reader, codec: codec) else { continue }
            moved.append((frame.digest, frame.base, try sink.append(full, kind: .chunk)))
        }
        let sealed = try sink.seal()
        guard !sealed.isEmpty else { return (0, nil) }
        let count = try catalogue.recordReencoded(sealed: sealed, moved: moved)
        return (count, sealed.reduce(0) { $0 + $1.size })
    }
}
