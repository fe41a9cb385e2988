import Foundation

/// What a pull did.
public struct PullReport: Codable, Sendable, Equatable {
    public var remote: String
    /// The checkpoint pulled.
    public var id: CheckpointID
    public var run: String
    public var step: Int64
    /// False when the local store held it already.
    public var pulled: Bool
    /// Bytes downloaded (frames, index and commit objects), and how many requests.
    public var bytesDownloaded: Int64 = 0
    public var requests: Int = 0
    /// Frames written into the local store.
    public var framesAdded: Int = 0
    public var seconds: Double = 0
    /// True for a pull of some files only (`get --remote --shard` or `--file`): their chunks are in the
    /// store, held from gc for an hour, but the checkpoint is not recorded.
    public var partial: Bool?
}

/// Brings checkpoints from a remote into the local store: the commit object, the index objects it names,
/// the manifest frame, then every frame of the closure the local store lacks, by ranged GETs of the packs
/// (neighbouring frames in one request). Frames are written as stored into local packs; every one is
/// checked (checksum, then decoded and hashed against its SHA-256, its delta bases with it) before one
/// transaction records the checkpoint (rule 6, and I-5 locally).
struct Puller {
    let catalogue: LockedCatalogue
    let layout: StoreLayout
    let remote: Remote
    var jobs: Int = 4
    var progress: ProgressHandler?
    /// Ranges closer than this are fetched in one request, the gap included.
    var coalesceGap: Int64 = 1 << 20
    /// The most one request fetches.
    var maxRequest: Int64 = 32 << 20

    private var objects: any ObjectStore { remote.objects }

    /// How long the chunks of a partial pull are kept from gc: the restore that follows has this long.
    static let holdSeconds: Double = 3600

    /// Pulls checkpoint `commit`; with `select`, only the files it picks from the manifest (a *partial*
    /// pull: their chunks and delta bases, held from gc for ``holdSeconds`` for the restore that follows,
    /// with no checkpoint recorded, since this store does not have all of it).
    func pull(_ commit: RemoteCommit, select: (@Sendable (Manifest) throws -> [String])? = nil) async throws -> PullReport {
        let started = ContinuousClock.now
        var report = PullReport(remote: remote.name, id: commit.id, run: commit.run, step: commit.step, pulled: false)
        try CheckpointStore.validateRunName(commit.run)
        let lock = try StoreLock(path: layout.lockPath, mode: .shared)
        defer { withExtendedLifetime(lock) {} }
        if let local = try catalogue.with({ try $0.checkpoint(run: commit.run, step: commit.step) }) {
            guard local.id == commit.id || local.content == commit.content else {
                throw CKStoreError(.conflict, "this store already has a different checkpoint of run \(commit.run) at step \(commit.step) (\(local.id.short)) than remote \(remote.name) (\(commit.id.short))")
            }
            report.id = local.id
            return report
        }
        // The manifest first: its SHA-256 is the checkpoint id.
        let (manifest, manifestFrame) = try await manifest(of: commit, report: &report)
        let droppedTensors = commit.droppedTensors.mapValues { Set($0) }
        var droppedPaths = Set(commit.droppedFiles.keys)
        if let select {
            let chosen = Set(try select(manifest))
            droppedPaths.formUnion(manifest.files.map(\.path).filter { !chosen.contains($0) })
            report.partial = true
        }
        let uses = manifest.chunkUses(id: commit.id, droppedPaths: droppedPaths, droppedTensors: droppedTensors)

        // Every frame the closure needs that this store lacks, delta bases included, where the commit's
        // own index objects say it is.
        let indexes = Set(commit.indexes)
        var wanted = [Catalogue.RemoteFrameRow]()
        var seen = Set<ChunkDigest>([commit.id.digest])
        var frontier = Array(uses.keys.filter { $0 != commit.id.digest })
        while let digest = frontier.popLast() {
            guard seen.insert(digest).inserted else { continue }
            if try catalogue.with({ try $0.containsChunk(digest) }) { continue }
            guard let row = try catalogue.with({ try $0.remoteFrame(remote.url, digest, in: indexes) }) else {
                throw CKStoreError(.damaged, "remote \(remote.name): checkpoint \(commit.id.short) needs chunk \(digest), which none of its index objects lists")
            }
            wanted.append(row)
            if let base = row.frame.base { frontier.append(base) }
            frontier += row.frame.inputs
        }
        let meter = ProgressMeter("pull", total: wanted.reduce(0) { $0 + Int64($1.frame.range.count) }, handler: progress)
        let fetched = try await fetch(wanted, report: &report, meter: meter)

        // Checked (decoded from memory and hashed) while they are written as stored into local packs;
        // nothing is recorded until both are done.
        async let verified: Void = verify(fetched)
        let sink = PackSink(layout: layout)
        let needManifest = try !catalogue.with { try $0.containsChunk(commit.id.digest) }
        let written = (needManifest ? [manifestFrame] : []) + fetched
        for frame in written { try sink.append(frame.chunk, kind: frame.kind) }
        let sealed = try sink.seal()
        do {
            try await verified
            let contentDigest = try manifest.contentDigest()
            var drops = commit.droppedFiles.sorted { $0.key < $1.key }.map { path, part in
                Committer.PartDrop(paths: [path], part: CheckpointPart(rawValue: part))
            }
            if !droppedTensors.isEmpty {
                drops.append(Committer.PartDrop(paths: [], tensors: droppedTensors.mapValues { $0.sorted() }, part: .optimizer))
            }
            let record = CommitLog.Record(id: commit.id, run: commit.run, step: commit.step, content: contentDigest, createdAt: manifest.createdAt)
            try Committer(catalogue: catalogue, layout: layout).commit(packs: sealed) { (catalogue, added) throws -> Committer.Decision<Void> in
                if select != nil {
                    // Not a checkpoint of this store: the chunks are held for the restore instead.
                    for digest in seen where try !catalogue.containsChunk(digest) {
                        throw CKStoreError(.conflict, "chunk \(digest), which this store had, was removed by a concurrent gc while \(commit.id.short) was being pulled; get it again")
                    }
                    try catalogue.holdChunks(withBases: seen, until: Date().timeIntervalSince1970 + Self.holdSeconds)
                    return .keep(())
                }
                if let local = try catalogue.checkpoint(run: commit.run, step: commit.step) {
                    guard local.id == commit.id else {
                        throw CKStoreError(.conflict, "run \(commit.run) got a different checkpoint at step \(commit.step) (\(local.id.short)) while \(commit.id.short) was being pulled")
                    }
                    return .keep((), record: record)
                }
                let new = Catalogue.NewCheckpoint(id: commit.id, manifest: manifest, contentDigest: contentDigest, storedBytesAdded: added, chunkUses: manifest.chunkUses(id: commit.id))
                return .commit(.checkpoint(new, drops: drops), ())
            }
        } catch {
            // Nothing refers to the new packs: removed now rather than left to gc's grace period.
            let recorded = Set(try catalogue.with { try $0.packRows().map(\.id) })
            for pack in sealed where !recorded.contains(pack.id) {
                try? FileSystem.removeFile(layout.packPath(pack.id))
            }
            throw error
        }
        report.pulled = true
        report.framesAdded = written.count
        report.seconds = (ContinuousClock.now - started) / .seconds(1)
        return report
    }

