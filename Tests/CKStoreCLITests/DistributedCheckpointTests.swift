@testable import CKStore
import CKStoreTestSupport
import Foundation
import Testing

/// `.distcp` files as torch.distributed.checkpoint writes them (issue 19), on the fixture real PyTorch
/// wrote from two ranks (Tests/Fixtures/real/dcp): chunked item by item, items named from `.metadata`.
@Suite struct DistributedCheckpointTests {
    static let fixture: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<2 { url.deleteLastPathComponent() }
        return url.path + "/Fixtures/real/dcp"
    }()

    /// What the fixture's `.metadata` says (as `torch.load` of it reports): rank 1's file holds these items.
    static let rankOneItems: Set<String> = ["model.2.weight", "optim.state.2.weight.exp_avg_sq"]

    static func tensors(_ show: [String: Any], file: String) throws -> [[String: Any]] {
        let files = try #require(show["files"] as? [[String: Any]])
        return try #require(files.first { $0["path"] as? String == file }?["tensors"] as? [[String: Any]], "\(file) has no tensors")
    }

    @Test func itemsAreChunkedAsTensorsNamedByTheMetadataAndRestoredByteForByte() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            let put = try CLI.run(["put", Self.fixture + "/step-1", "--run", "dcp", "--step", "1", "--store", store, "--json"])
            #expect(put.status == 0 && !put.stderr.contains("warning"), "\(put.stderr)")
            let show = try ShardTests.json(try CLI.run(["show", "dcp@1", "--json", "--store", store]))
            let files = try #require(show["files"] as? [[String: Any]])
            #expect(files.filter { $0["format"] as? String == "torch-dcp" }.count == 2)
            let rankOne = try Self.tensors(show, file: "__1_0.distcp")
            #expect(Set(rankOne.compactMap { $0["name"] as? String }) == Self.rankOneItems)
            for tensor in rankOne {
                #expect(tensor["dtype"] as? String == "F32" && tensor["shape"] as? [Int] == [32, 128], "\(tensor)")
            }
            let rankZero = try Self.tensors(show, file: "__0_0.distcp")
            let names = Set(rankZero.compactMap { $0["name"] as? String })
            #expect(names.contains("model.0.weight") && names.contains("optim.state.3.bias.exp_avg_sq"), "\(names)")
            #expect(!names.contains { $0.hasPrefix("@") }, "every tensor item is named: \(names)")
            #expect(rankZero.first { $0["name"] as? String == "model.0.weight" }?["shape"] as? [Int] == [64, 32])

            #expect(try CLI.run(["get", "dcp@1", root + "/restored", "--store", store]).status == 0)
            #expect(try Files.tree(root + "/restored") == Files.tree(Self.fixture + "/step-1"))
            // One item back as a safetensors file, by its DCP name.
            let one = try CLI.run(["get", "dcp@1", root + "/one", "--tensor", "model.2.weight", "--store", store])
            #expect(one.status == 0, "\(one.stderr)")
            let subset = try SafetensorsFile.parse(MemoryByteSource(bytes: try Files.read(root + "/one/__1_0.distcp.safetensors")), size: Int64(try Files.read(root + "/one/__1_0.distcp.safetensors").count), name: "subset")
            #expect(subset.tensors.map(\.name) == ["model.2.weight"])
            let audit = try CLI.run(["audit", "--store", store])
            #expect(audit.stdout.contains("optim.state.2.weight.exp_avg_sq"), "\(audit.stdout)")
        }
    }

    @Test func aTensorThatDidNotChangeBetweenTwoCheckpointsAddsNoBytes() async throws {
        try await withTemporaryDirectory { root in
            let path = root + "/store"
            for step in [1, 2] {
                #expect(try CLI.run(["put", Self.fixture + "/step-\(step)", "--run", "dcp", "--step", "\(step)", "--store", path]).status == 0)
            }
            let store = try CheckpointStore.open(at: path)
            let ids = try store.list(run: "dcp").map(\.id)
            let manifests = try ids.map { try store.manifest(of: $0) }
            func chunks(_ manifest: Manifest, _ tensor: String) throws -> [ChunkDigest] {
                let file = try #require(manifest.files.first { $0.path == "__0_0.distcp" })
                let entry = try #require(file.tensors?.first { $0.name == tensor })
                return file.chunks[entry.firstChunk..<(entry.firstChunk + entry.chunkCount)].map(\.digest)
            }
            // The frozen embedding: the same chunks in both steps, so the second put stored none of them.
            let frozen = try chunks(manifests[1], "model.0.weight")
            #expect(try chunks(manifests[0], "model.0.weight") == frozen)
            // A trained weight changed, and its chunks differ.
            #expect(try chunks(manifests[0], "model.3.weight") != chunks(manifests[1], "model.3.weight"))
            let stepOne = Set(manifests[0].files.flatMap { $0.chunks.map(\.digest) })
            let newInTwo = Set(manifests[1].files.flatMap { $0.chunks.map(\.digest) }).subtracting(stepOne)
            #expect(newInTwo.isDisjoint(with: frozen))
            let added = try store.summary(of: ids[1]).storedBytesAdded
            let weightBytes = Int64(64 * 32 * 4)
            #expect(added < Int64(try Files.read(Self.fixture + "/step-2/__0_0.distcp").count + (try Files.read(Self.fixture + "/step-2/__1_0.distcp").count)) - weightBytes, "added \(added)")
        }
    }

    @Test func ranksPutAsShardsAreNamedFromTheMetadataRankZeroHolds() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            for (rank, files) in [(0, [".metadata", "__0_0.distcp"]), (1, ["__1_0.distcp"])] {
                try FileManager.default.createDirectory(atPath: root + "/rank\(rank)", withIntermediateDirectories: true)
                for file in files { try FileManager.default.copyItem(atPath: Self.fixture + "/step-1/" + file, toPath: root + "/rank\(rank)/" + file) }
            }
            // Rank 1 first: alone, its items have no names yet (its folder has no .metadata).
            #expect(try CLI.run(["put", root + "/rank1", "--run", "dcp", "--step", "1", "--shard", "1/2", "--store", store]).status == 0)
            #expect(try CLI.run(["put", root + "/rank0", "--run", "dcp", "--step", "1", "--shard", "0/2", "--store", store]).status == 0)
            let show = try ShardTests.json(try CLI.run(["show", "dcp@1", "--json", "--store", store]))
            #expect(Set(try Self.tensors(show, file: "__1_0.distcp").compactMap { $0["name"] as? String }) == Self.rankOneItems)
            let text = try CLI.run(["show", "dcp@1", "--tensors", "--store", store]).stdout
            #expect(text.contains("optim.state.2.weight.exp_avg_sq"), "\(text)")
            #expect(try CLI.run(["get", "dcp@1", root + "/restored", "--store", store]).status == 0)
            #expect(try Files.tree(root + "/restored") == Files.tree(Self.fixture + "/step-1"))
        }
    }

    @Test func damagedOrHostileDCPFilesAreStoredExactlyAndNothingIsExecuted() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            let folder = root + "/hostile"
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            let real = try Files.read(Self.fixture + "/step-1/__1_0.distcp")
            // Garbage, then real items: the items are found from the end, the garbage is opaque.
            try Files.write(try RandomCheckpoint.randomBytes(5000) + real, to: folder + "/__0_0.distcp")
            // Not DCP at all.
            try Files.write(try RandomCheckpoint.randomBytes(70_000), to: folder + "/__1_0.distcp")
            // Real items with their last byte cut.
            try Files.write(Array(real.dropLast()), to: folder + "/__2_0.distcp")
            // A .metadata that would run a command if it were unpickled.
            let marker = root + "/executed"
            var pickle: [UInt8] = [0x80, 0x02]
            pickle += Array("cos\nsystem\n".utf8) + [0x58] + withUnsafeBytes(of: UInt32(("touch " + marker).utf8.count).littleEndian, Array.init)
                + Array(("touch " + marker).utf8) + [0x85, 0x52, 0x2e]
            try Files.write(pickle, to: folder + "/.metadata")
            let put = try CLI.run(["put", folder, "--run", "bad", "--step", "1", "--store", store])
            #expect(put.status == 0, "\(put.stderr)")
            #expect(put.stderr.contains("__1_0.distcp: not a torch.distributed.checkpoint data file"), "\(put.stderr)")
            #expect(!FileManager.default.fileExists(atPath: marker))
            let show = try ShardTests.json(try CLI.run(["show", "bad@1", "--json", "--store", store]))
            let found = try Self.tensors(show, file: "__0_0.distcp")
            #expect(found.count == 2 && found.allSatisfy { ($0["name"] as? String)?.hasPrefix("@") == true }, "\(found)")
            #expect(try CLI.run(["get", "bad@1", root + "/restored", "--store", store]).status == 0)
            #expect(try Files.tree(root + "/restored") == Files.tree(folder))
            #expect(try CLI.run(["verify", "--full", "--store", store]).status == 0)
        }
    }

    @Test func mutatedDCPFilesAndMetadataParseOrThrowAndNeverCrash() throws {
        // Byte flips (most near the end records, where the backward walk reads), truncations and
        // overwritten lengths of real DCP files: each must parse or throw CKStoreError, never trap.
        let file = try Files.read(Self.fixture + "/step-1/__1_0.distcp")
        let metadata = try Files.read(Self.fixture + "/step-1/.metadata")
        #expect(try FormatValidation.distcp(file) == 2)
        #expect(FormatValidation.dcpMetadata(metadata) == 29)
        var random = SeededRandom(seed: 19)
        var parsed = 0, refused = 0
        for round in 0..<1500 {
            var bytes = round % 2 == 0 ? file : metadata
            switch round % 5 {
            case 0: bytes = Array(bytes.prefix(Int.random(in: 0...bytes.count, using: &random)))
            case 1:
                for _ in 0..<Int.random(in: 1...8, using: &random) {
                    let at = bytes.count - 1 - Int.random(in: 0..<min(bytes.count, 200), using: &random)
                    bytes[at] = UInt8.random(in: 0...255, using: &random)
                }
            case 2:
                // A length or offset field set to an extreme value.
                let at = bytes.count - 1 - Int.random(in: 8..<min(bytes.count, 120), using: &random)
                for index in at..<min(bytes.count, at + 8) { bytes[index] = 0xff }
            default:
                for _ in 0..<Int.random(in: 1...16, using: &random) {
                    bytes[Int.random(in: 0..<bytes.count, using: &random)] = UInt8.random(in: 0...255, using: &random)
                }
            }
            do {
                _ = try FormatValidation.distcp(bytes)
                parsed += 1
            } catch is CKStoreError {
                refused += 1
            }
            _ = FormatValidation.dcpMetadata(bytes)
        }
        #expect(parsed > 0 && refused > 0, "parsed \(parsed), refused \(refused)")

        // A zip64 end record whose directory size and offset are the largest Int64: refused, not an overflow.
        var hostile = Array(file.prefix(file.count - 98))
        var zip64 = [UInt8](repeating: 0, count: 56)
        zip64.replaceSubrange(0..<4, with: [0x50, 0x4b, 0x06, 0x06])
        zip64.replaceSubrange(4..<12, with: withUnsafeBytes(of: UInt64(44).littleEndian, Array.init))
        zip64.replaceSubrange(40..<48, with: withUnsafeBytes(of: UInt64(Int64.max).littleEndian, Array.init))
        zip64.replaceSubrange(48..<56, with: withUnsafeBytes(of: UInt64(Int64.max).littleEndian, Array.init))
        var locator = [UInt8](repeating: 0, count: 20)
        locator.replaceSubrange(0..<4, with: [0x50, 0x4b, 0x06, 0x07])
        var end = [UInt8](repeating: 0xff, count: 22)
        end.replaceSubrange(0..<4, with: [0x50, 0x4b, 0x05, 0x06])
        end.replaceSubrange(20..<22, with: [0, 0])
        hostile += zip64 + locator + end
        #expect(throws: CKStoreError.self) { try FormatValidation.distcp(hostile) }
    }

    @Test func theMetadataReaderNamesEveryItemByItsFileAndOffset() throws {
        let names = try #require(DistributedCheckpoint.itemNames(metadata: try Files.read(Self.fixture + "/step-2/.metadata")))
        #expect(Set(names["__1_0.distcp"]?.values.map { $0 } ?? []) == Self.rankOneItems)
        #expect(names["__0_0.distcp"]?[0] == "optim.param_groups.0.lr")
        #expect(DistributedCheckpoint.itemNames(metadata: Array("not a pickle".utf8)) == nil)
    }
}
