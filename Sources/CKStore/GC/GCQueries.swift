import Foundation

/// What gc's planner asks the catalogue (issue 32): the inputs of each run's retention decision, the
/// pending shards, the sweep as it would run (in a transaction rolled back), dropped parts, the store's
/// settings, and what a budget needs. Reading only.
protocol GCPlanQueries: Sendable {
    /// Throws `notFound` unless `run` is nil or a run of the store.
    func requireRun(_ run: String?) throws
    /// Each run (or `run` alone), with its effective policy and its checkpoints, in one read.
    func retentionInputs(run: String?) throws -> [(run: String, policy: RetentionPolicy, summaries: [CheckpointSummary])]
    /// The pending shards of `run` (every run when nil).
    func pendingShards(run: String?) throws -> [PendingShard]
    /// What the sweep of deleting `deleting` and dropping `drops` would see, computed where the real one
    /// runs (a write transaction) and rolled back, so that what a put committed before is seen.
    func sweepView(deleting: [CheckpointID], drops: [CheckpointID: GCPlan.PartDrop]) throws -> SweepView
    func droppedParts(of id: CheckpointID) throws -> (files: [String: String], tensors: [String: Set<String>])
    func settings() throws -> StoreSettings
    /// The store's usage with its packs, and for each slimmed checkpoint the chunks it keeps once `drops`
    /// (and the parts it lost already) are gone: what `gc --budget` simulates on.
    func budgetInputs(drops: [CheckpointID: GCPlan.PartDrop], layout: StoreLayout) throws -> (StoreUsage, [CheckpointID: [ChunkDigest]])
}

/// What gc's executor asks and changes, each a transaction of its own besides the first sweep (which the
/// annotation log runs, after writing the deletions into a pack).
protocol GCExecuteQueries: Sendable {
    /// Sweeps again with nothing more deleted: the bases that re-encoded frames freed.
    func sweepAgain() throws -> Catalogue.SweepOutcome
    func chunkLocations(inPack pack: PackID) throws -> [ChunkLocation]
    /// Where `digest`'s frame is now.
    func location(of digest: ChunkDigest) throws -> ChunkLocation?
    /// Records the packs a rewrite sealed and points the moved frames at them.
    func recordRewrite(of pack: PackID, sealed: [SealedPack], moved: [(ChunkDigest, ChunkLocation)]) throws
    /// Records the pack of frames stored in full and moves each frame there, off its base; returns how
    /// many moved (a frame another gc changed meanwhile stays).
    func recordReencoded(sealed: [SealedPack], moved: [(digest: ChunkDigest, base: ChunkDigest, location: ChunkLocation)]) throws -> Int
    /// Forgets the rows of the packs of `retired` that hold no live frame now; returns those.
    func retirePacks(_ retired: [PackID]) throws -> [PackID]
    func packRows() throws -> [Catalogue.PackRow]
    func settings() throws -> StoreSettings
    /// Folds the write-ahead log into the catalogue file.
    func truncateLog() throws
}

extension LockedCatalogue: GCPlanQueries {
    func retentionInputs(run: String?) throws -> [(run: String, policy: RetentionPolicy, summaries: [CheckpointSummary])] {
        try with { catalogue in
            try (run.map { [$0] } ?? catalogue.runNames()).map { name in
                (name, try catalogue.effectivePolicy(run: name).0, try catalogue.summaries(run: name))
            }
        }
    }

    func pendingShards(run: String?) throws -> [PendingShard] {
        try with { try $0.pendingShards(run: run) }
    }

    func sweepView(deleting: [CheckpointID], drops: [CheckpointID: GCPlan.PartDrop]) throws -> SweepView {
        try with { catalogue in
            try catalogue.transaction(.immediate) { () throws -> TransactionCompletion<SweepView> in
                .rollback(try SweepView(catalogue, deleting: deleting, drops: drops))
            }
        }
    }

    func settings() throws -> StoreSettings {
        try with { try $0.settings() }
    }

    func budgetInputs(drops: [CheckpointID: GCPlan.PartDrop], layout: StoreLayout) throws -> (StoreUsage, [CheckpointID: [ChunkDigest]]) {
        try with { catalogue in
            var remaining = [CheckpointID: [ChunkDigest]]()
            for (id, drop) in drops {
                let paths = Set(try catalogue.droppedFiles(of: id).keys).union(drop.files)
                var tensors = try catalogue.droppedTensors(of: id)
                for (path, names) in drop.tensors { tensors[path, default: []].formUnion(names) }
                remaining[id] = Array(drop.manifest.chunkUses(id: id, droppedPaths: paths, droppedTensors: tensors).keys)
            }
            return (try StoreUsage.load(catalogue, layout: layout, packs: true), remaining)
        }
    }
}

extension LockedCatalogue: GCExecuteQueries {
    func sweepAgain() throws -> Catalogue.SweepOutcome {
        try with { catalogue in
            try catalogue.write { () throws -> Catalogue.SweepOutcome in
                try catalogue.prepareSweep(deleting: [])
                return try catalogue.sweep()
            }
        }
    }

    func chunkLocations(inPack pack: PackID) throws -> [ChunkLocation] {
        try with { try $0.chunkLocations(inPack: pack) }
    }

    func location(of digest: ChunkDigest) throws -> ChunkLocation? {
        try with { try $0.location(of: digest) }
    }

    func recordRewrite(of pack: PackID, sealed: [SealedPack], moved: [(ChunkDigest, ChunkLocation)]) throws {
        try with { catalogue in
            try catalogue.write {
                let now = Date().timeIntervalSince1970
                for new in sealed { try catalogue.insertPackRow(new.id, size: new.size, frameCount: new.frames.count, now: now) }
                for (digest, location) in moved { try catalogue.moveChunk(digest, from: pack, to: location) }
            }
        }
    }

    func recordReencoded(sealed: [SealedPack], moved: [(digest: ChunkDigest, base: ChunkDigest, location: ChunkLocation)]) throws -> Int {
        try with { catalogue in
            try catalogue.write { () throws -> Int in
                // The frames are known digests, so the insert records only the pack; the rebase moves them.
                for pack in sealed { _ = try catalogue.insert(pack: pack, now: Date().timeIntervalSince1970) }
                return try moved.filter { try catalogue.rebase($0.digest, from: $0.base, to: $0.location) }.count
            }
        }
    }

    func retirePacks(_ retired: [PackID]) throws -> [PackID] {
        try with { catalogue in
            try catalogue.write { () throws -> [PackID] in
                let used = try catalogue.packsInUse()
                let gone = retired.filter { !used.contains($0) }
                for id in gone { try catalogue.deletePackRow(id) }
                return gone
            }
        }
    }

    func truncateLog() throws {
        try with { try $0.truncateLog() }
    }
}
