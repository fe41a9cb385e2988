@testable import CKStore
import CKStoreTestSupport
import Foundation
import Testing

/// The sum of the sizes of the files under `path`.
func diskBytes(_ path: String) -> Int64 {
    var total: Int64 = 0
    for name in Files.listing(path) {
        if let attributes = try? FileManager.default.attributesOfItem(atPath: path + "/" + name),
           attributes[.type] as? FileAttributeType == .typeRegular, let size = attributes[.size] as? NSNumber {
            total += size.int64Value
        }
    }
    return total
}

@Suite struct GCTests {
    /// Twelve trainer-shaped checkpoints at steps 1…12 whose loss is lowest at step 7.
    static func twelve(_ root: String) async throws -> (CheckpointStore, [Int64: PutResult]) {
        let store = try CheckpointStore.open(at: root + "/store", create: true)
        var checkpoint = TrainerCheckpoint(seed: 3, layout: TrainerCheckpoint.layout(parameterCount: 150_000))
        var results = [Int64: PutResult]()
        for step in 1...12 {
            checkpoint.train(steps: 1)
            try checkpoint.write(to: root + "/src/\(step)")
            var options = PutOptions(run: "train", step: Int64(step))
            options.metrics = ["loss": step == 7 ? 0.5 : 2.0 + Double(step) / 10]
            results[Int64(step)] = try await store.put(directory: root + "/src/\(step)", options: options)
        }
        return (store, results)
    }

    @Test func policyGCKeepsExactlyTheRuleSetAndFreesWhatDryRunPredicted() async throws {
        try await withTemporaryDirectory { root in
            let (store, results) = try await Self.twelve(root)
            var policy = RetentionPolicy()
            policy.keepLast = 2
            policy.keepBest = [.init(count: 1, metric: "loss", order: .min)]
            policy.keepEvery = 5
            try store.setPolicy(policy, run: "train")
            let expected: Set<Int64> = [4, 7, 9, 11, 12]

            let before = diskBytes(root + "/store/packs")
            var options = GCOptions(dryRun: true)
            options.orphanGrace = 0
            let dry = try await store.gc(options)
            #expect(Set(dry.kept.map(\.step)) == expected)
            #expect(Set(dry.deletedCheckpoints.map(\.step)) == Set(1...12).subtracting(expected))
            #expect(dry.kept.first { $0.step == 7 }?.reasons.contains("keep-best 1:loss:min") == true)
            #expect(dry.kept.first { $0.step == 12 }?.reasons.contains("newest") == true)
            #expect(dry.kept.first { $0.step == 9 }?.reasons == ["keep-every 5"])
            #expect(try store.list().count == 12, "a dry run changes nothing")
            #expect(diskBytes(root + "/store/packs") == before)
            #expect(dry.bytesFreed > 0)

            options.dryRun = false
            let report = try await store.gc(options)
            #expect(report.deleted == dry.deleted && report.bytesFreed == dry.bytesFreed)
            #expect(Set(try store.list().map(\.step)) == expected)
            let after = diskBytes(root + "/store/packs")
            let dropped = Double(before - after)
            #expect(abs(dropped - Double(dry.bytesFreed)) <= 0.01 * Double(dry.bytesFreed), "disk dropped \(before - after), dry run said \(dry.bytesFreed)")
            for step in expected {
                let result = try #require(results[step])
                _ = try await store.restore(result.id, to: root + "/out/\(step)")
                #expect(try Files.tree(root + "/out/\(step)") == (try Files.tree(root + "/src/\(step)")))
            }
            #expect(try await store.verify(VerifyOptions(depth: .full)).ok)
            // A second gc finds nothing more to do.
            let again = try await store.gc(options)
            #expect(again.deleted.isEmpty && again.chunksFreed == 0)
        }
    }

