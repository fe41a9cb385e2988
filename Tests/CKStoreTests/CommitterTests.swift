@testable import CKStore
import CKStoreTestSupport
import Foundation
import Synchronization
import Testing

/// Issue 32: the ``Committer`` at each step of the commit protocol, for each of its callers (put, shard
/// put, shard combine, pull, repair's import), and the regressions of the fault pass.
@Suite struct CommitterTests {
    /// The operations a commit's steps make: the catalogue's COMMIT, and the calls that write a record.
    static let stepOperations: [SyscallOperation] = [.commitTransaction, .mkdir, .open, .pwrite, .fsync, .link]

    /// Whether the call `operation` on `path` is one of a commit's steps.
    static func isCommitStep(_ operation: SyscallOperation, _ path: String) -> Bool {
        if operation == .commitTransaction { return true }
        return path.contains("/commits") || path.contains("/shards") || path.contains("/tmp/commit-")
    }

    /// The records of checkpoints and of pending shards in `store`.
    static func records(_ store: CheckpointStore) throws -> (checkpoints: Set<CheckpointID>, shards: Set<CheckpointID>) {
        (Set(try CommitLog(layout: store.layout).records().map(\.id)), Set(try CommitLog.shards(layout: store.layout).records().map(\.id)))
    }

    /// What every commit leaves, failed or not (I-9): each listed checkpoint and each pending shard has its
    /// record, and a record names a listed checkpoint unless it named an unlisted one before.
    static func expectRecordsAgree(_ store: CheckpointStore, unlistedBefore: Set<CheckpointID>, _ label: String) throws {
        let (records, shardRecords) = try Self.records(store)
        let listed = Set(try store.list().map(\.id))
        #expect(listed.isSubset(of: records), "\(label): listed without a record: \(listed.subtracting(records))")
        #expect(records.subtracting(listed).isSubset(of: unlistedBefore), "\(label): recorded but not listed")
        let pending = Set(try store.withCatalogue { try $0.pendingShards() }.map(\.id))
        #expect(pending.isSubset(of: shardRecords), "\(label): a pending shard without its record")
    }

