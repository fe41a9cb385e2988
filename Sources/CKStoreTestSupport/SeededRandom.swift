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

    /// Approximately normal values (the sum of four uniforms, centred), cheap enough for gigabytes.
    public mutating func normal() -> Float {
        var sum: UInt64 = 0
        let word = next()
        for shift in stride(from: 0, to: 64, by: 16) { sum += (word >> UInt64(shift)) & 0xffff }
        return (Float(sum) / 65535 - 2) * 1.732
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
