@testable import CKStore
import CKStoreTestSupport
import Foundation
import Testing

/// Malformed inputs are stored as opaque with a warning and come back unaltered; failures leave the
/// store as it was.
@Suite struct BadInputTests {
    static let malformedSafetensors: [(String, [UInt8])] = {
        let good = SafetensorsBuilder.mixedDtypes().build()
        var hugeHeader = good
        hugeHeader.replaceSubrange(0..<8, with: withUnsafeBytes(of: UInt64(50_000_000).littleEndian) { Array($0) })
        let zeros = [UInt8](repeating: 0, count: 16)
        return [
            ("truncated", Array(good.dropLast(1000))),
            ("header-too-long", hugeHeader),
            ("invalid-json", SafetensorsBuilder.assemble(header: #"{"a": [1,"#, data: zeros)),
            ("overlap", SafetensorsBuilder.assemble(header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, data: zeros)),
            ("reversed", SafetensorsBuilder.assemble(header: #"{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#, data: zeros)),
            ("out-of-range", SafetensorsBuilder.assemble(header: #"{"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}}"#, data: zeros)),
            ("unknown-dtype", SafetensorsBuilder.assemble(header: #"{"a":{"dtype":"Q7","shape":[4],"data_offsets":[0,16]}}"#, data: zeros)),
            ("size-mismatch", SafetensorsBuilder.assemble(header: #"{"a":{"dtype":"F64","shape":[3],"data_offsets":[0,16]}}"#, data: zeros)),
        ]
    }()

    @Test(arguments: malformedSafetensors.map(\.0))
    func malformedSafetensorsIsStoredOpaqueAndUnaltered(_ name: String) async throws {
        let bytes = try #require(Self.malformedSafetensors.first { $0.0 == name }?.1)
        try await withTemporaryDirectory { root in
            try Files.write(bytes, to: root + "/src/model.safetensors")
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let result = try await store.put(directory: root + "/src", options: PutOptions(run: "bad", step: 1))
            #expect(result.warnings.count == 1)
            #expect(result.warnings.first?.contains("model.safetensors") == true)
            #expect(try store.manifest(of: result.id).files.first?.format == .opaque)
            _ = try await store.restore(result.id, to: root + "/out")
            #expect(try Files.read(root + "/out/model.safetensors") == bytes)
        }
    }

    @Test func zipWithEntryPastTheEndIsStoredOpaque() async throws {
        try await withTemporaryDirectory { root in
            var builder = TorchZipBuilder(archiveName: "optimizer")
            builder.addStorage(SeededRandom(seed: 4).bytesOf(8192))
            let full = builder.build()
            // Cut the archive inside the storage but keep a copy of the end records: entry data/0 now ends past the end.
            let eocd = Array(full.suffix(22))
            let truncated = Array(full.prefix(400)) + eocd
            try Files.write(truncated, to: root + "/src/optimizer.pt")
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let result = try await store.put(directory: root + "/src", options: PutOptions(run: "bad", step: 1))
            #expect(result.warnings.first?.contains("optimizer.pt") == true)
            _ = try await store.restore(result.id, to: root + "/out")
            #expect(try Files.read(root + "/out/optimizer.pt") == truncated)
        }
    }

    @Test func unreadableFileFailsThePutAndLeavesTheStoreAsItWas() async throws {
        try await withTemporaryDirectory { root in
            try smallCheckpoint().write(to: root + "/good")
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let first = try await store.put(directory: root + "/good", options: PutOptions(run: "r", step: 1))
            let before = try store.list()

            try smallCheckpoint(seed: 9).write(to: root + "/src")
            let locked = root + "/src/optimizer.pt"
            let error = await #expect(throws: CKStoreError.self) {
                try await FaultInjector.shared.with(scope: locked, { operation, _, _ in operation == .open ? .fail(EACCES) : nil }) {
                    try await store.put(directory: root + "/src", options: PutOptions(run: "r", step: 2))
                }
            }
            #expect(error?.message.contains("optimizer.pt") == true)
            #expect(error?.message.contains("Permission denied") == true)
            try await expectUnchanged(store, before: before, first: first.id, source: root + "/good", scratch: root + "/check")
        }
    }

    @Test(arguments: [ENOSPC, EIO])
    func writeFailureDuringPutLeavesTheStoreAsItWas(_ code: Int32) async throws {
        try await withTemporaryDirectory { root in
            try smallCheckpoint().write(to: root + "/good")
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let first = try await store.put(directory: root + "/good", options: PutOptions(run: "r", step: 1))
            let before = try store.list()
            try smallCheckpoint(seed: 5).write(to: root + "/src")
            for site in [SyscallOperation.pwrite, .fsync, .rename] {
                let error = await #expect(throws: CKStoreError.self) {
                    try await FaultInjector.shared.with(scope: root + "/store", { operation, _, index in operation == site && index == 0 ? .fail(code) : nil }) {
                        try await store.put(directory: root + "/src", options: PutOptions(run: "r", step: 2))
                    }
                }
                if code == ENOSPC { #expect(error?.code == .noSpace && error?.message.contains("no space left") == true) }
                try await expectUnchanged(store, before: before, first: first.id, source: root + "/good", scratch: root + "/check-\(site)")
                #expect(try FileSystem.contents(of: root + "/store/tmp").isEmpty)
            }
        }
    }

    private func expectUnchanged(_ store: CheckpointStore, before: [CheckpointSummary], first: CheckpointID, source: String, scratch: String) async throws {
        #expect(try store.list() == before)
        _ = try await store.restore(first, to: scratch)
        #expect(try Files.tree(scratch) == (try Files.tree(source)))
    }
}

@Suite struct ReferenceTests {
    @Test func parsesTheReferenceForms() throws {
        #expect(try CheckpointReference(parsing: "gpt2@500") == .step(run: "gpt2", step: 500))
        #expect(try CheckpointReference(parsing: "gpt2@latest") == .latest(run: "gpt2"))
        #expect(try CheckpointReference(parsing: "DEADBEEF") == .idPrefix("deadbeef"))
        for bad in ["abc", "xyz12345", "@5", "run@-1", "run@soon"] {
            #expect(throws: CKStoreError.self, "\(bad)") { try CheckpointReference(parsing: bad) }
        }
    }

    @Test func anAmbiguousPrefixIsRefusedWithBothCandidates() async throws {
        try await withTemporaryDirectory { root in
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            // Two catalogue rows whose ids share their first 10 hex characters.
            try store.withCatalogue { catalogue in
                try catalogue.database.execute("INSERT INTO runs (id, name, created_at) VALUES (1, 'r', 0)")
                for (step, tail) in [(1, "11"), (2, "22")] {
                    let id = "deadbeef00" + tail + String(repeating: "0", count: 52)
                    try catalogue.database.execute("""
                        INSERT INTO checkpoints (id, run_id, step, created_at, logical_bytes, stored_bytes_added, chunk_count, file_count, tensor_count, content_digest)
                        VALUES (x'\(id)', 1, \(step), 0, 0, 0, 0, 0, 0, x'\(id)')
                        """)
                }
            }
            let error = #expect(throws: CKStoreError.self) { try store.resolve(.idPrefix("deadbeef00")) }
            #expect(error?.code == .ambiguousReference)
            #expect(error?.message.contains("deadbeef0011") == true && error?.message.contains("deadbeef0022") == true)
            #expect(try store.resolve(.idPrefix("deadbeef0022")).hex.hasPrefix("deadbeef0022"))
            #expect(try store.resolve(.step(run: "r", step: 1)).hex.hasPrefix("deadbeef0011"))
            #expect(try store.resolve(.latest(run: "r")).hex.hasPrefix("deadbeef0022"))
        }
    }
}

@Suite struct PathSafetyTests {
    @Test func manifestPathsThatLeaveTheTargetAreRefused() async throws {
        for evil in ["../escape.txt", "/etc/evil", "a/../../escape.txt", "./x", "a//b"] {
            try await withTemporaryDirectory { root in
                let store = try CheckpointStore.open(at: root + "/store", create: true)
                let id = try commitCraftedManifest(store, path: evil, linkTarget: nil)
                let error = await #expect(throws: CKStoreError.self) { try await store.restore(id, to: root + "/target/dest") }
                #expect(error?.code == .unsafePath, "\(evil)")
                #expect(!FileManager.default.fileExists(atPath: root + "/target/escape.txt"))
                #expect(!FileManager.default.fileExists(atPath: root + "/escape.txt"))
                #expect(!FileManager.default.fileExists(atPath: root + "/target/dest"))
            }
        }
        try await withTemporaryDirectory { root in
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let id = try commitCraftedManifest(store, path: "link", linkTarget: "../../outside")
            let error = await #expect(throws: CKStoreError.self) { try await store.restore(id, to: root + "/dest") }
            #expect(error?.code == .unsafePath)
        }
    }

    @Test func relativePathNormalization() {
        #expect(RelativePath.normalize("a/./b/../c") == "a/c")
        #expect(RelativePath.normalize("../a") == nil)
        #expect(RelativePath.normalize("/a") == nil)
        #expect(RelativePath.isSafe("a/b.txt"))
        #expect(!RelativePath.isSafe("a/../b"))
    }

    /// Commits a checkpoint whose manifest names `path`, bypassing put's checks, as a damaged or
    /// malicious store could.
    private func commitCraftedManifest(_ store: CheckpointStore, path: String, linkTarget: String?) throws -> CheckpointID {
        try Self.commitCraftedManifest(store, files: [(path, linkTarget)])
    }

    /// Commits a checkpoint whose manifest names `files` (each with the same small content, or a link),
    /// bypassing put's checks.
    static func commitCraftedManifest(_ store: CheckpointStore, files paths: [(path: String, linkTarget: String?)]) throws -> CheckpointID {
        let content = Array("payload".utf8)
        let digest = SHA256Hasher.digest(content)
        let files = paths.map { path, linkTarget in
            FileEntry(path: path, mode: 0o644, size: Int64(content.count), sha256: digest, format: linkTarget == nil ? .opaque : .symlink,
                      linkTarget: linkTarget, chunks: linkTarget == nil ? [ChunkRef(digest: digest, length: content.count)] : [], tensors: nil)
        }
        let manifest = Manifest(format: 1, run: "evil", step: 1, epoch: nil, createdAt: 0, metrics: [:], tags: [], metadata: [:], parent: nil, modelConfig: nil, trainerState: nil, files: files)
        let bytes = try manifest.canonicalJSON()
        let id = CheckpointID(SHA256Hasher.digest(bytes))
        let writer = try PackWriter(layout: store.layout)
        let codec = FrameCodec(level: .default)
        try writer.append(try codec.encode(content, digest: digest))
        try writer.append(try codec.encode(bytes, digest: id.digest), kind: .manifest)
        let sealed = try writer.seal()
        try store.withCatalogue { catalogue in
            try catalogue.write {
                _ = try catalogue.insert(pack: sealed, now: 0)
                try catalogue.insert(.init(id: id, manifest: manifest, contentDigest: id.digest, storedBytesAdded: 0, chunkUses: [digest: 1, id.digest: 1]), now: 0)
            }
        }
        return id
    }

    /// Issue 32's fault pass: `verify --full` said "ok" for manifests that `get` refuses. Both now judge a
    /// manifest by ``Manifest/checkRestorable(id:)``, so what one refuses the other reports.
    @Test func verifyJudgesAManifestAsGetDoes() async throws {
        let cases: [[(path: String, linkTarget: String?)]] = [
            [("../escape.txt", nil)],
            [("a", nil), ("a/b", nil)],
            [(String(repeating: "x", count: 300), nil)],
            [("link", "../../outside")],
        ]
        for files in cases {
            try await withTemporaryDirectory { root in
                let store = try CheckpointStore.open(at: root + "/store", create: true)
                let id = try Self.commitCraftedManifest(store, files: files)
                let refused = await #expect(throws: CKStoreError.self) { try await store.restore(id, to: root + "/dest") }
                #expect(refused?.code == .unsafePath, "\(files.map(\.path))")
                for depth in [VerifyDepth.quick, .full] {
                    let report = try await store.verify(VerifyOptions(depth: depth))
                    #expect(!report.ok && report.affectedCheckpoints == [id], "\(files.map(\.path)) \(depth)")
                    let damage = report.damage.first { $0.chunk == id.digest }
                    #expect(damage?.problem == refused?.message, "\(files.map(\.path))")
                    #expect(damage?.affects.first?.run == "evil" && damage?.affects.first?.step == 1)
                }
            }
        }
        // The same crafting with a sound manifest verifies and restores: the check is not refusing all.
        try await withTemporaryDirectory { root in
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let id = try Self.commitCraftedManifest(store, files: [("a/b", nil), ("c", nil)])
            #expect(try await store.verify(VerifyOptions(depth: .full)).ok)
            _ = try await store.restore(id, to: root + "/dest")
            #expect(try Files.read(root + "/dest/a/b") == Array("payload".utf8))
        }
    }
}
