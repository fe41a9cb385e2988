@testable import CKStore
import CKStoreTestSupport
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Issue 14's defects 3, 9 and 10, each from its reproduction.
@Suite struct HostileInputTests {
    /// Defect 3: a chain of links that is lexically inside but climbs out once its links are followed.
    @Test func linkChainsThatEscapeAreRefusedAtPutAndAtGet() async throws {
        try await withTemporaryDirectory { root in
            let folder = root + "/c"
            try FileManager.default.createDirectory(atPath: folder + "/a/b", withIntermediateDirectories: true)
            try FileManager.default.createSymbolicLink(atPath: folder + "/a/b/k", withDestinationPath: "..")
            let escape = "a/" + String(repeating: "b/k/", count: 10) + String(repeating: "../", count: 21) + "tmp/victim"
            try FileManager.default.createSymbolicLink(atPath: folder + "/trainer_state.json", withDestinationPath: escape)
            #expect(RelativePath.normalize("a/" + String(repeating: "b/k/", count: 10) + String(repeating: "../", count: 21) + "x") != nil, "lexically inside")
            #expect(!RelativePath.linkStaysInside("trainer_state.json", target: escape, links: ["a/b/k": ".."]))
            #expect(RelativePath.linkStaysInside("a/b/k", target: "..", links: ["a/b/k": ".."]))
            #expect(!RelativePath.linkStaysInside("loop", target: "loop/x", links: ["loop": "loop/x"]))

            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let refused = await #expect(throws: CKStoreError.self) {
                _ = try await store.put(directory: folder, options: PutOptions(run: "esc", step: 1))
            }
            #expect(refused?.code == .unsafePath, "\(String(describing: refused))")

            // A manifest holding such links (a crafted store) is refused at restore, before anything is written.
            let links = [
                FileEntry(path: "a/b/k", mode: 0o777, size: 0, sha256: SHA256Hasher.digest([UInt8]()), format: .symlink, linkTarget: "..", chunks: [], tensors: nil),
                FileEntry(path: "trainer_state.json", mode: 0o777, size: 0, sha256: SHA256Hasher.digest([UInt8]()), format: .symlink, linkTarget: escape, chunks: [], tensors: nil),
            ]
            let id = try CommitProtocolTests.commitManifest(store, files: links, content: [1], step: 1)
            let get = await #expect(throws: CKStoreError.self) { _ = try await store.restore(id, to: root + "/out") }
            #expect(get?.code == .unsafePath)
            #expect(!FileManager.default.fileExists(atPath: root + "/out"))
        }
    }

    /// Defect 3, modes: setuid, setgid and sticky bits are not restored unless asked for.
    @Test func specialModeBitsAreMaskedUnlessAskedFor() async throws {
        try await withTemporaryDirectory { root in
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let content = Array("payload".utf8)
            let file = FileEntry(path: "run.sh", mode: 0o7755, size: Int64(content.count), sha256: SHA256Hasher.digest(content), format: .opaque,
                                 linkTarget: nil, chunks: [ChunkRef(digest: SHA256Hasher.digest(content), length: content.count)], tensors: nil)
            let id = try CommitProtocolTests.commitManifest(store, files: [file], content: content, step: 1)
            _ = try await store.restore(id, to: root + "/plain")
            var options = RestoreOptions()
            options.keepSpecialModeBits = true
            _ = try await store.restore(id, to: root + "/special", options: options)
            func mode(_ path: String) throws -> Int { (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int) ?? -1 }
            #expect(try mode(root + "/plain/run.sh") == 0o755)
            #expect(try mode(root + "/special/run.sh") == 0o7755)
            // A mode beyond 0o7777 is not a mode: the manifest is damaged.
            var hostile = file
            hostile.mode = 0xFFFF_FFFF
            let damaged = try CommitProtocolTests.commitManifest(store, files: [hostile], content: content, step: 2)
            let error = await #expect(throws: CKStoreError.self) { _ = try await store.restore(damaged, to: root + "/hostile") }
            #expect(error?.code == .damaged)
        }
    }

    /// Defect 9: Python's json writes a diverged loss as NaN or Infinity; step, epoch and metrics survive.
    @Test func aDivergedRunKeepsItsMetadata() async throws {
        try await withTemporaryDirectory { root in
            let folder = root + "/checkpoint-30"
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            try Data("""
                {"global_step": 30, "epoch": 1.5, "log_history": [{"step": 10, "loss": 2.5}, {"step": 30, "loss": NaN, "grad_norm": Infinity, "neg": -Infinity, "note": "NaN stays a string"}]}
                """.utf8).write(to: URL(fileURLWithPath: folder + "/trainer_state.json"))
            try Data([1, 2, 3]).write(to: URL(fileURLWithPath: folder + "/weights.bin"))
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let put = try await store.put(directory: folder, options: PutOptions(run: "diverged"))
            #expect(put.step == 30)
            let manifest = try store.manifest(of: put.id)
            #expect(manifest.epoch == 1.5)
            #expect(manifest.metrics["loss"]?.isNaN == true)
            #expect(manifest.metrics["grad_norm"] == .infinity && manifest.metrics["neg"] == -.infinity)
            let summary = try store.summary(of: put.id)
            #expect(summary.metrics["loss"]?.isNaN == true && summary.metrics["grad_norm"] == .infinity)
            // The same folder again is the same checkpoint: the manifest reads back as it was written.
            #expect(try await store.put(directory: folder, options: PutOptions(run: "diverged")).alreadyStored)
            #expect(NonFiniteJSON.quotingBareTokens(Array(#"{"a": NaN, "b": "NaN", "c": [-Infinity]}"#.utf8)) == Array(#"{"a": "NaN", "b": "NaN", "c": ["-Infinity"]}"#.utf8))
        }
    }

    /// Defect 10: a restore that fails or is killed leaves a new destination absent, never half-written,
    /// and a later restore removes the staging a killed one left.
    @Test func aFailedRestoreLeavesNoDestinationAndStaleStagingIsCleaned() async throws {
        try await withTemporaryDirectory { root in
            try smallCheckpoint().write(to: root + "/src")
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let id = try await store.put(directory: root + "/src", options: PutOptions(run: "r", step: 1)).id
            // What a killed restore leaves: a staging folder of a process that is gone.
            let stale = root + "/.ckstore-restore-999999-0123456789ab"
            try FileManager.default.createDirectory(atPath: stale + "/half", withIntermediateDirectories: true)
            _ = try await store.restore(id, to: root + "/out/")
            #expect(!FileManager.default.fileExists(atPath: stale))
            // An existing empty folder (it could be the working directory) is filled in place.
            try FileManager.default.createDirectory(atPath: root + "/empty", withIntermediateDirectories: true)
            _ = try await store.restore(id, to: root + "/empty")
            #expect(try Files.tree(root + "/empty") == (try Files.tree(root + "/src")))
            #expect(try Files.tree(root + "/out") == (try Files.tree(root + "/src")))
            #expect(!(try FileManager.default.contentsOfDirectory(atPath: root)).contains { $0.hasPrefix(".ckstore-restore-") })

            // A restore that fails half-way (one chunk damaged) leaves neither the destination nor staging.
            let chunk = try #require(try store.manifest(of: id).files.first { $0.path == "optimizer.pt" }?.chunks.last)
            let location = try #require(try store.withCatalogue { try $0.location(of: chunk.digest) })
            var bytes = try Files.read(store.layout.packPath(location.pack))
            bytes[Int(location.offset) + PackFormat.frameHeaderSize + 5] ^= 0xFF
            try Files.write(bytes, to: store.layout.packPath(location.pack))
            await #expect(throws: CKStoreError.self) { _ = try await store.restore(id, to: root + "/failed") }
            #expect(!FileManager.default.fileExists(atPath: root + "/failed"))
            #expect(!(try FileManager.default.contentsOfDirectory(atPath: root)).contains { $0.hasPrefix(".ckstore-restore-") })
        }
    }

    /// Smaller: run names are what the README says, and negative or malformed sizes say what is wrong.
    @Test func runNamesAndSizesAreCheckedWithClearMessages() throws {
        for good in ["gpt2-finetune", "exp_1.5", "lr=3e-4,bs=32", "日本語"] { #expect(throws: Never.self) { try CheckpointStore.validateRunName(good) } }
        for bad in ["a/b", "with space", String(repeating: "x", count: 129), "", ".hidden", "-dash", "a@b"] {
            let error = #expect(throws: CKStoreError.self) { try CheckpointStore.validateRunName(bad) }
            #expect(error?.code == .invalidArgument && error?.message.contains("run name") == true, "\(bad): \(String(describing: error))")
        }
        let negative = #expect(throws: CKStoreError.self) { try ByteCount(parsing: "-5GB") }
        #expect(negative?.message.contains("negative") == true)
    }
}
