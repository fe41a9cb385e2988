@testable import CKStore
import CKStoreTestSupport
import Foundation
import Synchronization
import Testing

/// Issue 32's fault pass, each finding from its reproduction: `gc` beside a `put` in another process
/// must not take the put's commit for a lost checkpoint.
@Suite struct FaultPassTests {
    /// The reproduction made deterministic: the put's commit lands exactly between the check's reading
    /// of the catalogue and its reading of the commit records. The gc runs here; its first look at the
    /// records starts a `ckstore put` process and gives it 3 s to commit before the check goes on. Before
    /// the commit lock, the put committed in that pause and gc refused ("the catalogue does not list 1
    /// committed checkpoint(s)"); now the put waits for the check, and both succeed.
    @Test func gcBesideAPutNeverReportsItsCommitAsLost() async throws {
        try await withTemporaryDirectory { root in
            let path = root + "/store"
            let store = try CheckpointStore.open(at: path, create: true)
            for step in 1...3 {
                try RandomCheckpoint.write(to: root + "/src-\(step)", megabytes: 1, step: step)
                _ = try await store.put(directory: root + "/src-\(step)", options: PutOptions(run: "small"))
            }
            try RandomCheckpoint.write(to: root + "/big", megabytes: 2, step: 100)
            let put = Process()
            put.executableURL = URL(fileURLWithPath: CLI.binary)
            put.arguments = ["put", root + "/big", "--run", "big", "--store", path]
            put.standardOutput = FileHandle.nullDevice
            let started = Mutex(false)
            let report = try await FaultInjector.shared.with(scope: path + "/commits", { operation, _, _ in
                guard operation == .stat, !started.withLock({ $0 }) else { return nil }
                started.withLock { $0 = true }
                try? put.run()
                let deadline = Date().addingTimeInterval(3)
                while put.isRunning && Date() < deadline { usleep(20_000) }
                return nil
            }) {
                try await store.gc(GCOptions())
            }
            #expect(started.withLock { $0 })
            #expect(report.deleted.isEmpty)
            put.waitUntilExit()
            #expect(put.terminationStatus == 0)
            #expect(try store.list().map(\.run).sorted() == ["big", "small", "small", "small"])
            #expect(try await store.verify().ok)
        }
    }

    /// Two gcs at once: one failed with "cannot open …/commits/…: no such file", a record the other
    /// removed between the look and the open. A record that vanishes so is absent, not an error.
    @Test func aRecordRemovedWhileGCReadsItIsNotAnError() async throws {
        try await withTemporaryDirectory { root in
            let path = root + "/store"
            let store = try CheckpointStore.open(at: path, create: true)
            try RandomCheckpoint.write(to: root + "/src", megabytes: 1, step: 1)
            let first = try await store.put(directory: root + "/src", options: PutOptions(run: "r"))
            #expect(try CommitLog(layout: store.layout).records().map(\.id) == [first.id])
            // Another gc removes the record just after this one looked for it and before it opens it.
            let removed = Mutex(false)
            let report = try await FaultInjector.shared.with(scope: path + "/commits", { operation, file, _ in
                guard operation == .open, !removed.withLock({ $0 }) else { return nil }
                removed.withLock { $0 = true }
                try? FileManager.default.removeItem(atPath: file)
                return nil
            }) {
                try await store.gc(GCOptions(dryRun: true))
            }
            #expect(removed.withLock { $0 })
            #expect(report.kept.map(\.id) == [first.id])
        }
    }

    /// `verify` named a checkpoint whose manifest frame is lost `?@-1`; the catalogue knows its run and step.
    @Test func verifyNamesACheckpointWithALostManifestByRunAndStep() async throws {
        try await withTemporaryDirectory { root in
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            try RandomCheckpoint.write(to: root + "/src", megabytes: 1, step: 7)
            let put = try await store.put(directory: root + "/src", options: PutOptions(run: "named"))
            let location = try #require(try store.withCatalogue { try $0.location(of: put.id.digest) })
            var bytes = try Files.read(store.layout.packPath(location.pack))
            bytes[Int(location.offset) + PackFormat.frameHeaderSize + 5] ^= 0x40
            try Files.write(bytes, to: store.layout.packPath(location.pack))
            let report = try await store.verify(VerifyOptions(depth: .full))
            let affects = report.damage.flatMap(\.affects).filter { $0.checkpoint == put.id }
            #expect(!affects.isEmpty)
            #expect(affects.allSatisfy { $0.run == "named" && $0.step == 7 }, "\(affects)")
        }
    }

    /// A store on a read-only mount: gc's error carried raw SQL. It says what is wrong and what to do.
    @Test func aWriteToAReadOnlyCatalogueSaysSoWithoutSQL() async throws {
        try await withTemporaryDirectory { root in
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            try RandomCheckpoint.write(to: root + "/src", megabytes: 1, step: 1)
            _ = try await store.put(directory: root + "/src", options: PutOptions(run: "r"))
            try store.withCatalogue { try $0.truncateLog() }
            // What a read-only mount opens (``Catalogue/init(path:readOnly:)``), tried with a write.
            let readOnly = try Catalogue(path: store.layout.cataloguePath, readOnly: true)
            let error = #expect(throws: CKStoreError.self) { try readOnly.write { try readOnly.deletePackRow(PackID.random()) } }
            #expect(error?.message.contains("cannot be written here") == true, "\(error?.message ?? "")")
            #expect(error?.message.contains("DELETE") == false && error?.message.contains("[") == false, "\(error?.message ?? "")")
        }
    }

    /// A `ckstore.db` replaced by an empty file made `ls` say "no checkpoints" with no warning while
    /// commit records and packs were there. It is refused like a missing one, and `repair` rebuilds it.
    @Test func anEmptyCatalogueFileIsRefusedAndRepaired() async throws {
        try await withTemporaryDirectory { root in
            let path = root + "/store"
            #expect(try CLI.run(["init", "--store", path]).status == 0)
            try RandomCheckpoint.write(to: root + "/src", megabytes: 1, step: 3)
            #expect(try CLI.run(["put", root + "/src", "--run", "r", "--store", path]).status == 0)
            for suffix in ["-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + "/ckstore.db" + suffix) }
            try Files.write([], to: path + "/ckstore.db")
            let ls = try CLI.run(["ls", "--store", path])
            #expect(ls.status != 0 && ls.stderr.contains("empty file") && ls.stderr.contains("ckstore repair"), "\(ls.stderr)")
            #expect(try CLI.run(["repair", "--store", path]).status == 0)
            let listed = try CLI.json(try CLI.run(["ls", "--store", path, "--json"]).stdout) as? [[String: Any]]
            #expect(listed?.compactMap { $0["step"] as? Int } == [3])
        }
    }
}
