@testable import CKStore
import CKStoreTestSupport
import Foundation
import Synchronization
import Testing

/// A small trainer-shaped checkpoint: a few hundred KiB of weights and twice that of optimizer state.
func smallCheckpoint(seed: UInt64 = 1, step: Int = 10) -> TrainerCheckpoint {
    var checkpoint = TrainerCheckpoint(seed: seed, layout: TrainerCheckpoint.layout(parameterCount: 400_000))
    checkpoint.train(steps: step)
    return checkpoint
}

@Suite struct StoreRoundTripTests {
    @Test func trainerFolderRoundTripsByteForByte() async throws {
        try await withTemporaryDirectory { root in
            let source = root + "/checkpoint-10"
            try smallCheckpoint().write(to: source)
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let result = try await store.put(directory: source, options: PutOptions(run: "tiny"))
            #expect(result.step == 10)
            #expect(result.logicalBytes == Int64(try Files.tree(source).values.reduce(0) { $0 + $1.count }))
            #expect(result.chunksNew > 0 && result.storedBytesAdded > 0)
            _ = try await store.restore(result.id, to: root + "/out")
            #expect(try Files.tree(root + "/out") == (try Files.tree(source)))

            let manifest = try store.manifest(of: result.id)
            let model = try #require(manifest.files.first { $0.path == "model.safetensors" })
            #expect(model.format == .safetensors)
            #expect(model.tensors?.count == smallCheckpoint().parameters.count)
            let optimizer = try #require(manifest.files.first { $0.path == "optimizer.pt" })
            #expect(optimizer.format == .torchZip && (optimizer.tensors?.count ?? 0) == smallCheckpoint().parameters.count * 3)
            // Trainer state gives step, epoch and the last logged loss; config.json is recorded.
            #expect(manifest.epoch == 0.1)
            #expect(manifest.metrics["loss"] != nil)
            #expect(manifest.modelConfig?["architectures"] != nil)
            #expect(manifest.trainerState?["global_step"] == .integer(10))
        }
    }

    @Test func realPyTorchCheckpointsRoundTrip() async throws {
        try await withTemporaryDirectory { root in
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            for (index, name) in ["hf-tiny/checkpoint-2", "hf-tiny/checkpoint-4", "sharded"].enumerated() {
                let source = RealFixtures.path(name)
                let result = try await store.put(directory: source, options: PutOptions(run: "real", step: Int64(index) * 10 + 1))
                #expect(result.warnings.isEmpty, "\(result.warnings)")
                _ = try await store.restore(result.id, to: root + "/out\(index)")
                #expect(try Files.tree(root + "/out\(index)") == (try Files.tree(source)))
            }
            let loose = root + "/loose"
            for name in ["dtypes.safetensors", "shared_storage.pt", "legacy_format.pt"] {
                try FileManager.default.createDirectory(atPath: loose, withIntermediateDirectories: true)
                try FileManager.default.copyItem(atPath: RealFixtures.path(name), toPath: loose + "/" + name)
            }
            let result = try await store.put(directory: loose, options: PutOptions(run: "real", step: 100))
            let manifest = try store.manifest(of: result.id)
            #expect(manifest.files.map(\.format) == [.safetensors, .opaque, .torchZip])
            #expect(manifest.files[0].tensors?.count == 11)
            _ = try await store.restore(result.id, to: root + "/loose-out")
            #expect(try Files.tree(root + "/loose-out") == (try Files.tree(loose)))
        }
    }

    @Test func secondPutOfIdenticalContentAddsNoChunk() async throws {
        try await withTemporaryDirectory { root in
            let source = root + "/checkpoint-10"
            try smallCheckpoint().write(to: source)
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let first = try await store.put(directory: source, options: PutOptions(run: "r"))
            let again = try await store.put(directory: source, options: PutOptions(run: "r"))
            #expect(again.id == first.id && again.alreadyStored)
            #expect(again.chunksNew == 0 && again.storedBytesAdded == 0)
            // The same bytes under another step share every chunk: only a manifest frame is added.
            let other = try await store.put(directory: source, options: PutOptions(run: "r", step: 11))
            #expect(other.id != first.id && other.chunksNew == 0)
            #expect(other.storedBytesAdded < 16 << 10)
            #expect(try store.list(run: "r").map(\.step) == [10, 11])
        }
    }

