import CKStoreTestSupport
import Foundation
import Testing
@testable import CKStore

/// Bytes of hand-written pickles.
private enum Pickle {
    static func unicode(_ text: String) -> [UInt8] {
        [0x58] + withUnsafeBytes(of: UInt32(text.utf8.count).littleEndian) { Array($0) } + Array(text.utf8)
    }
    static func global(_ module: String, _ name: String) -> [UInt8] { Array("c\(module)\n\(name)\n".utf8) }
    static let proto: [UInt8] = [0x80, 0x02]
    static let stop: [UInt8] = [0x2e]
}

@Suite struct PickleReaderTests {
    private func archive(_ relative: String) throws -> (SharedFile, TorchZipFile) {
        let path = RealFixtures.path(relative)
        let handle = try SharedFile(path: path)
        return (handle, try TorchZipFile.parse(handle, size: try handle.size(), name: path))
    }

    @Test func theRealOptimizerStateIsNamedByParameterAndKeyWithItsGroups() throws {
        // What torch.load says of this file (PyTorch 2.15, AdamW, 4 steps): 7 parameters, each with
        // step (a 0-dim float32), exp_avg and exp_avg_sq; one group with lr 0.0064, betas (0.9, 0.999),
        // eps 1e-08, weight_decay 0.01.
        let (handle, zip) = try archive("hf-tiny/checkpoint-4/optimizer.pt")
        let layout = zip.layout(reading: handle)
        var tensors = [String: (DType?, [Int]?)]()
        for region in layout.regions {
            if case .tensor(let name, let dtype, let shape) = region.kind { tensors[name] = (dtype, shape) }
        }
        let expectedShapes: [[Int]] = [[64, 16], [8, 64], [8], [8], [8], [4, 8], [4]]
        #expect(tensors.count == 21)
        for (param, shape) in expectedShapes.enumerated() {
            for key in ["exp_avg", "exp_avg_sq"] {
                let tensor = tensors["state.\(param).\(key)"]
                #expect(tensor?.0?.name == "F32" && tensor?.1 == shape, "state.\(param).\(key): \(String(describing: tensor))")
            }
            #expect(tensors["state.\(param).step"]?.1 == [], "a 0-dim tensor has the empty shape")
        }
        let optimizer = try #require(layout.optimizer)
        #expect(optimizer.groups.count == 1)
        let group = optimizer.groups[0]
        #expect(group.params == [0, 1, 2, 3, 4, 5, 6])
        #expect(group.lr == 0.0064 && group.eps == 1e-08 && group.weightDecay == 0.01)
        #expect(group.betas == [0.9, 0.999])
        #expect(group.step == 4, "the step is read from the storage of state.0.step")
        // Every storage's element width is known, under its new name too.
        #expect(layout.storageElementWidths["state.0.exp_avg"] == 4)

        let (earlierHandle, earlier) = try archive("hf-tiny/checkpoint-2/optimizer.pt")
        #expect(earlier.layout(reading: earlierHandle).optimizer?.groups.first?.step == 2)
        #expect(earlier.layout(reading: earlierHandle).optimizer?.groups.first?.lr == 0.0082)
    }

    @Test func viewsOfOneStorageAndOtherRealArchives() throws {
        // shared_storage.pt: {"w": 4×4, "w_view": 2×4 at offset 4 of w's storage, "ids": int64 ×5}.
        let (handle, zip) = try archive("shared_storage.pt")
        let layout = zip.layout(reading: handle)
        let named = layout.regions.compactMap { region -> String? in
            if case .tensor(let name, let dtype, let shape) = region.kind { return "\(name) \(dtype?.name ?? "-") \(shape ?? [])" }
            return nil
        }
        #expect(named.sorted() == ["ids I64 [5]", "w F32 [4, 4]"])
        #expect(layout.optimizer == nil)
        // rng_state.pth: torch's RNG state is a ByteStorage (1-byte elements) under the key "cpu"; the
        // NumPy state beside it is an object that is read, never built.
        let (rngHandle, rng) = try archive("hf-tiny/checkpoint-2/rng_state.pth")
        let rngLayout = rng.layout(reading: rngHandle)
        #expect(rngLayout.storageElementWidths["cpu"] == 1, "\(rngLayout.storageElementWidths)")
    }

