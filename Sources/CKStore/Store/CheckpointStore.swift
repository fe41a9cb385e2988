import Foundation
import Synchronization

/// A checkpoint store: one folder holding packs of deduplicated, compressed chunks and the SQLite
/// catalogue that indexes them.
///
/// ```swift
/// let store = try CheckpointStore.open(at: "/data/ckstore", create: true)
/// let result = try await store.put(directory: "out/checkpoint-500", options: PutOptions(run: "gpt2-finetune"))
/// try await store.restore(.latest(run: "gpt2-finetune"), to: "resume/")
/// ```
///
/// Safe to share between tasks: the catalogue connection is behind a mutex, and pack files are written by
/// one put at a time per writer and read with positioned reads.
public final class CheckpointStore: Sendable {
    /// The store's folder.
    public let path: String
    let layout: StoreLayout
    private let catalogue: LockedCatalogue
    let contexts = ZstdContextPool()
    /// Frames read since the store was opened (tests check that partial reads stay partial).
    let framesRead = Atomic<Int>(0)

    private init(layout: StoreLayout, catalogue: Catalogue) {
        self.path = layout.root
        self.layout = layout
        self.catalogue = LockedCatalogue(catalogue)
    }

    /// Opens the store at `path`.
    ///
    /// - Parameters:
    ///   - path: the store's folder.
    ///   - create: create the store when it does not exist.
    /// - Throws: ``CKStoreError`` with code `notFound` when there is no store and `create` is false,
    ///   `unsupportedSchema` when a newer ckstore wrote it, `damaged` when the catalogue is corrupt.
    public static func open(at path: String, create: Bool = false) throws -> CheckpointStore {
        let layout = StoreLayout(root: path)
        let exists = FileSystem.exists(layout.cataloguePath)
        if !exists {
            guard create else {
                if FileSystem.isDirectory(layout.packsRoot) {
                    throw CKStoreError(.damaged, "store \(path) has packs but no catalogue (ckstore.db); run `ckstore repair` to rebuild it")
                }
                throw CKStoreError(.notFound, "no ckstore store at \(path); create one with `ckstore init` (or give --store / CKSTORE_PATH)")
            }
            if FileSystem.exists(path) && !FileSystem.isDirectory(path) {
                throw CKStoreError(.alreadyExists, "cannot create a store at \(path): it exists and is not a folder")
            }
            try FileSystem.createDirectory(path)
            try FileSystem.createDirectory(layout.packsRoot)
            // All 256 fan-out folders up front: a put then never creates folders, so the number of
            // system calls (and fsyncs) of a put does not depend on its pack's random name.
            for prefix in 0..<256 {
                try FileSystem.createDirectory(layout.packsRoot + "/" + [UInt8(prefix)].hexString)
            }
            try FileSystem.createDirectory(layout.temporaryRoot)
            _ = try FileHandle.openOrCreate(layout.lockPath)
        }
        let catalogue = try Catalogue(path: layout.cataloguePath)
        if !exists {
            try FileSystem.syncDirectory(path)
        }
        let store = CheckpointStore(layout: layout, catalogue: catalogue)
        if (1..<3).contains(catalogue.openedVersion) { try store.recordMissingPieces() }
        return store
    }

    /// Records the pieces of checkpoints committed before schema version 3, from their manifests; a
    /// checkpoint whose manifest cannot be read is left to `verify` and `repair` to report.
    private func recordMissingPieces() throws {
        for (id, runID) in try withCatalogue({ try $0.checkpointsWithoutPieces() }) {
            guard let manifest = try? manifest(of: id) else { continue }
            try withCatalogue { catalogue in
                try catalogue.database.transaction {
                    try catalogue.recordPieces(of: id, runID: runID, manifest: manifest)
                    let tensors = try catalogue.droppedTensors(of: id).mapValues { Array($0) }
                    try catalogue.forgetPieces(of: id, paths: Array(try catalogue.droppedFiles(of: id).keys), tensors: tensors)
                }
            }
        }
    }

