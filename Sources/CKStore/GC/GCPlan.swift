/// Everything one gc does, decided before anything changes: which checkpoints go, which parts are
/// dropped, which delta frames are stored again in full, which packs are deleted or rewritten, which
/// orphan files are removed, and the bytes each frees.
///
/// `gc --dry-run` prints this value; `gc` hands it to ``GCExecutor``, which does exactly this, so that a
/// dry run is never a simulation beside the real path (restic's `PlanPrune` / `Execute` split).
struct GCPlan: Sendable {
    /// The retention decision for one run.
    struct RunRetention: Sendable {
        var run: String
        var plan: RetentionPlanner.Plan
        var policy: RetentionPolicy
    }

    /// What a part rule takes from one kept checkpoint: whole files, and tensors of safetensors files.
    struct PartDrop: Sendable {
        var manifest: Manifest
        var part: CheckpointPart
        var files: [String]
        var tensors: [String: [String]]

        /// `model.safetensors:opt.w`-style names of everything dropped, for reports.
        var names: [String] {
            files + tensors.sorted { $0.key < $1.key }.flatMap { path, names in names.map { "\(path):\($0)" } }
        }
    }

    /// A live delta frame whose bases only it keeps alive, stored again in full so that they can go.
    struct Reencode: Sendable, Equatable {
        var digest: ChunkDigest
        var base: ChunkDigest
        /// Its encoding and payload length once stored in full.
        var encoding: FrameEncoding
        var storedLength: Int
    }

    /// A pack rewritten with its live frames only.
    struct Repack: Sendable {
        var pack: Catalogue.PackRow
        var liveFrames: Int
        /// The rewritten pack's size.
        var newSize: Int64
    }

    var kept: [GCReport.Kept]
    var deleted: [GCReport.Deleted]
    /// Pending checkpoints older than the pending age, removed with their shards.
    var stalePending: [PendingCheckpoint] = []
    var drops: [CheckpointID: PartDrop]
    var budget: GCReport.BudgetOutcome?
    var reencodes: [Reencode]
    var packsToDelete: [Catalogue.PackRow]
    var packsToRewrite: [Repack]
    var orphans: [PackDirectory.Orphan]
    /// The grace the orphans were found with; the executor removes only files still that old.
    var orphanGrace: Double
    /// Chunk rows the sweeps remove (after the re-encoding, the bases it frees too).
    var chunksFreed: Int
    /// Their frame bytes, headers included, wherever they are (some stay in packs below the threshold).
    var bytesUnreferenced: Int64

    /// The size of the pack that the re-encoded frames are written to (0 when there are none).
    var reencodedPackSize: Int64 {
        reencodes.isEmpty ? 0 : PackFormat.packSize(frames: reencodes.count, frameBytes: reencodes.reduce(0) { $0 + Int64(PackFormat.frameHeaderSize + $1.storedLength) })
    }

    /// How much smaller the packs and orphan files are on disk afterwards: deleted packs, the dead share
    /// of rewritten packs and orphans, less the pack of re-encoded frames. (The small annotation pack
    /// that records the deletions, and the catalogue's own size, are not counted.)
    var bytesFreed: Int64 {
        packsToDelete.reduce(0) { $0 + $1.size }
            + packsToRewrite.reduce(0) { $0 + $1.pack.size - $1.newSize }
            + orphans.reduce(0) { $0 + $1.size }
            - reencodedPackSize
    }

    /// The report of this plan, as a dry run prints it and as a gc that did exactly this reports it.
    func report(dryRun: Bool) -> GCReport {
        GCReport(
            dryRun: dryRun, kept: kept, deleted: deleted.map(\.id), deletedCheckpoints: deleted,
            bytesFreed: bytesFreed, bytesUnreferenced: bytesUnreferenced, chunksFreed: chunksFreed,
            packsDeleted: packsToDelete.count, packsRewritten: packsToRewrite.count, orphansRemoved: orphans.count,
            chunksReencoded: reencodes.count, budget: budget, pendingRemoved: stalePending
        )
    }
}