    /// Runs `operation` on a fresh copy of the store at `template` once per commit step that it reaches,
    /// with that step failing with EIO: the operation fails, lists what the store listed before, and
    /// leaves records and catalogue agreeing.
    ///
    /// `mayCommitBeforeFailing` are the checkpoints a multi-commit operation (repair imports one at a
    /// time, then records) may have made durable before a later step failed. Then once more with no fault, which succeeds. Returns the
    /// number of steps failed.
    static func failEachStep(_ root: String, template: String, _ name: String, mayCommitBeforeFailing: Set<CheckpointID> = [],
                             _ operation: @escaping @Sendable (CheckpointStore, String) async throws -> Void) async throws -> Int {
        let templateStore = try CheckpointStore.open(at: template)
        let templateSound = try await templateStore.verify().ok
        let unlistedBefore = Set(try Committer(catalogue: templateStore.catalogue, layout: templateStore.layout).unlistedRecords().map(\.id))
        var failed = 0
        for target in stepOperations {
            for index in 0..<64 {
                let trial = root + "/trial-\(name)-\(target)-\(index)"
                try FileManager.default.copyItem(atPath: template, toPath: trial)
                let store = try CheckpointStore.open(at: trial)
                let before = try store.list()
                let seen = Mutex(0)
                let label = "\(name): \(target) #\(index)"
                do {
                    try await FaultInjector.shared.with(scope: trial, { operation, path, _ in
                        guard operation == target, isCommitStep(operation, path) else { return nil }
                        return seen.withLock { count in
                            defer { count += 1 }
                            return count == index ? .fail(EIO) : nil
                        }
                    }) {
                        try await operation(store, trial)
                    }
                } catch let error as CKStoreError {
                    failed += 1
                    #expect(seen.withLock { $0 } > index, "\(label) failed without its fault: \(error.message)")
                    // What it listed before, less nothing, plus at most what an earlier commit of a repair
                    // made durable before a later step failed.
                    let after = try store.list()
                    #expect(before.allSatisfy { after.contains($0) }, "\(label)")
                    #expect(Set(after.map(\.id)).subtracting(before.map(\.id)).isSubset(of: mayCommitBeforeFailing), "\(label)")
                    try expectRecordsAgree(store, unlistedBefore: unlistedBefore, label)
                    if templateSound { #expect(try await store.verify().ok, "\(label)") }
                    FileSystem.removeTree(trial)
                    continue
                }
                // The operation no longer reaches a step `index` of this kind: every one was tried.
                try expectRecordsAgree(store, unlistedBefore: unlistedBefore, label)
                FileSystem.removeTree(trial)
                if seen.withLock({ $0 }) <= index { break }
            }
        }
        // And with no fault, it goes through, and every record names a listed checkpoint.
        let clean = root + "/trial-\(name)-clean"
        try FileManager.default.copyItem(atPath: template, toPath: clean)
        let store = try CheckpointStore.open(at: clean)
        try await operation(store, clean)
        try expectRecordsAgree(store, unlistedBefore: [], "\(name) without faults")
        #expect(try await store.verify(VerifyOptions(depth: .full)).ok)
        return failed
    }

    /// A folder of one file of seeded bytes, as one rank of a sharded job writes it.
    static func rankFolder(_ root: String, rank: Int) throws -> String {
        let folder = root + "/rank\(rank)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        var random = SeededRandom(seed: UInt64(100 + rank))
        try Files.write((0..<300_000).map { _ in UInt8.random(in: 0...255, using: &random) }, to: folder + "/part-\(rank).bin")
        return folder
    }

    static func shardOptions(_ index: Int) throws -> PutOptions {
        var options = PutOptions(run: "job", step: 20)
        options.shard = try ShardSpec(index: index, count: 2)
        return options
    }

    @Test func putFailsWholeAtEveryStepOfItsCommit() async throws {
        try await withTemporaryDirectory { root in
            var checkpoint = TrainerCheckpoint(seed: 5, layout: TrainerCheckpoint.layout(parameterCount: 20_000))
            try checkpoint.write(to: root + "/a")
            checkpoint.train(steps: 1)
            try checkpoint.write(to: root + "/b")
            let store = try CheckpointStore.open(at: root + "/template", create: true)
            _ = try await store.put(directory: root + "/a", options: PutOptions(run: "r", step: 1))
            let failed = try await Self.failEachStep(root, template: root + "/template", "put") { store, _ in
                _ = try await store.put(directory: root + "/b", options: PutOptions(run: "r", step: 2))
            }
            // The transaction, and the record's folder, file, write, fsync and link at least.
            #expect(failed >= 5)
        }
    }

    @Test func shardPutFailsWholeAtEveryStepOfItsCommit() async throws {
        try await withTemporaryDirectory { root in
            let rank0 = try Self.rankFolder(root, rank: 0)
            _ = try CheckpointStore.open(at: root + "/template", create: true)
            let failed = try await Self.failEachStep(root, template: root + "/template", "shard") { store, _ in
                let result = try await store.put(directory: rank0, options: try Self.shardOptions(0))
                #expect(result.checkpoint == nil && result.missingShards == [1])
            }
            #expect(failed >= 5)
        }
    }

    @Test func shardCombineFailsWholeAtEveryStepOfItsCommit() async throws {
        try await withTemporaryDirectory { root in
            let rank0 = try Self.rankFolder(root, rank: 0), rank1 = try Self.rankFolder(root, rank: 1)
            let store = try CheckpointStore.open(at: root + "/template", create: true)
            _ = try await store.put(directory: rank0, options: try Self.shardOptions(0))
            // The last shard's put commits the shard, then the combined checkpoint: two commits, each step
            // of both failed in turn.
            let failed = try await Self.failEachStep(root, template: root + "/template", "combine") { store, _ in
                let result = try await store.put(directory: rank1, options: try Self.shardOptions(1))
                #expect(result.checkpoint != nil)
                #expect(try store.list().map(\.step) == [20])
            }
            #expect(failed >= 10)
        }
    }

    @Test func pullFailsWholeAtEveryStepOfItsCommit() async throws {
        try await withTemporaryDirectory { root in
            let source = try await RemoteFolderTests.series(root, "source", count: 2)
            let remote = RemoteFolderTests.remote(root)
            _ = try await source.push(try source.list().map(\.id), to: remote)
            _ = try CheckpointStore.open(at: root + "/template", create: true)
            let failed = try await Self.failEachStep(root, template: root + "/template", "pull") { store, _ in
                let report = try await store.pull(.latestValid(run: "r"), from: remote)
                #expect(report.pulled && report.step == 20)
            }
            #expect(failed >= 5)
        }
    }

    @Test func repairImportFailsWholeAtEveryStepOfItsCommit() async throws {
        try await withTemporaryDirectory { root in
            let store = try CheckpointStore.open(at: root + "/template", create: true)
            _ = try await CommitProtocolTests.put(store, root, step: 100)
            let second = try await CommitProtocolTests.put(store, root, step: 200, seed: 2)
            // What losing the log of the second put's transaction leaves: the catalogue without it.
            try store.withCatalogue { catalogue in try catalogue.write { try catalogue.deleteCheckpoint(second.id) } }
            let failed = try await Self.failEachStep(root, template: root + "/template", "repair", mayCommitBeforeFailing: [second.id]) { _, path in
                let report = try await CheckpointStore.repair(at: path)
                #expect(report.importedCheckpoints == [second.id])
            }
            #expect(failed >= 1)
        }
    }

    /// A record that cannot be written, and an undo that cannot commit either: the put fails, and the
    /// checkpoint it leaves listed without a record is recorded by `repair`, which loses nothing.
    @Test func aFailedUndoIsRecordedByRepair() async throws {
        try await withTemporaryDirectory { root in
            try smallCheckpoint(seed: 1, step: 1).write(to: root + "/a")
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let linkFailed = Mutex(false)
            await #expect(throws: CKStoreError.self) {
                try await FaultInjector.shared.with(scope: root + "/store", { operation, path, _ in
                    if operation == .link && path.contains("/commits") {
                        linkFailed.withLock { $0 = true }
                        return .fail(EIO)
                    }
                    return operation == .commitTransaction && linkFailed.withLock({ $0 }) ? .fail(EIO) : nil
                }) {
                    _ = try await store.put(directory: root + "/a", options: PutOptions(run: "r"))
                }
            }
            let listed = try store.list()
            let recorded = try Self.records(store).checkpoints
            #expect(listed.count == 1 && recorded.isEmpty)
            let report = try await CheckpointStore.repair(at: root + "/store")
            #expect(report.incompleteCheckpoints.isEmpty)
            let repaired = try CheckpointStore.open(at: root + "/store")
            #expect(try repaired.list() == listed)
            #expect(try Self.records(repaired).checkpoints == Set(listed.map(\.id)))
        }
    }
}
