import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads checkpoints out of the store. Every read of stored files goes through here, whether into a
/// folder (`get`) or into memory (the library's `load`, `loadFile`, `loadTensors` and `readTensor`), so
/// that all of them hold the store's shared lock while they read, check each chunk against its SHA-256
/// once, and decode a chunk used more than once only once.
///
/// Its seams: the catalogue's ``RestoreQueries`` (chunk locations and dropped parts), the store's layout
/// (its lock) and a ``ChunkReader``.
struct Restorer {
    let catalogue: any RestoreQueries
    let layout: StoreLayout
    let reader: ChunkReader
    /// How many bytes of chunks may be read and decoded at once, all outputs together.
    var maxBytesInFlight = PutOptions.defaultBytesInFlight
    /// Told how many bytes have been produced.
    var progress: ProgressHandler?

    /// Runs `body` holding the store's lock shared: gc deletes pack files only under the exclusive one, so
    /// no pack this read uses goes away meanwhile.
    func locked<T>(_ body: () async throws -> T) async throws -> T {
        let lock = try StoreLock(path: layout.lockPath, mode: .shared)
        defer { withExtendedLifetime(lock) {} }
        return try await body()
    }

    /// The checkpoint's manifest, read and checked.
    func manifest(of id: CheckpointID) throws -> Manifest {
        try reader.manifest(of: id)
    }

    /// What part rules took from the checkpoint.
    func dropped(of id: CheckpointID) throws -> DroppedParts {
        let dropped = try catalogue.droppedParts(of: id)
        return DroppedParts(files: dropped.files, tensors: dropped.tensors)
    }

    /// Produces every output of `plan` into the target `target` makes for it, two outputs at a time (so
    /// that small files do not leave a core idle), each with its own window of half the bytes in flight.
    ///
    /// - Returns: the bytes produced.
    /// - Throws: `damaged` naming the checkpoint, output and chunk when stored data fails a check.
    func fill(_ plan: RestorePlan, target: @escaping @Sendable (RestorePlan.Output) throws -> any RestoreTarget) async throws -> Int64 {
        let chunks = RestoreChunks(plan.outputs)
        let window = max(1, maxBytesInFlight / 2)
        let outputs = plan.outputs, id = plan.id
        let meter = ProgressMeter("get", total: outputs.reduce(0) { $0 + $1.size }, handler: progress)
        let trace = Trace("get")
        var bytes: Int64 = 0
        // Largest first: a big output started last would leave cores idle at the end.
        let order = outputs.indices.sorted { (outputs[$0].size, $1) > (outputs[$1].size, $0) }
        try await withThrowingTaskGroup(of: Int64.self) { group in
            var next = 0
            func start() {
                let output = outputs[order[next]]
                group.addTask { try await self.fill(output, into: try target(output), chunks: chunks, checkpoint: id, window: window, meter: meter); return output.size }
                next += 1
            }
            while next < outputs.count && next < 2 { start() }
            while let size = try await group.next() {
                bytes += size
                trace.mark("an output of \(size) bytes written")
                if next < outputs.count { start() }
            }
        }
        return bytes
    }

    /// Reads, decodes, checks and writes the chunks of one output in parallel, each at its offset; at most
    /// `window` bytes of chunks are in flight (at least one chunk, whatever its size).
    private func fill(_ output: RestorePlan.Output, into target: any RestoreTarget, chunks: RestoreChunks, checkpoint: CheckpointID, window: Int, meter: ProgressMeter) async throws {
        var position = Int64(output.prefix.count)
        let locations = try locations(of: output, checkpoint: checkpoint)
        var offsets = [Int64]()
        offsets.reserveCapacity(output.chunks.count)
        for chunk in output.chunks {
            offsets.append(position)
            position += Int64(chunk.length)
        }
        guard position == output.size else {
            throw CKStoreError(.damaged, "checkpoint \(checkpoint.short): \(output.path): the manifest's chunks add up to \(position) bytes, its size says \(output.size)")
        }
        try target.allocate(output.size)
        if !output.prefix.isEmpty {
            try output.prefix.withUnsafeBytes { try target.write($0, at: 0) }
            meter.add(Int64(output.prefix.count))
        }
        let what = "checkpoint \(checkpoint.short): \(output.path)"
        let reader = self.reader
        try await withThrowingTaskGroup(of: Int.self) { group in
            var bytesInFlight = 0
            for (index, location) in locations.enumerated() {
                let offset = offsets[index], length = output.chunks[index].length
                while bytesInFlight > 0 && bytesInFlight + length > window, let done = try await group.next() {
                    bytesInFlight -= done
                }
                bytesInFlight += length
                group.addTask {
                    try Task.checkCancellation()
                    let named = "\(what) (\(output.describe(index)))"
                    let bytes = try await chunks.bytes(at: location) { checks in
                        try reader.read(at: location, checks: checks, what: named)
                    }
                    guard bytes.count == length else {
                        throw CKStoreError(.damaged, "\(what): chunk \(index) has \(bytes.count) bytes, the manifest says \(length)")
                    }
                    try bytes.withUnsafeBytes { try target.write($0, at: offset) }
                    bytes.releaseMapping()
                    meter.add(Int64(length))
                    return length
                }
            }
            try await group.waitForAll()
        }
    }
}

