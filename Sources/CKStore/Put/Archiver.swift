import Foundation
import Synchronization

extension CheckpointStore {
    /// Stores a checkpoint folder as a new checkpoint.
    ///
    /// Follows the commit protocol of DESIGN.md: chunks are hashed and compressed in parallel with a
    /// bound on bytes in flight; new frames go to packs under `tmp/`, which are fsynced and renamed into
    /// `packs/`; then one `BEGIN IMMEDIATE` transaction re-checks the reused chunks and records the
    /// checkpoint. The checkpoint is visible only once that transaction commits (I-5). A put that fails
    /// leaves the catalogue as it was; at worst an orphan pack remains for gc.
    ///
    /// ```swift
    /// var options = PutOptions(run: "gpt2-finetune", step: 500)
    /// options.metrics["loss"] = 2.31
    /// let result = try await store.put(directory: "out/checkpoint-500", options: options)
    /// print(result.id, result.storedBytesAdded)
    /// ```
    ///
    /// - Parameters:
    ///   - directory: the checkpoint folder as the trainer wrote it.
    ///   - options: run, step, metrics and how to store.
    /// - Returns: the new checkpoint's id and what the put cost.
    /// - Throws: ``CKStoreError`` naming the file concerned; `conflict` when the run already has a
    ///   different checkpoint at this step.
    public func put(directory: String, options: PutOptions) async throws(CKStoreError) -> PutResult {
        try await CKStoreError.wrapping("put of \(directory)") { try await putChecked(directory: directory, options: options) }
    }

    private func putChecked(directory: String, options: PutOptions) async throws -> PutResult {
        var scanner = DirectoryScanner(root: directory)
        scanner.followExternalLinks = options.followSymlinks
        scanner.excluded = FileSystem.canonicalPath(path)
        let inputs = try scanner.scan().map { entry in
            switch entry.kind {
            case .symlink(let target): PutInput(path: entry.relativePath, mode: entry.mode, content: .symlink(target: target))
            case .regular: PutInput(path: entry.relativePath, mode: entry.mode, content: .file(entry.sourcePath))
            }
        }
        return try await put(inputs, options: options, describing: directory, defaultStep: Self.stepFromFolderName(directory))
    }

    /// One file of a checkpoint being put.
    struct PutInput: Sendable {
        enum Content: Sendable {
            /// A regular file to read from disk.
            case file(String)
            /// Bytes in memory, or ranges of a mapped file (``PutLayout``).
            case memory(any PutSource)
            case symlink(target: String)
        }

        var path: String
        var mode: UInt32
        var content: Content

        /// The file's size as it is now (0 for a link).
        var size: Int64 {
            switch content {
            case .file(let source): FileSystem.size(of: source)
            case .memory(let file): (try? file.size()) ?? 0
            case .symlink: 0
            }
        }

        /// The bytes of a small regular file (`trainer_state.json`, `config.json`); empty above 64 MiB.
        func smallContents() throws -> [UInt8]? {
            switch content {
            case .file(let source): return try CheckpointStore.readSmallFile(source)
            case .memory(let file):
                let size = try file.size()
                return size <= 64 << 20 ? try file.read(count: Int(size), at: 0) : []
            case .symlink: return nil
            }
        }
    }

    /// Puts the files `inputs` as one checkpoint: the core of ``put(directory:options:)`` and of saves from
    /// memory. `what` names the checkpoint in errors.
    func put(_ inputs: [PutInput], options: PutOptions, describing what: String, defaultStep: Int64?) async throws -> PutResult {
        try await Archiver.put(inputs, options: options, describing: what, defaultStep: defaultStep, seams: putSeams())
    }

    /// The characters a run name may hold besides letters and digits (of any script).
    static let runNamePunctuation: Set<Character> = [".", "_", "-", "+", "=", ",", ":"]

