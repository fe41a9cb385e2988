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
            #expect(older.bytesDownloaded < (try store.summary(of: older.id)).storedBytesAdded)
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
            let planned = try await store.collectGarbage(on: remote, grace: 1, dryRun: true)
            #expect(planned.dryRun && planned.deletedCheckpoints.map(\.step) == [10, 20])
            #expect(planned.kept.map(\.step) == [30, 40] && planned.kept.allSatisfy { $0.reasons.contains("keep-last 2") })
            #expect(try await store.remoteCheckpoints(remote).count == 4)
            let json = try JSONSerialization.jsonObject(with: try ReportJSON.encoder().encode(planned)) as? [String: Any]
            #expect(Set(["dry_run", "kept", "deleted", "deleted_checkpoints", "bytes_freed"]).isSubset(of: Set(json?.keys.map { $0 } ?? [])))
            let first = try await store.collectGarbage(on: remote, grace: 1)
            #expect(first.deleted.count == 2 && first.deleted == planned.deleted)
            #expect(first.condemnedObjects >= 2 && first.deletedObjects == 0, "phase one only condemns")
            #expect(try await store.remoteCheckpoints(remote).map(\.step) == [30, 40])
            try await Task.sleep(nanoseconds: 1_100_000_000)
            let second = try await store.collectGarbage(on: remote, grace: 1)
            #expect(second.deletedObjects == first.condemnedObjects && second.bytesFreed > 0)
            #expect(try await store.verify(remote: remote, depth: .full).ok)
            let fresh = try CheckpointStore.open(at: root + "/fresh", create: true)
            for step: Int64 in [30, 40] {
                let pulled = try await fresh.pull(.step(run: "r", step: step), from: remote)
                try await fresh.restore(pulled.id, to: root + "/out-\(step)")
                #expect(try Files.tree(root + "/out-\(step)") == Files.tree(root + "/a-ckpt-\(step / 10)"))
            }
            await #expect(throws: CKStoreError.self) { try await store.collectGarbage(on: remote, grace: 0) }
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
