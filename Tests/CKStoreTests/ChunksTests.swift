@testable import CKStore
import CKStoreTestSupport
import Foundation
import Testing

/// Packs written through a ``PackSink`` into a bare folder (no catalogue), read back through the seams.
private struct PackBench {
    let layout: StoreLayout
    let sink: PackSink
    let codec = FrameCodec(level: .default)
    var locations = [ChunkDigest: ChunkLocation]()

    init(_ root: String) throws {
        layout = StoreLayout(root: root)
        try FileSystem.createDirectory(root)
        try FileSystem.createDirectory(layout.packsRoot)
        try FileSystem.createDirectory(layout.temporaryRoot)
        sink = PackSink(layout: layout)
    }

    /// Float-like bytes that drift with `step`.
    static func floats(step: Int, count: Int = 20_000) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(count * 4)
        for index in 0..<count {
            let value = Float(index % 97) * 0.01 + Float(step) * 1e-5 * Float(index % 5)
            withUnsafeBytes(of: value.bitPattern.littleEndian) { out += $0 }
        }
        return out
    }

    /// Appends `bytes` as a full frame (byte planes).
    @discardableResult
    mutating func full(_ bytes: [UInt8]) throws -> ChunkDigest {
        let digest = SHA256Hasher.digest(bytes)
        let (payload, _) = try bytes.withUnsafeBytes { try codec.encodePlanes($0, base: nil, width: 4, tryCompressing: [true, true, true, true]) }
        locations[digest] = try sink.append(EncodedChunk(digest: digest, encoding: .planes, rawLength: bytes.count, payload: payload), kind: .chunk)
        return digest
    }

    /// Appends `bytes` as a difference delta against `base` (whose bytes are `baseBytes`), naming `named` as its base.
    @discardableResult
    mutating func delta(_ bytes: [UInt8], against baseBytes: [UInt8], named base: ChunkDigest) throws -> ChunkDigest {
        let digest = SHA256Hasher.digest(bytes)
        let (payload, _) = try baseBytes.withUnsafeBytes { baseBuffer in
            try bytes.withUnsafeBytes { try codec.encodePlanes($0, base: baseBuffer, delta: .difference, width: 4, tryCompressing: [true, true, true, true]) }
        }
        locations[digest] = try sink.append(EncodedChunk(digest: digest, encoding: .differencePlanes, rawLength: bytes.count, payload: payload, base: base), kind: .chunk)
        return digest
    }

    /// A sealed pack of a keyframe and one delta against it.
    mutating func keyframeAndDelta() throws -> (key: ChunkDigest, keyBytes: [UInt8], delta: ChunkDigest, deltaBytes: [UInt8]) {
        let keyBytes = Self.floats(step: 0), deltaBytes = Self.floats(step: 1)
        let key = try full(keyBytes)
        let delta = try delta(deltaBytes, against: keyBytes, named: key)
        _ = try sink.seal()
        return (key, keyBytes, delta, deltaBytes)
    }

    func reader(without missing: Set<ChunkDigest> = []) -> ChunkReader {
        ChunkReader(index: ScannedFrames(locations: locations.filter { !missing.contains($0.key) }), packs: PackReaderCache(layout: layout))
    }

    /// Flips one byte of `digest`'s stored payload in its pack.
    func corrupt(_ digest: ChunkDigest) throws {
        let location = try #require(locations[digest])
        let path = layout.packPath(location.pack)
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[Int(location.offset) + PackFormat.frameHeaderSize + location.storedLength / 2] ^= 0x40
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }
}

@Suite struct ChunkReaderTests {
    @Test func decodesAChainOfDeltasDownToItsKeyframe() async throws {
        try await withTemporaryDirectory { root in
            var bench = try PackBench(root + "/store")
            let steps = (0...3).map { PackBench.floats(step: $0) }
            var previous = try bench.full(steps[0])
            for step in 1...3 { previous = try bench.delta(steps[step], against: steps[step - 1], named: previous) }
            _ = try bench.sink.seal()
            let reader = bench.reader()
            for (step, bytes) in steps.enumerated() {
                #expect(try reader.read(SHA256Hasher.digest(bytes), what: "step \(step)").array == bytes)
            }
        }
    }

    @Test func aCycleOfDeltasStopsAtTheHardLimit() async throws {
        try await withTemporaryDirectory { root in
            var bench = try PackBench(root + "/store")
            let a = PackBench.floats(step: 1), b = PackBench.floats(step: 2)
            // Each frame names the other as its base: no put writes this, a crafted pack can.
            let digestA = SHA256Hasher.digest(a), digestB = SHA256Hasher.digest(b)
            try bench.delta(a, against: b, named: digestB)
            try bench.delta(b, against: a, named: digestA)
            _ = try bench.sink.seal()
            let error = try #require(throws: CKStoreError.self) { try bench.reader().read(digestA, what: "the cycle") }
            #expect(error.code == .damaged)
            #expect(error.message.contains("longer than \(ChunkReader.hardChainLimit) frames"), "\(error.message)")
        }
    }

