@testable import CKStore
import CKStoreTestSupport
import Foundation
import Testing

/// Weights predicted from the optimizer's moments (issue 18, part 3): the arithmetic, the frames, and
/// what the store does with frames that have several bases.
@Suite struct PredictionTests {
    static func bytes(_ words: [UInt32]) -> [UInt8] { words.flatMap { withUnsafeBytes(of: $0.littleEndian, Array.init) } }
    static func words(_ bytes: [UInt8]) -> [UInt32] {
        stride(from: 0, to: bytes.count, by: 4).map { UInt32(bytes[$0]) | UInt32(bytes[$0 + 1]) << 8 | UInt32(bytes[$0 + 2]) << 16 | UInt32(bytes[$0 + 3]) << 24 }
    }

    static let digests = (0..<4).map { index in ChunkDigest(bytes: (0..<32).map { UInt8((index * 32 + $0) % 251) })! }

    /// The prediction is IEEE single precision in a fixed order: these bit patterns are what NumPy's
    /// float32 arithmetic gives for `w + ((a·m/(√(v·s)+ε) + b·m'/(√(v'·s')+ε)) + c·w)` (a subnormal weight,
    /// −0, the largest half-precision value, an infinite moment whose prediction falls back to `w`). A
    /// fused multiply-add or a reassociation would change some of them.
    @Test func predictionMatchesIEEESinglePrecisionBitForBit() {
        let w: [UInt32] = [0x3f00_0000, 0xbfa0_0000, 0x3b44_9ba6, 0x0001_16c2, 0x8000_0000, 0x477f_e000, 0x3f80_0000]
        let m: [UInt32] = [0x3c23_d70a, 0xbca3_d70a, 0x3727_c5ac, 0x0000_0000, 0x3f00_0000, 0xc040_0000, 0x3f80_0000]
        let v: [UInt32] = [0x38d1_b717, 0x39d1_b717, 0x3089_705f, 0x0000_0000, 0x3e80_0000, 0x4110_0000, 0x0000_0000]
        let mp: [UInt32] = [0x3c03_126f, 0xbc23_d70a, 0x37a7_c5ac, 0x3586_37bd, 0x3ecc_cccd, 0xc000_0000, 0x7f80_0000]
        let vp: [UInt32] = [0x38bc_be62, 0x399d_4952, 0x3109_705f, 0x2b8c_bccc, 0x3e4c_cccd, 0x4100_0000, 0x3f80_0000]
        let expected: [UInt32] = [0x3eff_5cfd, 0xbf9f_da8f, 0x3b26_1ca6, 0xb9d4_4e64, 0xbaa5_1858, 0x477f_df59, 0x3f80_0000]
        let prediction = WeightPrediction(
            inputs: Self.digests, scale: Float(bitPattern: 0x3fa0_0000), parentScale: Float(bitPattern: 0x3fc0_0000),
            epsilon: Float(bitPattern: 0x322b_cc77), a: Float(bitPattern: 0xba83_126f), b: Float(bitPattern: 0xba03_126f), c: Float(bitPattern: 0xb727_c5ac))
        var output = [UInt8](repeating: 0, count: w.count * 4)
        let inputs = [m, v, mp, vp].map(Self.bytes)
        Self.bytes(w).withUnsafeBytes { parent in
            inputs[0].withUnsafeBytes { i0 in inputs[1].withUnsafeBytes { i1 in inputs[2].withUnsafeBytes { i2 in inputs[3].withUnsafeBytes { i3 in
                output.withUnsafeMutableBytes { out in
                    prediction.predict(count: w.count, parent: parent.baseAddress!, moments: [i0.baseAddress!, i1.baseAddress!, i2.baseAddress!, i3.baseAddress!], into: out.baseAddress!)
                }
            } } } }
        }
        #expect(Self.words(output) == expected)
        // The constants survive the frame's prefix bit for bit.
        let parsed = prediction.serialized().withUnsafeBytes { try? WeightPrediction(parsing: $0) }
        #expect(parsed == prediction)
    }

    /// Special values in every operand: weights, parent, moments; the frame still decodes to the exact bits.
    static func hostileValues(count: Int, seed: UInt64) -> [UInt32] {
        var random = SeededRandom(seed: seed)
        let specials: [UInt32] = [0x7fc0_0000, 0xffc0_0001, 0x7f80_0001, 0x7fbf_ffff, 0x7f80_0000, 0xff80_0000, 0x0000_0001, 0x807f_ffff, 0x8000_0000, 0x0000_0000, 0x7f7f_ffff, 0xff7f_ffff]
        return (0..<count).map { index in
            if index % 7 == 0 { return specials[(index / 7) % specials.count] }
            return Float(random.normal() * 0.05).bitPattern
        }
    }

