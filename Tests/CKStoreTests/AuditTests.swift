@testable import CKStore
import CKStoreTestSupport
import Foundation
import Testing

@Suite struct AuditTests {
    /// Run `a`: six checkpoints whose embedding is frozen (shared between them); run `b`: a copy of
    /// `a@3` (shares every chunk with it) and two checkpoints of its own. Returns the input folders.
    static func twoRuns(_ root: String) async throws -> [String: (id: CheckpointID, folder: String)] {
        let store = try CheckpointStore.open(at: root + "/store", create: true)
        var out = [String: (CheckpointID, String)]()
        var a = TrainerCheckpoint(seed: 11, layout: TrainerCheckpoint.layout(parameterCount: 120_000))
        for step in 1...6 {
            a.train(steps: 1) { $0.hasPrefix("model.embed") }
            let folder = root + "/src/a\(step)"
            try a.write(to: folder)
            var options = PutOptions(run: "a", step: Int64(step))
            options.metrics = ["loss": 3 - Double(step) / 10]
            out["a@\(step)"] = (try await store.put(directory: folder, options: options).id, folder)
        }
        out["b@3"] = (try await store.put(directory: root + "/src/a3", options: PutOptions(run: "b", step: 3)).id, root + "/src/a3")
        var b = TrainerCheckpoint(seed: 12, layout: TrainerCheckpoint.layout(parameterCount: 60_000))
        for step in 4...5 {
            b.train(steps: 1)
            let folder = root + "/src/b\(step)"
            try b.write(to: folder)
            out["b@\(step)"] = (try await store.put(directory: folder, options: PutOptions(run: "b", step: Int64(step))).id, folder)
        }
        return out
    }

    static func audit(_ root: String, _ options: AuditOptions = AuditOptions()) async throws -> AuditReport {
        // A fresh connection each time: closing folds the write-ahead log into the catalogue file.
        try await CheckpointStore.open(at: root + "/store").audit(options)
    }

    @Test func logicalAndAddedBytesAddUp() async throws {
        try await withTemporaryDirectory { root in
            let puts = try await Self.twoRuns(root)
            let report = try await Self.audit(root)
            #expect(report.checkpointCount == 9 && report.runCount == 2)
            for (name, put) in puts {
                let entry = try #require(report.checkpoints.first { $0.id == put.id })
                let input = try Files.tree(put.folder).values.reduce(Int64(0)) { $0 + Int64($1.count) }
                #expect(entry.logicalBytes == input, "\(name): audit says \(entry.logicalBytes), the files hold \(input)")
            }
            #expect(report.logicalBytes == report.checkpoints.reduce(0) { $0 + $1.logicalBytes })
            // No gc has run: every stored frame was added by exactly one put.
            #expect(report.checkpoints.reduce(0) { $0 + $1.addedBytes } == report.storedBytes)
            #expect(report.deadBytes == 0)
            // a@3 and b@3 hold the same files: only the manifests differ.
            let a3 = try #require(report.checkpoints.first { $0.id == puts["a@3"]?.id })
            let b3 = try #require(report.checkpoints.first { $0.id == puts["b@3"]?.id })
            #expect(b3.exclusiveBytes < a3.logicalBytes / 100 && a3.exclusiveBytes < a3.logicalBytes / 100, "only its manifest frame is its own")
            #expect(b3.sharedBytes > a3.logicalBytes / 2)
            // Run totals: what each run needs; the copy is shared between the runs.
            let runA = try #require(report.runs.first { $0.run == "a" }), runB = try #require(report.runs.first { $0.run == "b" })
            #expect(runA.storedBytes + runB.storedBytes > report.storedBytes)
            #expect(runA.exclusiveBytes + runB.exclusiveBytes < report.storedBytes)
            #expect(runA.checkpoints == 6 && runA.keptByPolicy == 6 && runA.policy == "keep everything")
            // Parts split the same totals.
            #expect(report.parts.map(\.part) == ["weights", "optimizer", "other"])
            #expect(report.parts.reduce(0) { $0 + $1.logicalBytes } == report.logicalBytes)
            #expect(report.parts.reduce(0) { $0 + $1.storedBytes } == report.storedBytes)
            var optimizerInput: Int64 = 0
            for put in puts.values { optimizerInput += Int64(try Files.read(put.folder + "/optimizer.pt").count) }
            #expect(report.parts.first { $0.part == "optimizer" }?.logicalBytes == optimizerInput)
            // The largest tensors are tensors, largest first.
            #expect(report.largestTensors.count == 10)
            #expect(zip(report.largestTensors, report.largestTensors.dropFirst()).allSatisfy { $0.storedBytes >= $1.storedBytes })
            #expect(report.largestTensors.allSatisfy { !$0.tensor.isEmpty })
        }
    }

