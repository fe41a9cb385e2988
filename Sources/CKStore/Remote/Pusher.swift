import Foundation
import Synchronization

/// What a push did.
public struct PushReport: Codable, Sendable, Equatable {
    /// The remote's name.
    public var remote: String
    /// Checkpoints this push committed on the remote.
    public var pushed: [CheckpointID] = []
    /// Checkpoints the remote held already.
    public var alreadyPresent: [CheckpointID] = []
    /// Bytes of objects uploaded (packs, index and commit objects).
    public var bytesUploaded: Int64 = 0
    /// Objects uploaded.
    public var objectsUploaded: Int = 0
    /// Frames uploaded, and their bytes (headers included).
    public var framesUploaded: Int = 0
    public var frameBytesUploaded: Int64 = 0
    public var seconds: Double = 0
    /// For a shard's push: which shard.
    public var shard: ShardSpec?
    /// For a shard's push: the checkpoint's id once every shard is on the remote and its commit object
    /// is written, nil while it is pending there.
    public var checkpoint: CheckpointID?
    /// For a shard's push: the shards the remote still lacks.
    public var missingShards: [Int]?
}

extension PushReport {
    /// Adds what another push (of a shard) did to this report.
    public mutating func merge(_ other: PushReport) {
        pushed += other.pushed
        alreadyPresent += other.alreadyPresent
        bytesUploaded += other.bytesUploaded
        objectsUploaded += other.objectsUploaded
        framesUploaded += other.framesUploaded
        frameBytesUploaded += other.frameBytesUploaded
        seconds += other.seconds
    }
}

/// What remote gc condemned and when (`gc/pending`): the first of its two phases. A push never commits a
/// checkpoint that needs a condemned object; gc deletes an object only when it was condemned at least
/// `grace` seconds before and no commit object names it then.
///
/// A condemnation is written twice: first without a time (`unstamped`), then, once that write has
/// returned, stamped with a time taken after it. So every push that did not see the condemnation read
/// `gc/pending` before its stamp, and commits within half the grace period of that read, before any gc can
/// delete the object (`docs/design.md`, remote gc).
struct RemotePending: Codable, Sendable {
    var grace: Double
    /// Object key → unix time its condemnation was known to every reader of this object.
    var condemned: [String: Double]
    /// Condemned objects whose condemnation has no time yet: pushes avoid them, no gc deletes them; the
    /// gc that wrote them stamps them, or the next one does if it died first.
    @OmittedWhenEmpty var unstamped: [String] = []

    init(grace: Double, condemned: [String: Double], unstamped: [String] = []) {
        self.grace = grace
        self.condemned = condemned
        self.unstamped = unstamped
    }

    /// Whether `key` is condemned, stamped or not.
    func isCondemned(_ key: String) -> Bool { condemned[key] != nil || unstamped.contains(key) }

    /// How long after its check a push may write a commit: half the grace. Not of the grace recorded
    /// here alone (the next gc may use a shorter one, and a remote no gc ran on records none), but of the
    /// shortest any gc may use, the floor, when that is shorter.
    var commitWindow: Duration { .seconds(min(grace, RemoteCollector.minimumGrace) / 2) }
}

/// Pushes checkpoints to a remote: uploads exactly the frames the remote lacks, as stored, in new packs,
/// then an index object for them, then the checkpoint's commit object by a conditional create (rules 1, 2
/// and 4 of the remote layout).
///
/// What the remote holds is known from the store's cache of its index objects (``Catalogue``'s remote
/// tables): a first push lists the remote's commit objects once to learn what other machines pushed;
/// later pushes only read objects by name. Before committing, a push reads `gc/pending` and checks that
/// the index objects it relies on (and so their packs) exist and are not condemned; any that are, it
/// forgets and uploads those frames again, in packs with new names.
struct Pusher {
    let catalogue: LockedCatalogue
    let layout: StoreLayout
    let packs: PackReaderCache
    let remote: Remote
    var jobs: Int = 4
    var packSize: Int = 64 << 20
    var progress: ProgressHandler?

    var objects: any ObjectStore { remote.objects }
    var reader: ChunkReader { ChunkReader(index: ChunkIndex(catalogue: catalogue), packs: packs) }