    @Test func dropOptimizerAfterKeepsWeightsAndFreesOptimizerBytes() async throws {
        try await withTemporaryDirectory { root in
            let (store, results) = try await Self.twelve(root)
            var policy = RetentionPolicy()
            policy.keepLast = 3
            policy.dropOptimizerAfter = 1
            try store.setPolicy(policy, run: nil)   // the store default applies to the run
            var options = GCOptions()
            options.orphanGrace = 0
            let report = try await store.gc(options)
            #expect(Set(report.kept.map(\.step)) == [10, 11, 12])
            #expect(Set(report.kept.filter { !$0.dropped.isEmpty }.map(\.step)) == [10, 11])
            let listed = try store.list()
            #expect(listed.first { $0.step == 12 }?.droppedParts == [])
            #expect(listed.first { $0.step == 11 }?.droppedParts == ["optimizer"])
            for step: Int64 in [10, 11] {
                let id = try #require(results[step]).id
                _ = try await store.restore(id, to: root + "/out/\(step)")
                var expected = try Files.tree(root + "/src/\(step)")
                expected.removeValue(forKey: "optimizer.pt")
                #expect(try Files.tree(root + "/out/\(step)") == expected)
                let error = await #expect(throws: CKStoreError.self) {
                    try await store.restore(id, to: root + "/opt/\(step)", options: RestoreOptions(files: ["optimizer.pt"]))
                }
                #expect(error?.message.contains("dropped its optimizer part") == true)
            }
            _ = try await store.restore(try #require(results[12]).id, to: root + "/out/12")
            #expect(try Files.tree(root + "/out/12") == (try Files.tree(root + "/src/12")))
            #expect(try await store.verify(VerifyOptions(depth: .full)).ok)
        }
    }

