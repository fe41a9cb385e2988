import CSQLite

/// The SQLite catalogue of a store: packs, chunks, runs, checkpoints and their references.
///
/// Not Sendable: ``CheckpointStore`` keeps it behind a mutex. Opening applies the connection settings
/// the commit protocol relies on (WAL, `synchronous=FULL` so that a commit is durable when it returns,
/// foreign keys) and migrates the schema.
final class Catalogue {
    /// The connection. Only `Catalogue/` uses it: everything else asks typed questions (a layering test
    /// checks that no SQL is written outside this folder).
    let database: SQLiteDatabase
    /// The schema version the catalogue had when opened (0 when it was created now).
    private(set) var openedVersion = 0
    private var statements: [String: SQLiteStatement] = [:]

    /// Whether this connection reads a store on a read-only mount (it cannot write, and sees no changes).
    let isReadOnly: Bool

    init(path: String, readOnly: Bool = false) throws {
        database = try SQLiteDatabase(path: path, immutable: readOnly)
        isReadOnly = readOnly
        if readOnly {
            // Nothing to set up or migrate; a schema this version cannot read is still refused.
            let version = try Schema.userVersion(database)
            guard version <= Schema.currentVersion else {
                throw CKStoreError(.unsupportedSchema, "catalogue \(path) has schema version \(version), but this ckstore knows versions up to \(Schema.currentVersion); upgrade ckstore to use this store")
            }
            openedVersion = version
            return
        }
        do {
            try database.execute("PRAGMA journal_mode = WAL")
            try database.execute("PRAGMA synchronous = FULL")
            try database.execute("PRAGMA foreign_keys = ON")
            // Up to 256 MiB of page cache (used only as pages are touched): a large sweep then writes each
            // changed page to the WAL once instead of spilling the 2 MiB default over and over.
            try database.execute("PRAGMA cache_size = -\(Self.pageCacheKiB)")
            openedVersion = try Schema.migrate(database)
        } catch let error as CKStoreError where error.code == .catalogue && error.message.contains("not a database") {
            throw CKStoreError(.damaged, "catalogue \(path) is damaged; run `ckstore repair` to rebuild it from the packs", cause: error)
        }
    }

    /// A cached prepared statement for `sql`.
    func statement(_ sql: String) throws -> SQLiteStatement {
        if let cached = statements[sql] { return cached }
        let prepared = try database.prepare(sql)
        statements[sql] = prepared
        return prepared
    }

    // MARK: Transactions

    /// Runs `body` in a transaction of `kind` that commits or rolls back as `body` says.
    func transaction<T>(_ kind: TransactionKind, _ body: () throws -> TransactionCompletion<T>) throws -> T {
        try database.transaction(kind, body)
    }

    /// Runs `body` in an immediate (write) transaction and commits it.
    func write<T>(_ body: () throws -> T) throws -> T {
        try database.transaction(.immediate) { .commit(try body()) }
    }

    /// Runs `body` in a deferred transaction: every read in it sees one snapshot of the catalogue, whatever
    /// other connections commit meanwhile.
    func read<T>(_ body: () throws -> T) throws -> T {
        try database.transaction(.deferred) { .commit(try body()) }
    }

    /// Starts a read transaction that stays open: every later read on this connection sees the catalogue
    /// as it is now, whatever other connections commit, until ``endSnapshot()`` (or the connection closes).
    func beginSnapshot() throws {
        try database.execute("BEGIN DEFERRED")
        // A deferred transaction takes its snapshot at its first read.
        _ = try statement("SELECT count(*) FROM packs").firstRow([]) { $0.int(0) }
    }

    /// Ends the snapshot ``beginSnapshot()`` started.
    func endSnapshot() {
        try? database.execute("ROLLBACK")
    }

    /// Folds the write-ahead log into the catalogue file, so that its size on disk reflects a sweep now.
    func truncateLog() throws {
        try database.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    }

    /// Runs `body` with SQLite's page cache set to `kibibytes` (a one-pass read gains nothing from the
    /// large cache a sweep wants).
    func withPageCache<T>(kibibytes: Int, _ body: () throws -> T) throws -> T {
        try database.execute("PRAGMA cache_size = -\(kibibytes)")
        defer { try? database.execute("PRAGMA cache_size = -\(Self.pageCacheKiB)") }
        return try body()
    }

    /// The page cache a catalogue connection runs with.
    static let pageCacheKiB = 262_144

    // MARK: Chunks

    func containsChunk(_ digest: ChunkDigest) throws -> Bool {
        try statement("SELECT 1 FROM chunks WHERE digest = ?").firstRow([.blob(digest.bytes)]) { _ in true } ?? false
    }