    /// Throws `invalidArgument` unless `name` is a run name: 1 to 128 letters, digits and `. _ - + = , :`,
    /// not starting with `.` or `-`. No `/` (remote keys and paths), no spaces (shell scripts), no `@`
    /// (`RUN@STEP` references).
    static func validateRunName(_ name: String) throws {
        let rule = "a run name is 1 to 128 letters, digits and . _ - + = , : (not starting with . or -)"
        guard !name.isEmpty else { throw CKStoreError(.invalidArgument, "the run name is empty; \(rule)") }
        guard name.count <= 128 else { throw CKStoreError(.invalidArgument, "the run name is \(name.count) characters long; \(rule)") }
        if let bad = name.first(where: { !($0.isLetter || $0.isNumber || runNamePunctuation.contains($0)) }) {
            throw CKStoreError(.invalidArgument, "the run name \(name.debugDescription) holds \(String(bad).debugDescription); \(rule)")
        }
        guard let first = name.first, first != ".", first != "-" else {
            throw CKStoreError(.invalidArgument, "the run name \(name.debugDescription) starts with \(name.prefix(1)); \(rule)")
        }
    }

    /// `checkpoint-500` → 500, as Hugging Face's Trainer names its folders.
    static func stepFromFolderName(_ directory: String) -> Int64? {
        let name = directory.split(separator: "/").last.map(String.init) ?? directory
        guard name.hasPrefix("checkpoint-") else { return nil }
        return Int64(name.dropFirst("checkpoint-".count))
    }

    static func readSmallFile(_ path: String) throws -> [UInt8] {
        let file = try SystemFile.openForReading(path)
        let size = try file.size()
        guard size <= 64 << 20 else { return [] }
        return try file.read(count: Int(size), at: 0)
    }
}

/// Stores the files of one put: chunks them, hashes and encodes the chunks in parallel, appends the new
/// frames to its pack sink, and commits them with the checkpoint in one catalogue transaction.
///
/// Its seams are the catalogue's chunk lookups (``ChunkIndex``), a ``ChunkReader`` for delta bases, a
/// ``PackSink`` for new frames, and the catalogue connection for the commit alone.
///
/// Unchecked Sendable: ``store(_:path:mode:bytesInFlight:)`` runs for two files at once and touches only
/// members that are immutable or safe to share (the index, sink, codec, claims, encoder, progress meter);
/// what it learns comes back in its ``StoredFile`` and is merged by ``record(_:)`` on the put's own task,
/// which alone runs ``commit(_:)`` and ``appendManifest(_:digest:)``.
final class Archiver: @unchecked Sendable {
    let committer: Committer
    private let index: ChunkIndex
    private let sink: PackSink
    private let codec: FrameCodec
    private let tensorEncoder: TensorEncoder
    let maxBytesInFlight: Int
    /// Whether weight chunks may be predicted from the optimizer's moments (``StoreSettings/predictWeights``).
    let predictsWeights: Bool
    /// Digests this put has claimed for writing, shared with the workers (see ``ChunkClaims``).
    private let claims = ChunkClaims()
    private var sealed = [SealedPack]()
    /// Chunks found in the store, with where to read them again if a concurrent gc removes them first.
    private var reused = [ChunkDigest: ReusedChunk]()
    private(set) var newChunkCount = 0
    private(set) var bytesAdded: Int64 = 0
    /// Whether this put appended any frame (chunks or a manifest) that a commit must record.
    private(set) var hasNewFrames = false
    /// Counts the bytes of every chunk read and stored (or found stored). Set before the first store.
    var progress: ProgressMeter?
    /// The items of the `.distcp` files this put holds, by file path and item offset, from the `.metadata`
    /// files beside them (``DistributedCheckpoint``). Set before the first store.
    var dcpItemNames = [String: [Int64: String]]()

    /// A chunk found in the store, and where to read it again.
    struct ReusedChunk: Sendable {
        var source: any PutSource
        var path: String
        var offset: Int64
        var length: Int
    }

    init(seams: PutSeams, sink: PackSink, options: PutOptions, settings: StoreSettings, parent: Manifest?) throws {
        let reader = seams.reader, contexts = seams.contexts
        self.committer = seams.committer
        self.index = seams.index
        self.sink = sink
        self.codec = FrameCodec(level: options.compressionLevel ?? settings.compressionLevel, contexts: contexts)
        let maxDepth = options.maxDeltaDepth ?? settings.maxDeltaDepth
        try StoreSettings.checkDeltaDepth(maxDepth)
        self.tensorEncoder = TensorEncoder(index: index, reader: reader, codec: codec, maxDepth: maxDepth, parent: parent)
        self.maxBytesInFlight = max(2, options.maxBytesInFlight)
        self.predictsWeights = settings.predictWeights && maxDepth > 0
    }

