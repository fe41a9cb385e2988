import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension CheckpointStore {
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
        try await CKStoreError.wrapping("restore of \(id.short)") { try await restoreChecked(id, to: destination, options: options) }
    }

    /// One file to write: where, and from which chunks (with the bytes to put first, for a tensor subset).
    fileprivate struct Output: Sendable {
        var path: String
        var mode: UInt32
        var prefix: [UInt8]
        var chunks: [ChunkRef]
        var size: Int64
        /// The tensor each chunk belongs to, for error messages.
        var tensorOfChunk: [Int: String] = [:]

        /// "chunk 3 (tensor layers.0.attn.weight)", to name what damage breaks.
        func describe(_ index: Int) -> String {
            tensorOfChunk[index].map { "chunk \(index), tensor \($0)" } ?? "chunk \(index)"
        }
    }

    private func restoreChecked(_ id: CheckpointID, to destination: String, options: RestoreOptions) async throws -> RestoreResult {
        let started = ContinuousClock.now
        let lock = try StoreLock(path: layout.lockPath, mode: .shared)
        defer { withExtendedLifetime(lock) {} }
        let manifest = try self.manifest(of: id)
        for file in manifest.files {
            guard RelativePath.isSafe(file.path) else {
                throw CKStoreError(.unsafePath, "checkpoint \(id.short): manifest names the path \(file.path.debugDescription), which would leave the target folder; refused")
            }
            if let target = file.linkTarget {
                let folder = file.path.split(separator: "/").dropLast().joined(separator: "/")
                guard !target.hasPrefix("/"), RelativePath.normalize(folder.isEmpty ? target : folder + "/" + target) != nil else {
                    throw CKStoreError(.unsafePath, "checkpoint \(id.short): symbolic link \(file.path) points to \(target), outside the target folder; refused")
                }
            }
        }

        let (outputs, links) = try plan(manifest, id: id, options: options)
        let created = try prepareDestination(destination, force: options.force)
        let staging = destination + "/.ckstore-restore-" + PackID.random().hex.prefix(12)
        var succeeded = false
        defer {
            FileSystem.removeTree(staging)
            if !succeeded && created { FileSystem.removeTree(destination) }
        }
        try FileSystem.createDirectory(staging)

        let reader = chunkReader()
        let chunks = RestoreChunks(outputs)
        var bytes: Int64 = 0
        // Files are restored two at a time, so that small files do not leave a core idle. Chunks in flight
        // stay bounded: each file has its own window of half the chunks.
        let window = max(2, options.maxChunksInFlight / 2)
        try await withThrowingTaskGroup(of: Int64.self) { group in
            var next = 0
            let filesAtOnce = 2
            while next < outputs.count && next < filesAtOnce {
                let output = outputs[next]
                group.addTask { try await self.write(output, into: staging, reader: reader, chunks: chunks, checkpoint: id, window: window); return output.size }
                next += 1
            }
            while let size = try await group.next() {
                bytes += size
                if next < outputs.count {
                    let output = outputs[next]
                    group.addTask { try await self.write(output, into: staging, reader: reader, chunks: chunks, checkpoint: id, window: window); return output.size }
                    next += 1
                }
            }
        }
        for link in links {
            let path = staging + "/" + link.path
            try FileSystem.createDirectory(parentFolder(of: path))
            if case .failure(let error) = system_symlink(link.linkTarget ?? "", path) {
                throw CKStoreError.io("cannot create symbolic link \(link.path)", error)
            }
        }
        // Everything verified: move into place.
        let names = outputs.map(\.path) + links.map(\.path)
        for name in names {
            try moveIntoPlace(name, from: staging, to: destination)
        }
        succeeded = true
        return RestoreResult(id: id, files: names, bytes: bytes, seconds: (ContinuousClock.now - started) / .seconds(1))
    }

    /// Decides which files (or tensor subsets) to write.
    private func plan(_ manifest: Manifest, id: CheckpointID, options: RestoreOptions) throws -> ([Output], [FileEntry]) {
        let dropped = try withCatalogue { try $0.droppedFiles(of: id) }
        for path in options.files {
            if let part = dropped[RelativePath.normalize(path) ?? path] {
                throw CKStoreError(.notFound, "checkpoint \(id.short) (\(manifest.run)@\(manifest.step)) no longer has \(path): retention dropped its \(part) part")
            }
        }
        var selected = manifest.files.filter { dropped[$0.path] == nil }
        if !options.files.isEmpty {
            var byPath = [String: FileEntry]()
            for file in manifest.files { byPath[file.path] = file }
            selected = []
            for path in options.files {
                let normalized = RelativePath.normalize(path) ?? path
                guard let file = byPath[normalized] else {
                    throw CKStoreError(.notFound, "checkpoint \(id.short) (\(manifest.run)@\(manifest.step)) has no file \(path); its files: \(manifest.files.map(\.path).joined(separator: ", "))")
                }
                selected.append(file)
            }
        }
        // Tensors a part rule dropped: such a file comes back as a valid safetensors file without them.
        let droppedTensors = try withCatalogue { try $0.droppedTensors(of: id) }
        var outputs = [Output]()
        let links = options.tensors.isEmpty ? selected.filter { $0.format == .symlink } : []
        if options.tensors.isEmpty {
            for file in selected where file.format != .symlink {
                if let gone = droppedTensors[file.path] {
                    outputs.append(try subsetOutput(of: file, tensors: (file.tensors ?? []).filter { !gone.contains($0.name) }, id: id))
                    continue
                }
                var output = Output(path: file.path, mode: file.mode, prefix: [], chunks: file.chunks, size: file.size)
                for tensor in file.tensors ?? [] {
                    for index in tensor.firstChunk..<(tensor.firstChunk + tensor.chunkCount) { output.tensorOfChunk[index] = tensor.name }
                }
                outputs.append(output)
            }
            return (outputs, links)
        }
        var matchedPatterns = Set<String>()
        for file in selected where file.format == .safetensors {
            let tensors = (file.tensors ?? []).filter { tensor in
                guard droppedTensors[file.path]?.contains(tensor.name) != true else { return false }
                let hits = options.tensors.filter { fnmatch($0, tensor.name, 0) == 0 }
                matchedPatterns.formUnion(hits)
                return !hits.isEmpty
            }
            guard !tensors.isEmpty else { continue }
            outputs.append(try subsetOutput(of: file, tensors: tensors, id: id))
        }
        let unmatched = options.tensors.filter { !matchedPatterns.contains($0) }
        guard unmatched.isEmpty else {
            throw CKStoreError(.notFound, "checkpoint \(id.short) (\(manifest.run)@\(manifest.step)) has no safetensors tensor matching \(unmatched.joined(separator: ", "))")
        }
        return (outputs, [])
    }

    /// A valid safetensors file holding `tensors` of `file`, in their order, with the file's metadata.
    private func subsetOutput(of file: FileEntry, tensors: [TensorEntry], id: CheckpointID) throws -> Output {
        let metadata = try originalMetadata(of: file, id: id)
        var described = [(name: String, dtype: DType, shape: [Int], length: Int64)]()
        var chunks = [ChunkRef]()
        var tensorOfChunk = [Int: String]()
        for tensor in tensors {
            guard let dtype = tensor.dtype, let shape = tensor.shape else { continue }
            described.append((tensor.name, dtype, shape, tensor.byteCount))
            for offset in 0..<tensor.chunkCount { tensorOfChunk[chunks.count + offset] = tensor.name }
            chunks += file.chunks[tensor.firstChunk..<(tensor.firstChunk + tensor.chunkCount)]
        }
        let header = SafetensorsFile.header(tensors: described, metadata: metadata)
        let size = Int64(header.count) + described.reduce(0) { $0 + $1.length }
        return Output(path: file.path, mode: file.mode, prefix: header, chunks: chunks, size: size, tensorOfChunk: tensorOfChunk)
    }

    /// The `__metadata__` of a stored safetensors file, read from its header chunk(s).
    private func originalMetadata(of file: FileEntry, id: CheckpointID) throws -> [String: String]? {
        let reader = chunkReader()
        let headerEnd = file.tensors?.map(\.begin).min() ?? file.size
        var header = [UInt8]()
        for chunk in file.chunks where Int64(header.count) < headerEnd {
            header += try reader.read(chunk.digest, what: "\(file.path) in checkpoint \(id.short)").array
        }
        guard header.count >= 8 else { return nil }
        let length = Int(header.loadLittleEndian(UInt64.self, at: 0))
        guard 8 + length <= header.count else { return nil }
        return try? SafetensorsFile.parse(header: Array(header[8..<(8 + length)]), size: file.size, name: file.path).metadata
    }

    /// Creates `destination` if missing (returns true), or checks that it is empty unless `force`.
    private func prepareDestination(_ destination: String, force: Bool) throws -> Bool {
        if FileSystem.exists(destination) {
            guard FileSystem.isDirectory(destination) else {
                throw CKStoreError(.alreadyExists, "\(destination) exists and is not a folder")
            }
            let contents = try FileSystem.contents(of: destination).filter { !$0.hasPrefix(".ckstore-restore-") }
            guard contents.isEmpty || force else {
                throw CKStoreError(.alreadyExists, "\(destination) is not empty; restore into an empty folder or pass --force to replace files in it")
            }
            return false
        }
        try FileSystem.createDirectory(destination)
        return true
    }

    /// Reads, decodes, checks and writes the chunks of one output in parallel, each at its offset; at most
    /// `window` chunks are in flight.
    private func write(_ output: Output, into staging: String, reader: ChunkReader, chunks: RestoreChunks, checkpoint: CheckpointID, window: Int) async throws {
        let path = staging + "/" + output.path
        try FileSystem.createDirectory(parentFolder(of: path))
        let file = try SharedOutputFile(creating: path, mode: 0o600)
        var position = Int64(output.prefix.count)
        if !output.prefix.isEmpty {
            try output.prefix.withUnsafeBytes { try file.write($0, at: 0) }
        }
        let locations = try withCatalogue { (catalogue) throws -> [ChunkLocation] in
            try output.chunks.map { (chunk) throws in
                guard let location = try catalogue.location(of: chunk.digest) else {
                    throw CKStoreError(.damaged, "checkpoint \(checkpoint.short): \(output.path): chunk \(chunk.digest) is missing from the store")
                }
                return location
            }
        }
        var offsets = [Int64]()
        offsets.reserveCapacity(output.chunks.count)
        for chunk in output.chunks {
            offsets.append(position)
            position += Int64(chunk.length)
        }
        guard position == output.size else {
            throw CKStoreError(.damaged, "checkpoint \(checkpoint.short): \(output.path): the manifest's chunks add up to \(position) bytes, its size says \(output.size)")
        }
        try file.allocate(output.size)
        let what = "checkpoint \(checkpoint.short): \(output.path)"
        try await withThrowingTaskGroup(of: Void.self) { group in
            var inFlight = 0
            for (index, location) in locations.enumerated() {
                if inFlight == window {
                    try await group.next()
                    inFlight -= 1
                }
                let offset = offsets[index], length = output.chunks[index].length
                group.addTask {
                    try Task.checkCancellation()
                    let named = "\(what) (\(output.describe(index)))"
                    let bytes = try await chunks.bytes(at: location) { checks in
                        try reader.read(at: location, checks: checks, what: named)
                    }
                    guard bytes.count == length else {
                        throw CKStoreError(.damaged, "\(what): chunk \(index) has \(bytes.count) bytes, the manifest says \(length)")
                    }
                    try bytes.withUnsafeBytes { try file.write($0, at: offset) }
                    bytes.releaseMapping()
                }
                inFlight += 1
            }
            try await group.waitForAll()
        }
        if case .failure(let error) = system_chmod(path, mode_t(output.mode)) {
            throw CKStoreError.io("cannot set the mode of \(output.path)", error)
        }
    }

    /// Renames `staging/name` to `destination/name`, creating real folders on the way and refusing to
    /// pass through a symbolic link that a `--force` target already had.
    private func moveIntoPlace(_ name: String, from staging: String, to destination: String) throws {
        var folder = destination
        for component in name.split(separator: "/").dropLast() {
            folder += "/" + component
            switch system_lstat(folder) {
            case .success(let info):
                guard info.st_mode & S_IFMT == S_IFDIR else {
                    throw CKStoreError(.unsafePath, "\(folder) exists and is not a folder (a file or symbolic link); cannot restore \(name) there")
                }
            case .failure:
                try FileSystem.createDirectory(folder)
            }
        }
        let target = destination + "/" + name
        if case .success(let info) = system_lstat(target), info.st_mode & S_IFMT == S_IFDIR {
            throw CKStoreError(.alreadyExists, "\(target) is a folder; cannot replace it with a file")
        }
        try FileSystem.rename(staging + "/" + name, target)
    }

    private func parentFolder(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return String(path[..<slash])
    }
}