    @Test func aHandWrittenPickleWithMemoReferencesAndEveryStorageType() {
        // ('storage', torch.<Type>, '<key>', 'cpu', n) per storage, the type memoized and fetched again.
        var pickle = Pickle.proto + [0x5d, 0x28]  // EMPTY_LIST, MARK
        var memo: UInt8 = 0
        for (index, type) in ["HalfStorage", "BFloat16Storage", "DoubleStorage", "LongStorage", "ByteStorage", "FloatStorage"].enumerated() {
            pickle += [0x28] + Pickle.unicode("storage") + Pickle.global("torch", type) + [0x71, memo] + Pickle.unicode(String(index)) + Pickle.unicode("cpu") + [0x4b, 3, 0x74, 0x51]
            // A second storage of the same type, through BINGET of the memoized global.
            pickle += [0x28] + Pickle.unicode("storage") + [0x68, memo] + Pickle.unicode("\(index)b") + Pickle.unicode("cpu") + [0x4d, 0, 1, 0x74, 0x51]
            memo += 1
        }
        pickle += [0x65] + Pickle.stop  // APPENDS, STOP
        let objects = TorchObjects(pickle: pickle)
        #expect(objects.storages.mapValues(\.elementWidth) == ["0": 2, "0b": 2, "1": 2, "1b": 2, "2": 8, "2b": 8, "3": 8, "3b": 8, "4": 1, "4b": 1, "5": 4, "5b": 4])
        var reader = PickleReader()
        guard case .list(let items)? = reader.read(pickle) else {
            Issue.record("the list of storages did not read")
            return
        }
        #expect(items.count == 12)
        #expect(items[11] == .storage(TorchStorageRecord(type: "FloatStorage", key: "5b", location: "cpu", count: 256)))
        // Truncated: nothing is returned, but the storages met before the cut are still known.
        var truncated = PickleReader()
        #expect(truncated.read(Array(pickle.prefix(pickle.count / 2))) == nil)
        #expect(!truncated.storages.isEmpty && truncated.storages.count < 12)
    }

    @Test func aMemoizedDictFilledLaterReadsAsPythonReadsIt() {
        // d = {}; memo it; outer = [d, d]; then d["a"] = 1 through the first reference: both see it.
        let pickle = Pickle.proto + [0x5d, 0x28, 0x7d, 0x71, 0x00, 0x68, 0x00, 0x65]  // [ MARK {} PUT0 GET0 APPENDS
            + [0x68, 0x00] + Pickle.unicode("a") + [0x4b, 0x01, 0x73, 0x30]  // GET0 "a" 1 SETITEM POP
            + Pickle.stop
        var reader = PickleReader()
        let filled = PickleValue.dict([.init(key: .string("a"), value: .int(1))])
        #expect(reader.read(pickle) == .list([filled, filled]))
    }

    @Test func hostilePicklesAreReadAsDataAndNeverRun() throws {
        // os.system("touch <marker>") as a pickle: REDUCE of a global. It must come back as a value.
        let marker = NSTemporaryDirectory() + "ckstore-pickle-\(UUID().uuidString)"
        let command = "touch \(marker)"
        for callable in [Pickle.global("os", "system"), Pickle.global("posix", "system"), Pickle.global("builtins", "eval")] {
            let pickle = Pickle.proto + callable + Pickle.unicode(command) + [0x85, 0x52] + Pickle.stop  // TUPLE1, REDUCE
            var reader = PickleReader()
            let value = reader.read(pickle)
            guard case .object(let called, let arguments, _, _, _)? = value, case .global(_, let name) = called else {
                Issue.record("\(String(describing: value)) is not an unmade call")
                continue
            }
            #expect(["system", "eval"].contains(name) && arguments == [.string(command)])
        }
        // The same through STACK_GLOBAL (protocol 4) and NEWOBJ, and a BUILD that would set attributes.
        let stackGlobal = [0x80, 0x04] + [0x8c, 2] + Array("os".utf8) + [0x8c, 6] + Array("system".utf8) + [0x93]
            + Pickle.unicode(command) + [0x85, 0x81] + [0x7d, 0x62] + Pickle.stop
        var reader = PickleReader()
        #expect(reader.read(stackGlobal) != nil)
        // A whole torch archive whose pickle is hostile is still parsed as data: the call names no tensor.
        #expect(TorchObjects(pickle: stackGlobal).storages.isEmpty)
        #expect(!FileManager.default.fileExists(atPath: marker), "nothing was executed")
    }