    func push(_ ids: [CheckpointID]) async throws -> PushReport {
        let started = ContinuousClock.now
        // Shared, as a put holds it: local gc cannot delete a pack while its frames are being copied.
        let lock = try StoreLock(path: layout.lockPath, mode: .shared)
        defer { withExtendedLifetime(lock) {} }
        var report = PushReport(remote: remote.name)
        let session = RemoteSession(catalogue: catalogue, remote: remote)
        try await session.ensureMarker(create: true)
        try await session.syncIfNeverSynced()
        let summaries = try catalogue.with { catalogue in try ids.map { (id) throws -> CheckpointSummary in
            guard let summary = try catalogue.summary(of: id) else { throw CKStoreError(.notFound, "no checkpoint \(id.short)") }
            return summary
        } }
        for summary in summaries.sorted(by: { ($0.run, $0.step) < ($1.run, $1.step) }) {
            try Task.checkCancellation()
            try await pushOne(summary, report: &report)
        }
        report.seconds = (ContinuousClock.now - started) / .seconds(1)
        return report
    }

    private func pushOne(_ summary: CheckpointSummary, report: inout PushReport) async throws {
        let key = RemoteLayout.commit(run: summary.run, step: summary.step)
        let cached = try catalogue.with { try $0.remoteCommitBodies(remote.url) }.first { $0.key == key }
        if let cached, let commit = try? RemoteJSON.decode(RemoteCommit.self, Array(cached.body.utf8), what: key), commit.id == summary.id {
            report.alreadyPresent.append(summary.id)
            return
        }
        let (closure, content, dropped) = try catalogue.with { (catalogue) throws in
            (try catalogue.referencedDigests(of: [summary.id]),
             try catalogue.checkpoint(run: summary.run, step: summary.step)?.content,
             (files: try catalogue.droppedFiles(of: summary.id), tensors: try catalogue.droppedTensors(of: summary.id)))
        }
        guard let content else { throw CKStoreError(.notFound, "checkpoint \(summary.id.short) was removed while it was being pushed") }
        let shards = try reader.manifest(of: summary.id).shards
        let outcome = try await commitObject(key: key, closure: closure, report: &report) { indexes in
            try RemoteJSON.encode(RemoteCommit(summary, content: content, indexes: indexes, droppedFiles: dropped.files,
                                               droppedTensors: dropped.tensors.mapValues { $0.sorted() }, shards: shards))
        }
        switch outcome {
        case .written(let body):
            report.pushed.append(summary.id)
            try catalogue.with { catalogue in try catalogue.write { try catalogue.setRemoteCommit(remote.url, key: key, id: summary.id, body: String(decoding: body, as: UTF8.self)) } }
        case .exists(let theirs):
            // Another machine committed this run and step first (rule 2).
            let existing = try RemoteJSON.decode(RemoteCommit.self, theirs, what: "\(remote.name): \(key)")
            guard existing.id == summary.id || existing.content == content else {
                throw CKStoreError(.conflict, "remote \(remote.name) already has a different checkpoint of run \(summary.run) at step \(summary.step) (\(existing.id.short)); this store's is \(summary.id.short)")
            }
            try catalogue.with { catalogue in try catalogue.write { try catalogue.setRemoteCommit(remote.url, key: key, id: existing.id, body: String(decoding: theirs, as: UTF8.self)) } }
            report.alreadyPresent.append(summary.id)
        }
    }

    /// How a conditional create of a commit point ended.
    enum CommitOutcome {
        /// This push wrote it, with these bytes.
        case written([UInt8])
        /// Another writer had created it first; its bytes.
        case exists([UInt8])
    }

