import CSQLite

/// The SQLite catalogue of a store: packs, chunks, runs, checkpoints and their references.
///
/// Not Sendable: ``CheckpointStore`` keeps it behind a mutex. Opening applies the connection settings
/// the commit protocol relies on (WAL, `synchronous=FULL` so that a commit is durable when it returns,
/// foreign keys) and migrates the schema.
final class Catalogue {
    let database: SQLiteDatabase
    /// The schema version the catalogue had when opened (0 when it was created now).
    private(set) var openedVersion = 0
    private var statements: [String: SQLiteStatement] = [:]

    init(path: String) throws {
        database = try SQLiteDatabase(path: path)
        do {
            try database.execute("PRAGMA journal_mode = WAL")
            try database.execute("PRAGMA synchronous = FULL")
            try database.execute("PRAGMA foreign_keys = ON")
            // Up to 256 MiB of page cache (used only as pages are touched): a large sweep then writes each
            // changed page to the WAL once instead of spilling the 2 MiB default over and over.
            try database.execute("PRAGMA cache_size = -262144")
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

    // MARK: Chunks

    /// Where a frame is stored.
    struct ChunkLocation: Sendable, Equatable {
        var digest: ChunkDigest
        var pack: PackID
        var offset: Int64
        var storedLength: Int
        var rawLength: Int
        var encoding: FrameEncoding
        var kind: FrameKind
    }

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
        try statement("INSERT INTO packs (id, size, frame_count, created_at) VALUES (?, ?, ?, ?)")
            .run([.text(pack.id.hex), .integer(pack.size), .integer(Int64(pack.frames.count)), .real(now)])
        let insertChunk = try statement("""
            INSERT OR IGNORE INTO chunks (digest, pack_id, offset, stored_length, raw_length, encoding, kind, base)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            """)
        var added: Int64 = 0
        for frame in pack.frames {
            let header = frame.header
            try insertChunk.run([
                .blob(header.digest.bytes), .text(pack.id.hex), .integer(frame.offset), .integer(Int64(header.storedLength)),
                .integer(Int64(header.rawLength)), .integer(Int64(header.encoding.rawValue)), .integer(Int64(header.kind.rawValue)),
                header.base.map { .blob($0.bytes) } ?? .null,
            ])
            if database.changes > 0 {
                added += Int64(PackFormat.frameHeaderSize + header.storedLength)
            }
        }
        return added
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

    func runNames() throws -> [String] {
        try statement("SELECT name FROM runs ORDER BY name").rows { $0.text(0) }
    }
}
