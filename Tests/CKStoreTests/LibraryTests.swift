@testable import CKStore
import CKStoreTestSupport
import Foundation
import Synchronization
import Testing

@Suite struct LibraryTests {
    static func floats(_ count: Int, seed: UInt64) -> [Float] {
        var random = SeededRandom(seed: seed)
        return (0..<count).map { _ in Float(random.next() % 2001) / 1000 - 1 }
    }

    @Test func saveFromMemoryRestoresTheReferenceSafetensorsFile() async throws {
        try await withTemporaryDirectory { root in
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            var contents = CheckpointContents(run: "mem", step: 7)
            contents.tensors = [
                try TensorValue(name: "fc.weight", shape: [2, 3], floats: [1, 2, 3, 4, 5, 6]),
                try TensorValue(name: "fc.bias", dtype: .bf16, shape: [2], bytes: [0x80, 0x3f, 0x00, 0xc0]),
            ]
            contents.optimizerState = [try TensorValue(name: "fc.weight.exp_avg", shape: [2, 3], floats: [0, 0, 0, 0, 0, 1])]
            contents.metrics = ["loss": 0.25]
            try contents.setModelConfig(["hidden": 3])
            contents.files["rng_state.bin"] = Data([1, 2, 3])
            let result = try await store.save(contents)
            #expect(!result.alreadyStored && result.step == 7)

            _ = try await store.restore(result.id, to: root + "/out")
            #expect(Files.listing(root + "/out") == ["config.json", "model.safetensors", "optimizer.safetensors", "rng_state.bin"])
            // The reference layout, by hand: u64 little-endian header size, JSON header padded with spaces to
            // a multiple of 8, then the tensors' bytes in order.
            let header = #"{"__metadata__":{"format":"pt"},"fc.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"fc.bias":{"dtype":"BF16","shape":[2],"data_offsets":[24,28]}}"#
            var headerBytes = Array(header.utf8)
            while headerBytes.count % 8 != 0 { headerBytes.append(0x20) }
            var expected = [UInt8(headerBytes.count), 0, 0, 0, 0, 0, 0, 0] + headerBytes
            for value: Float in [1, 2, 3, 4, 5, 6] { expected += withUnsafeBytes(of: value.bitPattern.littleEndian) { Array($0) } }
            expected += [0x80, 0x3f, 0x00, 0xc0]
            #expect(try Files.read(root + "/out/model.safetensors") == expected)
            #expect(try FormatValidation.safetensors(try Files.read(root + "/out/optimizer.safetensors")) == 1)
            #expect(try Files.read(root + "/out/rng_state.bin") == [1, 2, 3])

            // Indistinguishable from a put of the same folder: same files, same chunks, same content.
            var options = PutOptions(run: "mem", step: 7)
            options.metrics = ["loss": 0.25]
            let again = try await store.put(directory: root + "/out", options: options)
            #expect(again.id == result.id && again.alreadyStored)
            let folder = try await store.put(directory: root + "/out", options: PutOptions(run: "folder", step: 7))
            #expect(folder.chunksNew == 0)
            #expect(try store.manifest(of: folder.id).files == (try store.manifest(of: result.id).files))
            #expect(try store.manifest(of: result.id).modelConfig == .object(["hidden": .integer(3)]))
        }
    }

    @Test func backgroundSavesKeepTheValuesOfTheMomentTheyWereAskedFor() async throws {
        try await withTemporaryDirectory { root in
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let saver = BackgroundSaver(store: store, maxInFlight: 2)
            var weights = Self.floats(600_000, seed: 1)        // 2.3 MiB: three chunks
            var moments = Self.floats(600_000, seed: 2)
            var snapshots = [Int64: ([Float], [Float])]()
            for step in Int64(1)...8 {
                var contents = CheckpointContents(run: "bg", step: step)
                contents.tensors = [try TensorValue(name: "w", shape: [weights.count], floats: weights)]
                contents.optimizerState = [try TensorValue(name: "m", shape: [moments.count], floats: moments)]
                snapshots[step] = (weights, moments)
                _ = await saver.save(contents)
                // Training goes on at once, in place, on the caller's own arrays.
                for index in weights.indices { weights[index] = weights[index] * 0.999 + Float(step) }
                for index in stride(from: 0, to: moments.count, by: 7) { moments[index] += 1 }
            }
            let results = try await saver.finish()
            #expect(results.map(\.step) == Array(1...8))
            for result in results {
                let loaded = try await store.load(result.id)
                let (w, m) = try #require(snapshots[result.step])
                #expect(try loaded.tensors().first?.floats() == w, "step \(result.step): weights")
                #expect(try loaded.tensors(in: "optimizer.safetensors").first?.floats() == m, "step \(result.step): moments")
            }
            #expect(await saver.inFlight == 0)
        }
    }