    static func roundTrip(weights: [UInt32], parent: [UInt32], moments: [[UInt32]], prediction: WeightPrediction) throws -> (decoded: [UInt8], payload: Int) {
        let codec = FrameCodec(level: .default)
        let momentBytes = moments.map(Self.bytes)
        let (payload, _) = try Self.bytes(weights).withUnsafeBytes { w in
            try Self.bytes(parent).withUnsafeBytes { p in
                try FrameCodec.withUnsafeBytes(of: momentBytes.map { ChunkBytes($0) }) { m in
                    try codec.encodePredicted(w, parent: p, moments: m, prediction: prediction, tryCompressing: [true, true, true, true])
                }
            }
        }
        let decoded = try codec.decode(ChunkBytes(payload), encoding: .predictedPlanes, rawLength: weights.count * 4) {
            ChunkBytes(Self.bytes(parent))
        } input: { digest in
            guard let index = prediction.inputs.firstIndex(of: digest) else { throw CKStoreError(.damaged, "unknown input") }
            return ChunkBytes(momentBytes[index])
        }
        return (decoded.array, payload.count)
    }

    @Test func predictedFramesRoundTripNaNInfinitiesSubnormalsAndNegativeZero() throws {
        let count = 20_000
        let weights = Self.hostileValues(count: count, seed: 1), parent = Self.hostileValues(count: count, seed: 2)
        let moments = (3...6).map { Self.hostileValues(count: count, seed: UInt64($0)) }
        // Coefficients that overflow (a non-finite prediction falls back to the parent) and ordinary ones.
        for (a, b, c) in [(Float(-1e-3), Float(-5e-4), Float(-1e-5)), (Float.greatestFiniteMagnitude, 1, 1), (0, 0, 0), (-.infinity, .nan, 1)] {
            let prediction = WeightPrediction(inputs: Self.digests, scale: 1.05, parentScale: 1.1, epsilon: 1e-8, a: a, b: b, c: c)
            let (decoded, _) = try Self.roundTrip(weights: weights, parent: parent, moments: moments, prediction: prediction)
            #expect(decoded == Self.bytes(weights))
        }
    }

