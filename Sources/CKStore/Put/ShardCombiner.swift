import Foundation

/// Turns the shards of a checkpoint into the checkpoint, once all of them are committed to this store.
struct ShardCombiner {
    let seams: PutSeams

    /// Combines `run`@`step` if all `count` of its shards are pending here: writes the combined manifest
    /// (``Manifest/combining(_:)``) and commits the checkpoint through the store's ``Committer``, which
    /// retires the pending shards and their records once the checkpoint's own record is durable. Returns the checkpoint's id, or
    /// nil while shards are missing. Two processes that combine at once write the same content: one commits,
    /// the other finds it committed.
    func completeIfReady(run: String, step: Int64, count: Int) throws -> CheckpointID? {
        let pending = try seams.catalogue.pendingShards(run: run, step: step).filter { $0.shard.count == count }
        guard pending.count == count else { return nil }
        let manifests = try pending.map { try seams.reader.manifest(of: $0.id) }
        let combined = try Manifest.combining(manifests)
        let bytes = try combined.canonicalJSON()
        let id = CheckpointID(SHA256Hasher.digest(bytes))
        let content = try combined.contentDigest()
        let session = try Archiver(seams: seams, sink: PackSink(layout: seams.layout, writers: 1),
                                   options: PutOptions(run: run), settings: try seams.catalogue.settings(), parent: nil)
        try session.appendManifest(bytes, digest: id.digest)
        let ids = pending.map(\.id)
        // Who combined: this call (the committer then retires the shards and their records), or another
        // process before it (only its pending rows go here; their records are retired below).
        enum Combined: Sendable { case here(CheckpointID), elsewhere(CheckpointID), notYet }
        let combinedBy = try session.commit { (catalogue, _) throws -> Committer.Decision<Combined> in
            if let found = try catalogue.checkpoint(run: run, step: step) {
                guard found.content == content else {
                    throw CKStoreError(.conflict, "run \(run) already has a different checkpoint at step \(step) (\(found.id.short)) than its \(count) shards make")
                }
                // Combined by another process: its shards go, and its record is written if that process
                // stopped before writing it.
                try catalogue.deletePendingShards(ids)
                return .keep(.elsewhere(found.id), record: CommitLog.Record(id: found.id, run: run, step: step, content: content, createdAt: combined.createdAt))
            }
            // gc may have removed a stale shard since they were read: then the checkpoint is not complete.
            let now = try catalogue.pendingShards(run: run, step: step).filter { $0.shard.count == count }.map(\.id)
            guard now == ids else { return .keep(.notYet) }
            let new = Catalogue.NewCheckpoint(id: id, manifest: combined, contentDigest: content,
                                              storedBytesAdded: pending.reduce(0) { $0 + $1.storedBytesAdded }, chunkUses: combined.chunkUses(id: id))
            return .commit(.combined(new, shards: ids), .here(id))
        }
        switch combinedBy {
        case .here(let id):
            return id
        case .elsewhere(let id):
            // Best effort: the checkpoint is committed; records left behind are retired by the next gc.
            try? seams.committer.retireShardRecords(run: run, step: step)
            return id
        case .notYet:
            return nil
        }
    }
}
