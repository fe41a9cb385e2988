@testable import CKStore
import CKStoreTestSupport
import Foundation
import Testing

/// A checkpoint folder whose tensors of every float and integer dtype drift a little from one step to the
/// next, as trained weights do; plus torch storages and a random file.
func driftingFolder(at folder: String, step: Int, shapes: [String: [Int]] = [:]) throws {
    func values(_ count: Int, seed: UInt64) -> [Double] {
        var random = SeededRandom(seed: seed)
        return (0..<count).map { index in
            let start = Double(random.normal()) * 0.05
            // Each element moves by a small, element-dependent amount per step.
            return start + Double(step) * 1e-6 * Double(index % 7 + 1)
        }
    }
    func encode(_ values: [Double], dtype: String) -> [UInt8] {
        var out = [UInt8]()
        for value in values {
            switch dtype {
            case "F64": withUnsafeBytes(of: value.bitPattern.littleEndian) { out += $0 }
            case "F32": withUnsafeBytes(of: Float(value).bitPattern.littleEndian) { out += $0 }
            case "F16": withUnsafeBytes(of: Float16(Float(value)).bitPattern.littleEndian) { out += $0 }
            case "BF16": withUnsafeBytes(of: UInt16(truncatingIfNeeded: Float(value).bitPattern >> 16).littleEndian) { out += $0 }
            case "I64": withUnsafeBytes(of: Int64(value * 1e9).littleEndian) { out += $0 }
            default: preconditionFailure(dtype)
            }
        }
        return out
    }
    var model = SafetensorsBuilder(metadata: ["format": "pt"])
    let tensors: [(String, String, [Int])] = [
        ("a.f32", "F32", [600, 500]), ("b.f16", "F16", [700, 600]), ("c.bf16", "BF16", [700, 600]),
        ("d.f64", "F64", [300, 500]), ("e.i64", "I64", [300, 500]), ("f.scalar", "F32", []),
    ]
    for (index, (name, dtype, shape)) in tensors.enumerated() {
        model.add(name, dtype: dtype, shape: shapes[name] ?? shape, data: encode(values(shape.reduce(1, *), seed: UInt64(index)), dtype: dtype))
    }
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    try Data(model.build()).write(to: URL(fileURLWithPath: folder + "/model.safetensors"))
    var optimizer = TorchZipBuilder(archiveName: "optimizer")
    optimizer.addStorage(encode(values(400_000, seed: 10), dtype: "F32"))
    optimizer.addStorage(encode(values(300_000, seed: 11), dtype: "F32"))
    try Data(optimizer.build()).write(to: URL(fileURLWithPath: folder + "/optimizer.pt"))
    var random = SeededRandom(seed: UInt64(step) + 100)
    try Data(random.bytes(count: 5000)).write(to: URL(fileURLWithPath: folder + "/rng.bin"))
    try Data("{\"step\": \(step)}".utf8).write(to: URL(fileURLWithPath: folder + "/trainer_state.json"))
}

/// The stored frames: encoding, base and the delta depth of each chunk.
struct StoredFrames {
    var encoding: [ChunkDigest: FrameEncoding] = [:]
    var base: [ChunkDigest: ChunkDigest] = [:]
    var label: [ChunkDigest: String] = [:]
    /// File chunks only; manifests and annotations left out.
    var chunks: Set<ChunkDigest> = []

    init(_ store: CheckpointStore) throws {
        let rows = try store.withCatalogue { (catalogue) throws in
            try catalogue.statement("SELECT c.digest, c.encoding, c.base, coalesce(l.tensor, ''), c.kind FROM chunks c LEFT JOIN labels l ON l.id = c.label").rows([]) { (row) throws in
                (try row.digest(0), FrameEncoding(rawValue: UInt8(row.int(1)))!, row.isNull(2) ? nil : try row.digest(2), row.text(3), row.int(4) == Int64(FrameKind.chunk.rawValue))
            }
        }
        for (digest, encoding, base, label, isChunk) in rows {
            if isChunk { chunks.insert(digest) }
            self.encoding[digest] = encoding
            self.base[digest] = base
            self.label[digest] = label
        }
    }

    func depth(_ digest: ChunkDigest) -> Int {
        var depth = 0
        var current = digest
        while let next = base[current] {
            depth += 1
            current = next
        }
        return depth
    }

    func deltas(ofTensor tensor: String) -> [ChunkDigest] {
        base.keys.filter { label[$0] == tensor }
    }
}