/// What a restore knows about the chunks it reads, shared by its tasks: which it re-hashed already, and
/// one read shared by every use of a chunk that occurs more than once (a zero-filled chunk used a hundred
/// times is decoded once), its bytes kept until the last use, up to `budget` bytes at a time.
private final class RestoreChunks: Sendable {
    private struct State {
        var verified = Set<ChunkDigest>()
        /// Uses still to come of chunks used more than once.
        var remainingUses: [ChunkDigest: Int]
        var shared = [ChunkDigest: (read: Task<ChunkBytes, any Error>, length: Int)]()
        var sharedBytes = 0
    }

    private let state: Mutex<State>
    private let budget: Int

    init(_ outputs: [CheckpointStore.Output], budget: Int = 32 << 20) {
        var uses = [ChunkDigest: Int]()
        for output in outputs {
            for chunk in output.chunks { uses[chunk.digest, default: 0] += 1 }
        }
        state = Mutex(State(remainingUses: uses.filter { $0.value > 1 }))
        self.budget = budget
    }

    /// The bytes of the chunk at `location`, from `read` (told what to check) or from another use's read.
    ///
    /// The first read of a chunk re-hashes its decoded bytes; a later one (a raw frame, which is read in
    /// place and not worth keeping, or a chunk over the budget) checks its frames' checksums, which proves
    /// the stored bytes are the ones that hashed right and so decode the same way.
    func bytes(at location: ChunkLocation, read: @escaping @Sendable (ChunkChecks) throws -> ChunkBytes) async throws -> ChunkBytes {
        enum Plan {
            case shared(Task<ChunkBytes, any Error>)
            case alone(ChunkChecks)
        }
        let digest = location.digest
        let plan = state.withLock { state -> Plan in
            defer { countUse(of: digest, in: &state) }
            if let shared = state.shared[digest] { return .shared(shared.read) }
            if (state.remainingUses[digest] ?? 0) > 1, location.encoding != .raw, state.sharedBytes + location.rawLength <= budget {
                let task = Task { try read(.digest) }
                state.shared[digest] = (task, location.rawLength)
                state.sharedBytes += location.rawLength
                return .shared(task)
            }
            return .alone(state.verified.contains(digest) ? .checksums : .digest)
        }
        switch plan {
        case .shared(let task):
            return try await task.value
        case .alone(let checks):
            let bytes = try read(checks)
            if checks.contains(.digest) { _ = state.withLock { $0.verified.insert(digest) } }
            return bytes
        }
    }

    private func countUse(of digest: ChunkDigest, in state: inout State) {
        guard let remaining = state.remainingUses[digest] else { return }
        if remaining > 1 {
            state.remainingUses[digest] = remaining - 1
            return
        }
        state.remainingUses[digest] = nil
        if let shared = state.shared.removeValue(forKey: digest) { state.sharedBytes -= shared.length }
    }
}