    /// What a worker did with one chunk.
    private struct ChunkResult: Sendable {
        var index: Int
        var offset: Int64
        var digest: ChunkDigest
        var length: Int
        /// Whether the worker encoded the chunk and appended its frame to the sink.
        var appended: Bool
        var foundInStore: Bool
    }

    /// One file stored: its manifest entry, and what the put must know of its chunks.
    struct StoredFile: Sendable {
        var entry: FileEntry
        var warning: String?
        /// Chunks written (their frames appended) and chunks found in the store.
        fileprivate var newChunks = 0
        fileprivate var reused = [ChunkDigest: ReusedChunk]()
    }

    /// Takes what storing one file learnt into the put (on the put's own task, between stores).
    func record(_ stored: StoredFile) {
        newChunkCount += stored.newChunks
        if stored.newChunks > 0 { hasNewFrames = true }
        reused.merge(stored.reused) { first, _ in first }
    }

    /// Stores one file's bytes from `file` under `path`: cuts it into chunks in order and hashes, encodes
    /// and appends them in parallel, with at most `bytesInFlight` bytes of chunks taken and not done.
    ///
    /// Each byte is hashed once, as part of its chunk: the file's digest is computed over the chunk
    /// digests (``FileEntry/chunkListDigest(_:)``) instead of by a second, serial SHA-256 pass over the
    /// whole file, which bounded puts on many cores (docs/design.md, "Put on many cores").
    func store(_ file: any PutSource, path: String, mode: UInt32, bytesInFlight maxBytesInFlight: Int, layout known: (FileLayout, warning: String?)? = nil) async throws -> StoredFile {
        let identity = try file.identity()
        let size = try identity?.size ?? file.size()
        let (layout, warning) = known ?? FormatDetector.layout(of: file, path: path, size: size, dcpNames: dcpItemNames[path])
        var cursor = FileCursor(file: file, path: path, layout: layout, size: size)
        var chunks = [ChunkRef?]()
        var newChunks = 0
        var reused = [ChunkDigest: ReusedChunk]()
        let progress = self.progress

        let chunkIndex = self.index, codec = self.codec, claims = self.claims, tensorEncoder = self.tensorEncoder, sink = self.sink
        try await withThrowingTaskGroup(of: ChunkResult.self) { group in
            var bytesInFlight = 0
            var exhausted = false
            while true {
                // At least one chunk is always in flight, whatever its size.
                while !exhausted && (bytesInFlight == 0 || bytesInFlight < maxBytesInFlight) {
                    guard let chunk = try cursor.next() else {
                        exhausted = true
                        break
                    }
                    let offset = chunk.offset, place = chunk.tensor
                    if let place { tensorEncoder.prefetchBase(for: place, length: chunk.length) }
                    let index = chunks.count
                    chunks.append(nil)
                    bytesInFlight += chunk.length
                    group.addTask {
                        try Task.checkCancellation()
                        let bytes = try chunk.read(file)
                        let digest = SHA256Hasher.digest(bytes)
                        var result = ChunkResult(index: index, offset: offset, digest: digest, length: bytes.count, appended: false, foundInStore: false)
                        if claims.isClaimed(digest) { return result }
                        if try chunkIndex.contains(digest) {
                            result.foundInStore = true
                            return result
                        }
                        guard claims.claim(digest) else { return result }
                        let encoded = try place.map { try tensorEncoder.encode(bytes, digest: digest, place: $0) } ?? codec.encode(bytes, digest: digest)
                        try sink.append(encoded, kind: .chunk)
                        result.appended = true
                        return result
                    }
                }
                guard let result = try await group.next() else { break }
                bytesInFlight -= result.length
                progress?.add(Int64(result.length))
                chunks[result.index] = ChunkRef(digest: result.digest, length: result.length)
                if result.appended {
                    newChunks += 1
                } else if result.foundInStore {
                    reused[result.digest] = ReusedChunk(source: file, path: path, offset: result.offset, length: result.length)
                }
            }
        }

        let tensorChunks = cursor.tensorChunks
        try cursor.finish(openedAs: identity)
        var tensors = [TensorEntry]()
        for (index, region) in layout.regions.enumerated() {
            guard case .tensor(let name, let dtype, let shape) = region.kind, let range = tensorChunks[index] else { continue }
            tensors.append(TensorEntry(name: name, dtype: dtype, shape: shape, begin: region.begin, end: region.end, firstChunk: range.lowerBound, chunkCount: range.count))
        }
        // Empty tensors have no bytes and so no region; they still belong in the manifest.
        for region in layout.emptyTensors {
            guard case .tensor(let name, let dtype, let shape) = region.kind else { continue }
            let first = tensors.firstIndex { $0.begin >= region.begin }.map { tensors[$0].firstChunk } ?? chunks.count
            tensors.append(TensorEntry(name: name, dtype: dtype, shape: shape, begin: region.begin, end: region.end, firstChunk: first, chunkCount: 0))
        }
        if !layout.emptyTensors.isEmpty {
            tensors.sort { ($0.begin, $0.end, $0.name) < ($1.begin, $1.end, $1.name) }
        }
        let chunkRefs = chunks.compactMap { $0 }
        guard chunkRefs.count == chunks.count else {
            throw CKStoreError(.ioFailure, "\(path): a chunk was read but never hashed (internal error); nothing was committed")
        }
        let entry = FileEntry(
            path: path, mode: mode, size: size, chunks: chunkRefs, format: layout.format,
            tensors: layout.format == .opaque ? nil : tensors, optimizer: layout.optimizer
        )
        return StoredFile(entry: entry, warning: warning, newChunks: newChunks, reused: reused)
    }

