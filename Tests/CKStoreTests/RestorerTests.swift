@testable import CKStore
import CKStoreTestSupport
import Foundation
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The one read path: library loads take the store's lock, check and share chunks as `get` does.
@Suite struct RestorerTests {
    @Test func libraryLoadsWaitForTheStoreLockAsGetDoes() async throws {
        try await withTemporaryDirectory { root in
            try smallCheckpoint().write(to: root + "/src")
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let id = try await store.put(directory: root + "/src", options: PutOptions(run: "r", step: 1)).id
            // gc deletes pack files holding the lock exclusively: a load must not read meanwhile.
            var lock: StoreLock? = try StoreLock(path: root + "/store/lock", mode: .exclusive)
            let finished = Atomic<Bool>(false)
            let load = Task {
                let loaded = try await store.loadFile(id, path: "model.safetensors")
                finished.store(true, ordering: .sequentiallyConsistent)
                return loaded
            }
            try await Task.sleep(for: .milliseconds(500))
            let readWhileLocked = finished.load(ordering: .sequentiallyConsistent)
            #expect(!readWhileLocked, "the load read while the store was locked exclusively")
            withExtendedLifetime(lock) {}
            lock = nil
            #expect(try await load.value == (try Files.read(root + "/src/model.safetensors")))
        }
    }

    @Test func aLoadDecodesARepeatedChunkOnce() async throws {
        try await withTemporaryDirectory { root in
            try FileManager.default.createDirectory(atPath: root + "/src", withIntermediateDirectories: true)
            var builder = SafetensorsBuilder()
            for name in ["a", "b", "c", "d"] { builder.add(name, dtype: "F32", shape: [1 << 18], data: [UInt8](repeating: 0, count: 1 << 20)) }
            try Files.write(builder.build(), to: root + "/src/model.safetensors")
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let id = try await store.put(directory: root + "/src", options: PutOptions(run: "r", step: 1)).id
            let chunks = try #require(try store.manifest(of: id).files.first?.chunks)
            let distinct = Set(chunks.map(\.digest)).count
            #expect(chunks.count > distinct)
            let before = store.framesRead.value
            #expect(try await store.loadFile(id, path: "model.safetensors") == (try Files.read(root + "/src/model.safetensors")))
            // The manifest and each distinct chunk, once.
            #expect(store.framesRead.value - before == 1 + distinct)
        }
    }
}

@Suite struct RepeatedChunkRestoreTests {
    /// A file whose chunks repeat: zero-filled tensors (compressed frames) and a random tensor stored twice
    /// (raw frames, read from the mapped pack each time).
    private func repetitiveFolder(_ folder: String) throws {
        var random = SeededRandom(seed: 7)
        let noise = random.bytes(count: 1 << 20)
        var builder = SafetensorsBuilder()
        builder.add("zeros.a", dtype: "F32", shape: [3 << 18], data: [UInt8](repeating: 0, count: 3 << 20))
        builder.add("noise.a", dtype: "U8", shape: [1 << 20], data: noise)
        builder.add("weights", dtype: "F32", shape: [1 << 18], data: random.floatBytes(count: 1 << 18))
        builder.add("zeros.b", dtype: "F32", shape: [2 << 18], data: [UInt8](repeating: 0, count: 2 << 20))
        builder.add("noise.b", dtype: "U8", shape: [1 << 20], data: noise)
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try Files.write(builder.build(), to: folder + "/model.safetensors")
        try Files.write([UInt8](repeating: 0, count: 1 << 20), to: folder + "/zeros.bin")
    }

