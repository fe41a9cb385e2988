@testable import CKStore
import CKStoreTestSupport
import Foundation
import Testing

/// Issue 14's defects 1, 4, 6, 7 and 8, each from its reproduction: the commit point is recorded where a
/// rebuild sees it, and a store never loses or invents a checkpoint through its catalogue.
@Suite struct CommitProtocolTests {
    static func put(_ store: CheckpointStore, _ root: String, step: Int, seed: UInt64 = 1, run: String = "a") async throws -> PutResult {
        try smallCheckpoint(seed: seed, step: step).write(to: root + "/src-\(run)-\(step)-\(seed)")
        return try await store.put(directory: root + "/src-\(run)-\(step)-\(seed)", options: PutOptions(run: run, step: Int64(step)))
    }

    static func removeCatalogue(_ path: String) throws {
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + "/ckstore.db" + suffix) }
    }

    /// Defect 1: after the catalogue is deleted, put/init/policy must not start a fresh empty one, and
    /// repair must bring every checkpoint back.
    @Test func aLostCatalogueIsNeverReplacedByAnEmptyOne() async throws {
        try await withTemporaryDirectory { root in
            let path = root + "/store"
            let first = try await Self.put(try CheckpointStore.open(at: path, create: true), root, step: 100)
            try Self.removeCatalogue(path)
            let refused = #expect(throws: CKStoreError.self) { try CheckpointStore.open(at: path, create: true) }
            #expect(refused?.code == .damaged && refused?.message.contains("ckstore repair") == true)
            #expect(!FileManager.default.fileExists(atPath: path + "/ckstore.db"))

            let report = try await CheckpointStore.repair(at: path)
            #expect(report.catalogueRebuilt && report.checkpoints == 1 && report.incompleteCheckpoints.isEmpty)
            let store = try CheckpointStore.open(at: path)
            #expect(try store.list().map(\.id) == [first.id])
            _ = try await Self.put(store, root, step: 200)
            #expect(try await store.gc(GCOptions()).deleted.isEmpty)
            #expect(try store.list().map(\.step) == [100, 200])
        }
    }

    /// Defect 1, a catalogue that lost committed checkpoints (its write-ahead log deleted): gc refuses,
    /// verify says so, and repair imports them from their manifests.
    @Test func aCatalogueMissingCommittedCheckpointsIsRepairedNotSwept() async throws {
        try await withTemporaryDirectory { root in
            let path = root + "/store"
            let store = try CheckpointStore.open(at: path, create: true)
            _ = try await Self.put(store, root, step: 100)
            let second = try await Self.put(store, root, step: 200, seed: 2)
            // What losing the log of the second put's transaction leaves: the catalogue without it.
            try store.withCatalogue { catalogue in try catalogue.write { try catalogue.deleteCheckpoint(second.id) } }
            let refused = await #expect(throws: CKStoreError.self) { try await store.gc(GCOptions(dryRun: true)) }
            #expect(refused?.code == .damaged && refused?.message.contains("a@200") == true)
            #expect(try await store.verify().problems.contains { $0.contains("a@200") })

            let report = try await CheckpointStore.repair(at: path)
            #expect(!report.catalogueRebuilt && report.importedCheckpoints == [second.id] && report.incompleteCheckpoints.isEmpty)
            let repaired = try CheckpointStore.open(at: path)
            #expect(try repaired.list().map(\.step) == [100, 200])
            _ = try await repaired.restore(second.id, to: root + "/out")
            #expect(try Files.tree(root + "/out") == (try Files.tree(root + "/src-a-200-2")))
            #expect(try await repaired.verify(VerifyOptions(depth: .full)).ok)
        }
    }

    /// A lost committed checkpoint whose pack is also damaged: its manifest frame is salvaged into a new
    /// pack, and repair imports it from there (reporting it incomplete, since one chunk is gone).
    @Test func aLostCheckpointIsImportedFromASalvagedManifest() async throws {
        try await withTemporaryDirectory { root in
            let path = root + "/store"
            let store = try CheckpointStore.open(at: path, create: true)
            _ = try await Self.put(store, root, step: 100)
            let second = try await Self.put(store, root, step: 200, seed: 2)
            let manifestLocation = try #require(try store.withCatalogue { try $0.location(of: second.id.digest) })
            let victim = try #require(try store.withCatalogue { try $0.chunkLocations(inPack: manifestLocation.pack) }.first { $0.kind == .chunk })
            try store.withCatalogue { catalogue in try catalogue.write { try catalogue.deleteCheckpoint(second.id) } }
            var bytes = try Files.read(store.layout.packPath(victim.pack))
            bytes[Int(victim.offset) + PackFormat.frameHeaderSize + 3] ^= 0xFF
            try Files.write(bytes, to: store.layout.packPath(victim.pack))

            let report = try await CheckpointStore.repair(at: path)
            #expect(report.quarantinedPacks == [victim.pack.hex])
            #expect(report.importedCheckpoints == [second.id])
            #expect(report.incompleteCheckpoints.contains(second.id))
            #expect(try CheckpointStore.open(at: path).list().map(\.step) == [100, 200])
        }
    }

    /// Defect 4: a rebuild yields exactly the committed checkpoints: not a put refused as a conflict, not
    /// a manifest whose put died before its commit, not one in a pack copied in from another store.
    @Test func aRebuildYieldsExactlyTheCommittedCheckpoints() async throws {
        try await withTemporaryDirectory { root in
            let path = root + "/store"
            let store = try CheckpointStore.open(at: path, create: true)
            let kept = try await Self.put(store, root, step: 100)
            // Refused as a conflict: its frames and manifest were written before the commit said no.
            await #expect(throws: CKStoreError.self) { _ = try await Self.put(store, root, step: 100, seed: 9) }
            // A put that died after writing its pack, before its commit (its pack copied in from a store
            // where it did commit stands for it), and a whole foreign store's pack for the same step.
            let other = try CheckpointStore.open(at: root + "/other", create: true)
            _ = try await Self.put(other, root, step: 100, seed: 7)
            _ = try await Self.put(other, root, step: 300, seed: 8)
            for entry in try PackDirectory(layout: other.layout).entries() {
                try FileManager.default.copyItem(atPath: entry.path, toPath: path + "/packs/" + (entry.path.split(separator: "/").suffix(2).joined(separator: "/")))
            }
            try Self.removeCatalogue(path)
            let report = try await CheckpointStore.repair(at: path)
            #expect(report.checkpoints == 1)
            // The foreign store's two manifests (the refused put stopped before writing its manifest; a
            // race's loser, which writes one, is the next test's).
            #expect(report.skippedManifests.filter { $0.contains("never committed") }.count == 2, "\(report.skippedManifests)")
            let rebuilt = try CheckpointStore.open(at: path)
            #expect(try rebuilt.list().map(\.id) == [kept.id])
            _ = try await rebuilt.restore(kept.id, to: root + "/out")
            #expect(try Files.tree(root + "/out") == (try Files.tree(root + "/src-a-100-1")))
        }
    }

    /// Defect 4, races: of concurrent puts of one run and step, exactly one commits, and a rebuild keeps
    /// that one.
    @Test func racingPutsOfOneStepCommitExactlyOne() async throws {
        try await withTemporaryDirectory { root in
            let path = root + "/store"
            let store = try CheckpointStore.open(at: path, create: true)
            for seed in UInt64(1)...4 { try smallCheckpoint(seed: seed, step: 5).write(to: root + "/race-\(seed)") }
            let outcomes = await withTaskGroup(of: Result<PutResult, CKStoreError>.self) { group in
                for seed in UInt64(1)...4 {
                    group.addTask {
                        do { return .success(try await store.put(directory: root + "/race-\(seed)", options: PutOptions(run: "race", step: 5))) }
                        catch { return .failure(CKStoreError.wrap(error)) }
                    }
                }
                return await group.reduce(into: []) { $0.append($1) }
            }
            let winners = outcomes.compactMap { try? $0.get() }
            #expect(winners.count == 1)
            let failures: [CKStoreError.Code] = outcomes.compactMap { outcome -> CKStoreError.Code? in
                if case .failure(let error) = outcome { return error.code }
                return nil
            }
            #expect(failures.allSatisfy { $0 == .conflict }, "\(failures)")
            let winner = try #require(winners.first)
            try Self.removeCatalogue(path)
            _ = try await CheckpointStore.repair(at: path)
            #expect(try CheckpointStore.open(at: path).list().map(\.id) == [winner.id])
        }
    }

    /// Defect 6: a manifest with a negative chunk count or a first chunk past the end is damage to `get`
    /// and `verify`, not a crash.
    @Test func craftedManifestCountsAreDamage() async throws {
        try await withTemporaryDirectory { root in
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let content = [UInt8](repeating: 7, count: 64)
            let digest = SHA256Hasher.digest(content)
            for (first, count) in [(0, -1), (5, 1)] {
                let tensor = TensorEntry(name: "w", dtype: DType(safetensorsName: "U8"), shape: [64], begin: 0, end: 64, firstChunk: first, chunkCount: count)
                let file = FileEntry(path: "model.safetensors", mode: 0o644, size: 64, sha256: digest, format: .safetensors,
                                     linkTarget: nil, chunks: [ChunkRef(digest: digest, length: 64)], tensors: [tensor])
                let id = try Self.commitManifest(store, files: [file], content: content, step: Int64(first + 10))
                let get = await #expect(throws: CKStoreError.self) { _ = try await store.restore(id, to: root + "/out-\(first)") }
                #expect(get?.code == .damaged, "\(String(describing: get))")
                let report = try await store.verify(VerifyOptions(checkpoints: [id]))
                #expect(!report.ok && report.damage.contains { $0.chunk == id.digest })
            }
        }
    }

    /// Puts a manifest straight into a pack and the catalogue, as a damaged or hostile store could hold it.
    static func commitManifest(_ store: CheckpointStore, files: [FileEntry], content: [UInt8], step: Int64) throws -> CheckpointID {
        let manifest = Manifest(format: 1, run: "evil", step: step, epoch: nil, createdAt: 0, metrics: [:], tags: [], metadata: [:], parent: nil,
                                modelConfig: nil, trainerState: nil, files: files)
        let bytes = try manifest.canonicalJSON()
        let id = CheckpointID(SHA256Hasher.digest(bytes))
        let sink = PackSink(layout: store.layout)
        let codec = FrameCodec(level: .default)
        try sink.append(try codec.encode(content, digest: SHA256Hasher.digest(content)), kind: .chunk)
        try sink.append(try codec.encode(bytes, digest: id.digest), kind: .manifest)
        let sealed = try sink.seal()
        try store.withCatalogue { catalogue in
            try catalogue.write {
                for pack in sealed { _ = try catalogue.insert(pack: pack, now: 0) }
                try catalogue.insert(.init(id: id, manifest: manifest, contentDigest: id.digest, storedBytesAdded: 0, chunkUses: [SHA256Hasher.digest(content): 1, id.digest: 1]), now: 0)
            }
        }
        return id
    }

    /// Defect 7: a checkpoint whose manifest frame was lost is healed by putting the same folder again.
    @Test func aLostManifestFrameIsWrittenAgainByARePut() async throws {
        try await withTemporaryDirectory { root in
            let path = root + "/store"
            let store = try CheckpointStore.open(at: path, create: true)
            let put = try await Self.put(store, root, step: 100)
            // Lose the manifest frame: cut its pack just before it.
            let location = try #require(try store.withCatalogue { try $0.location(of: put.id.digest) })
            let pack = store.layout.packPath(location.pack)
            try Files.write(Array(try Files.read(pack).prefix(Int(location.offset))), to: pack)
            _ = try await CheckpointStore.repair(at: path)
            let damaged = try CheckpointStore.open(at: path)
            #expect(try await !damaged.verify().ok)
            let again = try await damaged.put(directory: root + "/src-a-100-1", options: PutOptions(run: "a", step: 100))
            #expect(again.id == put.id && again.alreadyStored)
            _ = try await damaged.restore(put.id, to: root + "/out")
            #expect(try Files.tree(root + "/out") == (try Files.tree(root + "/src-a-100-1")))
            #expect(try await damaged.verify(VerifyOptions(depth: .full)).ok)
        }
    }

    /// Defect 8: a second repair still reports what is incomplete, and a catalogue from a newer ckstore is
    /// refused, not rebuilt.
    @Test func repairReportsWhatIsStillIncompleteAndRefusesANewerCatalogue() async throws {
        try await withTemporaryDirectory { root in
            let path = root + "/store"
            let store = try CheckpointStore.open(at: path, create: true)
            let put = try await Self.put(store, root, step: 100)
            let chunk = try #require(try store.manifest(of: put.id).files.first { $0.path == "model.safetensors" }?.chunks.last)
            let location = try #require(try store.withCatalogue { try $0.location(of: chunk.digest) })
            var bytes = try Files.read(store.layout.packPath(location.pack))
            bytes[Int(location.offset) + PackFormat.frameHeaderSize + 10] ^= 0xFF
            try Files.write(bytes, to: store.layout.packPath(location.pack))
            #expect(try await CheckpointStore.repair(at: path).incompleteCheckpoints == [put.id])
            #expect(try await CheckpointStore.repair(at: path).incompleteCheckpoints == [put.id], "the second repair forgot")

            let newer = root + "/newer"
            _ = try CheckpointStore.open(at: newer, create: true)
            try SQLiteDatabase(path: newer + "/ckstore.db").execute("PRAGMA user_version = 99")
            let refused = await #expect(throws: CKStoreError.self) { _ = try await CheckpointStore.repair(at: newer) }
            #expect(refused?.code == .unsupportedSchema)
            #expect(try SQLiteDatabase(path: newer + "/ckstore.db").prepare("PRAGMA user_version").firstRow { $0.int(0) } == 99)
        }
    }
}