    @Test func changingOneTensorAddsOnlyThatTensorsChunks() async throws {
        try await withTemporaryDirectory { root in
            var checkpoint = smallCheckpoint()
            try checkpoint.write(to: root + "/a")
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            _ = try await store.put(directory: root + "/a", options: PutOptions(run: "r", step: 1))
            let index = 1
            checkpoint.perturb(parameter: index)
            try checkpoint.write(to: root + "/b")
            let second = try await store.put(directory: root + "/b", options: PutOptions(run: "r", step: 2))
            let manifest = try store.manifest(of: second.id)
            let model = try #require(manifest.files.first { $0.path == "model.safetensors" })
            let tensor = try #require(model.tensors?.first { $0.name == checkpoint.parameters[index].name })
            #expect(tensor.chunkCount >= 1)
            #expect(second.chunksNew == tensor.chunkCount)
            let tensorChunks = Set(model.chunks[tensor.firstChunk..<(tensor.firstChunk + tensor.chunkCount)].map(\.digest))
            let stored = try store.withCatalogue { catalogue in
                try catalogue.database.prepare("SELECT digest FROM chunks WHERE kind = 0").rows { try $0.digest(0) }
            }
            #expect(tensorChunks.isSubset(of: Set(stored)))
            _ = try await store.restore(second.id, to: root + "/out")
            #expect(try Files.tree(root + "/out") == (try Files.tree(root + "/b")))
        }
    }