    @Test(arguments: ["a@1", "a@4", "a@6", "b@3", "b@5"])
    func exclusiveBytesAreWhatRemovingFrees(_ name: String) async throws {
        try await withTemporaryDirectory { root in
            let puts = try await Self.twoRuns(root)
            let id = try #require(puts[name]?.id)
            let before = try await Self.audit(root)
            let exclusive = try #require(before.checkpoints.first { $0.id == id }?.exclusiveBytes)
            #expect(exclusive > 0)
            do {
                let store = try CheckpointStore.open(at: root + "/store")
                try store.remove([id])
                var options = GCOptions()
                options.repackThreshold = 0
                _ = try await store.gc(options)
            }
            let after = try await Self.audit(root)
            #expect(before.storedBytes - after.storedBytes == exclusive, "\(name): stored bytes fell by \(before.storedBytes - after.storedBytes), audit said \(exclusive)")
            // On disk, packs also lose each freed frame's trailer entry (104 bytes) and gain an annotation
            // pack recording the rm: within 2% (about 1 KiB per 100 KiB of frames) and a few hundred bytes.
            let packDrop = Double(before.packBytes - after.packBytes)
            #expect(abs(packDrop - Double(exclusive)) <= 0.02 * Double(exclusive) + 512, "\(name): packs fell by \(packDrop), audit said \(exclusive)")
            #expect(after.deadBytes == 0)
        }
    }

    @Test func exclusiveBytesAreExactWithTheDefaultRepackThresholdToo() async throws {
        try await withTemporaryDirectory { root in
            let puts = try await Self.twoRuns(root)
            let id = try #require(puts["a@2"]?.id)
            let before = try await Self.audit(root)
            let exclusive = try #require(before.checkpoints.first { $0.id == id }?.exclusiveBytes)
            do {
                let store = try CheckpointStore.open(at: root + "/store")
                try store.remove([id])
                _ = try await store.gc()
            }
            let after = try await Self.audit(root)
            #expect(before.storedBytes - after.storedBytes == exclusive)
        }
    }

    @Test func whatIfPredictsWhatGCThenFrees() async throws {
        try await withTemporaryDirectory { root in
            _ = try await Self.twoRuns(root)
            let policy = try RetentionPolicy(parsingRules: "keep-last=2,keep-best=1:loss:max")
            let predicted = try #require(try await Self.audit(root, AuditOptions(run: "a", whatIf: policy)).whatIf)
            #expect(Set(predicted.deleted.map(\.step)) == [2, 3, 4], "keeps 5 and 6 (last two) and 1 (highest loss)")
            #expect(predicted.storedBytesFreed > 0 && predicted.diskBytesFreed > 0)
            let before = try await Self.audit(root)
            #expect(before.checkpointCount == 9, "a what-if changes nothing")
            let report: GCReport
            do {
                let store = try CheckpointStore.open(at: root + "/store")
                try store.setPolicy(policy, run: "a")
                report = try await store.gc(GCOptions(run: "a"))
            }
            let after = try await Self.audit(root)
            #expect(Set(report.deletedCheckpoints.map(\.step)) == Set(predicted.deleted.map(\.step)))
            let storedDrop = Double(before.storedBytes - after.storedBytes)
            #expect(abs(storedDrop - Double(predicted.storedBytesFreed)) <= 0.01 * Double(predicted.storedBytesFreed))
            let packDrop = Double(before.packBytes - after.packBytes)
            #expect(abs(packDrop - Double(predicted.diskBytesFreed)) <= 0.01 * Double(predicted.diskBytesFreed))
        }
    }

