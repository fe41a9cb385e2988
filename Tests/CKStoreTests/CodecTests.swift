@testable import CKStore
import CKStoreTestSupport
import Foundation
import Testing

@Suite struct CodecTests {
    /// Trained-weight-like floats: shared exponents, random mantissas.
    static func floats(_ count: Int, seed: UInt64) -> [UInt8] {
        var random = SeededRandom(seed: seed)
        return random.floatBytes(count: count)
    }

    @Test(arguments: [2, 4, 8])
    func bytePlanesRoundTripAtEveryLength(_ width: Int) throws {
        let codec = FrameCodec(level: .default)
        for length in [2 * width, 2 * width + 1, 1000, 4096 + width - 1, 1 << 20] {
            let bytes = Array(Self.floats(length / 4 + 1, seed: UInt64(length)).prefix(length))
            // Full frames, and deltas against a base that differs in a few places.
            var base = bytes
            for index in stride(from: 0, to: base.count, by: 37) { base[index] ^= 0x5a }
            // Full frames, XOR deltas (written by earlier versions) and difference deltas.
            let kinds: [(base: [UInt8]?, delta: ByteGrouping.Delta, encoding: FrameEncoding)] = [(nil, .xor, .planes), (base, .xor, .deltaPlanes), (base, .difference, .differencePlanes)]
            for (reference, delta, encoding) in kinds {
                for tryCompressing in [Array(repeating: true, count: width), Array(repeating: false, count: width), (0..<width).map { $0 % 2 == 0 }] {
                    let (payload, outcome) = try bytes.withUnsafeBytes { input in
                        try (reference ?? []).withUnsafeBytes { base in
                            try codec.encodePlanes(input, base: reference == nil ? nil : base, delta: delta, width: width, tryCompressing: tryCompressing)
                        }
                    }
                    #expect(outcome.compressed.count == width)
                    for plane in 0..<width where !tryCompressing[plane] { #expect(outcome.compressed[plane] == nil) }
                    let decoded = try codec.decode(ChunkBytes(payload), encoding: encoding, rawLength: bytes.count) {
                        ChunkBytes(try #require(reference))
                    }
                    #expect(decoded.array == bytes, "width \(width), length \(length), \(encoding), planes \(tryCompressing)")
                }
            }
        }
    }

    /// Planes are compressed straight into the payload, in room for no more than a result worth keeping:
    /// every plane is kept compressed exactly when zstd's own output (with room for anything) saves the
    /// plane's margin, with that output's length, including planes whose saving is right at the margin.
    @Test func planesCompressedInPlaceKeepExactlyWhatZstdSavesEnoughOn() throws {
        let codec = FrameCodec(level: .default)
        let elements = 1 << 15
        let compressor = try ZstdCompressor()
        var decisions = Set<Bool>()
        // A plane's bytes are 0 with probability zeros/1000 and random otherwise: zstd saves about 4% of
        // such a plane, the margin, at 100 to 110 in 1000.
        for (chunk, zeros) in [[0, 95, 100, 105], [110, 115, 98, 1000], [102, 107, 112, 0]].enumerated() {
            var random = SeededRandom(seed: UInt64(100 + chunk))
            var bytes = [UInt8](repeating: 0, count: elements * 4)
            for element in 0..<elements {
                for plane in 0..<4 where random.next() % 1000 >= UInt64(zeros[plane]) {
                    bytes[element * 4 + plane] = UInt8(truncatingIfNeeded: random.next())
                }
            }
            let (payload, outcome) = try bytes.withUnsafeBytes { try codec.encodePlanes($0, base: nil, width: 4, tryCompressing: [true, true, true, true]) }
            for plane in 0..<4 {
                let planeBytes = (0..<elements).map { bytes[$0 * 4 + plane] }
                let reference = try planeBytes.withUnsafeBytes { try compressor.compress($0, level: .default, minimumMatch: FrameCodec.planeMinimumMatch) }
                let kept = Double(reference.count) <= Double(elements) * (1 - FrameCodec.minimumPlaneSaving)
                decisions.insert(kept)
                #expect(outcome.compressed[plane] == kept, "chunk \(chunk) plane \(plane): zstd gave \(reference.count) of \(elements)")
                #expect(payload[1 + 5 * plane] == (kept ? 1 : 0))
                let length = payload[(2 + 5 * plane)..<(6 + 5 * plane)].reversed().reduce(0) { $0 << 8 | Int($1) }
                #expect(length == (kept ? reference.count : elements))
            }
            let decoded = try codec.decode(ChunkBytes(payload), encoding: .planes, rawLength: bytes.count)
            #expect(decoded.array == bytes)
        }
        #expect(decisions == [true, false], "the planes fall on both sides of the margin")
    }

    @Test func planesShrinkFloatsThatZstdAloneBarelyCompresses() throws {
        let codec = FrameCodec(level: .default)
        let floats = Self.floats(1 << 18, seed: 3)
        let plain = try codec.encode(floats, digest: SHA256Hasher.digest(floats))
        let (planes, outcome) = try floats.withUnsafeBytes { try codec.encodePlanes($0, base: nil, width: 4, tryCompressing: [true, true, true, true]) }
        #expect(planes.count < plain.payload.count, "planes \(planes.count) vs zstd \(plain.payload.count) of \(floats.count)")
        // The sign/exponent plane compresses; the lowest mantissa plane is random and stays raw.
        #expect(outcome.compressed[3] == true && outcome.compressed[0] == false)
    }

    @Test func aDeltaAgainstASlightlyChangedTensorIsSmallerThanPlanes() throws {
        let codec = FrameCodec(level: .default)
        let old = Self.floats(1 << 18, seed: 4)
        var new = old
        new.withUnsafeMutableBytes { buffer in
            for index in 0..<(buffer.count / 4) {
                let value = Float(bitPattern: buffer.load(fromByteOffset: index * 4, as: UInt32.self))
                buffer.storeBytes(of: (value * 1.0001 + 1e-6).bitPattern, toByteOffset: index * 4, as: UInt32.self)
            }
        }
        let all = [true, true, true, true]
        let full = try new.withUnsafeBytes { try codec.encodePlanes($0, base: nil, width: 4, tryCompressing: all) }
        let delta = try new.withUnsafeBytes { input in try old.withUnsafeBytes { try codec.encodePlanes(input, base: $0, width: 4, tryCompressing: all) } }
        #expect(Double(delta.payload.count) < 0.8 * Double(full.payload.count), "delta \(delta.payload.count), planes \(full.payload.count)")
    }

    /// Values that move by a few units in the last place across a carry (0x…7fff → 0x…8000), between the
    /// largest and smallest bit patterns (wrapping) and across the sign: the difference round-trips all of
    /// them and, where carries are common, stores less than the XOR.
    @Test func differenceDeltasWrapAndBeatXORAcrossCarries() throws {
        let codec = FrameCodec(level: .default)
        var random = SeededRandom(seed: 9)
        var old = [UInt32](), new = [UInt32]()
        for index in 0..<(1 << 18) {
            let value = UInt32(truncatingIfNeeded: random.next())
            old.append(value)
            switch index % 4 {
            case 0: new.append(value &+ UInt32(random.next() % 5))
            case 1: new.append(value &- UInt32(random.next() % 5))
            case 2: new.append(index % 8 == 2 ? UInt32.max &- UInt32(index % 3) : 0x8000_0000 | (value & 0xffff))
            default: new.append(value)
            }
        }
        let oldBytes = old.withUnsafeBytes { [UInt8]($0) }, newBytes = new.withUnsafeBytes { [UInt8]($0) }
        let all = [true, true, true, true]
        var sizes = [FrameEncoding: Int]()
        for (delta, encoding) in [(ByteGrouping.Delta.xor, FrameEncoding.deltaPlanes), (.difference, .differencePlanes)] {
            let (payload, _) = try newBytes.withUnsafeBytes { input in try oldBytes.withUnsafeBytes { try codec.encodePlanes(input, base: $0, delta: delta, width: 4, tryCompressing: all) } }
            sizes[encoding] = payload.count
            let decoded = try codec.decode(ChunkBytes(payload), encoding: encoding, rawLength: newBytes.count) { ChunkBytes(oldBytes) }
            #expect(decoded.array == newBytes, "\(encoding)")
        }
        let difference = try #require(sizes[.differencePlanes]), xor = try #require(sizes[.deltaPlanes])
        #expect(difference < xor, "difference \(difference), xor \(xor)")
    }

    @Test func damagedPlanePayloadsAreErrorsNotCrashes() throws {
        let codec = FrameCodec(level: .default)
        let floats = Self.floats(4096, seed: 5)
        let (payload, _) = try floats.withUnsafeBytes { try codec.encodePlanes($0, base: nil, width: 4, tryCompressing: [false, false, true, true]) }
        var cases: [(String, [UInt8])] = [("empty", []), ("cut header", Array(payload.prefix(7))), ("cut body", Array(payload.dropLast(3))), ("extra byte", payload + [0])]
        var badWidth = payload
        badWidth[0] = 3
        cases.append(("width 3", badWidth))
        var badMode = payload
        badMode[1] = 9
        cases.append(("mode 9", badMode))
        var longPlane = payload
        longPlane[2] = 0xff
        cases.append(("plane length", longPlane))
        for (name, bytes) in cases {
            #expect(throws: CKStoreError.self, "\(name)") { _ = try codec.decode(ChunkBytes(bytes), encoding: .planes, rawLength: floats.count) }
        }
        // A delta frame whose base has another length.
        #expect(throws: CKStoreError.self) {
            _ = try codec.decode(ChunkBytes(payload), encoding: .deltaPlanes, rawLength: floats.count) { ChunkBytes([1, 2, 3]) }
        }
    }
}
