@testable import CKStore
import CKStoreTestSupport
import Foundation
import Testing

@Suite struct CodecTests {
    @Test(arguments: [2, 4, 8])
    func groupedFramesRoundTripAtEveryLength(_ width: Int) throws {
        let codec = FrameCodec(level: .default)
        var random = SeededRandom(seed: UInt64(width))
        for length in [2 * width, 2 * width + 1, 1000, 4096 + width - 1, 1 << 20] {
            // Trained-weight-like floats (shared exponents), so grouping pays and the frame is not raw.
            let bytes = random.floatBytes(count: length / 4 + 1).prefix(length).map { $0 }
            let digest = SHA256Hasher.digest(bytes)
            let encoded = try codec.encode(bytes, digest: digest, elementWidth: width)
            let decoded = try codec.decode(ChunkBytes(encoded.payload), encoding: encoded.encoding, rawLength: bytes.count)
            #expect(decoded.array == bytes, "width \(width), length \(length), \(encoded.encoding)")
        }
        // Grouping is what an element width asks for, when it saves anything.
        let floats = random.floatBytes(count: 1 << 18)
        let encoded = try codec.encode(floats, digest: SHA256Hasher.digest(floats), elementWidth: 4)
        #expect(encoded.encoding == .grouped4)
        // A chunk shorter than two elements, or width 1, is plain zstd or raw.
        #expect(try codec.encode([1, 2, 3], digest: SHA256Hasher.digest([1, 2, 3]), elementWidth: 8).encoding == .raw)
        #expect(try codec.encode([UInt8](repeating: 7, count: 4096), digest: SHA256Hasher.digest([UInt8](repeating: 7, count: 4096)), elementWidth: 1).encoding == .zstd)
    }

    @Test func groupingHelpsFloatsThatZstdAloneBarelyCompresses() throws {
        let codec = FrameCodec(level: .default)
        var random = SeededRandom(seed: 3)
        let floats = random.floatBytes(count: 1 << 18)
        let digest = SHA256Hasher.digest(floats)
        let plain = try codec.encode(floats, digest: digest, elementWidth: 1)
        let grouped = try codec.encode(floats, digest: digest, elementWidth: 4)
        #expect(grouped.payload.count < plain.payload.count, "grouped \(grouped.payload.count) vs zstd \(plain.payload.count) of \(floats.count)")
    }
}
