@testable import CKStore
import CKStoreTestSupport
import Foundation
import Testing

/// `gc --dry-run` prints the plan that `gc` executes: the same numbers, on a series whose deltas lose
/// their bases' checkpoints.
@Suite struct GCPlanTests {
    /// The sizes of the store's pack files and temporary files.
    static func packBytes(_ store: String) -> Int64 {
        diskBytes(store + "/packs") + diskBytes(store + "/tmp")
    }

    /// Puts steps 2…5 of the drifting folder (one chain: a keyframe and three deltas), and an old orphan pack.
    static func series(_ root: String) async throws -> (CheckpointStore, [CheckpointID]) {
        let store = try CheckpointStore.open(at: root + "/store", create: true)
        var ids = [CheckpointID]()
        for step in 2...5 {
            try driftingFolder(at: root + "/in-\(step)", step: step)
            ids.append(try await store.put(directory: root + "/in-\(step)", options: PutOptions(run: "drift", step: Int64(step))).id)
        }
        let orphan = root + "/store/packs/ab/" + String(repeating: "ab", count: 16) + ".pack"
        try Data(repeating: 7, count: 4096).write(to: URL(fileURLWithPath: orphan))
        try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSinceNow: -7200)], ofItemAtPath: orphan)
        return (store, ids)
    }

    @Test func theDryRunIsThePlanGCExecutes() async throws {
        try await withTemporaryDirectory { root in
            let (store, ids) = try await Self.series(root)
            try store.setPolicy(try RetentionPolicy(parsingRules: "keep-last=1"), run: "drift")
            let planned = try await store.gc(GCOptions(dryRun: true))
            // The dry run changed nothing.
            #expect(try store.list().count == 4)

            let before = Self.packBytes(root + "/store")
            let done = try await store.gc(GCOptions())
            let after = Self.packBytes(root + "/store")

            // The series exercises every part of a plan.
            #expect(planned.deleted == Array(ids[0..<3]))
            #expect(planned.chunksReencoded > 0, "no delta lost its base")
            #expect(planned.packsDeleted + planned.packsRewritten > 0)
            #expect(planned.orphansRemoved == 1)
            #expect(planned.chunksFreed > 0)

            #expect(done.dryRun == false)
            #expect(done.deleted == planned.deleted)
            #expect(done.kept == planned.kept)
            #expect(done.bytesFreed == planned.bytesFreed)
            #expect(done.bytesUnreferenced == planned.bytesUnreferenced)
            #expect(done.chunksFreed == planned.chunksFreed)
            #expect(done.chunksReencoded == planned.chunksReencoded)
            #expect(done.packsDeleted == planned.packsDeleted)
            #expect(done.packsRewritten == planned.packsRewritten)
            #expect(done.orphansRemoved == planned.orphansRemoved)
            // bytes_freed is what the packs really shrank by, less the annotation pack that records the
            // deletions (a few hundred bytes, not counted).
            let annotationPack = (before - planned.bytesFreed) - after
            #expect(annotationPack <= 0 && annotationPack > -2048, "packs shrank by \(before - after), plan said \(planned.bytesFreed)")

            // A second gc has nothing left to do, and the survivor restores.
            let again = try await store.gc(GCOptions(dryRun: true))
            #expect(again.deleted.isEmpty && again.chunksReencoded == 0 && again.chunksFreed == 0)
            _ = try await store.restore(ids[3], to: root + "/out")
            #expect(try Files.tree(root + "/out") == (try Files.tree(root + "/in-5")))
            let report = try await store.verify(VerifyOptions(depth: .full))
            #expect(report.ok, "\(report)")
        }
    }

    @Test func auditWhatIfReportsThePlan() async throws {
        try await withTemporaryDirectory { root in
            let (store, _) = try await Self.series(root)
            let policy = try RetentionPolicy(parsingRules: "keep-last=2")
            let whatIf = try #require(try await store.audit(AuditOptions(whatIf: policy)).whatIf)
            var options = GCOptions(dryRun: true)
            options.policyOverride = policy
            let plan = try store.gcPlanner().plan(options)
            #expect(whatIf.deleted == plan.deleted)
            #expect(whatIf.diskBytesFreed == plan.bytesFreed)
            #expect(whatIf.storedBytesFreed == plan.bytesUnreferenced)
            try store.setPolicy(policy, run: "drift")
            #expect(try await store.gc(GCOptions()).bytesFreed == plan.bytesFreed)
        }
    }
}