    /// The manifest of a remote checkpoint, read from the remote and checked against its id and its
    /// commit object, with the frame it came in.
    func manifest(of commit: RemoteCommit, report: inout PullReport) async throws -> (Manifest, FetchedFrame) {
        let (manifest, frame) = try await manifest(id: commit.id, indexes: commit.indexes, report: &report)
        guard manifest.run == commit.run, manifest.step == commit.step, try manifest.contentDigest() == commit.content else {
            throw CKStoreError(.damaged, "remote \(remote.name): commit object of \(commit.run)@\(commit.step) names checkpoint \(commit.id.short), whose manifest says otherwise")
        }
        return (manifest, frame)
    }

    /// The manifest `id` (a checkpoint's or a shard's), from the frame that one of `indexes` locates,
    /// checked against its SHA-256.
    func manifest(id: CheckpointID, indexes: [String], report: inout PullReport) async throws -> (Manifest, FetchedFrame) {
        try await RemoteSession(catalogue: catalogue, remote: remote).loadIndexes(indexes)
        guard let row = try catalogue.with({ try $0.remoteFrame(remote.url, id.digest, in: Set(indexes)) }) else {
            throw CKStoreError(.damaged, "remote \(remote.name): no index object of \(id.short) lists its manifest")
        }
        let frame = try await fetch([row], report: &report)[0]
        let bytes = try FrameCodec(level: .default).decode(ChunkBytes(frame.chunk.payload), encoding: frame.chunk.encoding, rawLength: frame.chunk.rawLength).array
        guard SHA256Hasher.digest(bytes) == id.digest else {
            throw CKStoreError(.damaged, "remote \(remote.name): the manifest \(id.short) in pack \(row.pack) fails its SHA-256")
        }
        return (try Manifest.decode(bytes, id: id), frame)
    }

