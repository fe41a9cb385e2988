@testable import CKStore
import CKStoreTestSupport
import Foundation
import Synchronization
import Testing

/// Two checkpoints of one run where the second changed one weight tensor: damage to that tensor's
/// chunks breaks only the second.
private func twoCheckpoints(_ root: String) async throws -> (CheckpointStore, first: PutResult, second: PutResult, changed: String) {
    var checkpoint = smallCheckpoint()
    try checkpoint.write(to: root + "/a")
    checkpoint.perturb(parameter: 2)
    checkpoint.step += 10
    try checkpoint.write(to: root + "/b")
    let store = try CheckpointStore.open(at: root + "/store", create: true)
    var options = PutOptions(run: "r")
    options.tags = ["warm"]
    options.metrics = ["acc": 0.25]
    let first = try await store.put(directory: root + "/a", options: options)
    options.metrics = ["acc": 0.5]
    let second = try await store.put(directory: root + "/b", options: options)
    return (store, first, second, checkpoint.parameters[2].name)
}

/// Flips one bit in the stored bytes of `digest`.
private func flipBit(of digest: ChunkDigest, in store: CheckpointStore, at delta: Int = 10) throws {
    let location = try #require(try store.withCatalogue { try $0.location(of: digest) })
    let path = store.layout.packPath(location.pack)
    var bytes = try Files.read(path)
    bytes[Int(location.offset) + PackFormat.frameHeaderSize + delta] ^= 0x20
    try Files.write(bytes, to: path)
}

private func tensorChunk(_ store: CheckpointStore, _ id: CheckpointID, tensor: String) throws -> ChunkDigest {
    let model = try #require(try store.manifest(of: id).files.first { $0.path == "model.safetensors" })
    let entry = try #require(model.tensors?.first { $0.name == tensor })
    return model.chunks[entry.firstChunk].digest
}

@Suite struct IntegrityTests {
    @Test func aFlippedBitIsFoundByFullVerifyWithWhatItBreaks() async throws {
        try await withTemporaryDirectory { root in
            let (store, first, second, changed) = try await twoCheckpoints(root)
            #expect(try await store.verify(VerifyOptions(depth: .full)).ok)
            let victim = try tensorChunk(store, second.id, tensor: changed)
            try flipBit(of: victim, in: store)

            let report = try await store.verify(VerifyOptions(depth: .full))
            #expect(!report.ok)
            #expect(report.damagedChunks == [victim])
            #expect(report.affectedCheckpoints == [second.id])
            let damage = try #require(report.damage.first)
            #expect(damage.affects.contains { $0.file == "model.safetensors" && $0.tensor == changed && $0.checkpoint == second.id })
            #expect(report.chunksChecked > 0)
            // Checking just the first checkpoint finds nothing: it does not need that chunk.
            #expect(try await store.verify(VerifyOptions(checkpoints: [first.id])).ok)
            #expect(!(try await store.verify(VerifyOptions(checkpoints: [second.id])).ok))

            let error = await #expect(throws: CKStoreError.self) { try await store.restore(second.id, to: root + "/out-b") }
            #expect(error?.code == .damaged && error?.message.contains("model.safetensors") == true)
            #expect(error?.message.contains("tensor \(changed)") == true, "\(error?.message ?? "")")
            #expect(error?.message.contains(second.id.short) == true)
            #expect(!FileManager.default.fileExists(atPath: root + "/out-b"))
            _ = try await store.restore(first.id, to: root + "/out-a")
            #expect(try Files.tree(root + "/out-a") == (try Files.tree(root + "/a")))
        }
    }

    @Test func aTruncatedPackIsFoundByQuickVerify() async throws {
        try await withTemporaryDirectory { root in
            let (store, _, second, _) = try await twoCheckpoints(root)
            let location = try #require(try store.withCatalogue { try $0.location(of: second.id.digest) })
            let path = store.layout.packPath(location.pack)
            let bytes = try Files.read(path)
            // Cut the pack inside the second checkpoint's manifest frame (its trailer goes too).
            try Files.write(Array(bytes.prefix(Int(location.offset) + PackFormat.frameHeaderSize + 10)), to: path)
            let report = try await store.verify()
            #expect(!report.ok)
            #expect(report.problems.contains { $0.contains("bytes on disk") })
            #expect(report.damagedChunks.contains(second.id.digest))
            #expect(report.affectedCheckpoints.contains(second.id))
        }
    }

    @Test func aDeletedPackIsFoundByQuickVerify() async throws {
        try await withTemporaryDirectory { root in
            let (store, first, second, _) = try await twoCheckpoints(root)
            let location = try #require(try store.withCatalogue { try $0.location(of: first.id.digest) })
            try FileManager.default.removeItem(atPath: store.layout.packPath(location.pack))
            let report = try await store.verify()
            #expect(!report.ok)
            #expect(report.missingChunks.contains(first.id.digest))
            #expect(Set(report.affectedCheckpoints) == [first.id, second.id])
        }
    }