    func location(of digest: ChunkDigest) throws -> ChunkLocation? {
        try statement("SELECT pack_id, offset, stored_length, raw_length, encoding, kind FROM chunks WHERE digest = ?")
            .firstRow([.blob(digest.bytes)]) { (row) throws in
                guard let pack = PackID(hex: row.text(0)),
                      let encoding = FrameEncoding(rawValue: UInt8(truncatingIfNeeded: row.int(4))),
                      let kind = FrameKind(rawValue: UInt8(truncatingIfNeeded: row.int(5))) else {
                    throw CKStoreError(.damaged, "catalogue row for chunk \(digest) is malformed; run `ckstore repair`")
                }
                return ChunkLocation(digest: digest, pack: pack, offset: row.int(1), storedLength: Int(row.int(2)), rawLength: Int(row.int(3)), encoding: encoding, kind: kind)
            }
    }

    /// Inserts a sealed pack and its frames. Frames whose digest is already catalogued (a concurrent put
    /// stored the same chunk) are left as dead duplicates; returns the bytes of the frames that were new.
    func insert(pack: SealedPack, now: Double) throws -> Int64 {
        try insertPackRow(pack.id, size: pack.size, frameCount: pack.frames.count, now: now)
        var added: Int64 = 0
        for frame in pack.frames where try insertChunk(frame.header, pack: pack.id, offset: frame.offset) {
            added += Int64(PackFormat.frameHeaderSize + frame.header.storedLength)
        }
        return added
    }

    /// Records a pack file; its frames are recorded by ``insertChunk(_:pack:offset:)``.
    func insertPackRow(_ id: PackID, size: Int64, frameCount: Int, now: Double) throws {
        try statement("INSERT INTO packs (id, size, frame_count, created_at) VALUES (?, ?, ?, ?)")
            .run([.text(id.hex), .integer(size), .integer(Int64(frameCount)), .real(now)])
    }

    /// Records the frame at `offset` of `pack` as where chunk `header.digest` is; false (and nothing
    /// changed) when the chunk is catalogued already.
    @discardableResult
    func insertChunk(_ header: FrameHeader, pack: PackID, offset: Int64) throws -> Bool {
        try statement("""
            INSERT OR IGNORE INTO chunks (digest, pack_id, offset, stored_length, raw_length, encoding, kind, base)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            """).run([
                .blob(header.digest.bytes), .text(pack.hex), .integer(offset), .integer(Int64(header.storedLength)),
                .integer(Int64(header.rawLength)), .integer(Int64(header.encoding.rawValue)), .integer(Int64(header.kind.rawValue)),
                header.base.map { .blob($0.bytes) } ?? .null,
            ])
        guard database.changes > 0 else { return false }
        for input in header.inputs {
            try statement("INSERT OR IGNORE INTO chunk_inputs (digest, input) VALUES (?, ?)").run([.blob(header.digest.bytes), .blob(input.bytes)])
        }
        return true
    }

    /// The chunks that decoding chunk `?1` reads directly: its base and its inputs.
    static let prerequisitesQuery = "SELECT base FROM chunks WHERE digest = ?1 AND base IS NOT NULL UNION ALL SELECT input FROM chunk_inputs WHERE digest = ?1"

    /// The inputs a chunk's frame names besides its base (predicted frames only).
    func inputs(of digest: ChunkDigest) throws -> [ChunkDigest] {
        try statement("SELECT input FROM chunk_inputs WHERE digest = ?").rows([.blob(digest.bytes)]) { try $0.digest(0) }
    }

    /// Where a chunk and its bases are, down to its full frame or `limit + 1` frames, whichever is first.
    func chainLocations(of digest: ChunkDigest, limit: Int) throws -> [ChunkLocation] {
        let base = try statement("SELECT base FROM chunks WHERE digest = ?")
        var out = [ChunkLocation]()
        var current: ChunkDigest? = digest
        while let digest = current, out.count <= limit, let location = try location(of: digest) {
            out.append(location)
            current = try base.firstRow([.blob(digest.bytes)]) { (row) throws -> ChunkDigest? in row.isNull(0) ? nil : try row.digest(0) } ?? nil
        }
        return out
    }

    // MARK: Runs

    func runID(named name: String) throws -> Int64? {
        try statement("SELECT id FROM runs WHERE name = ?").firstRow([.text(name)]) { $0.int(0) }
    }

    func ensureRun(named name: String, now: Double) throws -> Int64 {
        if let id = try runID(named: name) { return id }
        try statement("INSERT INTO runs (name, created_at) VALUES (?, ?)").run([.text(name), .real(now)])
        guard let id = try runID(named: name) else {
            throw CKStoreError(.catalogue, "run \(name) vanished right after it was created")
        }
        return id
    }

    /// Throws `notFound` when `run` is given and the catalogue has no such run.
    func requireRun(_ run: String?) throws {
        if let run, try runID(named: run) == nil {
            throw CKStoreError(.notFound, "no run \(run) in the store")
        }
    }

    func runNames() throws -> [String] {
        try statement("SELECT name FROM runs ORDER BY name").rows { $0.text(0) }
    }
}
