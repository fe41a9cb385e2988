@testable import CKStore
import CKStoreTestSupport
import Foundation
import Testing

/// Remotes in a folder (`file://`), through the same code as S3: the protocol's rules without a server.
@Suite struct RemoteFolderTests {
    /// A store at `root/name` holding `count` checkpoints of a run, every one trained a little further.
    /// `maxDeltaDepth` 0 stores every changed chunk in full: which frames become garbage then does not
    /// depend on whether the encoder's heuristics chose a delta.
    static func series(_ root: String, _ name: String, count: Int, run: String = "r", maxDeltaDepth: Int? = nil) async throws -> CheckpointStore {
        let store = try CheckpointStore.open(at: root + "/" + name, create: true)
        var checkpoint = TrainerCheckpoint(seed: 3, layout: TrainerCheckpoint.layout(parameterCount: 60_000))
        for index in 1...count {
            checkpoint.train(steps: 1) { $0.hasPrefix("embed") }
            let folder = root + "/\(name)-ckpt-\(index)"
            try checkpoint.write(to: folder)
            var options = PutOptions(run: run, step: Int64(index * 10))
            options.maxDeltaDepth = maxDeltaDepth
            _ = try await store.put(directory: folder, options: options)
        }
        return store
    }

    static func remote(_ root: String) -> Remote {
        Remote(name: "folder", url: "file://" + root + "/remote", objects: FileObjectStore(root: root + "/remote"))
    }

    /// A folder remote that counts how many reads are in flight at once, each read taking a round trip's
    /// time as an S3 GET does (so that reads one after another never overlap), and that can refuse writes
    /// of some keys as a push killed before them would never make them.
    final class ObservedObjectStore: ObjectStore, @unchecked Sendable {
        let base: FileObjectStore
        let roundTrip: Duration
        let refusing: @Sendable (String) -> Bool
        private let lock = NSLock()
        private var inFlight = 0
        private(set) var mostInFlight = 0
        private(set) var reads = 0

        init(root: String, roundTrip: Duration = .zero, refusing: @escaping @Sendable (String) -> Bool = { _ in false }) {
            base = FileObjectStore(root: root)
            self.roundTrip = roundTrip
            self.refusing = refusing
        }

        var description: String { base.description }

        func get(_ key: String, range: Range<Int64>?) async throws -> [UInt8] {
            lock.withLock { inFlight += 1; reads += 1; mostInFlight = max(mostInFlight, inFlight) }
            defer { lock.withLock { inFlight -= 1 } }
            try await Task.sleep(for: roundTrip)
            return try await base.get(key, range: range)
        }

        func put(_ key: String, _ body: [UInt8], ifAbsent: Bool) async throws -> Bool {
            if refusing(key) { throw CKStoreError(.ioFailure, "\(key): the push was killed before this write") }
            return try await base.put(key, body, ifAbsent: ifAbsent)
        }

        func head(_ key: String) async throws -> ObjectInfo? { try await base.head(key) }
        func delete(_ key: String) async throws { try await base.delete(key) }
        func list(prefix: String) async throws -> [ObjectInfo] { try await base.list(prefix: prefix) }
    }