    @Test func aRepeatedChunkIsDecodedOnceAndEveryUseRestores() async throws {
        try await withTemporaryDirectory { root in
            try repetitiveFolder(root + "/src")
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let put = try await store.put(directory: root + "/src", options: PutOptions(run: "r", step: 1))
            let manifest = try store.manifest(of: put.id)
            let model = try #require(manifest.files.first { $0.path == "model.safetensors" })
            let uses = manifest.files.flatMap(\.chunks).map(\.digest)
            let distinct = Set(uses)
            #expect(uses.count - distinct.count >= 6, "zeros.a and zeros.b share one chunk, noise.a and noise.b another")
            let noise = model.chunks[try #require(model.tensors?.first { $0.name == "noise.a" }).firstChunk].digest
            let noiseLocation = try #require(try store.withCatalogue { try $0.location(of: noise) })
            #expect(noiseLocation.encoding == .raw)

            let before = store.framesRead.value
            _ = try await store.restore(put.id, to: root + "/out")
            #expect(try Files.tree(root + "/out") == (try Files.tree(root + "/src")))
            // The manifest, each distinct chunk once, and the raw noise chunk again: raw frames are read
            // in place from the pack, so keeping them would save nothing.
            #expect(store.framesRead.value - before == 1 + distinct.count + 1)
        }
    }

    @Test func damageToARepeatedChunkFailsTheRestore() async throws {
        try await withTemporaryDirectory { root in
            try repetitiveFolder(root + "/src")
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let put = try await store.put(directory: root + "/src", options: PutOptions(run: "r", step: 1))
            let model = try #require(try store.manifest(of: put.id).files.first { $0.path == "model.safetensors" })
            for name in ["zeros.b", "noise.b"] {
                let victim = model.chunks[try #require(model.tensors?.first { $0.name == name }).firstChunk].digest
                let location = try #require(try store.withCatalogue { try $0.location(of: victim) })
                let packPath = store.layout.packPath(location.pack)
                let original = try Files.read(packPath)
                var bytes = original
                bytes[Int(location.offset) + PackFormat.frameHeaderSize + location.storedLength / 2] ^= 0x04
                try Files.write(bytes, to: packPath)

                let error = await #expect(throws: CKStoreError.self, "damage to \(name)") { try await store.restore(put.id, to: root + "/out") }
                #expect(error?.code == .damaged)
                // The zeros chunk is zeros.bin's too: whichever file's task reads it first names itself.
                #expect(error?.message.contains("model.safetensors") == true || (name == "zeros.b" && error?.message.contains("zeros.bin") == true), "\(error?.message ?? "")")
                #expect(!FileManager.default.fileExists(atPath: root + "/out"))
                try Files.write(original, to: packPath)
            }
            _ = try await store.restore(put.id, to: root + "/out")
            #expect(try Files.tree(root + "/out") == (try Files.tree(root + "/src")))
        }
    }
}

@Suite struct DamagedRestoreTests {
    @Test func aFlippedBitFailsTheRestoreNamingTheFileAndLeavesNoOutput() async throws {
        try await withTemporaryDirectory { root in
            try smallCheckpoint().write(to: root + "/src")
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let put = try await store.put(directory: root + "/src", options: PutOptions(run: "r"))
            let manifest = try store.manifest(of: put.id)
            let model = try #require(manifest.files.first { $0.path == "model.safetensors" })
            let victim = model.chunks[1].digest
            let location = try #require(try store.withCatalogue { try $0.location(of: victim) })
            let packPath = store.layout.packPath(location.pack)
            var bytes = try Files.read(packPath)
            bytes[Int(location.offset) + PackFormat.frameHeaderSize + 10] ^= 0x01
            try Files.write(bytes, to: packPath)

            let error = await #expect(throws: CKStoreError.self) { try await store.restore(put.id, to: root + "/out") }
            #expect(error?.code == .damaged)
            #expect(error?.message.contains("model.safetensors") == true)
            #expect(error?.message.contains(put.id.short) == true)
            #expect(!FileManager.default.fileExists(atPath: root + "/out"))
            // Files that do not need the damaged chunk still restore.
            _ = try await store.restore(put.id, to: root + "/cfg", options: RestoreOptions(files: ["config.json", "optimizer.pt"]))
            #expect(try Files.read(root + "/cfg/optimizer.pt") == (try Files.read(root + "/src/optimizer.pt")))
        }
    }
}

@Suite struct FullDiskRestoreTests {
    @Test func aRestoreOntoAFullDiskFailsBeforeWritingAndLeavesNothing() async throws {
        try await withTemporaryDirectory { root in
            try smallCheckpoint().write(to: root + "/src")
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let put = try await store.put(directory: root + "/src", options: PutOptions(run: "r"))
            let model = try #require(try store.manifest(of: put.id).files.first { $0.path == "model.safetensors" })
            let writes = Mutex(0)
            // The target file system has no room for model.safetensors: its blocks are reserved before any
            // chunk is read, so the restore stops there with the disk-full error.
            let error = await #expect(throws: CKStoreError.self) {
                try await FaultInjector.shared.with(scope: root, { operation, path, _ in
                    if operation == .pwrite && path.hasSuffix("/model.safetensors") { writes.withLock { $0 += 1 } }
                    return operation == .fallocate && path.hasSuffix("/model.safetensors") ? .fail(ENOSPC) : nil
                }) {
                    _ = try await store.restore(put.id, to: root + "/out")
                }
            }
            #expect(error?.code == .noSpace)
            #expect(error?.message.contains("model.safetensors") == true, "\(error?.message ?? "")")
            #expect(error?.message.contains("\(model.size) bytes") == true)
            #expect(writes.withLock { $0 } == 0)
            #expect(!FileManager.default.fileExists(atPath: root + "/out"))
            _ = try await store.restore(put.id, to: root + "/out")
            #expect(try Files.tree(root + "/out") == (try Files.tree(root + "/src")))
        }
    }
}