@Suite struct DeltaTests {
    @Test func everyEncodingAndDtypeRoundTripsThroughChainsAtTheMaximumDepth() async throws {
        try await withTemporaryDirectory { root in
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            try store.updateSettings(StoreSettings(compressionLevel: .default, maxDeltaDepth: 2))
            for step in 1...7 {
                let source = root + "/in-\(step)"
                try driftingFolder(at: source, step: step)
                let result = try await store.put(directory: source, options: PutOptions(run: "drift", step: Int64(step)))
                _ = try await store.restore(result.id, to: root + "/out-\(step)")
                #expect(try Files.tree(root + "/out-\(step)") == (try Files.tree(source)), "step \(step)")
            }
            let frames = try StoredFrames(store)
            let encodings = Set(frames.encoding.values)
            // Puts write difference deltas; XOR deltas (earlier versions) only decode (CodecTests). Nothing
            // here is predicted: the store does not predict weights unless told to (PredictionTests).
            #expect(encodings == Set(FrameEncoding.allCases).subtracting([.deltaPlanes, .predictedPlanes]), "\(encodings)")
            // Every dtype and the torch storages got delta frames.
            for tensor in ["a.f32", "b.f16", "c.bf16", "d.f64", "e.i64", "optimizer/data/0", "optimizer/data/1"] {
                #expect(!frames.deltas(ofTensor: tensor).isEmpty, "no delta frame for \(tensor)")
            }
            // Chains reach the maximum depth (deltas of deltas) and never exceed it.
            let depths = frames.encoding.keys.map(frames.depth)
            #expect(depths.max() == 2)
            #expect(frames.base.keys.contains { frames.encoding[frames.base[$0]!] == .differencePlanes })
            // Earlier checkpoints still restore through the chains, and a full verify decodes every frame.
            for step in [1, 3] {
                let id = try store.resolve(.step(run: "drift", step: Int64(step)))
                _ = try await store.restore(id, to: root + "/again-\(step)")
                #expect(try Files.tree(root + "/again-\(step)") == (try Files.tree(root + "/in-\(step)")))
            }
            let report = try await store.verify(VerifyOptions(depth: .full))
            #expect(report.ok, "\(report)")
        }
    }

    /// Puts steps 2, 3, 4 of the drifting folder: chains keyframe ← delta ← delta.
    static func threeCheckpoints(_ root: String, store: CheckpointStore) async throws -> [CheckpointID] {
        var ids = [CheckpointID]()
        for step in 2...4 {
            try driftingFolder(at: root + "/in-\(step)", step: step)
            ids.append(try await store.put(directory: root + "/in-\(step)", options: PutOptions(run: "drift", step: Int64(step))).id)
        }
        return ids
    }