    @Test func snapshotsReuseTheBuffersOfCommittedSaves() async throws {
        try await withTemporaryDirectory { root in
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let saver = BackgroundSaver(store: store, maxInFlight: 1)
            var weights = Self.floats(300_000, seed: 9)
            var addresses = [Int]()
            var expected = [Int64: [Float]]()
            for step in Int64(1)...3 {
                var contents = CheckpointContents(run: "snap", step: step)
                contents.tensors = [try await saver.snapshot(name: "w", shape: [weights.count], floats: weights)]
                addresses.append(contents.tensors[0].bytes.withUnsafeBytes { Int(bitPattern: $0.baseAddress) })
                expected[step] = weights
                _ = try await saver.save(contents).committed()
                for index in weights.indices { weights[index] += 1 }
            }
            // Steps 2 and 3 were copied into the buffer step 1's save gave back.
            #expect(addresses[1] == addresses[0] && addresses[2] == addresses[0], "\(addresses)")
            for step in Int64(1)...3 {
                let id = try store.resolve(.step(run: "snap", step: step))
                #expect(try await store.loadTensors(id).first?.floats() == expected[step], "step \(step)")
            }
        }
    }

    @Test func backPressureBoundsSavesInFlight() async throws {
        try await withTemporaryDirectory { root in
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let saver = BackgroundSaver(store: store, maxInFlight: 1)
            var observed = [Int]()
            var handles = [BackgroundSaver.Handle]()
            for step in Int64(1)...6 {
                var contents = CheckpointContents(run: "bp", step: step)
                contents.tensors = [try TensorValue(name: "w", shape: [1 << 20], floats: Self.floats(1 << 20, seed: UInt64(step)))]
                handles.append(await saver.save(contents))
                observed.append(await saver.inFlight)
            }
            // Each save call waited for the previous save to finish: never more than one snapshot held.
            #expect(observed.allSatisfy { $0 <= 1 }, "saves in flight: \(observed)")
            for (index, handle) in handles.enumerated().dropLast() {
                // A later save started only after this one committed, so it is already done.
                #expect(try await handle.committed().step == Int64(index + 1))
            }
            try await saver.finish()
            #expect(try store.list(run: "bp").count == 6)
        }
    }

    @Test func loadingOneTensorReadsOnlyItsChunks() async throws {
        try await withTemporaryDirectory { root in
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            var contents = CheckpointContents(run: "part", step: 1)
            contents.tensors = try (0..<4).map { try TensorValue(name: "layer\($0).weight", shape: [700_000], floats: Self.floats(700_000, seed: UInt64($0))) }
            let id = try await store.save(contents).id
            let manifest = try store.manifest(of: id)
            let tensor = try #require(manifest.files.first { $0.path == "model.safetensors" }?.tensors?.first { $0.name == "layer2.weight" })
            #expect(tensor.chunkCount == 3)

            let before = store.framesRead.value
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 700_000 * 4, alignment: 64)
            defer { buffer.deallocate() }
            try await store.readTensor(id, name: "layer2.weight", into: buffer)
            let values = Array(buffer.bindMemory(to: Float.self))
            #expect(store.framesRead.value - before == tensor.chunkCount + 1, "its chunks and the manifest")
            #expect(values == Self.floats(700_000, seed: 2))

            let middle = store.framesRead.value
            let loaded = try await store.loadTensors(id, matching: ["layer[13].*"])
            #expect(loaded.map(\.name) == ["layer1.weight", "layer3.weight"])
            #expect(store.framesRead.value - middle == 2 * 3 + 1)
            #expect(try loaded[1].floats() == Self.floats(700_000, seed: 3))

            // Bad requests name what is missing.
            await #expect(throws: CKStoreError.self) { try await store.readTensor(id, name: "nope", into: buffer) }
            let short = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 64)
            defer { short.deallocate() }
            let wrongSize = await #expect(throws: CKStoreError.self) { try await store.readTensor(id, name: "layer2.weight", into: short) }
            #expect(wrongSize?.code == .invalidArgument)
            await #expect(throws: CKStoreError.self) { _ = try await store.loadTensors(id, matching: ["nope*"]) }
            #expect(throws: CKStoreError.self) { try TensorValue(name: "w", shape: [3], floats: [1, 2]) }
            var duplicate = CheckpointContents(run: "part", step: 2)
            duplicate.tensors = try [TensorValue(name: "a", shape: [1], floats: [1]), TensorValue(name: "a", shape: [1], floats: [2])]
            await #expect(throws: CKStoreError.self) { _ = try await store.save(duplicate) }
            #expect(try store.latest(run: "part") == id)
        }
    }
}
