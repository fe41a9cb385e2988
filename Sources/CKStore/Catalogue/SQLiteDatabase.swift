import CSQLite
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Owns one `sqlite3*` connection; closes it in `deinit`. Not Sendable: one owner at a time.
///
/// Every `sqlite3_*` call of the catalogue goes through this type and ``SQLiteStatement``, which turn
/// result codes into ``CKStoreError``s carrying SQLite's own message.
final class SQLiteDatabase {
    private let handle: OpaquePointer
    let path: String

    /// Opens (or creates) the database at `path`; `immutable` opens it read-only as a file that nothing
    /// changes (a store on a read-only mount, where SQLite could not create its shared-memory file).
    init(path: String, immutable: Bool = false) throws {
        var db: OpaquePointer?
        let flags = immutable ? SQLITE_OPEN_READONLY | SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX
        let name = immutable ? "file:" + (path.addingPercentEncodingForURI()) + "?immutable=1" : path
        let code = sqlite3_open_v2(name, &db, flags, nil)
        guard code == SQLITE_OK, let db else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            if let db { sqlite3_close_v2(db) }
            throw CKStoreError(.catalogue, "cannot open the catalogue \(path): \(message)")
        }
        self.handle = db
        self.path = path
        sqlite3_busy_timeout(db, Self.busyTimeoutMilliseconds)
        sqlite3_extended_result_codes(db, 1)
        _ = ckstore_sqlite_db_config_int(db, SQLITE_DBCONFIG_DEFENSIVE, 1)
    }

    deinit {
        sqlite3_close_v2(handle)
    }

    /// How long a statement waits for another process's lock on the catalogue before failing with
    /// `locked`: `CKSTORE_LOCK_TIMEOUT` seconds when set, else 60 s.
    static let busyTimeoutMilliseconds: Int32 = {
        guard let text = getenv("CKSTORE_LOCK_TIMEOUT").map({ String(cString: $0) }), let seconds = Double(text), seconds >= 0 else { return 60_000 }
        return Int32(min(seconds * 1000, Double(Int32.max)))
    }()

    /// Runs one or more statements that return no rows.
    func execute(_ sql: String) throws {
        var errorMessage: UnsafeMutablePointer<CChar>?
        let code = sqlite3_exec(handle, sql, nil, nil, &errorMessage)
        if code != SQLITE_OK {
            let message = errorMessage.map { String(cString: $0) } ?? lastErrorMessage
            sqlite3_free(errorMessage)
            throw error(code, message)
        }
    }

    /// Prepares a statement.
    func prepare(_ sql: String) throws -> SQLiteStatement {
        var statement: OpaquePointer?
        let code = sqlite3_prepare_v3(handle, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &statement, nil)
        guard code == SQLITE_OK, let statement else {
            throw error(code, lastErrorMessage)
        }
        return SQLiteStatement(handle: statement, database: self, sql: sql)
    }

    /// Runs `body` in a transaction of `kind`; commits or rolls back as `body` says, and rolls back when
    /// it throws. The value is returned either way, so a dry run is the same work, rolled back.
    func transaction<T>(_ kind: TransactionKind, _ body: () throws -> TransactionCompletion<T>) throws -> T {
        try execute("BEGIN \(kind.rawValue)")
        let completion: TransactionCompletion<T>
        do {
            completion = try body()
        } catch {
            try? execute("ROLLBACK")
            throw error
        }
        switch completion {
        case .commit(let value):
            do {
                if kind != .deferred, let fault = system_commitTransaction(path) {
                    throw CKStoreError.io("catalogue \(path): the transaction cannot be committed", fault)
                }
                try execute("COMMIT")
            } catch {
                try? execute("ROLLBACK")
                throw error
            }
            return value
        case .rollback(let value):
            try execute("ROLLBACK")
            return value
        }
    }

    var lastErrorMessage: String { String(cString: sqlite3_errmsg(handle)) }
    var changes: Int { Int(sqlite3_changes(handle)) }
    var lastInsertRowID: Int64 { sqlite3_last_insert_rowid(handle) }

    func error(_ code: Int32, _ message: String) -> CKStoreError {
        let primary = code & 0xff
        // A full disk often reaches SQLite as an I/O error (growing the shared-memory or log file); the
        // errno behind it says what it was.
        if primary == SQLITE_FULL || (primary == SQLITE_IOERR && sqlite3_system_errno(handle) == ENOSPC) {
            return CKStoreError(.noSpace, "catalogue \(path): the disk is full (\(message)); free some space, or run `ckstore gc` or `ckstore rm`")
        }
        if primary == SQLITE_CORRUPT || primary == SQLITE_NOTADB {
            return CKStoreError(.damaged, "catalogue \(path) is damaged (\(message)); run `ckstore repair` to rebuild it from the packs")
        }
        if primary == SQLITE_BUSY {
            return CKStoreError(.locked, "catalogue \(path) is busy: another ckstore process holds it (\(message))")
        }
        if primary == SQLITE_READONLY {
            let folder = String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)])
            return CKStoreError(.catalogue, "the store \(folder) cannot be written here (\(message)): this command changes the store; run it where the store's folder is writable, or use a command that only reads (ls, show, get, verify, audit)")
        }
        // The statement is not part of the message: users act on what failed, not on SQL.
        return CKStoreError(.catalogue, "catalogue \(path): \(message)")
    }
}