    @Test func aDamagedOrMissingBaseIsDamageNamingTheChunk() async throws {
        try await withTemporaryDirectory { root in
            var bench = try PackBench(root + "/store")
            let (key, _, delta, _) = try bench.keyframeAndDelta()

            let missing = try #require(throws: CKStoreError.self) { try bench.reader(without: [key]).read(delta, what: "tensor w") }
            #expect(missing.code == .damaged)
            #expect(missing.message.hasPrefix("tensor w: "), "\(missing.message)")
            #expect(missing.message.contains("delta against chunk \(key), which is not in the store"), "\(missing.message)")

            try bench.corrupt(key)
            // Checksums catch the damaged base's frame; without them, the delta's SHA-256 catches its output.
            let checked = try #require(throws: CKStoreError.self) { try bench.reader().read(delta, checks: .all, what: "tensor w") }
            #expect(checked.code == .damaged)
            let hashed = try #require(throws: CKStoreError.self) { try bench.reader().read(delta, checks: .digest, what: "tensor w") }
            #expect(hashed.code == .damaged)
            #expect(hashed.message.contains("different SHA-256") || hashed.message.contains("pack"), "\(hashed.message)")
        }
    }
}

@Suite struct FrameCopierTests {
    @Test func copiesFramesAsStoredIntoANewPack() async throws {
        try await withTemporaryDirectory { root in
            var bench = try PackBench(root + "/store")
            let (key, keyBytes, delta, deltaBytes) = try bench.keyframeAndDelta()
            let originals = bench.locations

            let copier = FrameCopier(packs: PackReaderCache(layout: bench.layout), sink: PackSink(layout: bench.layout))
            var copies = [ChunkDigest: ChunkLocation]()
            for digest in [key, delta] { copies[digest] = try copier.copy(try #require(originals[digest])) }
            let sealed = try copier.sink.seal()
            #expect(sealed.count == 1)
            for (digest, copy) in copies {
                let original = try #require(originals[digest])
                #expect(copy.pack == sealed[0].id && copy.pack != original.pack)
                // Stored as it was: same encoding and payload length, no re-encoding.
                #expect(copy.encoding == original.encoding && copy.storedLength == original.storedLength && copy.rawLength == original.rawLength)
            }
            // The copies decode on their own, the delta through its copied base.
            let reader = ChunkReader(index: ScannedFrames(locations: copies), packs: PackReaderCache(layout: bench.layout))
            #expect(try reader.read(delta, what: "copy").array == deltaBytes)
            #expect(try reader.read(key, what: "copy").array == keyBytes)
        }
    }

    @Test func aDamagedFrameIsNotCopied() async throws {
        try await withTemporaryDirectory { root in
            var bench = try PackBench(root + "/store")
            let key = try bench.full(PackBench.floats(step: 0))
            _ = try bench.sink.seal()
            try bench.corrupt(key)
            let copier = FrameCopier(packs: PackReaderCache(layout: bench.layout), sink: PackSink(layout: bench.layout))
            let error = try #require(throws: CKStoreError.self) { try copier.copy(try #require(bench.locations[key])) }
            #expect(error.code == .damaged)
            #expect(try copier.sink.seal().isEmpty)
        }
    }
}

@Suite struct PackDirectoryTests {
    @Test func listsPacksAndFindsOrphansByAge() async throws {
        try await withTemporaryDirectory { root in
            var bench = try PackBench(root + "/store")
            try bench.full(PackBench.floats(step: 0))
            let first = try bench.sink.seal()[0].id
            try bench.full(PackBench.floats(step: 1))
            let second = try bench.sink.seal()[0].id
            try Data("x".utf8).write(to: URL(fileURLWithPath: bench.layout.packsRoot + "/" + String(first.hex.prefix(2)) + "/not-an-id.pack"))
            let directory = PackDirectory(layout: bench.layout)
            #expect(Set(try directory.entries().compactMap(\.id)) == [first, second])
            #expect(try directory.entries().count == 3)
            // Nothing is old enough yet; with no grace, everything not known is an orphan.
            #expect(try directory.orphans(olderThan: 3600, known: [first]).isEmpty)
            let orphans = try directory.orphans(olderThan: -1, known: [first]).map(\.path)
            #expect(orphans.count == 2 && orphans.contains(bench.layout.packPath(second)))
        }
    }
}