    /// Makes every frame of `closure` present on the remote and indexed, then creates `key` with the bytes
    /// `body` makes from the index objects that locate the closure, by a conditional create: the commit
    /// protocol of a checkpoint's commit object and of a shard object alike.
    ///
    /// Frames the remote lacks (as far as the cache knows) are uploaded as stored; packs uploaded but not yet
    /// indexed get an index object; then rule 5: never commit what a remote gc is deleting. Objects
    /// condemned or gone are forgotten and their frames uploaded again, and the commit follows the check
    /// within half the grace period.
    func commitObject(key: String, closure: Set<ChunkDigest>, report: inout PushReport, body: ([String]) throws -> [UInt8]) async throws -> CommitOutcome {
        var created = Set<String>()
        for _ in 1...4 {
            let missing = try catalogue.with { catalogue in try closure.filter { try catalogue.remoteFrame(remote.url, $0) == nil } }
            if !missing.isEmpty { try await upload(missing.sorted(), report: &report) }
            func needed() throws -> Set<String> {
                try catalogue.with { catalogue in
                    Set(try closure.map { (digest) throws -> String in
                        guard let row = try catalogue.remoteFrame(remote.url, digest) else {
                            throw CKStoreError(.internalInvariant, "chunk \(digest) was uploaded but is not in the remote cache")
                        }
                        return row.index
                    })
                }
            }
            let unindexed = try needed().filter(Self.isPending)
            if !unindexed.isEmpty {
                guard let name = try await writeIndex(forPending: unindexed, report: &report) else { continue }
                created.insert(name)
            }
            let needed = try needed()
            let checked = ContinuousClock.now
            let pending = try await RemoteSession.pending(objects)
            var unusable = try catalogue.with { catalogue in
                Set(try needed.filter { (name) throws -> Bool in
                    if pending.isCondemned(RemoteLayout.index(name)) { return true }
                    return try catalogue.remotePacks(remote.url, indexes: [name]).contains { pending.isCondemned(RemoteLayout.pack($0)) }
                })
            }
            let others = needed.subtracting(created).subtracting(unusable)
            unusable.formUnion(try await missingObjects(others.map(RemoteLayout.index)).map(RemoteLayout.name(ofKey:)))
            // An index this push wrote may name a pack that a gc deleted after the index's HEAD of it and
            // before the index landed (the gc listed the indexes first, and no index then named that orphan
            // pack), so its packs are checked too; a reused index keeps its packs, as gc holds.
            for name in needed.intersection(created).subtracting(unusable) {
                let packs = try catalogue.with { try $0.remotePacks(remote.url, indexes: [name]) }
                if try await !missingObjects(packs.sorted().map(RemoteLayout.pack)).isEmpty { unusable.insert(name) }
            }
            if !unusable.isEmpty {
                try catalogue.with { catalogue in try catalogue.write { try catalogue.forgetRemoteIndexes(remote.url, unusable) } }
                created.subtract(unusable)
                continue
            }
            // The check holds for half the grace period: a gc's deletion comes at least a grace period
            // after it stamped its condemnation, so a commit written within half of it after the check is
            // seen by that gc. A commit that cannot be written by then (a slow server, retries) is given up
            // and checked again, never written late.
            let bytes = try body(needed.sorted())
            let objects = self.objects
            guard let created = try await untilDeadline(checked + pending.commitWindow, { try await objects.put(key, bytes, ifAbsent: true) }) else {
                continue
            }
            if created {
                report.bytesUploaded += Int64(bytes.count)
                report.objectsUploaded += 1
                return .written(bytes)
            }
            return .exists(try await objects.get(key))
        }
        throw CKStoreError(.conflict, "remote \(remote.name): a garbage collection kept removing objects \(key) needs; nothing was committed, push again")
    }

    /// Keys of `keys` that do not exist on the remote.
    func missingObjects(_ keys: [String]) async throws -> [String] {
        try await withThrowingTaskGroup(of: String?.self) { group in
            var iterator = keys.makeIterator()
            var out = [String]()
            for _ in 0..<max(1, jobs * 2) {
                guard let key = iterator.next() else { break }
                group.addTask { try await objects.head(key) == nil ? key : nil }
            }
            while let result = try await group.next() {
                if let result { out.append(result) }
                if let key = iterator.next() { group.addTask { try await objects.head(key) == nil ? key : nil } }
            }
            return out
        }
    }

    /// The cache's name for the frames of a pack that is uploaded but that no index object lists yet.
    static func pendingName(_ pack: String) -> String { "pending:" + pack }
    static func isPending(_ index: String) -> Bool { index.hasPrefix("pending:") }