    @Test func latestValidSkipsADamagedNewestCheckpoint() async throws {
        try await withTemporaryDirectory { root in
            let (store, first, second, changed) = try await twoCheckpoints(root)
            #expect(try await store.checkpoint(for: .latestValid(run: "r")) == second.id)
            try flipBit(of: try tensorChunk(store, second.id, tensor: changed), in: store)
            #expect(try await store.checkpoint(for: .latestValid(run: "r")) == first.id)
            #expect(try store.resolve(.latest(run: "r")) == second.id)
            #expect(try CheckpointReference(parsing: "r@latest-valid") == .latestValid(run: "r"))
        }
    }

    @Test func aDeletedCatalogueIsRebuiltFromThePacks() async throws {
        try await withTemporaryDirectory { root in
            let (store, first, second, _) = try await twoCheckpoints(root)
            let before = try store.list()
            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: root + "/store/ckstore.db" + suffix) }
            let refused = #expect(throws: CKStoreError.self) { try CheckpointStore.open(at: root + "/store") }
            #expect(refused?.message.contains("ckstore repair") == true)

            let dry = try await CheckpointStore.repair(at: root + "/store", dryRun: true)
            #expect(dry.catalogueRebuilt && dry.checkpoints == 2)
            #expect(!FileManager.default.fileExists(atPath: root + "/store/ckstore.db"))

