/// Content-defined chunking with a gear rolling hash and normalized chunk sizes (FastCDC, Xia et al. 2016).
///
/// Boundaries depend only on nearby content, so an insertion early in an opaque file moves only the
/// chunks around it. Normalized chunking uses a stricter mask before the average size and a looser one
/// after it, which narrows the size distribution around the average.
struct FastCDC: Sendable {
    var minimumSize: Int
    var averageSize: Int
    var maximumSize: Int
    private let strictMask: UInt64
    private let looseMask: UInt64

    /// The sizes ckstore uses for opaque data.
    static let standard = FastCDC(minimumSize: 64 << 10, averageSize: 256 << 10, maximumSize: 1 << 20)

    init(minimumSize: Int, averageSize: Int, maximumSize: Int) {
        precondition(minimumSize > 0 && minimumSize <= averageSize && averageSize <= maximumSize)
        self.minimumSize = minimumSize
        self.averageSize = averageSize
        self.maximumSize = maximumSize
        let bits = averageSize.trailingZeroBitCount
        strictMask = Self.mask(bits: bits + 2)
        looseMask = Self.mask(bits: max(1, bits - 2))
    }

    /// A mask with `bits` one-bits spread over the high half of the word, where the gear hash mixes best.
    private static func mask(bits: Int) -> UInt64 {
        var mask: UInt64 = 0
        var position = 63
        for _ in 0..<bits {
            mask |= 1 << UInt64(position)
            position -= 2
            if position < 0 { position = 62 }
        }
        return mask
    }

    /// The gear table: 256 pseudo-random words from a fixed seed (splitmix64), so boundaries are stable
    /// across versions and machines. Changing it would change every opaque chunk: don't.
    static let gear: [UInt64] = {
        var state: UInt64 = 0x636b_7374_6f72_6521
        return (0..<256).map { _ in
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }()

    /// The length of the chunk that starts at the beginning of `buffer`.
    ///
    /// - Parameter isEnd: whether `buffer` reaches the end of the data; if not, it must hold at least
    ///   ``maximumSize`` bytes so that the boundary is the same as with all the data at hand.
    func cut(_ buffer: UnsafeRawBufferPointer, isEnd: Bool) -> Int {
        let count = buffer.count
        precondition(isEnd || count >= maximumSize, "FastCDC.cut needs maximumSize bytes unless at the end")
        if count <= minimumSize { return count }
        let limit = min(count, maximumSize)
        let normal = min(averageSize, limit)
        var hash: UInt64 = 0
        var index = minimumSize
        return Self.gear.withUnsafeBufferPointer { gear in
            while index < normal {
                hash = (hash << 1) &+ gear[Int(buffer[index])]
                if hash & strictMask == 0 { return index + 1 }
                index += 1
            }
            while index < limit {
                hash = (hash << 1) &+ gear[Int(buffer[index])]
                if hash & looseMask == 0 { return index + 1 }
                index += 1
            }
            return limit
        }
    }

    /// Cuts the byte range `range` of `file` into chunk lengths, reading it in large blocks.
    func boundaries(of file: SharedFile, range: Range<Int64>) throws -> [Int] {
        var lengths = [Int]()
        let blockSize = max(8 << 20, maximumSize * 2)
        var buffer = [UInt8]()
        var start = 0                       // where the next chunk begins inside `buffer`
        var readPosition = range.lowerBound
        while true {
            // Keep at least maximumSize bytes ahead of `start` unless the range ends sooner.
            if buffer.count - start < maximumSize && readPosition < range.upperBound {
                buffer.removeFirst(start)
                start = 0
                let count = Int(min(Int64(blockSize), range.upperBound - readPosition))
                buffer += try file.read(count: count, at: readPosition)
                readPosition += Int64(count)
            }
            if start == buffer.count { break }
            let isEnd = readPosition == range.upperBound
            let length = buffer.withUnsafeBytes { cut(UnsafeRawBufferPointer(rebasing: $0[start...]), isEnd: isEnd) }
            lengths.append(length)
            start += length
        }
        return lengths
    }
}