    @Test func pinsTagsRemoveAndEmptyPolicies() async throws {
        try await withTemporaryDirectory { root in
            let (store, results) = try await Self.twelve(root)
            // No policy: gc deletes nothing.
            var options = GCOptions()
            options.orphanGrace = 0
            #expect(try await store.gc(options).deleted.isEmpty)

            let pinned = try #require(results[2]).id
            try store.setPinned(pinned, true)
            try store.setTag(try #require(results[3]).id, "golden", present: true)
            var policy = RetentionPolicy()
            policy.keepLast = 1
            policy.keepTags = ["golden"]
            try store.setPolicy(policy, run: "train")
            let report = try await store.gc(options)
            #expect(Set(try store.list().map(\.step)) == [2, 3, 12])
            #expect(report.kept.first { $0.step == 2 }?.reasons == ["pinned"])

            let error = #expect(throws: CKStoreError.self) { try store.remove([pinned]) }
            #expect(error?.message.contains("pinned") == true)
            try store.remove([pinned], force: true)
            #expect(Set(try store.list().map(\.step)) == [3, 12])
            _ = try await store.gc(options)
            #expect(try await store.verify(VerifyOptions(depth: .full)).ok)
        }
    }
}

@Suite struct AnnotationRepairTests {
    @Test func repairBringsBackPoliciesPinsTagsDeletionsAndDroppedParts() async throws {
        try await withTemporaryDirectory { root in
            let (store, results) = try await GCTests.twelve(root)
            var policy = RetentionPolicy()
            policy.keepLast = 4
            policy.dropOptimizerAfter = 2
            try store.setPolicy(policy, run: "train")
            var fallback = RetentionPolicy()
            fallback.keepWithin = 86400
            try store.setPolicy(fallback, run: nil)
            let pinned = try #require(results[2]).id
            try store.setPinned(pinned, true)
            try store.setTag(try #require(results[10]).id, "golden", present: true)
            try store.setTag(try #require(results[10]).id, "temporary", present: true)
            try store.setTag(try #require(results[10]).id, "temporary", present: false)
            try store.remove([try #require(results[12]).id])
            var options = GCOptions()
            options.orphanGrace = 0
            _ = try await store.gc(options)
            let before = try store.list()
            #expect(Set(before.map(\.step)) == [2, 8, 9, 10, 11])
            #expect(before.first { $0.step == 8 }?.droppedParts == ["optimizer"])

            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: root + "/store/ckstore.db" + suffix) }
            let report = try await CheckpointStore.repair(at: root + "/store")
            #expect(report.catalogueRebuilt && report.incompleteCheckpoints.isEmpty)
            let rebuilt = try CheckpointStore.open(at: root + "/store")
            let after = try rebuilt.list()
            #expect(after.map(\.id) == before.map(\.id))
            #expect(after.map(\.tags) == before.map(\.tags))
            #expect(after.map(\.pinned) == before.map(\.pinned))
            #expect(after.map(\.droppedParts) == before.map(\.droppedParts))
            #expect(try rebuilt.policy(run: "train").0 == policy)
            #expect(try rebuilt.policy(run: nil).0 == fallback)
            #expect(try await rebuilt.verify(VerifyOptions(depth: .full)).ok)
            // The annotations survive a gc: a second rebuild after it gives the same state.
            _ = try await rebuilt.gc(options)
            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: root + "/store/ckstore.db" + suffix) }
            _ = try await CheckpointStore.repair(at: root + "/store")
            #expect(try CheckpointStore.open(at: root + "/store").list().map(\.tags) == before.map(\.tags))
        }
    }
}

@Suite struct TensorPartTests {
    @Test func partGlobsDropTensorsInsideSafetensorsFiles() async throws {
        try await withTemporaryDirectory { root in
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            var random = SeededRandom(seed: 8)
            var ids = [CheckpointID]()
            for step in 1...3 {
                var model = SafetensorsBuilder(metadata: ["format": "pt"])
                model.add("w", dtype: "F32", shape: [4096], data: random.bytes(count: 16384))
                model.add("opt.exp_avg.w", dtype: "F32", shape: [4096], data: random.bytes(count: 16384))
                model.add("opt.exp_avg_sq.w", dtype: "F32", shape: [4096], data: random.bytes(count: 16384))
                try Files.write(model.build(), to: root + "/src/\(step)/model.safetensors")
                ids.append(try await store.put(directory: root + "/src/\(step)", options: PutOptions(run: "r", step: Int64(step))).id)
            }
            var policy = RetentionPolicy()
            policy.keepLast = 3
            policy.dropOptimizerAfter = 1
            policy.parts = ["optimizer": ["opt.*"]]
            try store.setPolicy(policy, run: "r")
            var options = GCOptions()
            options.orphanGrace = 0
            let report = try await store.gc(options)
            #expect(report.kept.first { $0.step == 1 }?.dropped == ["model.safetensors:opt.exp_avg.w", "model.safetensors:opt.exp_avg_sq.w"])
            #expect(report.chunksFreed == 4, "two optimizer tensors of two checkpoints")
            #expect(try store.list().first { $0.step == 2 }?.droppedParts == ["optimizer"])

            for (index, id) in ids.enumerated() {
                _ = try await store.restore(id, to: root + "/out/\(index)")
                let original = try Files.read(root + "/src/\(index + 1)/model.safetensors")
                let restored = try Files.read(root + "/out/\(index)/model.safetensors")
                if index == 2 {
                    #expect(restored == original, "the newest keeps its optimizer tensors")
                    continue
                }
                let parsed = try SafetensorsFile.parse(MemoryByteSource(bytes: restored), size: Int64(restored.count), name: "restored")
                #expect(parsed.tensors.map(\.name) == ["w"])
                #expect(parsed.metadata == ["format": "pt"])
                let originalParsed = try SafetensorsFile.parse(MemoryByteSource(bytes: original), size: Int64(original.count), name: "original")
                let w = try #require(originalParsed.tensors.first { $0.name == "w" })
                let start = Int(originalParsed.dataStart + w.dataBegin)
                #expect(Array(restored[Int(parsed.dataStart)...]) == Array(original[start..<(start + 16384)]))
            }
            #expect(try await store.verify(VerifyOptions(depth: .full)).ok)
        }
    }
}