            let report = try await CheckpointStore.repair(at: root + "/store")
            #expect(report.catalogueRebuilt && report.checkpoints == 2 && report.incompleteCheckpoints.isEmpty)
            let rebuilt = try CheckpointStore.open(at: root + "/store")
            let after = try rebuilt.list()
            #expect(after.map(\.id) == before.map(\.id))
            #expect(after.map(\.step) == before.map(\.step))
            #expect(after.map(\.metrics) == before.map(\.metrics))
            #expect(after.map(\.tags) == before.map(\.tags))
            #expect(after.map(\.epoch) == before.map(\.epoch))
            #expect(after.map(\.logicalBytes) == before.map(\.logicalBytes))
            #expect(after.map(\.storedBytesAdded) == before.map(\.storedBytesAdded))
            for (result, source) in [(first, "/a"), (second, "/b")] {
                _ = try await rebuilt.restore(result.id, to: root + "/out" + source)
                #expect(try Files.tree(root + "/out" + source) == (try Files.tree(root + source)))
            }
            #expect(try await rebuilt.verify(VerifyOptions(depth: .full)).ok)
        }
    }

    @Test func aCorruptedCatalogueIsRebuilt() async throws {
        try await withTemporaryDirectory { root in
            let (store, first, _, _) = try await twoCheckpoints(root)
            let before = try store.list()
            // Fold the WAL into the database file, then overwrite its second page with garbage.
            try store.withCatalogue { try $0.truncateLog() }
            let path = root + "/store/ckstore.db"
            var bytes = try Files.read(path)
            for index in 4096..<min(bytes.count, 8192) { bytes[index] = UInt8(truncatingIfNeeded: index &* 31) }
            try Files.write(bytes, to: path)

            let report = try await CheckpointStore.repair(at: root + "/store")
            #expect(report.catalogueRebuilt)
            #expect(report.damagedCatalogueMovedTo != nil)
            let rebuilt = try CheckpointStore.open(at: root + "/store")
            #expect(try rebuilt.list().map(\.id) == before.map(\.id))
            _ = try await rebuilt.restore(first.id, to: root + "/out")
            #expect(try Files.tree(root + "/out") == (try Files.tree(root + "/a")))
        }
    }

    @Test func repairSetsDamageAsideAndAPutOfTheSameContentHealsIt() async throws {
        try await withTemporaryDirectory { root in
            let (store, first, second, changed) = try await twoCheckpoints(root)
            let victim = try tensorChunk(store, second.id, tensor: changed)
            try flipBit(of: victim, in: store)

            let report = try await CheckpointStore.repair(at: root + "/store")
            #expect(!report.catalogueRebuilt)
            #expect(report.droppedChunks == [victim])
            #expect(report.quarantinedPacks.count == 1)
            #expect(report.salvagedFrames > 0)
            #expect(report.incompleteCheckpoints == [second.id])
            #expect(FileManager.default.fileExists(atPath: root + "/store/quarantine/\(report.quarantinedPacks[0]).pack"))
            let reopened = try CheckpointStore.open(at: root + "/store")
            let verify = try await reopened.verify(VerifyOptions(depth: .full))
            #expect(verify.missingChunks == [victim] && verify.damagedChunks.isEmpty)
            // The first checkpoint lost nothing: its frames were copied out of the damaged pack.
            _ = try await reopened.restore(first.id, to: root + "/out-a")
            #expect(try Files.tree(root + "/out-a") == (try Files.tree(root + "/a")))

            // Putting the same content again writes the dropped chunk instead of trusting the catalogue.
            var options = PutOptions(run: "r")
            options.tags = ["warm"]
            options.metrics = ["acc": 0.5]
            let again = try await reopened.put(directory: root + "/b", options: options)
            #expect(again.id == second.id && again.alreadyStored && again.chunksNew == 1)
            #expect(try await reopened.verify(VerifyOptions(depth: .full)).ok)
            _ = try await reopened.restore(second.id, to: root + "/out-b")
            #expect(try Files.tree(root + "/out-b") == (try Files.tree(root + "/b")))
        }
    }

    @Test(arguments: [ENOSPC, EIO])
    func aFaultAtEveryWriteSiteOfPutLeavesTheStoreAsItWas(_ code: Int32) async throws {
        try await withTemporaryDirectory { root in
            var checkpoint = TrainerCheckpoint(seed: 11, layout: TrainerCheckpoint.layout(parameterCount: 60_000))
            checkpoint.train(steps: 1)
            try checkpoint.write(to: root + "/a")
            checkpoint.train(steps: 1)
            try checkpoint.write(to: root + "/b")
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let first = try await store.put(directory: root + "/a", options: PutOptions(run: "r"))
            let before = try store.list()

            // Count the write-side calls a successful put makes, on a copy of the store.
            try FileManager.default.copyItem(atPath: root + "/store", toPath: root + "/probe")
            let probe = try CheckpointStore.open(at: root + "/probe")
            let counts = Mutex<[SyscallOperation: Int]>([:])
            let writeSites: [SyscallOperation] = [.open, .pwrite, .fsync, .rename, .mkdir]
            _ = try await FaultInjector.shared.with(scope: root + "/probe", { operation, _, _ in
                counts.withLock { $0[operation, default: 0] += 1 }
                return nil
            }) {
                try await probe.put(directory: root + "/b", options: PutOptions(run: "r"))
            }
            let sites = counts.withLock { $0 }
            #expect((sites[.pwrite] ?? 0) > 3 && (sites[.fsync] ?? 0) >= 2 && (sites[.rename] ?? 0) >= 1)

            var failures = 0
            for operation in writeSites {
                for index in 0..<(sites[operation] ?? 0) {
                    do {
                        _ = try await FaultInjector.shared.with(scope: root + "/store", { op, _, call in
                            op == operation && call == index ? .fail(code) : nil
                        }) {
                            try await store.put(directory: root + "/b", options: PutOptions(run: "r"))
                        }
                        Issue.record("put succeeded despite \(operation) #\(index) failing")
                    } catch let error as CKStoreError {
                        failures += 1
                        if code == ENOSPC { #expect(error.code == .noSpace, "\(operation) #\(index): \(error.message)") }
                        #expect(!error.message.isEmpty)
                    }
                    #expect(try store.list() == before, "\(operation) #\(index)")
                    #expect(try FileSystem.contents(of: root + "/store/tmp").isEmpty, "\(operation) #\(index) left a temporary pack")
                }
            }
            #expect(failures == writeSites.reduce(0) { $0 + (sites[$1] ?? 0) })
            #expect(try await store.verify(VerifyOptions(depth: .full)).ok)
            _ = try await store.restore(first.id, to: root + "/out")
            #expect(try Files.tree(root + "/out") == (try Files.tree(root + "/a")))
            // And with the faults gone, the put goes through.
            _ = try await store.put(directory: root + "/b", options: PutOptions(run: "r"))
            #expect(try store.list().count == 2)
        }
    }
}

@Suite struct ShortWriteTests {
    @Test func shortWritesAreContinuedNotTakenForSuccess() async throws {
        try await withTemporaryDirectory { root in
            try smallCheckpoint().write(to: root + "/src")
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            // Every write to the store's files stops after at most 1000 bytes; the writer must carry on.
            let put = try await FaultInjector.shared.with(scope: root + "/store", { operation, _, _ in
                operation == .pwrite ? .shortWrite(1000) : nil
            }) {
                try await store.put(directory: root + "/src", options: PutOptions(run: "r"))
            }
            #expect(try await store.verify(VerifyOptions(depth: .full)).ok)
            // And restoring through short writes gives the same bytes.
            try await FaultInjector.shared.with(scope: root + "/out", { operation, _, _ in
                operation == .pwrite ? .shortWrite(777) : nil
            }) {
                _ = try await store.restore(put.id, to: root + "/out")
            }
            #expect(try Files.tree(root + "/out") == (try Files.tree(root + "/src")))
        }
    }
}
