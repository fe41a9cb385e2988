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
/// (neighbouring frames in one request, `jobs` at once). Each range is written as it arrives, frames as
/// stored, into local packs (its frames' checksums checked on the way); then every new frame is decoded
/// and hashed against its SHA-256 through the ``ChunkReader``, and only then does one transaction record
/// the checkpoint (rule 6, and I-5 locally). Memory is bounded by `jobs` ranges and one delta chain per
/// checking worker, never by the checkpoint (I-13).
struct Puller {
    let catalogue: LockedCatalogue
    let layout: StoreLayout
    let remote: Remote
    var jobs: Int = 4
    var progress: ProgressHandler?
    /// Ranges closer than this are fetched in one request, the gap included.
    var coalesceGap: Int64 = 1 << 20
    /// The most one request fetches: with `jobs`, what a pull holds in memory at once.
    var maxRequest: Int64 = 8 << 20

    private var objects: any ObjectStore { remote.objects }

    /// How long the chunks of a partial pull are kept from gc: the restore that follows has this long.
    static let holdSeconds: Double = 3600

    /// Pulls checkpoint `commit`; with `select`, only the files it picks from the manifest (a *partial*
    /// pull: their chunks and delta bases, held from gc for ``holdSeconds`` for the restore that follows,
    /// with no checkpoint recorded, since this store does not have all of it).
    func pull(_ commit: RemoteCommit, select: (@Sendable (Manifest) throws -> [String])? = nil) async throws -> PullReport {
        try await pull(commit, select: select, restoringTo: nil).report
    }