    /// Decodes every fetched frame and checks it against its SHA-256, before anything is recorded (rule
    /// 6). Frames are decoded from memory along their delta chains, each base once, the chains in parallel;
    /// a base this store already had is read (and checked) from the local store.
    func verify(_ fetched: [FetchedFrame]) async throws {
        let fetchedDigests = Set(fetched.map(\.chunk.digest))
        // Predicted frames, and the frames built on them, decode from several fetched frames: they are
        // checked after the trees of single bases, each through ``checkPredicted``.
        let byDigest = Dictionary(fetched.map { ($0.chunk.digest, $0) }, uniquingKeysWith: { first, _ in first })
        var deferred = Set<ChunkDigest>()
        func isDeferred(_ frame: FetchedFrame, depth: Int = 0) -> Bool {
            if !frame.chunk.inputs.isEmpty { return true }
            guard depth < ChunkReader.hardChainLimit, let base = frame.chunk.base, let parent = byDigest[base] else { return false }
            return isDeferred(parent, depth: depth + 1)
        }
        var children = [ChunkDigest: [FetchedFrame]]()
        var roots = [FetchedFrame]()
        for frame in fetched {
            if isDeferred(frame) {
                deferred.insert(frame.chunk.digest)
            } else if let base = frame.chunk.base, fetchedDigests.contains(base) {
                children[base, default: []].append(frame)
            } else {
                roots.append(frame)
            }
        }
        let local = ChunkReader(index: ChunkIndex(catalogue: catalogue), packs: PackReaderCache(layout: layout))
        let codec = FrameCodec(level: .default)
        let remoteName = remote.name
        let tree = children
        /// Checks `frame` (its base's bytes given when it was fetched too) and everything built on it;
        /// returns how many frames it checked.
        @Sendable func check(_ frame: FetchedFrame, base: ChunkBytes?) throws -> Int {
            let chunk = frame.chunk
            let bytes = try codec.decode(ChunkBytes(chunk.payload), encoding: chunk.encoding, rawLength: chunk.rawLength) {
                if let base { return base }
                guard let digest = chunk.base else { throw CKStoreError(.damaged, "a delta frame names no base") }
                return try local.read(digest, checks: .all, what: "chunk \(digest), the base of \(chunk.digest)")
            }
            guard bytes.withUnsafeBytes({ SHA256Hasher.digest($0) }) == chunk.digest else {
                throw CKStoreError(.damaged, "remote \(remoteName): chunk \(chunk.digest) does not decode to bytes with that SHA-256 (the pack object is damaged)")
            }
            var count = 1
            for child in tree[chunk.digest] ?? [] { count += try check(child, base: bytes) }
            return count
        }
        let workers = max(1, min(ProcessInfo.processInfo.activeProcessorCount, 8))
        let checked = try await withThrowingTaskGroup(of: Int.self) { group in
            var iterator = roots.makeIterator()
            for _ in 0..<workers {
                guard let root = iterator.next() else { break }
                group.addTask { try check(root, base: nil) }
            }
            var total = 0
            while let count = try await group.next() {
                total += count
                if let root = iterator.next() { group.addTask { try check(root, base: nil) } }
            }
            return total
        }
        let checkedPredicted = try checkPredicted(deferred, fetched: byDigest, local: local)
        guard checked + checkedPredicted == fetched.count else {
            throw CKStoreError(.damaged, "remote \(remoteName): \(fetched.count - checked - checkedPredicted) fetched frames form a cycle of delta bases")
        }
    }