    /// Runs `body` with exclusive use of the catalogue connection.
    func withCatalogue<T: Sendable>(_ body: (Catalogue) throws -> T) throws -> T {
        try catalogue.with(body)
    }

    /// Resolves a reference that the catalogue alone can answer (every form but `RUN@latest-valid`).
    public func resolve(_ reference: CheckpointReference) throws -> CheckpointID {
        try withCatalogue { (catalogue) throws in try catalogue.resolve(reference) }
    }

    /// Resolves any reference to one checkpoint id; `RUN@latest-valid` verifies candidates, newest first.
    public func checkpoint(for reference: CheckpointReference) async throws -> CheckpointID {
        if case .latestValid(let run) = reference {
            return try await latestValid(run: run)
        }
        return try resolve(reference)
    }

    /// The checkpoints of one run, or of every run, ordered by run and step.
    public func list(run: String? = nil) throws -> [CheckpointSummary] {
        try withCatalogue { (catalogue) throws in
            if let run {
                return try catalogue.summaries(where: "r.name = ?", [.text(run)])
            }
            return try catalogue.summaries()
        }
    }

    /// The catalogue's summary of one checkpoint.
    public func summary(of id: CheckpointID) throws -> CheckpointSummary {
        guard let summary = try withCatalogue({ (catalogue) throws in try catalogue.summary(of: id) }) else {
            throw CKStoreError(.notFound, "no checkpoint \(id.short)")
        }
        return summary
    }

    /// Tunes the C allocator of this process for puts and restores: chunk-sized buffers (1 MiB) are
    /// reused from the heap instead of being mapped fresh and returned to the system after each use.
    ///
    /// Fresh pages cost a fault and zeroing each (in a virtual machine, several times a copy of the same
    /// bytes): with this, a restore of 285 MiB spent half the system time and 20% less wall time. It
    /// changes the whole process, so the library never calls it itself; the `ckstore` tool calls it at
    /// start, and a training loop may. Heap memory kept this way is bounded by the peak in flight.
    public static func configureAllocatorForLargeBuffers() {
        system_keep_freed_memory(mmapThreshold: 16 << 20, trimThreshold: 512 << 20)
    }

    /// Reads, checks and parses a checkpoint's manifest.
    public func manifest(of id: CheckpointID) throws -> Manifest {
        let reader = PackReaderCache(layout: layout)
        let bytes = try readChunk(id.digest, readers: reader, what: "manifest of checkpoint \(id.short)")
        return try Manifest.decode(bytes.array, id: id)
    }

    /// Reads one chunk: locate it, read its frame, decode it and check its digest.
    func readChunk(_ digest: ChunkDigest, readers: PackReaderCache, what: @autoclosure () -> String) throws -> ChunkBytes {
        guard let location = try withCatalogue({ (catalogue) throws in try catalogue.location(of: digest) }) else {
            throw CKStoreError(.damaged, "\(what()): chunk \(digest) is not in the store")
        }
        return try readChunk(at: location, readers: readers, what: what())
    }

    /// Reads one chunk from where the catalogue says it is; damage is reported as `what: …`.
    func readChunk(at location: Catalogue.ChunkLocation, readers: PackReaderCache, checks: ChunkChecks = .all, what: @autoclosure () -> String) throws -> ChunkBytes {
        do {
            return try loadChunk(at: location, readers: readers, checks: checks)
        } catch {
            // Failing I/O stays what it is (the data may be fine); everything else is damage.
            let wrapped = CKStoreError.wrap(error)
            let code: CKStoreError.Code = [.ioFailure, .noSpace].contains(wrapped.code) ? wrapped.code : .damaged
            throw CKStoreError(code, "\(what()): \(wrapped.message)", cause: wrapped)
        }
    }

    /// A delta chain longer than this is damage (a cycle, or frames no put writes): puts keep chains to
    /// the store's maximum delta depth, which is far below.
    static let hardChainLimit = 64

