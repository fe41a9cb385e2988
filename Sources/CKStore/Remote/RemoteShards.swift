import Foundation

/// A shard object, `shards/<run key>/<step>/<I>-of-<N>`: shard I of a checkpoint of N shards is on the
/// remote when this exists. Like a commit object it names the index objects that locate every frame the
/// shard needs (its shard manifest, chunks and their delta bases), and it is written last, by a
/// conditional create. The checkpoint itself exists on the remote only once its commit object does, which
/// whoever finds all N shard objects present writes (``Pusher/combineShards(run:step:count:report:)``).
@dynamicMemberLookup
public struct RemoteShard: Codable, Sendable, Equatable {
    public var format = 1
    /// The shard as `ls --pending` lists it: the object's fields but its format and index objects, written
    /// beside them in the same JSON object. Its fields read through the shard (`shard.run`).
    public var pending: PendingShard
    /// Index objects that together locate every frame of the shard's closure.
    var indexes: [String]

    init(_ pending: PendingShard, indexes: [String]) {
        self.pending = pending
        self.indexes = indexes
    }

    public subscript<T>(dynamicMember field: KeyPath<PendingShard, T>) -> T { pending[keyPath: field] }

    private enum CodingKeys: String, CodingKey {
        case format, indexes
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        format = try container.decode(Int.self, forKey: .format)
        indexes = try container.decode([String].self, forKey: .indexes)
        pending = try PendingShard(from: decoder)
    }

    public func encode(to encoder: any Encoder) throws {
        try pending.encode(to: encoder)
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(format, forKey: .format)
        try container.encode(indexes, forKey: .indexes)
    }
}

extension RemoteSession {
    /// Every shard object on the remote, with its key. Shard objects are few (one per rank of the
    /// checkpoints being written, and those gc has not yet removed), so they are read each time, not cached.
    func shardObjects(prefix: String = RemoteLayout.shardsPrefix) async throws -> [(key: String, shard: RemoteShard)] {
        var out = [(key: String, shard: RemoteShard)]()
        for object in try await remote.objects.list(prefix: prefix) {
            guard let bytes = try await remote.objects.getIfPresent(object.key) else { continue }
            let shard = try RemoteJSON.decode(RemoteShard.self, bytes, what: "\(remote.name): \(object.key)")
            guard object.key == RemoteLayout.shard(run: shard.run, step: shard.step, shard: shard.shard) else {
                throw CKStoreError(.damaged, "remote \(remote.name): shard object \(object.key) names \(shard.run)@\(shard.step) shard \(shard.shard), which belongs elsewhere")
            }
            out.append((object.key, shard))
        }
        return out
    }
}

extension Pusher {
    /// Pushes shard `shard` (pending or combined in this store) to the remote as its shard object, then
    /// writes the checkpoint's commit object if every shard is now there.
    ///
    /// Of two pushes of one shard exactly one creates its object; the other is a no-op when it holds the
    /// same content and a conflict otherwise. Of the last two shards to arrive, at least one push lists the
    /// other's object after writing its own (each lists after its write), so some push combines; two that
    /// combine at once write the same content, and the commit object's conditional create keeps one.
    func pushShard(_ shard: PendingShard) async throws -> PushReport {
        let started = ContinuousClock.now
        let lock = try StoreLock(path: layout.lockPath, mode: .shared)
        defer { withExtendedLifetime(lock) {} }
        var report = PushReport(remote: remote.name)
        report.shard = shard.shard
        let session = RemoteSession(catalogue: catalogue, remote: remote)
        try await session.ensureMarker(create: true)
        try await session.syncIfNeverSynced()
        let what = "\(shard.run)@\(shard.step) shard \(shard.shard)"

        // Already combined on the remote: a no-op when that checkpoint holds this shard's content.
        if let committed = try await committedCheckpoint(run: shard.run, step: shard.step) {
            guard let shards = committed.shards, shards.count == shard.shard.count, shards[shard.shard.index].content == shard.content else {
                throw CKStoreError(.conflict, "remote \(remote.name) already has a different checkpoint of run \(shard.run) at step \(shard.step) (\(committed.id.short)); \(what) does not match it")
            }
            report.alreadyPresent.append(shard.id)
            report.checkpoint = committed.id
            report.missingShards = []
            report.seconds = (ContinuousClock.now - started) / .seconds(1)
            return report
        }
        let key = RemoteLayout.shard(run: shard.run, step: shard.step, shard: shard.shard)
        let closure = try catalogue.with { try $0.referencedDigests(of: [shard.id]) }
        let outcome = try await commitObject(key: key, closure: closure, report: &report) { indexes in
            try RemoteJSON.encode(RemoteShard(shard, indexes: indexes))
        }
        switch outcome {
        case .written:
            report.pushed.append(shard.id)
        case .exists(let theirs):
            let existing = try RemoteJSON.decode(RemoteShard.self, theirs, what: "\(remote.name): \(key)")
            guard existing.content == shard.content else {
                throw CKStoreError(.conflict, "remote \(remote.name) already has \(what) with different content (\(existing.id.short)); this store's is \(shard.id.short)")
            }
            report.alreadyPresent.append(shard.id)
        }
        let (checkpoint, missing) = try await combineShards(run: shard.run, step: shard.step, count: shard.shard.count, report: &report)
        report.checkpoint = checkpoint
        report.missingShards = missing
        report.seconds = (ContinuousClock.now - started) / .seconds(1)
        return report
    }