    @Test func droppedPartsLeaveTheLogicalSize() async throws {
        try await withTemporaryDirectory { root in
            let puts = try await Self.twoRuns(root)
            let store = try CheckpointStore.open(at: root + "/store")
            var policy = RetentionPolicy()
            policy.dropOptimizerAfter = 1
            try store.setPolicy(policy, run: "a")
            _ = try await store.gc(GCOptions(run: "a"))
            let report = try await store.audit()
            for step in 1...5 {
                let put = try #require(puts["a@\(step)"])
                let entry = try #require(report.checkpoints.first { $0.id == put.id })
                let input = try Files.tree(put.folder).filter { $0.key != "optimizer.pt" }.values.reduce(Int64(0)) { $0 + Int64($1.count) }
                #expect(entry.logicalBytes == input)
            }
            let newest = try #require(report.checkpoints.first { $0.id == puts["a@6"]?.id })
            #expect(newest.logicalBytes == (try Files.tree(puts["a@6"]?.folder ?? "").values.reduce(Int64(0)) { $0 + Int64($1.count) }))
        }
    }

    @Test func budgetProjectionHoldsAndGCBudgetEnforcesIt() async throws {
        try await withTemporaryDirectory { root in
            var checkpoint = TrainerCheckpoint(seed: 5, layout: TrainerCheckpoint.layout(parameterCount: 250_000))
            var step: Int64 = 0
            func put(_ count: Int) async throws {
                let store = try CheckpointStore.open(at: root + "/store", create: true)
                for _ in 0..<count {
                    step += 1
                    checkpoint.train(steps: 1)
                    try checkpoint.write(to: root + "/src/\(step)")
                    _ = try await store.put(directory: root + "/src/\(step)", options: PutOptions(run: "r", step: step))
                }
            }
            try await put(3)
            let first = try await Self.audit(root)
            let perCheckpoint = first.storedBytes / 3
            let budget = first.diskBytes + perCheckpoint * 9 / 2
            let projected = try #require(try await Self.audit(root, AuditOptions(budget: budget)).budget)
            #expect(projected.fits && projected.steadyStateBytes == nil, "no policy: the run grows")
            let fit = try #require(projected.moreCheckpoints)
            #expect((3...4).contains(fit), "4.5 checkpoints of headroom, less the per-checkpoint overhead; projected \(fit)")
            try await put(fit)
            let filled = try await Self.audit(root, AuditOptions(budget: budget))
            #expect(filled.diskBytes <= budget, "\(fit) more checkpoints were projected to fit; disk \(filled.diskBytes) > budget \(budget)")
            try await put(3)
            let over = try await Self.audit(root, AuditOptions(budget: budget))
            #expect(over.budget?.fits == false && over.budget?.moreCheckpoints == 0)

            // Protect step 2 by a pin; the newest is protected anyway.
            let store = try CheckpointStore.open(at: root + "/store")
            let pinned = try store.resolve(.step(run: "r", step: 2))
            try store.setPinned(pinned, true)
            let stepsBefore = Set(try store.list().map(\.step))
            // A budget below what the protected checkpoints need is refused, and nothing changes.
            var impossible = GCOptions()
            impossible.budget = over.storedBytes / 10
            await #expect(throws: CKStoreError.self) { _ = try await store.gc(impossible) }
            #expect(Set(try store.list().map(\.step)) == stepsBefore)

            var options = GCOptions()
            options.budget = budget
            let report = try await store.gc(options)
            let outcome = try #require(report.budget)
            let after = try await Self.audit(root, AuditOptions(budget: budget))
            #expect(after.diskBytes <= budget, "gc --budget left \(after.diskBytes) > \(budget)")
            #expect(outcome.diskBytesAfter <= budget)
            let steps = Set(after.checkpoints.map(\.step))
            #expect(steps.contains(2) && steps.contains(step), "the pinned and the newest checkpoints stay")
            // What went were the oldest unprotected checkpoints.
            let deleted = outcome.deletedForBudget.map(\.step)
            #expect(!deleted.isEmpty && deleted == deleted.sorted())
            #expect(deleted == Array(stepsBefore.subtracting([2]).sorted().prefix(deleted.count)))
            #expect(try await store.verify(VerifyOptions(depth: .full)).ok)
        }
    }

