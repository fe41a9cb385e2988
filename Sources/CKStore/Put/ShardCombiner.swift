import Foundation

/// Turns the shards of a checkpoint into the checkpoint, once all of them are committed to this store.
struct ShardCombiner {
    let catalogue: LockedCatalogue
    let layout: StoreLayout
    let reader: ChunkReader
    let contexts: ZstdContextPool

    /// Combines `run`@`step` if all `count` of its shards are pending here: writes the combined manifest
    /// (``Manifest/combining(_:)``), and in one transaction inserts the checkpoint and forgets the pending
    /// shards; then writes its commit record and removes the shard records. Returns the checkpoint's id, or
    /// nil while shards are missing. Two processes that combine at once write the same content: one commits,
    /// the other finds it committed.
    func completeIfReady(run: String, step: Int64, count: Int) throws -> CheckpointID? {
        let pending = try catalogue.with { try $0.pendingShards(run: run, step: step) }.filter { $0.shard.count == count }
        guard pending.count == count else { return nil }
        let manifests = try pending.map { try reader.manifest(of: $0.id) }
        let combined = try Manifest.combining(manifests)
        let bytes = try combined.canonicalJSON()
        let id = CheckpointID(SHA256Hasher.digest(bytes))
        let content = try combined.contentDigest()
        let session = try Archiver(catalogue: catalogue, sink: PackSink(layout: layout, writers: 1), reader: reader, contexts: contexts,
                                   options: PutOptions(run: run), settings: try catalogue.with { try $0.settings() }, parent: nil)
        try session.appendManifest(bytes, digest: id.digest)
        let ids = pending.map(\.id)
        let committed = try session.commit { (catalogue, _) throws -> CheckpointID? in
            if let found = try catalogue.checkpoint(run: run, step: step) {
                guard found.content == content else {
                    throw CKStoreError(.conflict, "run \(run) already has a different checkpoint at step \(step) (\(found.id.short)) than its \(count) shards make")
                }
                try catalogue.deletePendingShards(ids)
                return found.id
            }
            // gc may have removed a stale shard since they were read: then the checkpoint is not complete.
            let now = try catalogue.pendingShards(run: run, step: step).filter { $0.shard.count == count }.map(\.id)
            guard now == ids else { return nil }
            try catalogue.insert(
                Catalogue.NewCheckpoint(id: id, manifest: combined, contentDigest: content,
                                        storedBytesAdded: pending.reduce(0) { $0 + $1.storedBytesAdded }, chunkUses: combined.chunkUses(id: id)),
                now: Date().timeIntervalSince1970)
            try catalogue.deletePendingShards(ids)
            return id
        }
        guard let committed else { return nil }
        let record = try CommitLog(layout: layout).commit(
            CommitLog.Record(id: committed, run: run, step: step, content: content, createdAt: combined.createdAt))
        guard record.content == content else {
            throw CKStoreError(.conflict, "run \(run) already has a different committed checkpoint at step \(step) (\(record.id.short)); run `ckstore repair` if `ls` does not list it")
        }
        try CommitLog.shards(layout: layout).removeShards(run: run, step: step)
        return committed
    }
}