    @Test func restoresSelectedFilesAndTensorSubsets() async throws {
        try await withTemporaryDirectory { root in
            let checkpoint = smallCheckpoint()
            try checkpoint.write(to: root + "/src")
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let put = try await store.put(directory: root + "/src", options: PutOptions(run: "r"))

            _ = try await store.restore(put.id, to: root + "/one", options: RestoreOptions(files: ["config.json"]))
            #expect(Files.listing(root + "/one") == ["config.json"])

            _ = try await store.restore(put.id, to: root + "/tensors", options: RestoreOptions(tensors: ["layers.0.*", "head.weight"]))
            let bytes = try Files.read(root + "/tensors/model.safetensors")
            let file = try SharedFile(path: root + "/tensors/model.safetensors")
            let parsed = try SafetensorsFile.parse(file, size: Int64(bytes.count), name: "subset")
            let expected = checkpoint.parameters.filter { $0.name.hasPrefix("layers.0.") || $0.name == "head.weight" }
            #expect(parsed.tensors.map(\.name) == expected.map(\.name))
            #expect(parsed.metadata == ["format": "pt"])
            for (tensor, parameter) in zip(parsed.tensors, expected) {
                let start = Int(parsed.dataStart + tensor.dataBegin)
                #expect(Array(bytes[start..<(start + parameter.weights.count)]) == parameter.weights)
                #expect(tensor.shape == parameter.shape)
            }
            // The subset equals what the reference layout gives for the same tensors.
            var builder = SafetensorsBuilder(metadata: ["format": "pt"])
            for parameter in expected { builder.add(parameter.name, dtype: "F32", shape: parameter.shape, data: parameter.weights) }
            #expect(parsed.tensors.map(\.dataEnd) == (try SafetensorsFile.parse(header: Array(builder.build()[8..<(8 + Int(builder.build().loadLittleEndian(UInt64.self, at: 0)))]), size: Int64(builder.build().count), name: "x").tensors.map(\.dataEnd)))

            let missing = await #expect(throws: CKStoreError.self) {
                try await store.restore(put.id, to: root + "/none", options: RestoreOptions(tensors: ["nope.*"]))
            }
            #expect(missing?.code == .notFound && missing?.message.contains("nope.*") == true)
            #expect(!FileManager.default.fileExists(atPath: root + "/none"))
            let noFile = await #expect(throws: CKStoreError.self) {
                try await store.restore(put.id, to: root + "/none", options: RestoreOptions(files: ["absent.bin"]))
            }
            #expect(noFile?.message.contains("absent.bin") == true)
        }
    }

    @Test func refusesANonEmptyDestinationUnlessForced() async throws {
        try await withTemporaryDirectory { root in
            try smallCheckpoint().write(to: root + "/src")
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let put = try await store.put(directory: root + "/src", options: PutOptions(run: "r"))
            try Files.write([1, 2, 3], to: root + "/dest/keep.txt")
            let error = await #expect(throws: CKStoreError.self) { try await store.restore(put.id, to: root + "/dest") }
            #expect(error?.code == .alreadyExists)
            #expect(Files.listing(root + "/dest") == ["keep.txt"])
            _ = try await store.restore(put.id, to: root + "/dest", options: RestoreOptions(force: true))
            #expect(try Files.read(root + "/dest/keep.txt") == [1, 2, 3])
            #expect(try Files.read(root + "/dest/model.safetensors") == (try Files.read(root + "/src/model.safetensors")))
        }
    }

    @Test func symlinksInsideAreKeptAndOutsideAreRefused() async throws {
        try await withTemporaryDirectory { root in
            try Files.write(Array("weights".utf8), to: root + "/src/real.bin")
            try FileManager.default.createSymbolicLink(atPath: root + "/src/alias.bin", withDestinationPath: "real.bin")
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let put = try await store.put(directory: root + "/src", options: PutOptions(run: "r", step: 1))
            _ = try await store.restore(put.id, to: root + "/out")
            #expect(try FileManager.default.destinationOfSymbolicLink(atPath: root + "/out/alias.bin") == "real.bin")

            try Files.write(Array("secret".utf8), to: root + "/outside.txt")
            try FileManager.default.createSymbolicLink(atPath: root + "/src/escape", withDestinationPath: root + "/outside.txt")
            let before = try store.list()
            let error = await #expect(throws: CKStoreError.self) {
                try await store.put(directory: root + "/src", options: PutOptions(run: "r", step: 2))
            }
            #expect(error?.code == .unsafePath && error?.message.contains("escape") == true)
            #expect(try store.list() == before)
            var follow = PutOptions(run: "r", step: 2)
            follow.followSymlinks = true
            let followed = try await store.put(directory: root + "/src", options: follow)
            _ = try await store.restore(followed.id, to: root + "/out2")
            #expect(try Files.read(root + "/out2/escape") == Array("secret".utf8))
        }
    }

    @Test func sameRunAndStepWithOtherContentIsAConflict() async throws {
        try await withTemporaryDirectory { root in
            try smallCheckpoint(seed: 1).write(to: root + "/a")
            try smallCheckpoint(seed: 2).write(to: root + "/b")
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            _ = try await store.put(directory: root + "/a", options: PutOptions(run: "r", step: 5))
            let error = await #expect(throws: CKStoreError.self) {
                try await store.put(directory: root + "/b", options: PutOptions(run: "r", step: 5))
            }
            #expect(error?.code == .conflict && error?.message.contains("step 5") == true)
            #expect(try store.list().count == 1)
        }
    }

    @Test func missingStepIsAClearError() async throws {
        try await withTemporaryDirectory { root in
            try Files.write([1], to: root + "/plain/a.bin")
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let error = await #expect(throws: CKStoreError.self) { try await store.put(directory: root + "/plain", options: PutOptions(run: "r")) }
            #expect(error?.message.contains("--step") == true)
            let folder = root + "/checkpoint-77"
            try Files.write([1], to: folder + "/a.bin")
            #expect(try await store.put(directory: folder, options: PutOptions(run: "r")).step == 77)
        }
    }
}
