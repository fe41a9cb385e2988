/// XXH64 (Yann Collet's xxHash, 64-bit variant), used as the frame checksum in packs.
///
/// A frame's checksum covers its stored bytes so that `verify` can detect damage without decoding; the
/// SHA-256 of the decoded bytes stays the chunk's identity. libzstd carries XXH64 but does not export it
/// from the shared library, so the algorithm is written out here (it is short and fully specified).
enum XXH64 {
    private static let prime1: UInt64 = 0x9E37_79B1_85EB_CA87
    private static let prime2: UInt64 = 0xC2B2_AE3D_27D4_EB4F
    private static let prime3: UInt64 = 0x1656_67B1_9E37_79F9
    private static let prime4: UInt64 = 0x85EB_CA77_C2B2_AE63
    private static let prime5: UInt64 = 0x27D4_EB2F_1656_67C5

    @inline(__always)
    private static func round(_ accumulator: UInt64, _ input: UInt64) -> UInt64 {
        var acc = accumulator &+ input &* prime2
        acc = (acc << 31) | (acc >> 33)
        return acc &* prime1
    }

    @inline(__always)
    private static func merge(_ accumulator: UInt64, _ value: UInt64) -> UInt64 {
        let acc = accumulator ^ round(0, value)
        return acc &* prime1 &+ prime4
    }

    /// The XXH64 of `buffer` with `seed`.
    static func hash(_ buffer: UnsafeRawBufferPointer, seed: UInt64 = 0) -> UInt64 {
        let count = buffer.count
        var offset = 0
        var h: UInt64
        @inline(__always) func load64(_ at: Int) -> UInt64 { UInt64(littleEndian: buffer.loadUnaligned(fromByteOffset: at, as: UInt64.self)) }
        @inline(__always) func load32(_ at: Int) -> UInt64 { UInt64(UInt32(littleEndian: buffer.loadUnaligned(fromByteOffset: at, as: UInt32.self))) }

        if count >= 32 {
            var v1 = seed &+ prime1 &+ prime2
            var v2 = seed &+ prime2
            var v3 = seed
            var v4 = seed &- prime1
            let limit = count - 32
            while offset <= limit {
                v1 = round(v1, load64(offset))
                v2 = round(v2, load64(offset + 8))
                v3 = round(v3, load64(offset + 16))
                v4 = round(v4, load64(offset + 24))
                offset += 32
            }
            h = ((v1 << 1) | (v1 >> 63)) &+ ((v2 << 7) | (v2 >> 57)) &+ ((v3 << 12) | (v3 >> 52)) &+ ((v4 << 18) | (v4 >> 46))
            h = merge(h, v1)
            h = merge(h, v2)
            h = merge(h, v3)
            h = merge(h, v4)
        } else {
            h = seed &+ prime5
        }
        h = h &+ UInt64(count)

        while offset + 8 <= count {
            h ^= round(0, load64(offset))
            h = ((h << 27) | (h >> 37)) &* prime1 &+ prime4
            offset += 8
        }
        if offset + 4 <= count {
            h ^= load32(offset) &* prime1
            h = ((h << 23) | (h >> 41)) &* prime2 &+ prime3
            offset += 4
        }
        while offset < count {
            h ^= UInt64(buffer[offset]) &* prime5
            h = ((h << 11) | (h >> 53)) &* prime1
            offset += 1
        }
        h ^= h >> 33
        h = h &* prime2
        h ^= h >> 29
        h = h &* prime3
        h ^= h >> 32
        return h
    }

    static func hash(_ bytes: [UInt8], seed: UInt64 = 0) -> UInt64 {
        bytes.withUnsafeBytes { hash($0, seed: seed) }
    }
}