    /// Weights moved by an Adam-like update: fitting finds the update, and the frame is far smaller than
    /// the plain difference. The same weights predicted from another parameter's moments (a wrong match)
    /// make a larger frame that still decodes exactly.
    @Test func aFittedPredictionShrinksTheFrameAndAWrongMatchStillDecodesExactly() throws {
        let count = 65_536
        var random = SeededRandom(seed: 9)
        let parent = (0..<count).map { _ in random.normal() * 0.05 }
        let m = (0..<count).map { _ in random.normal() * 1e-3 }, v = m.map { $0 * $0 * 2 + 1e-7 }
        let mp = m.map { $0 * 0.8 + random.normal() * 1e-4 }, vp = v.map { $0 * 0.99 }
        let u = zip(m, v).map { $0 / ($1.squareRoot() + 1e-8) }
        // Fifteen steps of about the same update and weight decay, with a little noise.
        let weights = (0..<count).map { parent[$0] - 1e-4 * 15 * u[$0] - 1e-6 * parent[$0] + random.normal() * 1e-6 }
        let words = { (values: [Float]) in values.map(\.bitPattern) }
        let momentWords = [m, v, mp, vp].map(words)
        let (a, b, c) = try #require(Self.bytes(words(weights)).withUnsafeBytes { w in
            Self.bytes(words(parent)).withUnsafeBytes { p in
                let buffers = momentWords.map(Self.bytes)
                return buffers[0].withUnsafeBytes { i0 in buffers[1].withUnsafeBytes { i1 in buffers[2].withUnsafeBytes { i2 in buffers[3].withUnsafeBytes { i3 in
                    WeightPrediction.fit(count: count, weights: w.baseAddress!, parent: p.baseAddress!, moments: [i0.baseAddress!, i1.baseAddress!, i2.baseAddress!, i3.baseAddress!], scale: 1, parentScale: 1, epsilon: 1e-8)
                } } } }
            }
        })
        #expect(a + b < -1.2e-3 && a + b > -1.8e-3)
        let fitted = WeightPrediction(inputs: Self.digests, scale: 1, parentScale: 1, epsilon: 1e-8, a: a, b: b, c: c)
        let (decoded, predictedSize) = try Self.roundTrip(weights: words(weights), parent: words(parent), moments: momentWords, prediction: fitted)
        #expect(decoded == Self.bytes(words(weights)))
        let difference = try Self.bytes(words(weights)).withUnsafeBytes { w in
            try Self.bytes(words(parent)).withUnsafeBytes { p in
                try FrameCodec(level: .default).encodePlanes(w, base: p, delta: .difference, width: 4, tryCompressing: [true, true, true, true]).payload.count
            }
        }
        #expect(Double(predictedSize) < 0.8 * Double(difference), "predicted \(predictedSize) bytes, difference \(difference)")
        // Another parameter's moments: a poor prediction, an exact decode.
        let wrong = (0..<4).map { _ in (0..<count).map { _ in (random.normal() * 1e-3).bitPattern } }
        let (decodedWrong, wrongSize) = try Self.roundTrip(weights: words(weights), parent: words(parent), moments: wrong, prediction: fitted)
        #expect(decodedWrong == Self.bytes(words(weights)))
        #expect(wrongSize > predictedSize)
    }

    @Test func damagedPredictionsAreReportedNotTrapped() throws {
        let codec = FrameCodec(level: .default)
        let prediction = WeightPrediction(inputs: Self.digests, scale: 1, parentScale: 1, epsilon: 1e-8, a: 0, b: 0, c: 0)
        var wrongCount = prediction.serialized()
        wrongCount[0] = 3
        for payload in [Array(prediction.serialized().prefix(40)), wrongCount + [4], prediction.serialized() + [9, 9]] {
            #expect(throws: CKStoreError.self) {
                _ = try codec.decode(ChunkBytes(payload), encoding: .predictedPlanes, rawLength: 16) { ChunkBytes([UInt8](repeating: 0, count: 16)) } input: { _ in ChunkBytes([UInt8](repeating: 0, count: 16)) }
            }
        }
        // Inputs of another length than the chunk are damage, not a trap.
        let good = try Self.roundTrip(weights: [1, 2, 3, 4], parent: [1, 2, 3, 4], moments: Array(repeating: [0, 0, 0, 0], count: 4), prediction: prediction)
        #expect(good.decoded == Self.bytes([1, 2, 3, 4]))
    }
}

/// A store that predicts weights, over a simulated AdamW run whose `optimizer.pt` holds the pickle torch
/// writes.
extension PredictionTests {
    static func series(_ root: String, checkpoints: Int = 5, predict: Bool = true) async throws -> (CheckpointStore, [String]) {
        let store = try CheckpointStore.open(at: root + "/store", create: true)
        var settings = try store.settings()
        settings.predictWeights = predict
        try store.updateSettings(settings)
        var series = TrainingSeries(variant: .fp32, parameterCount: 600_000, checkpoints: checkpoints, stepsPerCheckpoint: 10)
        var folders = [String]()
        for _ in 0..<checkpoints {
            series.advance()
            let folder = root + "/src/checkpoint-\(series.step)"
            try series.write(to: folder)
            _ = try await store.put(directory: folder, options: PutOptions(run: "r", step: Int64(series.step)))
            folders.append(folder)
        }
        return (store, folders)
    }

    /// (digest, encoding) of every chunk and the inputs of each predicted frame, from the catalogue.
    static func predicted(_ store: CheckpointStore) throws -> [ChunkDigest: [ChunkDigest]] {
        try store.withCatalogue { catalogue in
            var out = [ChunkDigest: [ChunkDigest]]()
            for digest in try catalogue.statement("SELECT digest FROM chunks WHERE encoding = 5").rows([], { try $0.digest(0) }) {
                out[digest] = try catalogue.inputs(of: digest)
            }
            return out
        }
    }

    static func expectRestores(_ store: CheckpointStore, step: Int64, as folder: String, into destination: String) async throws {
        let id = try #require(try store.list().first { $0.step == step }?.id)
        _ = try await store.restore(id, to: destination)
        for name in ["model.safetensors", "optimizer.pt", "trainer_state.json"] {
            #expect(FileManager.default.contents(atPath: destination + "/" + name) == FileManager.default.contents(atPath: folder + "/" + name), "\(name) of step \(step)")
        }
    }

