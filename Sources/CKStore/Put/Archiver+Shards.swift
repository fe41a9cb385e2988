import Foundation

extension Archiver {
    /// Commits `manifest` as shard `shard` of its checkpoint (the end of a put with ``PutOptions/shard``),
    /// then combines the checkpoint if this was its last missing shard.
    ///
    /// The shard is committed through the store's ``Committer``: recorded as pending with the chunks it
    /// needs (so gc keeps them), and its shard record `shards/<run key>/<step>/<I>-of-<N>` written before
    /// the put reports success. Putting the same shard again with the same content is a no-op; with other content, or with
    /// another shard count than shards already committed at that step, it is a conflict.
    static func commitShard(
        _ manifest: Manifest, shard: ShardSpec, session: Archiver, warnings: [String], started: ContinuousClock.Instant, seams: PutSeams
    ) throws -> PutResult {
        let catalogue = seams.catalogue
        let run = manifest.run, step = manifest.step
        let content = try manifest.contentDigest()
        let what = "\(run)@\(step) shard \(shard)"
        func result(id: CheckpointID, alreadyStored: Bool, checkpoint: CheckpointID?, missing: [Int]) -> PutResult {
            var result = PutResult(
                id: id, run: run, step: step, logicalBytes: manifest.logicalBytes, storedBytesAdded: session.bytesAdded,
                chunksTotal: manifest.chunkCount, chunksNew: session.newChunkCount,
                seconds: (ContinuousClock.now - started) / .seconds(1), alreadyStored: alreadyStored, warnings: warnings)
            result.shard = shard
            result.checkpoint = checkpoint
            result.missingShards = missing
            return result
        }

        /// What the store holds at this run and step, as far as this shard is concerned.
        enum Standing {
            case committed(CheckpointID)
            case pending(CheckpointID)
            case absent
        }
        func standing(in catalogue: some PutQueries) throws -> Standing {
            if let found = try catalogue.checkpoint(run: run, step: step) { return .committed(found.id) }
            let pending = try catalogue.pendingShards(run: run, step: step)
            if let other = pending.first(where: { $0.shard.count != shard.count }) {
                throw CKStoreError(.conflict, "\(run)@\(step) is pending as \(other.shard.count) shards (shard \(other.shard) is committed); this put says \(shard.count)")
            }
            guard let same = pending.first(where: { $0.shard.index == shard.index }) else { return .absent }
            guard same.content == content else {
                throw CKStoreError(.conflict, "\(what) is already committed with different content (\(same.id.short)); put under another step, or remove the pending step with `ckstore rm \(run)@\(step) --pending`")
            }
            return .pending(same.id)
        }
        /// A committed checkpoint at this step: this shard's put is a no-op if the checkpoint holds it.
        func checkCommitted(_ id: CheckpointID) throws -> PutResult {
            let committed = try seams.reader.manifest(of: id)
            guard let shards = committed.shards, shards.count == shard.count, shards[shard.index].content == content else {
                let held = committed.shards.map { "as \($0.count) shards" } ?? "unsharded"
                throw CKStoreError(.conflict, "run \(run) already has a different checkpoint at step \(step) (\(id.short), \(held)); \(what) does not match it")
            }
            return result(id: id, alreadyStored: true, checkpoint: id, missing: [])
        }

        switch try standing(in: catalogue) {
        case .committed(let id):
            return try checkCommitted(id)
        case .pending(let id):
            // Its record too, if a crash kept the first put from writing it.
            let record = CommitLog.Record(id: id, run: run, step: step, content: content, createdAt: manifest.createdAt, shard: shard)
            try session.commit { _, _ in .keep((), record: record) }
            let checkpoint = try ShardCombiner(seams: seams)
                .completeIfReady(run: run, step: step, count: shard.count)
            return result(id: id, alreadyStored: true, checkpoint: checkpoint, missing: checkpoint == nil ? try missingShards(run: run, step: step, count: shard.count, catalogue: catalogue) : [])
        case .absent:
            break
        }

        let bytes = try manifest.canonicalJSON()
        let id = CheckpointID(SHA256Hasher.digest(bytes))
        try session.appendManifest(bytes, digest: id.digest)
        let outcome = try session.commit { (catalogue, added) throws -> Committer.Decision<Standing> in
            let now = try standing(in: catalogue)
            guard case .absent = now else { return .keep(now) }
            let pending = PendingShard(id: id, run: run, step: step, shard: shard, content: content, createdAt: manifest.createdAt,
                                       logicalBytes: manifest.logicalBytes, storedBytesAdded: added)
            return .commit(.shard(pending, chunkUses: manifest.chunkUses(id: id)), .absent)
        }
        switch outcome {
        case .committed(let existing): return try checkCommitted(existing)
        case .pending(let existing):
            return result(id: existing, alreadyStored: true, checkpoint: nil, missing: try missingShards(run: run, step: step, count: shard.count, catalogue: catalogue))
        case .absent: break
        }
        let checkpoint: CheckpointID?
        do {
            checkpoint = try ShardCombiner(seams: seams)
                .completeIfReady(run: run, step: step, count: shard.count)
        } catch let error as CKStoreError where error.code == .conflict {
            throw CKStoreError(.conflict, "\(what) is committed (\(id.short)), but the shards cannot make a checkpoint: \(error.message)")
        }
        return result(id: id, alreadyStored: false, checkpoint: checkpoint,
                      missing: checkpoint == nil ? try missingShards(run: run, step: step, count: shard.count, catalogue: catalogue) : [])
    }

    private static func missingShards(run: String, step: Int64, count: Int, catalogue: some PutQueries) throws -> [Int] {
        let held = try catalogue.pendingShards(run: run, step: step).filter { $0.shard.count == count }.map(\.shard.index)
        return Array(Set(0..<count).subtracting(held)).sorted()
    }
}