    /// The remote's commit object of `run` at `step`, read by name (and cached), if it exists.
    private func committedCheckpoint(run: String, step: Int64) async throws -> RemoteCommit? {
        let key = RemoteLayout.commit(run: run, step: step)
        guard let bytes = try await objects.getIfPresent(key) else { return nil }
        let commit = try RemoteJSON.decode(RemoteCommit.self, bytes, what: "\(remote.name): \(key)")
        try catalogue.with { catalogue in try catalogue.write { try catalogue.setRemoteCommit(remote.url, key: key, id: commit.id, body: String(decoding: bytes, as: UTF8.self)) } }
        return commit
    }

    /// Writes the commit object of `run`@`step` if all `count` of its shard objects are on the remote:
    /// reads each shard's manifest from the remote (checked against its id and its shard object), combines
    /// them (``Manifest/combining(_:)``), uploads the combined manifest in a pack of its own with its index
    /// object, and creates the commit object naming the shards' index objects and that one. Returns the
    /// checkpoint's id, or nil and the missing shard indexes.
    func combineShards(run: String, step: Int64, count: Int, report: inout PushReport) async throws -> (CheckpointID?, [Int]) {
        let session = RemoteSession(catalogue: catalogue, remote: remote)
        // The listing's key names say which shards are there (`<I>-of-<N>`): the objects themselves are
        // read only once all N are, so a job of N ranks does not read N objects on each of N pushes.
        let prefix = RemoteLayout.shards(run: run, step: step)
        let present = Set(try await objects.list(prefix: prefix).map(\.key).compactMap { key -> Int? in
            let parts = key.dropFirst(prefix.count).split(separator: "-")
            guard parts.count == 3, parts[1] == "of", Int(parts[2]) == count else { return nil }
            return Int(parts[0])
        })
        let missing = Array(Set(0..<count).subtracting(present)).sorted()
        guard missing.isEmpty else { return (nil, missing) }
        let shards = try await session.shardObjects(prefix: prefix).map(\.shard).filter { $0.shard.count == count }
        let stillMissing = Array(Set(0..<count).subtracting(shards.map(\.shard.index))).sorted()
        guard stillMissing.isEmpty else { return (nil, stillMissing) }
        let ordered = shards.sorted { $0.shard.index < $1.shard.index }
        var manifests = [Manifest]()
        var puller = Puller(catalogue: catalogue, layout: layout, remote: remote)
        puller.jobs = jobs
        var pullReport = PullReport(remote: remote.name, id: ordered[0].id, run: run, step: step, pulled: false)
        for shard in ordered {
            let (manifest, _) = try await puller.manifest(id: shard.id, indexes: shard.indexes, report: &pullReport)
            guard manifest.run == run, manifest.step == step, manifest.shard == shard.shard, try manifest.contentDigest() == shard.content else {
                throw CKStoreError(.damaged, "remote \(remote.name): shard object of \(run)@\(step) shard \(shard.shard) names manifest \(shard.id.short), which says otherwise")
            }
            manifests.append(manifest)
        }
        let combined = try Manifest.combining(manifests)
        let bytes = try combined.canonicalJSON()
        let id = CheckpointID(SHA256Hasher.digest(bytes))
        let content = try combined.contentDigest()
        let key = RemoteLayout.commit(run: run, step: step)
        if let existing = try await committedCheckpoint(run: run, step: step) {
            guard existing.content == content else {
                throw CKStoreError(.conflict, "remote \(remote.name) already has a different checkpoint of run \(run) at step \(step) (\(existing.id.short)) than its \(count) shards make")
            }
            return (existing.id, [])
        }

        // The combined manifest: one frame in a pack of its own, and an index object for it.
        let chunk = try FrameCodec(level: .default).encode(bytes, digest: id.digest)
        var image = PackImage(capacity: chunk.payload.count + 4096)
        chunk.payload.withUnsafeBytes { image.append(header: FrameHeader(kind: .manifest, chunk: chunk), payload: $0) }
        let frames = image.frames
        let pack = image.seal()
        let packName = SHA256Hasher.digest(pack).hex
        try await objects.put(RemoteLayout.pack(packName), pack, sha256: packName)
        let index = RemoteIndex(packs: [RemoteIndex.Pack(name: packName, size: Int64(pack.count), frames: frames)])
        let indexBody = try RemoteJSON.encode(index)
        let indexName = SHA256Hasher.digest(indexBody).hex
        _ = try await objects.put(RemoteLayout.index(indexName), indexBody, ifAbsent: false)
        report.bytesUploaded += Int64(pack.count + indexBody.count)
        report.objectsUploaded += 2
        try catalogue.with { catalogue in try catalogue.write { try catalogue.insertRemoteIndex(remote.url, name: indexName, packs: index.frames) } }

        // Rule 5, as for any commit: none of the objects it names is condemned or gone.
        let indexes = Set(ordered.flatMap(\.indexes)).union([indexName])
        try await session.loadIndexes(indexes.sorted())
        let checked = ContinuousClock.now
        let pending = try await RemoteSession.pending(objects)
        let packs = try catalogue.with { try $0.remotePacks(remote.url, indexes: indexes.sorted()) }
        let keys: [String] = indexes.sorted().map(RemoteLayout.index) + packs.sorted().map(RemoteLayout.pack)
        let condemned: [String] = keys.filter { pending.isCondemned($0) }
        let gone: [String] = try await missingObjects(keys)
        guard condemned.isEmpty, gone.isEmpty else {
            throw CKStoreError(.conflict, "remote \(remote.name): objects the shards of \(run)@\(step) need are condemned or gone (\((condemned + gone).prefix(3).joined(separator: ", "))); put and push the shards again")
        }
        let checkpoint = CheckpointSummary(
            id: id, run: run, step: step, epoch: combined.epoch, createdAt: combined.createdAt, logicalBytes: combined.logicalBytes,
            storedBytesAdded: ordered.reduce(0) { $0 + $1.storedBytesAdded }, chunkCount: combined.chunkCount,
            fileCount: combined.files.count, tensorCount: combined.tensorCount, parent: combined.parent, metrics: combined.metrics,
            tags: combined.tags)
        let commit = RemoteCommit(checkpoint, content: content, indexes: indexes.sorted(), shards: combined.shards)
        let body = try RemoteJSON.encode(commit)
        // Written within half the grace period of the check, or not at all (as a push's commit).
        let objects = self.objects
        guard let created = try await untilDeadline(checked + pending.commitWindow, { try await objects.put(key, body, ifAbsent: true) }) else {
            throw CKStoreError(.conflict, "remote \(remote.name): the commit object of \(run)@\(step) could not be written within \(pending.commitWindow) of the check (half of gc's grace period); push again")
        }
        if created {
            report.bytesUploaded += Int64(body.count)
            report.objectsUploaded += 1
            try catalogue.with { catalogue in try catalogue.write { try catalogue.setRemoteCommit(remote.url, key: key, id: id, body: String(decoding: body, as: UTF8.self)) } }
            return (id, [])
        }
        // Another push combined first: the same shards make the same content.
        guard let existing = try await committedCheckpoint(run: run, step: step), existing.content == content else {
            throw CKStoreError(.conflict, "remote \(remote.name) got a different checkpoint of run \(run) at step \(step) while its shards were being combined")
        }
        return (existing.id, [])
    }
}