    @Test func putsPredictWeightsFromTheMomentsAndEveryCheckpointRestoresExactly() async throws {
        try await withTemporaryDirectory { root in
            let (store, folders) = try await Self.series(root)
            let predicted = try Self.predicted(store)
            #expect(predicted.count >= 10, "\(predicted.count) predicted frames")
            #expect(predicted.values.allSatisfy { $0.count == 4 })
            for (index, folder) in folders.enumerated() {
                try await Self.expectRestores(store, step: Int64((index + 1) * 10), as: folder, into: root + "/out-\(index)")
            }
            #expect(try await store.verify(VerifyOptions(depth: .full)).ok)
            // The same series without prediction stores more.
            let (plain, _) = try await Self.series(root + "/plain", predict: false)
            #expect(try Self.predicted(plain).isEmpty)
            #expect(try store.list().reduce(0) { $0 + $1.storedBytesAdded } < plain.list().reduce(0) { $0 + $1.storedBytesAdded })
        }
    }

    /// gc after the checkpoints a predicted frame's base and inputs came from are deleted keeps them all
    /// (I-4): the newest still restores, and every input of a live predicted frame is still a chunk.
    @Test func gcKeepsEveryBaseAndInputOfAPredictedFrame() async throws {
        try await withTemporaryDirectory { root in
            // Four checkpoints: the fourth is a delta three deep (a fifth would be a keyframe).
            let (store, folders) = try await Self.series(root, checkpoints: 4)
            let before = try Self.predicted(store)
            let newest = try #require(try store.list().max { $0.step < $1.step })
            try store.remove(try store.list().filter { $0.id != newest.id }.map(\.id))
            let report = try await store.gc()
            #expect(report.chunksFreed > 0)
            let live = try Self.predicted(store)
            #expect(!live.isEmpty && Set(live.keys).isSubset(of: Set(before.keys)))
            try store.withCatalogue { catalogue in
                for (digest, inputs) in live {
                    let base = try catalogue.statement("SELECT base FROM chunks WHERE digest = ?").firstRow([.blob(digest.bytes)]) { try $0.digest(0) }
                    for needed in inputs + [try #require(base)] { #expect(try catalogue.containsChunk(needed)) }
                }
            }
            try await Self.expectRestores(store, step: newest.step, as: try #require(folders.last), into: root + "/out")
            #expect(try await store.verify(VerifyOptions(depth: .full)).ok)
        }
    }

    /// A rebuild from the packs alone finds every predicted frame's inputs at the start of its payload.
    @Test func aRebuiltCatalogueKnowsThePredictedFramesInputs() async throws {
        try await withTemporaryDirectory { root in
            let (store, folders) = try await Self.series(root, checkpoints: 3)
            let before = try Self.predicted(store)
            #expect(!before.isEmpty)
            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: root + "/store/ckstore.db" + suffix) }
            _ = try await CheckpointStore.repair(at: root + "/store")
            let rebuilt = try CheckpointStore.open(at: root + "/store")
            #expect(try Self.predicted(rebuilt).mapValues(Set.init) == before.mapValues(Set.init))
            try await Self.expectRestores(rebuilt, step: 30, as: folders[2], into: root + "/out")
        }
    }

    /// A push carries the inputs in its index objects; a fresh store pulls the newest checkpoint, fetching
    /// the inputs with the frames, and restores it exactly.
    @Test func aPullFetchesThePredictedFramesInputs() async throws {
        try await withTemporaryDirectory { root in
            let (store, folders) = try await Self.series(root, checkpoints: 4)
            #expect(!(try Self.predicted(store)).isEmpty)
            let remote = RemoteFolderTests.remote(root)
            _ = try await store.push(try store.list().map(\.id), to: remote)
            let fresh = try CheckpointStore.open(at: root + "/fresh", create: true)
            let pulled = try await fresh.pull(.latestValid(run: "r"), from: remote)
            #expect(pulled.step == 40)
            #expect(!(try Self.predicted(fresh)).isEmpty)
            try await Self.expectRestores(fresh, step: 40, as: folders[3], into: root + "/out")
            #expect(try await fresh.verify(VerifyOptions(depth: .full)).ok)
            // The audit counts the inputs as live: nothing of a store that keeps everything is dead.
            let audit = try await fresh.audit()
            #expect(audit.deadBytes == 0)
        }
    }
}