    /// Reads, checks and decodes one chunk, decoding its delta base first when it has one.
    ///
    /// Bases are checked with `checks` less `.digest`: when the decoded chunk is re-hashed, that covers
    /// every bit of its bases too (a wrong base bit is a wrong output bit), so they need no check of their
    /// own; with `.checksums`, every frame of the chain is checked.
    func loadChunk(at location: Catalogue.ChunkLocation, readers: PackReaderCache, checks: ChunkChecks = .all, hops: Int = 0) throws -> ChunkBytes {
        let reader = try readers.reader(for: location.pack)
        framesRead.add(1, ordering: .relaxed)
        let (header, payload) = try reader.readFrame(at: location.offset, storedLength: location.storedLength, expected: location.digest, checkChecksum: checks.contains(.checksums))
        let codec = FrameCodec(level: .default, contexts: contexts)
        let bytes = try codec.decode(payload, encoding: header.encoding, rawLength: header.rawLength) {
            guard let base = header.base else { throw CKStoreError(.damaged, "chunk \(location.digest) is a delta frame without a base") }
            guard hops < Self.hardChainLimit else {
                throw CKStoreError(.damaged, "chunk \(location.digest): its delta chain is longer than \(Self.hardChainLimit) frames (a cycle?)")
            }
            guard let baseLocation = try withCatalogue({ (catalogue) throws in try catalogue.location(of: base) }) else {
                throw CKStoreError(.damaged, "chunk \(location.digest) is a delta against chunk \(base), which is not in the store")
            }
            return try loadChunk(at: baseLocation, readers: readers, checks: checks.subtracting(.digest), hops: hops + 1)
        }
        if header.encoding != .raw { payload.releaseMapping() }
        guard !checks.contains(.digest) || bytes.withUnsafeBytes({ SHA256Hasher.digest($0) }) == location.digest else {
            throw CKStoreError(.damaged, "chunk \(location.digest) in pack \(location.pack) decodes to bytes with a different SHA-256")
        }
        return bytes
    }
}

/// What reading a chunk checks.
struct ChunkChecks: OptionSet, Sendable {
    let rawValue: UInt8

    /// Each frame's checksum: the stored bytes (header and payload) are the ones written.
    static let checksums = ChunkChecks(rawValue: 1)
    /// The decoded bytes' SHA-256 against the chunk's digest: what was stored decodes to what was put.
    static let digest = ChunkChecks(rawValue: 2)
    /// Both: what `verify --full` and single reads do.
    static let all: ChunkChecks = [.checksums, .digest]
}

/// The catalogue connection and the lock that serializes its use.
final class LockedCatalogue: @unchecked Sendable {
    // `catalogue` is only touched while `lock` is held; each call holds it only for its SQL.
    private let lock = Mutex<Void>(())
    private let catalogue: Catalogue

    init(_ catalogue: Catalogue) { self.catalogue = catalogue }

    func with<T: Sendable>(_ body: (Catalogue) throws -> T) throws -> T {
        try lock.withLock { _ in try body(catalogue) }
    }
}

/// Opens each pack once per operation and shares the reader between tasks. A pack that failed to open
/// stays failed for the operation: a later use gets the same error instead of quietly retrying (a
/// prefetch that hit a failing disk must not hide it from the read that follows).
final class PackReaderCache: Sendable {
    private let layout: StoreLayout
    // Open readers and failed opens by pack, protected by this mutex.
    private let readers = Mutex<[PackID: Result<PackReader, CKStoreError>]>([:])

    init(layout: StoreLayout) { self.layout = layout }

    func reader(for id: PackID) throws -> PackReader {
        if let known = readers.withLock({ $0[id] }) { return try known.get() }
        let opened: Result<PackReader, CKStoreError>
        do {
            opened = .success(try PackReader(id: id, path: layout.packPath(id)))
        } catch {
            opened = .failure(CKStoreError.wrap(error))
        }
        readers.withLock { $0[id] = opened }
        return try opened.get()
    }
}