    /// Lets the weight chunks stored from now on be predicted from `sources`.
    func predictWeights(from sources: PredictionSources?) {
        tensorEncoder.predict(from: sources)
    }

    private func append(_ chunk: EncodedChunk, kind: FrameKind) throws {
        try sink.append(chunk, kind: kind)
        hasNewFrames = true
    }

    /// Appends the manifest frame (compressed: manifests are repetitive JSON).
    func appendManifest(_ bytes: [UInt8], digest: ChunkDigest) throws {
        let encoded = try codec.encode(bytes, digest: digest)
        try append(encoded, kind: .manifest)
    }

    /// Seals the open packs and commits them with what `decide` says through the store's ``Committer``
    /// (commit protocol step 3 and the commit record).
    ///
    /// The committer re-checks every reused chunk inside its transaction; if a concurrent gc removed one,
    /// nothing is committed, the missing chunks are written again from the input files into a new pack,
    /// and the commit is retried.
    func commit<T: Sendable>(_ decide: (Catalogue, _ bytesAdded: Int64) throws -> Committer.Decision<T>) throws -> T {
        sealed += try sink.seal()
        for attempt in 1...5 {
            let needs = Committer.Needs(reused: Array(reused.keys), bases: Array(tensorEncoder.bases.withLock { $0 }))
            let outcome = try committer.commit(packs: sealed, needs: needs) { (catalogue, added) throws -> Committer.Decision<T> in
                bytesAdded = added
                return try decide(catalogue, added)
            }
            guard case .missing(let missing) = outcome else {
                if case .done(let value) = outcome { return value }
                break
            }
            guard attempt < 5 else { break }
            // A concurrent gc removed chunks this put reused: write them again and retry.
            for digest in missing {
                guard let source = reused.removeValue(forKey: digest) else { continue }
                let bytes = try source.source.read(count: source.length, at: source.offset)
                guard SHA256Hasher.digest(bytes) == digest else {
                    throw CKStoreError(.conflict, "\(source.path) changed while it was being stored; put it again once the trainer has finished writing")
                }
                try append(try codec.encode(bytes, digest: digest), kind: .chunk)
                newChunkCount += 1
            }
            sealed += try sink.seal()
        }
        throw CKStoreError(.conflict, "could not commit: chunks kept vanishing under a concurrent garbage collection; try the put again")
    }
}

/// The digests a put has decided to write, shared by its workers so that two chunks with the same
/// content are encoded and written once.
final class ChunkClaims: Sendable {
    // Claimed digests, protected by this mutex.
    private let claimed = Mutex<Set<ChunkDigest>>([])

    func isClaimed(_ digest: ChunkDigest) -> Bool { claimed.withLock { $0.contains(digest) } }

    /// Claims `digest`; false when another worker claimed it first.
    func claim(_ digest: ChunkDigest) -> Bool { claimed.withLock { $0.insert(digest).inserted } }
}

extension Archiver {
    /// How many packs a put of `bytes` writes at once: the kernel serializes writes to one file, so a
    /// large put spreads its frames over up to 4 packs; a small one keeps to one (one fsync).
    static func packWriters(forBytes bytes: Int64) -> Int {
        Int(min(4, max(1, bytes / (128 << 20))))
    }
}