    @Test func aBaseWhoseCheckpointRetentionDeletedStaysWhileItsDependentLives() async throws {
        try await withTemporaryDirectory { root in
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let ids = try await Self.threeCheckpoints(root, store: store)
            let before = try StoredFrames(store)
            let newest = Set(try store.manifest(of: ids[2]).files.flatMap { $0.chunks.map(\.digest) })
            let kept = Set(try store.manifest(of: ids[0]).files.flatMap { $0.chunks.map(\.digest) })
            // Step 4's deltas are based on step 3's chunks, which no surviving checkpoint references.
            let pinnedBases = Set(newest.compactMap { before.base[$0] }).subtracting(newest).subtracting(kept)
            #expect(!pinnedBases.isEmpty)

            // Retention deletes the middle checkpoint (step 3; step 2 is pinned). Where re-encoding step 4's
            // chunks in full would cost more than step 3's delta frames take, gc keeps those as bases.
            try store.setPinned(ids[0], true)
            try store.setPolicy(try RetentionPolicy(parsingRules: "keep-last=1"), run: "drift")
            let report = try await store.gc(GCOptions())
            #expect(report.deleted == [ids[1]])
            let after = try StoredFrames(store)
            let keptBases = pinnedBases.filter { after.encoding[$0] != nil }
            #expect(!keptBases.isEmpty, "gc kept no base of the deleted checkpoint")
            // Every base a stored frame names is stored (I-4).
            for (digest, base) in after.base { #expect(after.encoding[base] != nil, "\(digest) lost its base \(base)") }
            _ = try await store.restore(ids[2], to: root + "/out")
            #expect(try Files.tree(root + "/out") == (try Files.tree(root + "/in-4")))
            #expect(try await store.verify(VerifyOptions(depth: .full)).ok)
        }
    }

    @Test func gcReencodesDeltasWhoseDeletedBasesWouldPinMoreThanTheyCost() async throws {
        try await withTemporaryDirectory { root in
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let ids = try await Self.threeCheckpoints(root, store: store)
            let storedBefore = try await store.audit(AuditOptions()).storedBytes
            // Deleting steps 2 and 3 leaves step 4's deltas as the only users of a chain that ends in full
            // frames: storing step 4's chunks in full frees more than it adds.
            try store.remove([ids[0], ids[1]])
            let report = try await store.gc(GCOptions())
            #expect(report.chunksReencoded > 0)
            let after = try StoredFrames(store)
            let newest = try store.manifest(of: ids[2]).files.flatMap { $0.chunks.map(\.digest) }
            // Every base a frame names is still there, and nothing but step 4 (and its bases) is left.
            for (digest, base) in after.base { #expect(after.encoding[base] != nil, "\(digest) lost its base") }
            #expect(after.chunks.subtracting(newest).subtracting(after.base.values).isEmpty)
            // The store is about as large as one holding step 4 alone, in full frames.
            let fresh = try CheckpointStore.open(at: root + "/fresh", create: true)
            var options = PutOptions(run: "drift", step: 4)
            options.maxDeltaDepth = 0
            _ = try await fresh.put(directory: root + "/in-4", options: options)
            let storedAfter = try await store.audit(AuditOptions()).storedBytes, alone = try await fresh.audit(AuditOptions()).storedBytes
            #expect(storedAfter < storedBefore && Double(storedAfter) <= Double(alone) * 1.05, "\(storedAfter) after gc, \(storedBefore) before, \(alone) for step 4 alone")
            _ = try await store.restore(ids[2], to: root + "/out")
            #expect(try Files.tree(root + "/out") == (try Files.tree(root + "/in-4")))
            #expect(try await store.verify(VerifyOptions(depth: .full)).ok)
        }
    }

    @Test func aTensorWhoseShapeChangedGetsNoDelta() async throws {
        try await withTemporaryDirectory { root in
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            try driftingFolder(at: root + "/in-1", step: 1)
            _ = try await store.put(directory: root + "/in-1", options: PutOptions(run: "drift", step: 1))
            // Same bytes count, other shape: a reshaped tensor is not the same tensor.
            try driftingFolder(at: root + "/in-2", step: 2, shapes: ["a.f32": [500, 600]])
            let id = try await store.put(directory: root + "/in-2", options: PutOptions(run: "drift", step: 2)).id
            let frames = try StoredFrames(store)
            #expect(frames.deltas(ofTensor: "a.f32").isEmpty)
            #expect(!frames.deltas(ofTensor: "d.f64").isEmpty)
            _ = try await store.restore(id, to: root + "/out")
            #expect(try Files.tree(root + "/out") == (try Files.tree(root + "/in-2")))
        }
    }

    @Test func settingsPersistAndAPutMayOverrideThem() async throws {
        try await withTemporaryDirectory { root in
            let path = root + "/store"
            do {
                let store = try CheckpointStore.open(at: path, create: true)
                #expect(try store.settings() == .defaults)
                try store.updateSettings(StoreSettings(compressionLevel: CompressionLevel(9)!, maxDeltaDepth: 0))
                #expect(throws: CKStoreError.self) { try store.updateSettings(StoreSettings(compressionLevel: .default, maxDeltaDepth: 99)) }
            }
            let store = try CheckpointStore.open(at: path, create: false)
            #expect(try store.settings() == StoreSettings(compressionLevel: CompressionLevel(9)!, maxDeltaDepth: 0))
            for step in 1...2 {
                try driftingFolder(at: root + "/in-\(step)", step: step)
                _ = try await store.put(directory: root + "/in-\(step)", options: PutOptions(run: "off", step: Int64(step)))
            }
            #expect(try StoredFrames(store).base.isEmpty, "the store's depth 0 turns deltas off")
            var options = PutOptions(run: "off", step: 3)
            options.maxDeltaDepth = 3
            try driftingFolder(at: root + "/in-3", step: 3)
            _ = try await store.put(directory: root + "/in-3", options: options)
            #expect(!(try StoredFrames(store).base.isEmpty), "a put's own depth overrides the store's")
        }
    }
}