    /// Writes the index object of uploaded packs (`pending:` entries of the cache) and records it in the
    /// cache in their place; nil when one of the packs is gone (a remote gc removed it as an orphan: its
    /// frames are then forgotten, to be uploaded again).
    private func writeIndex(forPending pending: Set<String>, report: inout PushReport) async throws -> String? {
        var packsOut = [RemoteIndex.Pack]()
        var gone = [String]()
        for entry in pending.sorted() {
            let frames = try catalogue.with { try $0.remoteFrames(remote.url, index: entry) }
            for (pack, list) in frames {
                guard let info = try await objects.head(RemoteLayout.pack(pack)) else {
                    gone.append(entry)
                    continue
                }
                packsOut.append(RemoteIndex.Pack(name: pack, size: info.size, frames: list))
            }
        }
        if !gone.isEmpty {
            try catalogue.with { catalogue in try catalogue.write { try catalogue.forgetRemoteIndexes(remote.url, gone) } }
            return nil
        }
        let index = RemoteIndex(packs: packsOut.sorted { $0.name < $1.name })
        let body = try RemoteJSON.encode(index)
        let name = SHA256Hasher.digest(body).hex
        _ = try await objects.put(RemoteLayout.index(name), body, ifAbsent: false)
        report.bytesUploaded += Int64(body.count)
        report.objectsUploaded += 1
        try catalogue.with { catalogue in
            try catalogue.write {
                try catalogue.forgetRemoteIndexes(remote.url, pending)
                try catalogue.insertRemoteIndex(remote.url, name: name, packs: index.frames)
            }
        }
        return name
    }

    /// Copies the frames of `digests` into new packs and uploads them (at most `jobs` at once); each pack
    /// is recorded in the cache as pending once it is uploaded, so that a push interrupted later does not
    /// upload it again.
    private func upload(_ digests: [ChunkDigest], report: inout PushReport) async throws {
        let locations = try catalogue.with { catalogue in try digests.map { (digest) throws -> ChunkLocation in
            guard let location = try catalogue.location(of: digest) else {
                throw CKStoreError(.damaged, "chunk \(digest) is referenced but not stored; run `ckstore verify`")
            }
            return location
        } }
        // Pack order follows the local packs, so a pull's ranged reads of neighbours coalesce.
        let ordered = locations.sorted { ($0.pack.hex, $0.offset) < ($1.pack.hex, $1.offset) }
        let meter = ProgressMeter("push", total: ordered.reduce(0) { $0 + $1.frameBytes }, handler: progress)
        var packsOut = [RemoteIndex.Pack]()
        var uploaded: Int64 = 0
        var objectsOut = 0
        try await withThrowingTaskGroup(of: (RemoteIndex.Pack, [UInt8]).self) { group in
            var inFlight = 0
            // Buffers of uploaded packs, filled again: at most jobs + 1 packs' memory for the whole push.
            var spare = [[UInt8]]()
            func collect() async throws {
                guard let (pack, bytes) = try await group.next() else { return }
                packsOut.append(pack)
                uploaded += Int64(bytes.count)
                objectsOut += 1
                inFlight -= 1
                spare.append(bytes)
            }
            func newImage() -> PackImage { PackImage(reusing: spare.popLast() ?? [], capacity: packSize + (1 << 20)) }
            var image = newImage()
            func ship(_ finished: inout PackImage) async throws {
                while inFlight >= jobs { try await collect() }
                let frames = finished.frames
                let bytes = finished.seal()
                let name = SHA256Hasher.digest(bytes).hex
                inFlight += 1
                let catalogue = self.catalogue, url = remote.url
                group.addTask {
                    try await objects.put(RemoteLayout.pack(name), bytes, sha256: name)
                    let pack = RemoteIndex.Pack(name: name, size: Int64(bytes.count), frames: frames)
                    try catalogue.with { catalogue in
                        try catalogue.write { try catalogue.insertRemoteIndex(url, name: Self.pendingName(name), packs: RemoteIndex(packs: [pack]).frames) }
                    }
                    meter.add(frames.reduce(0) { $0 + Int64(PackFormat.frameHeaderSize + $1.storedLength) })
                    return (pack, bytes)
                }
            }
            for location in ordered {
                try Task.checkCancellation()
                let reader = try packs.reader(for: location.pack)
                let (header, payload) = try reader.readFrame(at: location.offset, storedLength: location.storedLength, expected: location.digest)
                if !image.isEmpty, image.count + PackFormat.frameHeaderSize + header.storedLength > packSize {
                    try await ship(&image)
                    image = newImage()
                }
                payload.withUnsafeBytes { image.append(header: header, payload: $0) }
                report.framesUploaded += 1
                report.frameBytesUploaded += location.frameBytes
            }
            if !image.isEmpty { try await ship(&image) }
            while inFlight > 0 { try await collect() }
        }
        report.bytesUploaded += uploaded
        report.objectsUploaded += objectsOut
    }
}