extension CheckpointStore {
    /// Pushes a shard committed to this store (``PutResult/id`` of a put with ``PutOptions/shard``) to a
    /// remote as its shard object, and writes the checkpoint's commit object there if that completes it.
    ///
    /// - Throws: `conflict` when the remote has that shard, or that checkpoint, with different content.
    public func pushShard(_ id: CheckpointID, run: String, step: Int64, shard: ShardSpec, to remote: Remote, jobs: Int = 4, progress: ProgressHandler? = nil) async throws(CKStoreError) -> PushReport {
        try await CKStoreError.wrapping("push of \(run)@\(step) shard \(shard) to remote \(remote.name)") {
            var pusher = Pusher(catalogue: catalogue, layout: layout, packs: PackReaderCache(layout: layout), remote: remote)
            pusher.jobs = max(1, jobs)
            pusher.progress = progress
            let pending = try withCatalogue { try $0.pendingShards(run: run, step: step) }.first { $0.id == id }
            if let pending { return try await pusher.pushShard(pending) }
            // Combined here already: the shard's content is recorded in the checkpoint's manifest.
            guard let committed = try withCatalogue({ try $0.checkpoint(run: run, step: step) }) else {
                throw CKStoreError(.notFound, "this store holds no shard \(shard) of \(run)@\(step) (\(id.short))")
            }
            let manifest = try chunkReader().manifest(of: committed.id)
            guard let shards = manifest.shards, shards.count == shard.count else {
                throw CKStoreError(.notFound, "checkpoint \(committed.id.short) (\(run)@\(step)) was not put as \(shard.count) shards")
            }
            // The whole checkpoint goes; its commit object carries every shard's content.
            var report = try await pusher.push([committed.id])
            report.shard = shard
            report.checkpoint = committed.id
            report.missingShards = []
            return report
        }
    }