    @Test func labelsAreBackfilledWhenAVersion2StoreIsOpened() async throws {
        try await withTemporaryDirectory { root in
            _ = try await Self.twoRuns(root)
            let expected = try await Self.audit(root)
            do {
                // Make the catalogue one written before version 3.
                let store = try CheckpointStore.open(at: root + "/store")
                try store.withCatalogue { catalogue in
                    try catalogue.database.execute("DROP TABLE checkpoint_costs; DROP TABLE pending_shards; DROP TABLE shard_chunks; DROP TABLE chunk_holds; DROP TABLE chunk_inputs; DROP TABLE remote_indexes; DROP TABLE remote_frames; DROP TABLE remote_commits; DROP TABLE remote_state; DROP INDEX chunks_by_base; DROP TABLE settings; DROP TABLE checkpoint_labels; DROP TABLE labels; ALTER TABLE chunks DROP COLUMN label; PRAGMA user_version = 2;")
                }
            }
            let reopened = try await Self.audit(root)
            #expect(reopened.parts == expected.parts)
            #expect(reopened.largestTensors == expected.largestTensors)
            #expect(reopened.checkpoints.map(\.logicalBytes) == expected.checkpoints.map(\.logicalBytes))
        }
    }

    @Test func sizesAndRulesParse() throws {
        #expect(try ByteCount(parsing: "500GiB").value == 500 << 30)
        #expect(try ByteCount(parsing: "2TB").value == 2_000_000_000_000)
        #expect(try ByteCount(parsing: "1.5G").value == 3 << 29)
        #expect(try ByteCount(parsing: "1048576").value == 1 << 20)
        #expect(try ByteCount(parsing: "10 mb").value == 10_000_000)
        for bad in ["", "GiB", "12XB", "-5GB", "1e400"] {
            #expect(throws: CKStoreError.self) { try ByteCount(parsing: bad) }
        }
        let policy = try RetentionPolicy(parsingRules: "keep-last=2,keep-best=1:loss:min, keep-every=500,keep-tag=release,drop-optimizer-after=1,part=optimizer=*.opt")
        #expect(policy.keepLast == 2 && policy.keepBest == [.init(count: 1, metric: "loss", order: .min)] && policy.keepEvery == 500)
        #expect(policy.keepTags == ["release"] && policy.dropOptimizerAfter == 1 && policy.parts == ["optimizer": ["*.opt"]])
        for bad in ["keep-last", "keep-last=x", "keep-forever=1", "keep-best=1:loss", "keep-every=0"] {
            #expect(throws: CKStoreError.self) { try RetentionPolicy(parsingRules: bad) }
        }
        #expect(policy.steadyStateCount(pinned: 1, tagged: 0) == nil, "keep-every grows")
        var bounded = RetentionPolicy()
        bounded.keepLast = 3
        bounded.keepBest = [.init(count: 2, metric: "loss", order: .min)]
        #expect(bounded.steadyStateCount(pinned: 1, tagged: 0) == 7)
        #expect(RetentionPolicy().steadyStateCount(pinned: 0, tagged: 0) == nil)
        #expect(bounded.part(path: "optimizer.pt", tensor: "") == .optimizer)
        #expect(bounded.part(path: "model.safetensors", tensor: "w") == .weights)
        #expect(bounded.part(path: "trainer_state.json", tensor: "") == .other)
    }
}