/// What push, pull, ls and verify share about one remote: its marker, the cache of its commit and index
/// objects, and `gc/pending`.
struct RemoteSession {
    let catalogue: any RemoteCacheQueries
    let remote: Remote

    private var objects: any ObjectStore { remote.objects }

    /// Checks that the remote is a ckstore remote; with `create`, makes an empty location one.
    func ensureMarker(create: Bool) async throws {
        // A writer (push, shard push, remote add) first knows that commits can be exclusive.
        if create { try await ensureConditionalWrites() }
        if let bytes = try await objects.getIfPresent(RemoteLayout.marker) {
            let marker = try RemoteJSON.decode(RemoteMarker.self, bytes, what: "\(remote.name): \(RemoteLayout.marker)")
            guard marker.format == "ckstore-remote", marker.version == 1 else {
                throw CKStoreError(.unsupportedSchema, "remote \(remote.name) has format \(marker.format) version \(marker.version), which this ckstore does not know")
            }
            return
        }
        guard create else {
            throw CKStoreError(.notFound, "remote \(remote.name) (\(remote.url)) holds no ckstore remote (no \(RemoteLayout.marker)); push to it first")
        }
        _ = try await objects.put(RemoteLayout.marker, try RemoteJSON.encode(RemoteMarker()), ifAbsent: true)
    }

    /// Before this store first writes to a remote, whether its server refuses a second conditional
    /// create of one key (`If-None-Match: *`), which commits rely on: without it two machines pushing the
    /// same run and step could both win. The answer is cached with the store; a server that ignores the
    /// header is refused unless the remote allows unconditional commits.
    func ensureConditionalWrites() async throws {
        if try catalogue.remoteFact(remote.url, "conditional_writes") == "honoured" { return }
        let honoured = try await Self.honoursConditionalWrites(objects)
        try catalogue.setRemoteFact(remote.url, "conditional_writes", honoured ? "honoured" : "ignored")
        guard honoured || remote.unsafeUnconditionalCommits else {
            throw CKStoreError(.remote, "\(objects.description) ignores conditional writes: a second PUT with If-None-Match: * of one key was accepted, so two machines pushing the same run and step could both win; use a server that honours If-None-Match (AWS S3, MinIO, SeaweedFS, R2), or accept the risk with --unsafe-unconditional-commits")
        }
    }

    /// Writes a new probe key twice, conditionally: true when the second write is refused.
    static func honoursConditionalWrites(_ objects: any ObjectStore) async throws -> Bool {
        let probe = "gc/probe-" + PackID.random().hex
        // The key is new and random: a refusal here can only answer a retry of this very write whose first
        // answer was lost, so either way the object is ours now.
        _ = try await objects.put(probe, Array("1".utf8), ifAbsent: true)
        let second = try await objects.put(probe, Array("2".utf8), ifAbsent: true)
        try await objects.delete(probe)
        return !second
    }

    /// What gc has condemned; none when no gc ran.
    static func pending(_ objects: any ObjectStore) async throws -> RemotePending {
        guard let bytes = try await objects.getIfPresent(RemoteLayout.pending) else { return RemotePending(grace: 3600, condemned: [:]) }
        return try RemoteJSON.decode(RemotePending.self, bytes, what: "\(objects.description): \(RemoteLayout.pending)")
    }

    /// A store's first contact with a remote: learns every commit and the index objects they name, so
    /// that its first push uploads only what the remote lacks (as restic loads a repository's index).
    func syncIfNeverSynced() async throws {
        guard try catalogue.remoteSyncTime(remote.url) == nil else { return }
        let commits = try await sync()
        try await loadIndexes(Array(Set(commits.flatMap(\.commit.indexes))).sorted())
    }