/// How a transaction takes SQLite's locks: `deferred` on first use (readers), `immediate` takes the write
/// lock at once, so that a writer never fails half-way on a lock it could not upgrade.
enum TransactionKind: String, Sendable {
    case deferred = "DEFERRED"
    case immediate = "IMMEDIATE"
}

/// How a transaction ends, with the value it computed.
enum TransactionCompletion<T> {
    case commit(T)
    case rollback(T)
}

/// Owns one prepared statement; finalizes it in `deinit`.
final class SQLiteStatement {
    private let handle: OpaquePointer
    private unowned let database: SQLiteDatabase
    let sql: String

    fileprivate init(handle: OpaquePointer, database: SQLiteDatabase, sql: String) {
        self.handle = handle
        self.database = database
        self.sql = sql
    }

    deinit { sqlite3_finalize(handle) }

    /// A value to bind.
    enum Value {
        case null
        case integer(Int64)
        case real(Double)
        case text(String)
        case blob([UInt8])
    }

    /// Resets the statement and binds `values` to its parameters in order.
    @discardableResult
    func bind(_ values: [Value]) throws -> SQLiteStatement {
        sqlite3_reset(handle)
        sqlite3_clear_bindings(handle)
        for (offset, value) in values.enumerated() {
            let index = Int32(offset + 1)
            let code: Int32
            switch value {
            case .null: code = sqlite3_bind_null(handle, index)
            case .integer(let number): code = sqlite3_bind_int64(handle, index, number)
            case .real(let number): code = sqlite3_bind_double(handle, index, number)
            case .text(let text): code = sqlite3_bind_text(handle, index, text, -1, ckstore_sqlite_transient())
            case .blob(let bytes):
                code = bytes.withUnsafeBytes { sqlite3_bind_blob(handle, index, $0.baseAddress, Int32($0.count), ckstore_sqlite_transient()) }
            }
            guard code == SQLITE_OK else { throw database.error(code, database.lastErrorMessage) }
        }
        return self
    }

    /// Steps once; true when a row is available.
    func step() throws -> Bool {
        let code = sqlite3_step(handle)
        switch code {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        default: throw database.error(code, database.lastErrorMessage)
        }
    }

    /// Resets the statement after a partial scan, so that it holds no read lock.
    func reset() { sqlite3_reset(handle) }

    /// Runs a statement that returns no rows.
    func run(_ values: [Value] = []) throws {
        try bind(values)
        while try step() {}
        sqlite3_reset(handle)
    }

    /// Runs a query and maps each row.
    func rows<T>(_ values: [Value] = [], _ map: (SQLiteStatement) throws -> T) throws -> [T] {
        try bind(values)
        var out = [T]()
        while try step() { out.append(try map(self)) }
        sqlite3_reset(handle)
        return out
    }

    /// Runs a query and maps its first row, if any.
    func firstRow<T>(_ values: [Value] = [], _ map: (SQLiteStatement) throws -> T) throws -> T? {
        try bind(values)
        defer { sqlite3_reset(handle) }
        return try step() ? map(self) : nil
    }

    func isNull(_ column: Int32) -> Bool { sqlite3_column_type(handle, column) == SQLITE_NULL }
    func int(_ column: Int32) -> Int64 { sqlite3_column_int64(handle, column) }
    func double(_ column: Int32) -> Double { sqlite3_column_double(handle, column) }

    /// A REAL column that may hold the text `NaN` (SQLite cannot store a NaN REAL).
    func number(_ column: Int32) -> Double {
        sqlite3_column_type(handle, column) == SQLITE_TEXT ? Double(text(column)) ?? .nan : double(column)
    }

    func text(_ column: Int32) -> String {
        guard let pointer = sqlite3_column_text(handle, column) else { return "" }
        return String(cString: pointer)
    }

    func blob(_ column: Int32) -> [UInt8] {
        let count = Int(sqlite3_column_bytes(handle, column))
        guard count > 0, let pointer = sqlite3_column_blob(handle, column) else { return [] }
        return Array(UnsafeRawBufferPointer(start: pointer, count: count))
    }

    func digest(_ column: Int32) throws -> ChunkDigest {
        // Straight from SQLite's buffer: audits and gc read millions of digests.
        let count = Int(sqlite3_column_bytes(handle, column))
        guard count == ChunkDigest.byteCount, let pointer = sqlite3_column_blob(handle, column) else {
            throw CKStoreError(.damaged, "catalogue holds a digest that is not 32 bytes long; run `ckstore repair`")
        }
        return ChunkDigest(loading: UnsafeRawBufferPointer(start: pointer, count: count))
    }
}

extension String {
    /// The path as the path part of a SQLite `file:` URI: `%`, `?` and `#` escaped.
    func addingPercentEncodingForURI() -> String {
        var out = ""
        for character in self {
            switch character {
            case "%": out += "%25"
            case "?": out += "%3f"
            case "#": out += "%23"
            default: out.append(character)
            }
        }
        return out
    }
}