    /// Checks the fetched predicted frames and the frames built on them: each is decoded from its base and
    /// inputs, fetched ones decoded (and checked) from memory on the way, the others read from the local
    /// store. Returns how many frames it checked.
    private func checkPredicted(_ digests: Set<ChunkDigest>, fetched: [ChunkDigest: FetchedFrame], local: ChunkReader) throws -> Int {
        guard !digests.isEmpty else { return 0 }
        let codec = FrameCodec(level: .default)
        let remoteName = remote.name
        // Decoded fetched frames that a predicted frame needs more than once stay for this check only.
        var decoded = [ChunkDigest: ChunkBytes]()
        func resolve(_ digest: ChunkDigest, hops: Int) throws -> ChunkBytes {
            if let known = decoded[digest] { return known }
            guard let frame = fetched[digest] else {
                return try local.read(digest, checks: .all, what: "chunk \(digest), a base or input of a fetched chunk")
            }
            guard hops < ChunkReader.hardChainLimit else {
                throw CKStoreError(.damaged, "remote \(remoteName): chunk \(digest): its chain of bases and inputs is longer than \(ChunkReader.hardChainLimit) frames (a cycle?)")
            }
            let chunk = frame.chunk
            let bytes = try codec.decode(ChunkBytes(chunk.payload), encoding: chunk.encoding, rawLength: chunk.rawLength) {
                guard let base = chunk.base else { throw CKStoreError(.damaged, "a delta frame names no base") }
                return try resolve(base, hops: hops + 1)
            } input: { try resolve($0, hops: hops + 1) }
            guard bytes.withUnsafeBytes({ SHA256Hasher.digest($0) }) == digest else {
                throw CKStoreError(.damaged, "remote \(remoteName): chunk \(digest) does not decode to bytes with that SHA-256 (the pack object is damaged)")
            }
            // Only what predicted frames read is kept: their bases and inputs, not the frames themselves.
            if !digests.contains(digest) || hops > 0 { decoded[digest] = bytes }
            return bytes
        }
        for digest in digests.sorted() {
            _ = try resolve(digest, hops: 0)
            // Frames of one checkpoint's tensor share their parents' moments; at most 32 decoded chunks
            // (32 MiB) are kept for the next frames, so that a pull's memory does not grow with its size.
            if decoded.count > 32 { decoded.removeAll(keepingCapacity: true) }
        }
        return digests.count
    }

    /// A frame fetched from the remote, checked against its checksum and the digest the index gave.
    struct FetchedFrame: Sendable {
        var chunk: EncodedChunk
        var kind: FrameKind
    }

    /// Fetches frames by ranged GETs, neighbours in one request, at most `jobs` requests at once.
    private func fetch(_ rows: [Catalogue.RemoteFrameRow], report: inout PullReport, meter: ProgressMeter? = nil) async throws -> [FetchedFrame] {
        // Requests: runs of frames of one pack whose gaps are small.
        var requests = [(pack: String, range: Range<Int64>, frames: [RemoteFrame])]()
        for (pack, frames) in Dictionary(grouping: rows, by: \.pack) {
            for frame in frames.map(\.frame).sorted(by: { $0.offset < $1.offset }) {
                if var last = requests.last, last.pack == pack, frame.range.lowerBound - last.range.upperBound <= coalesceGap,
                   frame.range.upperBound - last.range.lowerBound <= maxRequest, frame.range.lowerBound >= last.range.upperBound {
                    last.range = last.range.lowerBound..<frame.range.upperBound
                    last.frames.append(frame)
                    requests[requests.count - 1] = last
                } else {
                    requests.append((pack, frame.range, [frame]))
                }
            }
        }
        let objects = self.objects, remoteName = remote.name
        var out = [FetchedFrame]()
        out.reserveCapacity(rows.count)
        try await withThrowingTaskGroup(of: ([FetchedFrame], Int64).self) { group in
            var iterator = requests.makeIterator()
            func add(_ request: (pack: String, range: Range<Int64>, frames: [RemoteFrame])) {
                group.addTask {
                    let key = RemoteLayout.pack(request.pack)
                    let bytes: [UInt8]
                    do {
                        bytes = try await objects.get(key, range: request.range)
                    } catch let error as CKStoreError where error.code == .notFound {
                        throw CKStoreError(.damaged, "remote \(remoteName): pack \(key) is missing", cause: error)
                    }
                    guard bytes.count == request.range.count else {
                        throw CKStoreError(.damaged, "remote \(remoteName): pack \(key) is shorter than its index says")
                    }
                    let frames = try bytes.withUnsafeBytes { (buffer) throws -> [FetchedFrame] in
                        let parser = PackParser(bytes: buffer, name: key)
                        return try request.frames.map { (frame) throws -> FetchedFrame in
                            let (header, payload) = try parser.frame(at: frame.offset - request.range.lowerBound, storedLength: frame.storedLength, expected: frame.digest, checkChecksum: true)
                            return FetchedFrame(
                                chunk: EncodedChunk(digest: header.digest, encoding: header.encoding, rawLength: header.rawLength, payload: Array(buffer[payload]), base: header.base, inputs: header.inputs),
                                kind: header.kind)
                        }
                    }
                    meter?.add(Int64(bytes.count))
                    return (frames, Int64(bytes.count))
                }
            }
            for _ in 0..<max(1, jobs) {
                guard let request = iterator.next() else { break }
                add(request)
            }
            while let (frames, bytes) = try await group.next() {
                out += frames
                report.bytesDownloaded += bytes
                report.requests += 1
                if let request = iterator.next() { add(request) }
            }
        }
        return out
    }
}
