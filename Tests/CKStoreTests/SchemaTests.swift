@testable import CKStore
import CKStoreTestSupport
import Foundation
import Testing

@Suite struct SchemaTests {
    @Test func embeddedMigrationsMatchTheSQLFiles() throws {
        let folder = Repository.root + "/schema"
        let files = try FileManager.default.contentsOfDirectory(atPath: folder).filter { $0.hasSuffix(".sql") }.sorted()
        #expect(files.count == Schema.migrations.count)
        for (file, migration) in zip(files, Schema.migrations) {
            #expect(file == migration.name)
            let text = try String(contentsOfFile: folder + "/" + file, encoding: .utf8)
            #expect(text.trimmingCharacters(in: .newlines) == migration.sql.trimmingCharacters(in: .newlines), "schema/\(file) differs from the copy in the binary; run `make schema`")
        }
        #expect(Schema.migrations.map(\.version) == Array(1...Schema.migrations.count))
    }

    @Test func refusesACatalogueFromANewerVersion() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            _ = try CheckpointStore.open(at: store, create: true)
            let database = try SQLiteDatabase(path: store + "/ckstore.db")
            try database.execute("PRAGMA user_version = \(Schema.currentVersion + 1)")
            let error = #expect(throws: CKStoreError.self) { try CheckpointStore.open(at: store) }
            #expect(error?.code == .unsupportedSchema)
            #expect(error?.message.contains("upgrade ckstore") == true)
        }
    }

    @Test func opensInWALMode() async throws {
        try await withTemporaryDirectory { root in
            _ = try CheckpointStore.open(at: root + "/s", create: true)
            let database = try SQLiteDatabase(path: root + "/s/ckstore.db")
            let mode = try database.prepare("PRAGMA journal_mode").firstRow { $0.text(0) }
            #expect(mode == "wal")
        }
    }
}