    @Test func malformedAndExplosivePicklesEndTheReadWithoutHarm() {
        var reader = PickleReader()
        // Garbage, a stack underflow, an unknown opcode, a length past the end, a GET of nothing.
        #expect(reader.read([0xff, 0x00, 0x58, 0xff, 0xff, 0xff, 0x7f]) == nil)
        #expect(reader.read(Pickle.proto + [0x52] + Pickle.stop) == nil)
        #expect(reader.read(Pickle.proto + [0x4e, 0xfe] + Pickle.stop) == nil)
        #expect(reader.read(Pickle.proto + [0x58, 0xff, 0xff, 0xff, 0x7f, 0x41] + Pickle.stop) == nil)
        #expect(reader.read(Pickle.proto + [0x6a, 0x10, 0x27, 0, 0] + Pickle.stop) == nil)
        #expect(reader.read(Pickle.proto + [0x4e]) == nil, "no STOP")
        #expect(reader.read(Pickle.proto + [0x4e, 0x4e] + Pickle.stop) == nil, "two objects left at STOP")
        // A list that contains itself.
        #expect(reader.read(Pickle.proto + [0x5d, 0x71, 0x00, 0x68, 0x00, 0x61] + Pickle.stop) == nil)
        // "Billion laughs": each level a list holding the previous level twice; 40 levels describe 2^40
        // nodes in 200 bytes. The read stops at its node budget.
        var laughs = Pickle.proto + [0x5d, 0x71, 0x00, 0x30]
        for level in 1...40 {
            laughs += [0x5d, 0x28, 0x68, UInt8(level - 1), 0x68, UInt8(level - 1), 0x65, 0x71, UInt8(level)]
            laughs += [0x30]  // POP: the new list stays reachable through the memo only
        }
        laughs += [0x68, 40] + Pickle.stop
        // Five levels are well within the budget: the construction itself is sound.
        var five = Pickle.proto + [0x5d, 0x71, 0x00, 0x30]
        for level in 1...5 { five += [0x5d, 0x28, 0x68, UInt8(level - 1), 0x68, UInt8(level - 1), 0x65, 0x71, UInt8(level), 0x30] }
        var nodes = 0
        func count(_ value: PickleValue) { nodes += 1; if case .list(let items) = value { items.forEach(count) } }
        if let tree = reader.read(five + [0x68, 5] + Pickle.stop) { count(tree) }
        #expect(nodes == 63, "2^6 - 1 nodes")
        let started = ContinuousClock.now
        #expect(reader.read(laughs) == nil)
        #expect(ContinuousClock.now - started < .seconds(30), "bounded work (a generous bound: this is not a timing test)")
        // Integers: LONG1 of every width the reader accepts, and one too wide for 64 bits.
        #expect(reader.read(Pickle.proto + [0x8a, 0x02, 0xff, 0x7f] + Pickle.stop) == .int(32767))
        #expect(reader.read(Pickle.proto + [0x8a, 0x01, 0xff] + Pickle.stop) == .int(-1))
        #expect(reader.read(Pickle.proto + [0x8a, 0x09] + [UInt8](repeating: 0, count: 8) + [0x01] + Pickle.stop) == nil)
        #expect(reader.read(Pickle.proto + [0x47, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0] + Pickle.stop) == .float(1.0))
    }
}

@Suite struct FileDigestTests {
    @Test func theChunkListDigestIsTheDocumentedSHA256OverDigestsAndLengths() {
        let chunks = [ChunkRef(digest: SHA256Hasher.digest(Array("a".utf8)), length: 1), ChunkRef(digest: SHA256Hasher.digest(Array("bc".utf8)), length: 2)]
        // By hand: for each chunk its 32-byte digest, then its length as 8 bytes little-endian.
        var bytes = [UInt8]()
        for chunk in chunks { bytes += chunk.digest.bytes + [UInt8(chunk.length), 0, 0, 0, 0, 0, 0, 0] }
        #expect(FileEntry.chunkListDigest(chunks) == SHA256Hasher.digest(bytes))
        // Cutting the same bytes differently gives another digest: lengths are part of it.
        #expect(FileEntry.chunkListDigest([ChunkRef(digest: chunks[0].digest, length: 3)]) != FileEntry.chunkListDigest(chunks))
        #expect(FileEntry.chunkListDigest([]) == SHA256Hasher.digest([UInt8]()))
    }

    @Test func aFileEntryAsVersionSixWroteItStillReads() throws {
        // ckstore 0.6 wrote every file's sha256 and no digest.
        let digest = SHA256Hasher.digest(Array("x".utf8))
        let json = #"{"chunks":[{"d":"\#(digest.hex)","n":1}],"format":"opaque","mode":420,"path":"x","sha256":"\#(digest.hex)","size":1}"#
        let entry = try JSONDecoder().decode(FileEntry.self, from: Data(json.utf8))
        #expect(entry.sha256 == digest && entry.digest == nil && entry.optimizer == nil)
        // And encodes back to the same bytes (manifest ids hash the stored bytes; nothing new appears).
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        #expect(String(decoding: try encoder.encode(entry), as: UTF8.self) == json)
    }
}

@Suite struct FileDigestManifestTests {
    @Test func aPutRecordsDigestsOverChunksAndAManifestWithAWrongDigestIsDamaged() async throws {
        try await withTemporaryDirectory { root in
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            // The real optimizer.pt (several storages) and a small file.
            let source = root + "/ckpt"
            try FileManager.default.createDirectory(atPath: source, withIntermediateDirectories: true)
            try Files.write(try Files.read(RealFixtures.path("hf-tiny/checkpoint-4/optimizer.pt")), to: source + "/optimizer.pt")
            try Files.write(Array("{}".utf8), to: source + "/config.json")
            let put = try await store.put(directory: source, options: PutOptions(run: "d", step: 1))
            var manifest = try store.manifest(of: put.id)
            for file in manifest.files {
                #expect(file.digest == FileEntry.chunkListDigest(file.chunks))
                if file.chunks.count <= 1 {
                    #expect(file.sha256 == SHA256Hasher.digest(try Files.read(source + "/" + file.path)))
                } else {
                    #expect(file.sha256 == nil)
                }
            }
            #expect(manifest.problem() == nil)
            manifest.files[0].digest = SHA256Hasher.digest([1, 2, 3])
            #expect(manifest.problem()?.contains("its digest is not the digest of its chunk list") == true)
        }
    }
}