/// Issue 14's defect 5: verify sees one consistent catalogue while gc deletes and sweeps beside it.
@Suite struct VerifyDuringGCTests {
    @Test func verifyFindsNoPhantomDamageWhileGCRuns() async throws {
        try await withTemporaryDirectory { root in try await Self.rounds(root) }
    }

    /// Four rounds: three new checkpoints, then gc (keep-last 1) while verify runs again and again.
    static func rounds(_ root: String) async throws {
        let path = root + "/store"
        let writer = try CheckpointStore.open(at: path, create: true)
        try writer.setPolicy(try RetentionPolicy(parsingRules: "keep-last=1"), run: "a")
        var step = 0
        for round in 0..<4 {
            for _ in 0..<3 {
                step += 1
                _ = try await CommitProtocolTests.put(writer, root, step: step, seed: UInt64(step))
            }
            let checker = try CheckpointStore.open(at: path)
            let collected = Task { () throws -> GCReport in try await writer.gc(GCOptions()) }
            var reports = [VerifyReport]()
            for _ in 0..<6 { reports.append(try await checker.verify()) }
            _ = try await collected.value
            for report in reports {
                #expect(report.ok, "round \(round): \(report.problems) \(report.damage.map(\.problem))")
            }
        }
        #expect(try writer.list().map(\.step) == [Int64(step)])
    }
}