    /// Issue 29: a pull into a folder restores over the frames it has just fetched, and that restore is
    /// its check: the checkpoint is recorded, restores again from the store, and verifies. A folder the
    /// restore would refuse is refused before anything is downloaded.
    @Test func aPullIntoAFolderRestoresWhatItFetchedAndRefusesABadFolderFirst() async throws {
        try await withTemporaryDirectory { root in
            let store = try await Self.series(root, "a", count: 3)
            let counting = ObservedObjectStore(root: root + "/remote")
            let remote = Remote(name: "folder", url: "file://" + root + "/remote", objects: counting)
            _ = try await store.push(try store.list().map(\.id), to: remote)
            let fresh = try CheckpointStore.open(at: root + "/fresh", create: true)
            try Files.write(Array("notes".utf8), to: root + "/busy/notes.txt")
            let readsBefore = counting.reads
            let refused = await #expect(throws: CKStoreError.self) {
                try await fresh.pull(.latestValid(run: "r"), from: remote, restoringTo: root + "/busy")
            }
            #expect(refused?.code == .alreadyExists, "\(String(describing: refused))")
            #expect(counting.reads == readsBefore, "the remote was read before the destination was checked")

            let (report, restored) = try await fresh.pull(.latestValid(run: "r"), from: remote, restoringTo: root + "/out")
            #expect(report.pulled && report.step == 30 && restored.id == report.id)
            #expect(try Files.tree(root + "/out") == Files.tree(root + "/a-ckpt-3"))
            #expect(try fresh.list().map(\.id) == [report.id])
            _ = try await fresh.restore(report.id, to: root + "/again")
            #expect(try Files.tree(root + "/again") == Files.tree(root + "/a-ckpt-3"))
            #expect(try await fresh.verify(VerifyOptions(depth: .full)).ok)
            // Held already: restored from the store, nothing fetched.
            let (second, _) = try await fresh.pull(.latestValid(run: "r"), from: remote, restoringTo: root + "/third")
            #expect(!second.pulled && second.bytesDownloaded == 0)
            #expect(try Files.tree(root + "/third") == Files.tree(root + "/a-ckpt-3"))
        }
    }

    /// Issue 29: a fresh machine's first listing reads the remote's commit and index objects many at once,
    /// not one round trip after another, and learns every checkpoint.
    @Test func aFreshMachineReadsCommitAndIndexObjectsManyAtOnce() async throws {
        try await withTemporaryDirectory { root in
            let store = try await Self.series(root, "a", count: 12)
            let remote = Self.remote(root)
            for summary in try store.list() { _ = try await store.push([summary.id], to: remote) }

            let counting = ObservedObjectStore(root: root + "/remote", roundTrip: .milliseconds(20))
            let slow = Remote(name: "folder", url: remote.url, objects: counting)
            let fresh = try CheckpointStore.open(at: root + "/fresh", create: true)
            let listed = try await fresh.remoteCheckpoints(slow)
            #expect(listed.map(\.step).sorted() == (1...12).map { Int64($0 * 10) })
            #expect(counting.reads >= 12 && counting.mostInFlight >= 4, "\(counting.reads) reads, at most \(counting.mostInFlight) at once")

            let pulled = try await fresh.pull(.latestValid(run: "r"), from: slow)
            #expect(pulled.step == 120 && pulled.pulled)
            _ = try await fresh.restore(pulled.id, to: root + "/restored")
            #expect(try Files.tree(root + "/restored") == Files.tree(root + "/a-ckpt-12"))
        }
    }

    /// Issue 29, the third window: an index keeps its packs. A push killed after its packs and index but
    /// before its commit leaves an index younger than its packs (here: its packs from long ago); gc judged
    /// each object by its own age and deleted the packs while the index stood, and the retried push, which
    /// HEADs only the index objects it reuses, committed a checkpoint whose pack was gone.
    @Test func aPackAnExistingIndexNamesIsNeitherCondemnedNorDeleted() async throws {
        try await withTemporaryDirectory { root in
            let store = try await Self.series(root, "a", count: 1)
            let remote = Self.remote(root)
            let killed = Remote(name: "folder", url: remote.url, objects: ObservedObjectStore(root: root + "/remote") { $0.hasPrefix(RemoteLayout.commitsPrefix) })
            await #expect(throws: CKStoreError.self) { try await store.push(try store.list().map(\.id), to: killed) }
            let packs = try await remote.objects.list(prefix: RemoteLayout.packsPrefix).map(\.key)
            let indexes = try await remote.objects.list(prefix: RemoteLayout.indexPrefix).map(\.key)
            let commits = try await remote.objects.list(prefix: RemoteLayout.commitsPrefix)
            #expect(!packs.isEmpty && indexes.count == 1 && commits.isEmpty)
            let longAgo = Date().addingTimeInterval(-3600)
            for key in packs { try FileManager.default.setAttributes([.modificationDate: longAgo], ofItemAtPath: root + "/remote/" + key) }

            // The packs are old and no commit names them, but the young index does: nothing is condemned.
            let first = try await store.collectGarbage(on: remote, grace: 60)
            #expect(first.condemnedObjects == 0 && first.deletedObjects == 0, "\(first)")
            // Condemned long ago, as a gc before this rule left them: rescued, not deleted.
            let condemned = Dictionary(uniqueKeysWithValues: packs.map { ($0, longAgo.timeIntervalSince1970) })
            _ = try await remote.objects.put(RemoteLayout.pending, try RemoteJSON.encode(RemotePending(grace: 60, condemned: condemned)), ifAbsent: false)
            let second = try await store.collectGarbage(on: remote, grace: 60)
            #expect(second.deletedObjects == 0 && second.rescuedObjects == packs.count, "\(second)")
            let kept = try await remote.objects.list(prefix: RemoteLayout.packsPrefix).map(\.key)
            #expect(kept == packs)

            // The retried push reuses the index and commits; a fresh machine restores it bit for bit.
            let retried = try await store.push(try store.list().map(\.id), to: remote)
            #expect(retried.pushed.count == 1)
            let fresh = try CheckpointStore.open(at: root + "/fresh", create: true)
            let pulled = try await fresh.pull(.latestValid(run: "r"), from: remote)
            try await fresh.restore(pulled.id, to: root + "/out")
            #expect(try Files.tree(root + "/out") == Files.tree(root + "/a-ckpt-1"))
        }
    }

    @Test func conditionalCreateHasOneWinnerAndWritesAreWhole() async throws {
        try await withTemporaryDirectory { root in
            let objects = FileObjectStore(root: root)
            let outcomes = try await withThrowingTaskGroup(of: Bool.self) { group in
                for writer in 0..<8 { group.addTask { try await objects.put("commits/k/1", Array("writer \(writer)".utf8), ifAbsent: true) } }
                return try await group.reduce(into: [Bool]()) { $0.append($1) }
            }
            #expect(outcomes.filter { $0 }.count == 1)
            #expect(String(decoding: try await objects.get("commits/k/1"), as: UTF8.self).hasPrefix("writer "))
            #expect(try await objects.get("commits/k/1", range: 2..<5) == Array("ite".utf8))
            #expect(try await objects.list(prefix: "commits/").map(\.key) == ["commits/k/1"])
            await #expect(throws: CKStoreError.self) { try await objects.get("commits/k/2") }
            #expect(try await objects.head("commits/k/2") == nil)
            try await objects.delete("commits/k/1")
            try await objects.delete("commits/k/1")
            #expect(try await objects.list(prefix: "").isEmpty)
        }
    }

    @Test func pushUploadsTheFramesEachPutAddedAndAPullRestoresBitForBit() async throws {
        try await withTemporaryDirectory { root in
            let store = try await Self.series(root, "a", count: 3)
            let remote = Self.remote(root)
            for summary in try store.list() {
                let report = try await store.push([summary.id], to: remote)
                #expect(report.pushed == [summary.id])
                #expect(report.frameBytesUploaded == summary.storedBytesAdded)
                #expect(try await store.push([summary.id], to: remote).bytesUploaded == 0)
            }
            let fresh = try CheckpointStore.open(at: root + "/fresh", create: true)
            let newest = try await fresh.pull(.latestValid(run: "r"), from: remote)
            #expect(newest.step == 30 && newest.pulled)
            try await fresh.restore(newest.id, to: root + "/out")
            #expect(try Files.tree(root + "/out") == Files.tree(root + "/a-ckpt-3"))
            // An older one brings only what the store lacks: its frozen embedding is there already.
            let older = try await fresh.pull(.step(run: "r", step: 10), from: remote)
            // (Counted in frames: bytes downloaded include the gaps that ranged GETs of neighbours span.)
            let alone = try await CheckpointStore.open(at: root + "/alone", create: true).pull(.step(run: "r", step: 10), from: remote)
            #expect(older.pulled && older.framesAdded < alone.framesAdded, "\(older.framesAdded) frames added, \(alone.framesAdded) into an empty store")
            #expect(try await fresh.verify(VerifyOptions(depth: .full)).ok)
            // The same content from another store at the same run and step is no conflict; other content is.
            let twin = try await Self.series(root, "twin", count: 1)
            #expect(try await twin.push(try twin.list().map(\.id), to: remote).alreadyPresent.count == 1)
            let other = try CheckpointStore.open(at: root + "/other", create: true)
            try RandomCheckpointFolder.write(to: root + "/other-ckpt")
            _ = try await other.put(directory: root + "/other-ckpt", options: PutOptions(run: "r", step: 20))
            await #expect(throws: CKStoreError.self) { try await other.push(try other.list().map(\.id), to: remote) }
        }
    }

    @Test func remoteGCDeletesWhatRetentionRemovesInTwoPhasesAndKeepsWhatIsNeeded() async throws {
        try await withTemporaryDirectory { root in
            // Without deltas the second checkpoint's frames are its own, so deleting it condemns objects
            // whatever the encoder chose (with deltas, later checkpoints may keep them as bases).
            let store = try await Self.series(root, "a", count: 4, maxDeltaDepth: 0)
            let remote = Self.remote(root)
            _ = try await store.push(try store.list().map(\.id), to: remote)
            var policy = RetentionPolicy()
            policy.keepLast = 2
            try store.setPolicy(policy, run: "r")
            try await Task.sleep(nanoseconds: 1_100_000_000)
            // A dry run decides the same and changes nothing; the report has local gc's retention fields.
            let planned = try await store.collectGarbage(on: remote, grace: 1, dryRun: true, minimumGrace: 0)
            #expect(planned.dryRun && planned.deletedCheckpoints.map(\.step) == [10, 20])
            #expect(planned.kept.map(\.step) == [30, 40] && planned.kept.allSatisfy { $0.reasons.contains("keep-last 2") })
            #expect(try await store.remoteCheckpoints(remote).count == 4)
            let json = try JSONSerialization.jsonObject(with: try ReportJSON.encoder().encode(planned)) as? [String: Any]
            #expect(Set(["dry_run", "kept", "deleted", "deleted_checkpoints", "bytes_freed"]).isSubset(of: Set(json?.keys.map { $0 } ?? [])))
            let first = try await store.collectGarbage(on: remote, grace: 1, minimumGrace: 0)
            #expect(first.deleted.count == 2 && first.deleted == planned.deleted)
            // Phase one only condemns, and only index objects while they still name their packs.
            #expect(first.condemnedObjects >= 1 && first.deletedObjects == 0, "\(first)")
            #expect(try await store.remoteCheckpoints(remote).map(\.step) == [30, 40])
            try await Task.sleep(nanoseconds: 1_100_000_000)
            let second = try await store.collectGarbage(on: remote, grace: 1, minimumGrace: 0)
            #expect(second.deletedObjects == first.condemnedObjects && second.bytesFreed > 0)
            // The packs those index objects named are judged once the index objects are gone.
            let third = try await store.collectGarbage(on: remote, grace: 1, minimumGrace: 0)
            #expect(third.condemnedObjects >= 1 && third.deletedObjects == 0, "\(third)")
            try await Task.sleep(nanoseconds: 1_100_000_000)
            let fourth = try await store.collectGarbage(on: remote, grace: 1, minimumGrace: 0)
            #expect(fourth.deletedObjects == third.condemnedObjects && fourth.bytesFreed > 0)
            #expect(try await store.verify(remote: remote, depth: .full).ok)
            let fresh = try CheckpointStore.open(at: root + "/fresh", create: true)
            for step: Int64 in [30, 40] {
                let pulled = try await fresh.pull(.step(run: "r", step: step), from: remote)
                try await fresh.restore(pulled.id, to: root + "/out-\(step)")
                #expect(try Files.tree(root + "/out-\(step)") == Files.tree(root + "/a-ckpt-\(step / 10)"))
            }
            // The grace has a floor of a minute that only tests (through the internal call) go below.
            for grace in [0, 1, 59.5] {
                let refused = await #expect(throws: CKStoreError.self) { try await store.collectGarbage(on: remote, grace: grace) }
                #expect(refused?.code == .invalidArgument && refused?.message.contains("at least 60 s") == true, "\(String(describing: refused))")
            }
            #expect(try await store.collectGarbage(on: remote, grace: 60, dryRun: true).graceSeconds == 60)
        }
    }

    @Test func aPushThatReliesOnACondemnedObjectUploadsItsFramesAgain() async throws {
        try await withTemporaryDirectory { root in
            let store = try await Self.series(root, "a", count: 2)
            let remote = Self.remote(root)
            let ids = try store.list().map(\.id)
            _ = try await store.push([ids[0]], to: remote)
            // Another machine's gc removed checkpoint 10 and condemned its objects; this store's cache
            // still says the remote has its frames.
            let objects = remote.objects
            let commits = try await objects.list(prefix: "commits/")
            try await objects.delete(commits[0].key)
            var condemned = [String: Double]()
            for object in try await objects.list(prefix: "index/") + objects.list(prefix: "packs/") { condemned[object.key] = Date().timeIntervalSince1970 }
            _ = try await objects.put(RemoteLayout.pending, try RemoteJSON.encode(RemotePending(grace: 60, condemned: condemned)), ifAbsent: false)
            let report = try await store.push([ids[1]], to: remote)
            #expect(report.pushed == [ids[1]])
            // Its commit names no condemned object, so the second phase can delete them all.
            let commit = try RemoteJSON.decode(RemoteCommit.self, try await objects.get(RemoteLayout.commit(run: "r", step: 20)), what: "commit")
            #expect(commit.indexes.allSatisfy { condemned[RemoteLayout.index($0)] == nil })
            for key in condemned.keys { try await objects.delete(key) }
            let fresh = try CheckpointStore.open(at: root + "/fresh", create: true)
            let pulled = try await fresh.pull(.latest(run: "r"), from: remote)
            try await fresh.restore(pulled.id, to: root + "/out")
            #expect(try Files.tree(root + "/out") == Files.tree(root + "/a-ckpt-2"))
        }
    }
}