extension Restorer {
    /// Where each chunk of `output` is stored; `damaged` naming the checkpoint, output and chunk for one
    /// the catalogue does not have.
    func locations(of output: RestorePlan.Output, checkpoint: CheckpointID) throws -> [ChunkLocation] {
        try zip(output.chunks, try catalogue.locations(of: output.chunks.map(\.digest))).map { (chunk, location) throws in
            guard let location else {
                throw CKStoreError(.damaged, "checkpoint \(checkpoint.short): \(output.path): chunk \(chunk.digest) is missing from the store")
            }
            return location
        }
    }
}

/// Where a restored output's bytes go: a file in the staging folder, or memory.
protocol RestoreTarget: Sendable {
    /// Writes `buffer` at `offset`; writes of one output go to disjoint ranges, from several tasks.
    func write(_ buffer: UnsafeRawBufferPointer, at offset: Int64) throws
    /// Makes room for `length` bytes before any is written.
    func allocate(_ length: Int64) throws
}

extension SharedOutputFile: RestoreTarget {}

/// Restored bytes in memory: a buffer the caller lends (``CheckpointStore/readTensor(_:name:in:into:)``)
/// or one this target allocates and hands over as an array.
final class MemoryTarget: RestoreTarget, @unchecked Sendable {
    // The buffer is fixed at init; writes go to disjoint ranges (one per chunk), so they need no lock.
    private let buffer: UnsafeMutableRawBufferPointer
    private let owned: Bool

    /// A target that writes into `buffer`, which must outlive it.
    init(borrowing buffer: UnsafeMutableRawBufferPointer) {
        self.buffer = buffer
        self.owned = false
    }

    /// A target with a buffer of its own of `count` bytes.
    init(count: Int) {
        self.buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, 1), alignment: 64)
        self.owned = true
    }

    deinit { if owned { buffer.deallocate() } }

    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws {
        guard offset >= 0, Int(offset) + bytes.count <= buffer.count else {
            throw CKStoreError(.internalInvariant, "a restore wrote \(bytes.count) bytes at \(offset) into a buffer of \(buffer.count)")
        }
        UnsafeMutableRawBufferPointer(rebasing: buffer[Int(offset)..<(Int(offset) + bytes.count)]).copyMemory(from: bytes)
    }

    func allocate(_ length: Int64) throws {
        guard length <= buffer.count else {
            throw CKStoreError(.invalidArgument, "\(length) bytes do not fit a buffer of \(buffer.count)")
        }
    }

    /// The first `count` bytes written.
    func bytes(count: Int) -> [UInt8] { Array(UnsafeRawBufferPointer(rebasing: buffer[0..<count])) }
}

extension CheckpointStore {
    /// A restorer over this store for one operation.
    func restorer(maxBytesInFlight: Int = PutOptions.defaultBytesInFlight) -> Restorer {
        Restorer(catalogue: catalogue, layout: layout, reader: chunkReader(), maxBytesInFlight: maxBytesInFlight)
    }

    /// Restores a checkpoint (or some of its files or tensors) into a folder.
    ///
    /// Every chunk is checked against its SHA-256 (the manifest's, whose own SHA-256 is the checkpoint id),
    /// once per restore: later uses of the same chunk check its frame checksums. Files are
    /// written into a staging folder inside `destination` and renamed into place only when all of them
    /// verified, so a failed restore leaves no partial output. Paths come from the manifest and are checked:
    /// nothing is written outside `destination` (I-7).
    ///
    /// ```swift
    /// let id = try store.resolve(.latest(run: "gpt2-finetune"))
    /// _ = try await store.restore(id, to: "resume/")
    /// ```
    ///
    /// - Throws: ``CKStoreError``: `alreadyExists` when `destination` is not empty (unless
    ///   `options.force`), `notFound` for a file or tensor pattern that matches nothing, `damaged` with
    ///   the file and chunk named when stored data fails a check, `unsafePath` for a manifest path that
    ///   would leave `destination`.
    public func restore(_ id: CheckpointID, to destination: String, options: RestoreOptions = RestoreOptions()) async throws(CKStoreError) -> RestoreResult {
        try await CKStoreError.wrapping("restore of \(id.short)") {
            let started = ContinuousClock.now
            var restorer = restorer(maxBytesInFlight: options.maxBytesInFlight)
            restorer.progress = options.progress
            return try await restorer.locked {
                try await restorer.restore(id, manifest: try restorer.manifest(of: id), to: destination, options: options, started: started)
            }
        }
    }
}

