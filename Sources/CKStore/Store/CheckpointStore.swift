import Foundation
import Synchronization

/// A checkpoint store: one folder holding packs of deduplicated, compressed chunks and the SQLite
/// catalogue that indexes them.
///
/// ```swift
/// let store = try CheckpointStore.open(at: "/data/ckstore", create: true)
/// let result = try await store.put(directory: "out/checkpoint-500", options: PutOptions(run: "gpt2-finetune"))
/// let id = try store.resolve(.latest(run: "gpt2-finetune"))
/// _ = try await store.restore(id, to: "resume/")
/// ```
///
/// Safe to share between tasks: the catalogue connection is behind a mutex, and pack files are written by
/// one put at a time per writer and read with positioned reads.
///
/// (`CheckpointStoreDocTests` compiles and runs this example.)
public final class CheckpointStore: Sendable {
    /// The store's folder.
    public let path: String
    let layout: StoreLayout
    let catalogue: LockedCatalogue
    let contexts = ZstdContextPool()
    /// Frames read since the store was opened (tests check that partial reads stay partial).
    let framesRead = FrameCounter()

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
        if try exists && FileSystem.size(of: layout.cataloguePath) == 0 && FileSystem.size(of: layout.cataloguePath + "-wal") == 0
            && (Self.holdsPacks(layout) || !CommitLog(layout: layout).records().isEmpty) {
            // An empty file where the catalogue was (truncated, or replaced by hand): SQLite would take it
            // for a new database, and the store would list nothing while its packs hold checkpoints.
            throw CKStoreError(.damaged, "store \(path) has packs but its catalogue (ckstore.db) is an empty file; run `ckstore repair` to rebuild it from the packs")
        }
        if !exists {
            // A store whose packs hold checkpoints never silently gets a new, empty catalogue (I-9): a
            // later gc would take every pack for an orphan.
            if try Self.holdsPacks(layout) || !(try CommitLog(layout: layout).records().isEmpty) {
                throw CKStoreError(.damaged, "store \(path) has packs but no catalogue (ckstore.db); run `ckstore repair` to rebuild it from the packs")
            }
            guard create else {
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
            try FileSystem.createDirectory(layout.commitsRoot)
            _ = try SystemFile.openOrCreate(layout.lockPath)
        }
        let catalogue: Catalogue
        do {
            catalogue = try Catalogue(path: layout.cataloguePath, readOnly: exists && FileSystem.isReadOnlyMount(layout.cataloguePath))
        } catch let error as CKStoreError where error.code == .noSpace && FileSystem.exists(layout.reservePath) {
            // The disk is full: give back the space kept for this, so that reading, `rm` and `gc` work
            // and can free space. Puts refuse until the reserve can be made again.
            try FileSystem.removeFile(layout.reservePath)
            catalogue = try Catalogue(path: layout.cataloguePath)
        }
        if !exists {
            try Self.makeReserve(layout)
            try FileSystem.syncDirectory(path)
        }
        let store = CheckpointStore(layout: layout, catalogue: catalogue)
        if (1..<3).contains(catalogue.openedVersion) { try store.recordMissingPieces() }
        if !CommitLog(layout: layout).isKept && !catalogue.isReadOnly { store.recordCommitsOfOlderStore() }
        return store
    }

    /// The space a store keeps back in `reserve`, a file of allocated blocks: when the disk fills up, the
    /// store gives it back so that `ls`, `get`, `verify`, `rm` and `gc` still work (SQLite needs room for
    /// its shared memory and log even to read) and can free space.
    static let reserveBytes: Int64 = 4 << 20

    /// Allocates the reserve file if it is missing.
    ///
    /// - Throws: `noSpace` when the disk cannot hold it.
    static func makeReserve(_ layout: StoreLayout) throws {
        guard !FileSystem.exists(layout.reservePath) else { return }
        let temporary = layout.temporaryRoot + "/reserve-" + PackID.random().hex
        do {
            let file = try SharedOutputFile(creating: temporary, mode: 0o600)
            try file.allocate(reserveBytes)
            try FileSystem.rename(temporary, layout.reservePath)
        } catch {
            try? FileSystem.removeFile(temporary)
            throw error
        }
    }