extension RemoteFolderTests {
    @Test func aFreshStoreUploadsOnlyWhatTheRemoteLacksAndPullsUseTheCopyTheirCommitNames() async throws {
        try await withTemporaryDirectory { root in
            let remote = Self.remote(root)
            let a = try await Self.series(root, "a", count: 1)
            _ = try await a.push(try a.list().map(\.id), to: remote)
            // Another machine with the same frames under another run uploads no frame again.
            let twin = try await Self.series(root, "twin", count: 1, run: "t")
            let twinPush = try await twin.push(try twin.list().map(\.id), to: remote)
            #expect(twinPush.framesUploaded == 1, "only its manifest: \(twinPush.framesUploaded) frames")

            // A reader caches where run r's frames are (reading its manifest); then the objects go, as a
            // remote gc deletes them.
            let reader = try CheckpointStore.open(at: root + "/reader", create: true)
            _ = try await reader.manifest(of: try await reader.resolve(.step(run: "r", step: 10), on: remote), on: remote)
            for prefix in ["commits/", "index/", "packs/"] {
                for object in try await remote.objects.list(prefix: prefix) { try await remote.objects.delete(object.key) }
            }
            // A store that never saw them pushes the same chunks again, into new objects.
            let b = try await Self.series(root, "b", count: 1, run: "s")
            #expect(try await b.push(try b.list().map(\.id), to: remote).framesUploaded > 1)
            // The reader's cache still remembers the deleted copies; its pull uses the ones s@10 names.
            let pulled = try await reader.pull(.step(run: "s", step: 10), from: remote)
            try await reader.restore(pulled.id, to: root + "/out")
            #expect(try Files.tree(root + "/out") == Files.tree(root + "/b-ckpt-1"))
        }
    }
}

/// A small checkpoint folder of random bytes.
enum RandomCheckpointFolder {
    static func write(to folder: String) throws {
        var random = SeededRandom(seed: UInt64.random(in: 1...UInt64.max))
        var model = SafetensorsBuilder(metadata: ["format": "pt"])
        model.add("w", dtype: "F32", shape: [4096], data: random.bytes(count: 4096 * 4))
        try Files.write(model.build(), to: folder + "/model.safetensors")
    }
}