extension Restorer {
    /// Restores checkpoint `id`, whose checked manifest is `manifest`, into `destination` as `options`
    /// say: what ``CheckpointStore/restore(_:to:options:)`` does under the store's lock, and what a pull
    /// into a folder does over the frames it has just written (``Puller``).
    func restore(_ id: CheckpointID, manifest: Manifest, to destination: String, options: RestoreOptions, started: ContinuousClock.Instant) async throws -> RestoreResult {
        var manifest = manifest
        try manifest.checkRestorable(id: id)
        if let shard = options.shard {
            // What rank `shard.index` wrote, so that each rank of a resuming job fetches its own files.
            guard let shards = manifest.shards else {
                throw CKStoreError(.invalidArgument, "checkpoint \(id.short) (\(manifest.run)@\(manifest.step)) was not put as shards; restore it without --shard")
            }
            guard shards.count == shard.count else {
                throw CKStoreError(.invalidArgument, "checkpoint \(id.short) (\(manifest.run)@\(manifest.step)) has \(shards.count) shards, not \(shard.count); restore it whole (the framework reshards on load) or with --shard I/\(shards.count)")
            }
            manifest.files = manifest.files(ofShard: shard.index)
        }
        let plan = try RestorePlan.files(of: manifest, id: id, dropped: try dropped(of: id), files: options.files, tensors: options.tensors, reader: reader)
        let bytes = try await RestoreDestination(destination, force: options.force, keepSpecialModeBits: options.keepSpecialModeBits).write(plan, with: self)
        return RestoreResult(id: id, files: plan.paths, bytes: bytes, seconds: (ContinuousClock.now - started) / .seconds(1))
    }
}

extension Restorer {
    /// The SHA-256 of each output of `plan` (by path), computed from its chunks: decoded and checked in
    /// parallel, hashed in order, with at most ``maxBytesInFlight`` bytes decoded and not yet hashed.
    func sha256(of plan: RestorePlan) async throws -> [String: ChunkDigest] {
        let chunks = RestoreChunks(plan.outputs)
        let reader = self.reader, id = plan.id
        var digests = [String: ChunkDigest]()
        for output in plan.outputs {
            let locations = try locations(of: output, checkpoint: id)
            var hasher = SHA256Hasher()
            hasher.update(output.prefix)
            let what = "checkpoint \(id.short): \(output.path)"
            let lengths = output.chunks.map(\.length)
            let window = max(1, maxBytesInFlight)
            try await withThrowingTaskGroup(of: (Int, ChunkBytes).self) { group in
                var next = 0, hashed = 0, bytesHeld = 0
                var done = [Int: ChunkBytes]()
                func startWhileRoom() {
                    while next < locations.count && (bytesHeld == 0 || bytesHeld + lengths[next] <= window) {
                        let index = next, location = locations[index]
                        next += 1
                        bytesHeld += lengths[index]
                        group.addTask {
                            let named = "\(what) (\(output.describe(index)))"
                            let bytes = try await chunks.bytes(at: location) { checks in try reader.read(at: location, checks: checks, what: named) }
                            guard bytes.count == lengths[index] else {
                                throw CKStoreError(.damaged, "\(what): chunk \(index) has \(bytes.count) bytes, the manifest says \(lengths[index])")
                            }
                            return (index, bytes)
                        }
                    }
                }
                startWhileRoom()
                while hashed < locations.count, let (index, bytes) = try await group.next() {
                    done[index] = bytes
                    while let ready = done.removeValue(forKey: hashed) {
                        ready.withUnsafeBytes { hasher.update($0) }
                        ready.releaseMapping()
                        bytesHeld -= lengths[hashed]
                        hashed += 1
                    }
                    startWhileRoom()
                }
            }
            digests[output.path] = hasher.finalize()
        }
        return digests
    }
}

extension CheckpointStore {
    /// The SHA-256 of each regular file of checkpoint `id` (by path), computed from the stored chunks,
    /// each checked on the way: what `sha256sum` prints for the files a restore writes.
    ///
    /// Manifests no longer record every file's SHA-256 (``FileEntry/sha256``); this computes it, in
    /// parallel chunk by chunk and in order per file, without writing anything.
    public func sha256(of id: CheckpointID) async throws(CKStoreError) -> [String: ChunkDigest] {
        try await CKStoreError.wrapping("SHA-256 of the files of \(id.short)") {
            let restorer = restorer()
            return try await restorer.locked {
                let manifest = try restorer.manifest(of: id)
                let plan = try RestorePlan.files(of: manifest, id: id, dropped: try restorer.dropped(of: id), files: [], tensors: [], reader: restorer.reader)
                return try await restorer.sha256(of: plan)
            }
        }
    }
}