    /// Whether any sealed pack is in `packs/`.
    static func holdsPacks(_ layout: StoreLayout) throws -> Bool {
        guard FileSystem.isDirectory(layout.packsRoot) else { return false }
        return try PackDirectory(layout: layout).entries().contains { $0.id != nil }
    }

    /// Writes the commit records a store made before they existed lacks, one per catalogued checkpoint,
    /// through the ``Committer``. A store that cannot be written (a read-only mount) stays as it is: it is
    /// read the same way.
    private func recordCommitsOfOlderStore() {
        guard let summaries = try? list() else { return }
        var records = [CommitLog.Record]()
        for summary in summaries {
            guard let content = try? withCatalogue({ try $0.checkpoint(run: summary.run, step: summary.step)?.content }) else { continue }
            records.append(CommitLog.Record(id: summary.id, run: summary.run, step: summary.step, content: content, createdAt: summary.createdAt))
        }
        Committer(catalogue: catalogue, layout: layout).backfill(records)
    }

    /// Records the pieces of checkpoints committed before schema version 3, from their manifests; a
    /// checkpoint whose manifest cannot be read is left to `verify` and `repair` to report.
    private func recordMissingPieces() throws {
        for (id, runID) in try withCatalogue({ try $0.checkpointsWithoutPieces() }) {
            guard let manifest = try? manifest(of: id) else { continue }
            try withCatalogue { catalogue in
                try catalogue.write {
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
        try withCatalogue { (catalogue) throws in try catalogue.summaries(run: run) }
    }

    /// Checkpoints of `run` (every run when nil) some of whose shards are committed here but not all
    /// (`ls --pending`): never listed by ``list(run:)``, resolved by `latest` or counted by retention.
    public func pendingCheckpoints(run: String? = nil) throws -> [PendingCheckpoint] {
        PendingCheckpoint.grouping(try withCatalogue { (catalogue) throws in try catalogue.pendingShards(run: run) })
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

    /// The catalogue's chunk lookups, for the operations that need only those.
    var chunkIndex: ChunkIndex { ChunkIndex(catalogue: catalogue) }

    /// A reader of this store's chunks for one operation (it keeps the packs it opens until it goes).
    func chunkReader() -> ChunkReader {
        ChunkReader(index: chunkIndex, packs: PackReaderCache(layout: layout), contexts: contexts, counter: framesRead)
    }

    /// Reads, checks and parses a checkpoint's manifest.
    public func manifest(of id: CheckpointID) throws -> Manifest {
        try chunkReader().manifest(of: id)
    }
}

extension CheckpointStore {
    /// Removes the pending checkpoint of `run` at `step` (`rm --pending`): its shard records, then its
    /// shards in one transaction; the next gc frees what only they needed. What a job that was restarted
    /// does with the steps its crashed predecessor left incomplete, before it saves them again. Returns
    /// what was removed, nil when nothing is pending there.
    @discardableResult
    public func removePending(run: String, step: Int64) throws(CKStoreError) -> PendingCheckpoint? {
        try CKStoreError.wrapping("removal of pending \(run)@\(step)") {
            let lock = try StoreLock(path: layout.lockPath, mode: .shared)
            defer { withExtendedLifetime(lock) {} }
            let shards = try withCatalogue { try $0.pendingShards(run: run, step: step) }
            guard !shards.isEmpty else { return nil }
            try Committer(catalogue: catalogue, layout: layout).withdraw([], pendingSteps: [(run: run, step: step)]) {
                try withCatalogue { catalogue in try catalogue.write { try catalogue.deletePendingShards(shards.map(\.id)) } }
            }
            return PendingCheckpoint.grouping(shards).first
        }
    }
}
