/// A small deterministic generator (splitmix64) so fixtures are the same on every run and machine.
public struct SeededRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Bell-shaped values with unit standard deviation (the sum of two uniforms, a triangular
    /// distribution), with full-entropy mantissas like real trained weights; cheap enough for gigabytes.
    public mutating func normal() -> Float {
        let word = next()
        let a = Float(UInt32(truncatingIfNeeded: word)) * (1 / 4_294_967_296)
        let b = Float(UInt32(truncatingIfNeeded: word >> 32)) * (1 / 4_294_967_296)
        return (a + b - 1) * 2.449
    }

    /// `count` float32 values with standard deviation `scale`, as little-endian bytes.
    public mutating func floatBytes(count: Int, scale: Float = 0.02) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count * 4)
        out.withUnsafeMutableBytes { buffer in
            for index in 0..<count {
                buffer.storeBytes(of: (normal() * scale).bitPattern.littleEndian, toByteOffset: index * 4, as: UInt32.self)
            }
        }
        return out
    }

    public mutating func bytes(count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var index = 0
        while index < count {
            var word = next()
            for _ in 0..<8 where index < count {
                out[index] = UInt8(truncatingIfNeeded: word)
                word >>= 8
                index += 1
            }
        }
        return out
    }
}
