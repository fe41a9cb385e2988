/// The catalogue schema: versioned migrations whose SQL is generated from `schema/*.sql`.
enum Schema {
    /// One step of the schema's history.
    struct Migration: Sendable {
        var version: Int
        var name: String
        var sql: String
    }

    /// The schema version this binary writes.
    static var currentVersion: Int { migrations.last?.version ?? 0 }

    /// Brings `database` to ``currentVersion``, one migration per transaction; returns the version it
    /// found (0 for a new catalogue).
    ///
    /// - Throws: ``CKStoreError/Code/unsupportedSchema`` when the catalogue is newer than this binary.
    @discardableResult
    static func migrate(_ database: SQLiteDatabase) throws -> Int {
        let version = try userVersion(database)
        if version > currentVersion {
            throw CKStoreError(
                .unsupportedSchema,
                "catalogue \(database.path) has schema version \(version), but this ckstore knows versions up to \(currentVersion); upgrade ckstore to use this store"
            )
        }
        for migration in migrations where migration.version > version {
            try database.transaction(.immediate) { () throws -> TransactionCompletion<Void> in
                try database.execute(migration.sql)
                try database.execute("PRAGMA user_version = \(migration.version)")
                return .commit(())
            }
        }
        return version
    }

    static func userVersion(_ database: SQLiteDatabase) throws -> Int {
        let statement = try database.prepare("PRAGMA user_version")
        return Int(try statement.firstRow { $0.int(0) } ?? 0)
    }
}