    /// Checkpoints of `run` (every run when nil) some of whose shard objects are on a remote but not all,
    /// and that have no commit object (`ls --remote --pending`).
    public func remotePendingCheckpoints(_ remote: Remote, run: String? = nil) async throws(CKStoreError) -> [PendingCheckpoint] {
        try await CKStoreError.wrapping("listing pending checkpoints of remote \(remote.name)") {
            let session = RemoteSession(catalogue: catalogue, remote: remote)
            try await session.ensureMarker(create: false)
            let committed = Set(try await session.sync().map { "\($0.commit.run)@\($0.commit.step)" })
            let shards = try await session.shardObjects().map(\.shard.pending)
                .filter { (run == nil || $0.run == run) && !committed.contains("\($0.run)@\($0.step)") }
            return PendingCheckpoint.grouping(shards)
        }
    }
}

extension CheckpointStore {
    /// Removes the shard objects of the pending checkpoint of `run` at `step` from a remote (`rm --pending
    /// --remote`): what they alone needed is condemned by the next remote gc. A step whose commit object
    /// exists is not pending, and is refused. Returns what was removed, nil when nothing is pending there.
    @discardableResult
    public func removeRemotePending(_ remote: Remote, run: String, step: Int64) async throws(CKStoreError) -> PendingCheckpoint? {
        try await CKStoreError.wrapping("removal of pending \(run)@\(step) from remote \(remote.name)") {
            let session = RemoteSession(catalogue: catalogue, remote: remote)
            try await session.ensureMarker(create: false)
            if try await remote.objects.getIfPresent(RemoteLayout.commit(run: run, step: step)) != nil {
                throw CKStoreError(.conflict, "remote \(remote.name) has a committed checkpoint at \(run)@\(step); it is not pending (remove it with retention or `gc --remote`)")
            }
            let shards = try await session.shardObjects(prefix: RemoteLayout.shards(run: run, step: step))
            guard !shards.isEmpty else { return nil }
            for entry in shards { try await remote.objects.delete(entry.key) }
            return PendingCheckpoint.grouping(shards.map(\.shard.pending)).first
        }
    }
}