    /// Pulls checkpoint `commit` and, when `restoringTo` is given and the checkpoint was not in the store
    /// already, restores it whole into that folder over the frames just written, before recording it: the
    /// restore decodes every chunk the checkpoint uses and checks it against its SHA-256, and every
    /// new frame is one of those chunks or a base or input decoded on the way to one (a wrong bit of it would
    /// be a wrong bit of that chunk), so it is the check the pull needs, and the chains are decoded once
    /// instead of twice. A restore of some files or tensors only, or a checkpoint with predicted frames
    /// (whose prediction need not depend on every bit of its inputs), is checked frame by frame first.
    /// `restored` is nil when nothing was restored; the caller restores from the store then.
    func pull(_ commit: RemoteCommit, select: (@Sendable (Manifest) throws -> [String])? = nil,
              restoringTo restore: (destination: String, options: RestoreOptions)?) async throws -> (report: PullReport, restored: RestoreResult?) {
        let started = ContinuousClock.now
        var restored: RestoreResult?
        var report = PullReport(remote: remote.name, id: commit.id, run: commit.run, step: commit.step, pulled: false)
        try CheckpointStore.validateRunName(commit.run)
        let lock = try StoreLock(path: layout.lockPath, mode: .shared)
        defer { withExtendedLifetime(lock) {} }
        if let local = try catalogue.with({ try $0.checkpoint(run: commit.run, step: commit.step) }) {
            guard local.id == commit.id || local.content == commit.content else {
                throw CKStoreError(.conflict, "this store already has a different checkpoint of run \(commit.run) at step \(commit.step) (\(local.id.short)) than remote \(remote.name) (\(commit.id.short))")
            }
            report.id = local.id
            return (report, nil)
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

        // Streamed into local packs as the ranges arrive (each frame's checksum checked on the way), then
        // every new frame decoded and hashed through the chunk reader; nothing is recorded until both are
        // done. Memory holds `jobs` ranges and a delta chain per checking worker, whatever the size.
        let sink = PackSink(layout: layout)
        var sealed = [SealedPack]()
        var framesAdded = 0
        do {
            if try !catalogue.with({ try $0.containsChunk(commit.id.digest) }) {
                try sink.append(manifestFrame.chunk, kind: manifestFrame.kind)
                framesAdded += 1
            }
            let arrived = try await stream(wanted, into: sink, report: &report, meter: meter)
            framesAdded += arrived.count
            sealed = try sink.seal()
            if let restore, select == nil, restore.options.isWhole, !arrived.values.contains(where: \.predicted) {
                let frames = arrivedFrames(arrived)
                let queries = ArrivedRestoreQueries(frames: frames, dropped: (commit.droppedFiles, droppedTensors))
                let reader = ChunkReader(index: frames, packs: PackReaderCache(layout: layout))
                var restorer = Restorer(catalogue: queries, layout: layout, reader: reader, maxBytesInFlight: restore.options.maxBytesInFlight)
                restorer.progress = restore.options.progress
                restored = try await restorer.restore(commit.id, manifest: manifest, to: restore.destination, options: restore.options, started: ContinuousClock.now)
            } else {
                try await check(arrived)
            }
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
            sealed += sink.abandon()
            let recorded = Set(try catalogue.with { try $0.packRows().map(\.id) })
            for pack in sealed where !recorded.contains(pack.id) {
                try? FileSystem.removeFile(layout.packPath(pack.id))
            }
            throw error
        }
        report.pulled = true
        report.framesAdded = framesAdded
        report.seconds = (ContinuousClock.now - started) / .seconds(1)
        return (report, restored)
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

    /// A frame fetched from the remote, checked against its checksum and the digest the index gave.
    struct FetchedFrame: Sendable {
        var chunk: EncodedChunk
        var kind: FrameKind
    }

    /// A frame a pull wrote into this store's new packs: where it is, the frame it is a delta of, and
    /// whether it is predicted from inputs.
    struct ArrivedFrame: Sendable {
        var location: ChunkLocation
        var base: ChunkDigest?
        var predicted: Bool
    }

    /// Decodes every arrived frame and checks it against its SHA-256 (rule 6) through the chunk reader,
    /// which finds them in the new packs and the rest in the store: each delta tree is decoded from its
    /// root once, a base's bytes kept while the frames built on it are checked.
    private func check(_ arrived: [ChunkDigest: ArrivedFrame]) async throws {
        var builtOn = [ChunkDigest: [ChunkLocation]]()
        var roots = [ChunkLocation]()
        for frame in arrived.values {
            if let base = frame.base, arrived[base] != nil {
                builtOn[base, default: []].append(frame.location)
            } else {
                roots.append(frame.location)
            }
        }
        let reader = ChunkReader(index: arrivedFrames(arrived), packs: PackReaderCache(layout: layout))
        let remoteName = remote.name
        let workers = max(1, min(ProcessInfo.processInfo.activeProcessorCount, 8))
        let checked = try await reader.check(roots: roots, builtOn: builtOn, workers: workers) {
            "remote \(remoteName): chunk \($0) (the pack object is damaged)"
        }
        guard checked == arrived.count else {
            throw CKStoreError(.damaged, "remote \(remoteName): \(arrived.count - checked) fetched frames form a cycle of delta bases")
        }
    }

    /// Where the arrived frames are, the store's frames behind them.
    private func arrivedFrames(_ arrived: [ChunkDigest: ArrivedFrame]) -> ArrivedFrames {
        ArrivedFrames(arrived: arrived.mapValues(\.location), index: ChunkIndex(catalogue: catalogue))
    }

    /// One ranged GET: a run of frames of one pack whose gaps are small.
    private struct Request: Sendable {
        var pack: String
        var range: Range<Int64>
        var frames: [RemoteFrame]
    }

    /// The requests that fetch `rows`: neighbours in one request, none over ``maxRequest``.
    private func requests(_ rows: [Catalogue.RemoteFrameRow]) -> [Request] {
        var requests = [Request]()
        for (pack, frames) in Dictionary(grouping: rows, by: \.pack).sorted(by: { $0.key < $1.key }) {
            for frame in frames.map(\.frame).sorted(by: { $0.offset < $1.offset }) {
                if var last = requests.last, last.pack == pack, frame.range.lowerBound - last.range.upperBound <= coalesceGap,
                   frame.range.upperBound - last.range.lowerBound <= maxRequest, frame.range.lowerBound >= last.range.upperBound {
                    last.range = last.range.lowerBound..<frame.range.upperBound
                    last.frames.append(frame)
                    requests[requests.count - 1] = last
                } else {
                    requests.append(Request(pack: pack, range: frame.range, frames: [frame]))
                }
            }
        }
        return requests
    }

    /// Fetches one request and parses its frames, each checked against its checksum and the digest the
    /// index gave.
    private static func get(_ request: Request, from objects: any ObjectStore, remoteName: String) async throws -> [FetchedFrame] {
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
        return try bytes.withUnsafeBytes { (buffer) throws -> [FetchedFrame] in
            let parser = PackParser(bytes: buffer, name: key)
            return try request.frames.map { (frame) throws -> FetchedFrame in
                let (header, payload) = try parser.frame(at: frame.offset - request.range.lowerBound, storedLength: frame.storedLength, expected: frame.digest, checkChecksum: true)
                return FetchedFrame(
                    chunk: EncodedChunk(digest: header.digest, encoding: header.encoding, rawLength: header.rawLength, payload: Array(buffer[payload]), base: header.base, inputs: header.inputs),
                    kind: header.kind)
            }
        }
    }

    /// Fetches frames into memory (a manifest), neighbours in one request, at most `jobs` at once.
    private func fetch(_ rows: [Catalogue.RemoteFrameRow], report: inout PullReport) async throws -> [FetchedFrame] {
        var out = [FetchedFrame]()
        try await run(requests(rows), report: &report, each: { $0 }, deliver: { out += $0 })
        return out
    }

    /// Fetches frames into `sink` as they arrive, `jobs` requests at once (each task writes what it
    /// fetched, so no range waits in memory for another); returns where each frame is.
    private func stream(_ rows: [Catalogue.RemoteFrameRow], into sink: PackSink, report: inout PullReport, meter: ProgressMeter) async throws -> [ChunkDigest: ArrivedFrame] {
        var arrived = [ChunkDigest: ArrivedFrame]()
        arrived.reserveCapacity(rows.count)
        try await run(requests(rows), report: &report, each: { (frames) throws -> [ArrivedFrame] in
            let written = try frames.map { ArrivedFrame(location: try sink.append($0.chunk, kind: $0.kind), base: $0.chunk.base, predicted: !$0.chunk.inputs.isEmpty) }
            meter.add(frames.reduce(0) { $0 + Int64(PackFormat.frameHeaderSize + $1.chunk.payload.count) })
            return written
        }, deliver: { frames in
            for frame in frames { arrived[frame.location.digest] = frame }
        })
        return arrived
    }

    /// Runs `requests`, `jobs` at once: each one's frames go through `each` in the task that fetched
    /// them, and what it returns to `deliver`, in completion order.
    private func run<T: Sendable>(_ requests: [Request], report: inout PullReport, each: @escaping @Sendable ([FetchedFrame]) throws -> T,
                                  deliver: (T) throws -> Void) async throws {
        let objects = self.objects, remoteName = remote.name
        try await withThrowingTaskGroup(of: (T, Int64).self) { group in
            var iterator = requests.makeIterator()
            func add(_ request: Request) {
                group.addTask { (try each(try await Self.get(request, from: objects, remoteName: remoteName)), Int64(request.range.count)) }
            }
            for _ in 0..<max(1, jobs) {
                guard let request = iterator.next() else { break }
                add(request)
            }
            while let (value, bytes) = try await group.next() {
                if let request = iterator.next() { add(request) }
                try deliver(value)
                report.bytesDownloaded += bytes
                report.requests += 1
            }
        }
    }
}

/// Where a pull finds frames while it checks them: those it wrote into its new packs (not recorded yet),
/// then the store's.
struct ArrivedFrames: ChunkLocating {
    let arrived: [ChunkDigest: ChunkLocation]
    let index: any ChunkLocating

    func location(of digest: ChunkDigest) throws -> ChunkLocation? {
        if let location = arrived[digest] { return location }
        return try index.location(of: digest)
    }
}

/// What a restore over a pull's new frames asks: where chunks are (``ArrivedFrames``), and the parts the
/// commit object says were dropped.
struct ArrivedRestoreQueries: RestoreQueries {
    let frames: ArrivedFrames
    let dropped: (files: [String: String], tensors: [String: Set<String>])

    func locations(of digests: [ChunkDigest]) throws -> [ChunkLocation?] { try digests.map { try frames.location(of: $0) } }

    func droppedParts(of id: CheckpointID) throws -> (files: [String: String], tensors: [String: Set<String>]) { dropped }
}