    /// How many small objects (commit and index objects) a session reads at once: their time is mostly a
    /// round trip, so a fresh machine's first listing of a remote with many checkpoints is bounded by
    /// bandwidth, not by latency times their number.
    static let metadataJobs = 16
    /// Index objects read before their frames go into the cache: bounds the memory of a first listing.
    static let indexBatch = 64

    /// Lists the remote's commit objects and reads the ones the cache lacks (``metadataJobs`` at once);
    /// forgets cached ones that are gone. Returns every commit object.
    @discardableResult
    func sync() async throws -> [(key: String, commit: RemoteCommit)] {
        let now = Date().timeIntervalSince1970
        let listed = try await objects.list(prefix: RemoteLayout.commitsPrefix).map(\.key)
        let cached = Dictionary(try catalogue.remoteCommitBodies(remote.url).map { ($0.key, $0.body) }, uniquingKeysWith: { a, _ in a })
        var known = [String: RemoteCommit]()
        for key in listed {
            if let body = cached[key], let commit = try? RemoteJSON.decode(RemoteCommit.self, Array(body.utf8), what: key) { known[key] = commit }
        }
        let objects = self.objects
        let read = try await listed.filter { known[$0] == nil }.concurrentMap(limit: Self.metadataJobs) { key in
            (key, try await objects.getIfPresent(key))
        }
        let bodies = Dictionary(read.compactMap { key, bytes in bytes.map { (key, $0) } }, uniquingKeysWith: { a, _ in a })
        var out = [(key: String, commit: RemoteCommit)]()
        var fresh = [(String, RemoteCommit, String)]()
        for key in listed {
            if let commit = known[key] {
                out.append((key, commit))
                continue
            }
            guard let bytes = bodies[key] else { continue }
            let commit = try RemoteJSON.decode(RemoteCommit.self, bytes, what: "\(remote.name): \(key)")
            guard key == RemoteLayout.commit(run: commit.run, step: commit.step) else {
                throw CKStoreError(.damaged, "remote \(remote.name): commit object \(key) names run \(commit.run) step \(commit.step), which belong elsewhere")
            }
            out.append((key, commit))
            fresh.append((key, commit, String(decoding: bytes, as: UTF8.self)))
        }
        let gone = Set(cached.keys).subtracting(listed)
        try catalogue.recordSync(remote.url, fresh: fresh.map { (key: $0.0, id: $0.1.id, body: $0.2) }, gone: gone, at: now)
        return out
    }

    /// Makes sure the cache holds the index objects `names`, reading (and checking) the ones it lacks,
    /// ``metadataJobs`` at once and at most ``indexBatch`` held before they are cached. With
    /// `skippingUnreadable`, an index object that is gone or damaged is left out instead of failing the
    /// call (what gc does with the index objects no commit names).
    func loadIndexes(_ names: [String], skippingUnreadable: Bool = false) async throws {
        let known = try catalogue.knownRemoteIndexes(remote.url)
        let wanted = names.filter { !known.contains($0) }
        let objects = self.objects
        for start in stride(from: 0, to: wanted.count, by: Self.indexBatch) {
            let batch = wanted[start..<min(start + Self.indexBatch, wanted.count)]
            let read = try await batch.concurrentMap(limit: Self.metadataJobs) { name in
                (name, try await objects.getIfPresent(RemoteLayout.index(name)))
            }
            for (name, bytes) in read {
                let key = RemoteLayout.index(name)
                do {
                    guard let bytes else {
                        throw CKStoreError(.damaged, "remote \(remote.name): index object \(key) is missing")
                    }
                    guard SHA256Hasher.digest(bytes).hex == name else {
                        throw CKStoreError(.damaged, "remote \(remote.name): index object \(key) fails its SHA-256 (it was altered or damaged)")
                    }
                    let index = try RemoteJSON.decode(RemoteIndex.self, bytes, what: "\(remote.name): \(key)")
                    try catalogue.insertRemoteIndex(remote.url, name: name, packs: index.frames)
                } catch let error as CKStoreError where skippingUnreadable && error.code == .damaged {
                    continue
                }
            }
        }
    }
}
