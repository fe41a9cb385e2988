/// Byte grouping ("byte planes"): byte `b` of element `e` moves to plane `b`, position `e`, optionally
/// taken first as a delta against the element at the same position of a base chunk.
///
/// Floats of one tensor share their sign and exponent bits, so the plane of the most significant bytes
/// compresses well once it is no longer interleaved with mantissa bytes; after a delta against the same
/// tensor one step earlier, the upper planes are mostly zero. The loops load whole elements and shift, so
/// that the compiler vectorizes them (6–20 GB/s for 2- and 4-byte elements on one core here).
enum ByteGrouping {
    /// The element widths grouping supports.
    static let widths: Set<Int> = [2, 4, 8]

    /// How a delta combines an element with its base's.
    enum Delta: Sendable {
        /// The XOR of the two bit patterns (``FrameEncoding/deltaPlanes``).
        case xor
        /// The bit patterns' difference as unsigned integers, wrapping, zigzag-mapped so that a small
        /// change either way is a small number (``FrameEncoding/differencePlanes``). A float that moved a
        /// few units in its last place differs in a few low bits even when the move carries across a
        /// power of two, where the XOR sets every bit below the carry.
        case difference
    }

    /// Writes `elements` elements of `width` bytes from `input` (as a `delta` against `base` when given)
    /// into `width` consecutive planes of `elements` bytes at `planes`.
    static func group(_ input: UnsafeRawPointer, base: UnsafeRawPointer?, delta: Delta = .xor, width: Int, elements: Int, into planes: UnsafeMutablePointer<UInt8>) {
        switch width {
        case 2: group(UInt16.self, input, base: base, delta: delta, elements: elements, into: planes)
        case 4: group(UInt32.self, input, base: base, delta: delta, elements: elements, into: planes)
        case 8: group(UInt64.self, input, base: base, delta: delta, elements: elements, into: planes)
        default: preconditionFailure("byte grouping of \(width)-byte elements")
        }
    }

    /// The inverse of ``group(_:base:delta:width:elements:into:)``: interleaves `planes` (one pointer per
    /// byte of an element) into `output`, undoing the `delta` against `base` when given.
    static func ungroup(_ planes: [UnsafePointer<UInt8>], base: UnsafeRawPointer?, delta: Delta = .xor, elements: Int, into output: UnsafeMutableRawPointer) {
        switch planes.count {
        case 2: ungroup(UInt16.self, planes, base: base, delta: delta, elements: elements, into: output)
        case 4: ungroup(UInt32.self, planes, base: base, delta: delta, elements: elements, into: output)
        case 8: ungroup(UInt64.self, planes, base: base, delta: delta, elements: elements, into: output)
        default: preconditionFailure("byte grouping of \(planes.count)-byte elements")
        }
    }

    /// XORs `count` bytes of `input` and `base` into `output` (for the tail that is shorter than an element).
    static func xor(_ input: UnsafeRawPointer, _ base: UnsafeRawPointer?, count: Int, into output: UnsafeMutableRawPointer) {
        for index in 0..<count {
            let byte = input.load(fromByteOffset: index, as: UInt8.self) ^ (base?.load(fromByteOffset: index, as: UInt8.self) ?? 0)
            output.storeBytes(of: byte, toByteOffset: index, as: UInt8.self)
        }
    }

    /// `value - base` (wrapping) zigzag-mapped: 0, -1, 1, -2, … become 0, 1, 2, 3, ….
    @inline(__always)
    private static func zigzagDifference<Word: FixedWidthInteger & UnsignedInteger>(_ value: Word, _ base: Word) -> Word {
        let difference = value &- base
        return (difference &<< 1) ^ (0 &- (difference &>> (Word.bitWidth - 1)))
    }

    /// The inverse of ``zigzagDifference(_:_:)``: the value whose mapped difference from `base` is `mapped`.
    @inline(__always)
    private static func addZigzag<Word: FixedWidthInteger & UnsignedInteger>(_ mapped: Word, to base: Word) -> Word {
        base &+ ((mapped &>> 1) ^ (0 &- (mapped & 1)))
    }

    @inline(__always)
    private static func group<Word: FixedWidthInteger & UnsignedInteger>(_: Word.Type, _ input: UnsafeRawPointer, base: UnsafeRawPointer?, delta: Delta, elements: Int, into planes: UnsafeMutablePointer<UInt8>) {
        let width = MemoryLayout<Word>.size
        // One copy of the loop per case, so that none tests for a base or a delta kind per element.
        if let base, delta == .difference {
            for element in 0..<elements {
                let value = zigzagDifference(input.loadUnaligned(fromByteOffset: element &* width, as: Word.self), base.loadUnaligned(fromByteOffset: element &* width, as: Word.self))
                for plane in 0..<width { planes[plane &* elements &+ element] = UInt8(truncatingIfNeeded: value >> (8 &* plane)) }
            }
        } else if let base {
            for element in 0..<elements {
                let value = input.loadUnaligned(fromByteOffset: element &* width, as: Word.self) ^ base.loadUnaligned(fromByteOffset: element &* width, as: Word.self)
                for plane in 0..<width { planes[plane &* elements &+ element] = UInt8(truncatingIfNeeded: value >> (8 &* plane)) }
            }
        } else {
            for element in 0..<elements {
                let value = input.loadUnaligned(fromByteOffset: element &* width, as: Word.self)
                for plane in 0..<width { planes[plane &* elements &+ element] = UInt8(truncatingIfNeeded: value >> (8 &* plane)) }
            }
        }
    }

    // One loop per width with the plane pointers in locals, and separate loops with and without a base:
    // read through an array, every store to the output could alias the array, so the compiler reloads the
    // pointers per byte; with the base test inside, it does not vectorize either (that version was a
    // fifth of this speed and a fifth of a restore's cycles).
    @inline(__always)
    private static func ungroup<Word: FixedWidthInteger & UnsignedInteger>(_: Word.Type, _ planes: [UnsafePointer<UInt8>], base: UnsafeRawPointer?, delta: Delta, elements: Int, into output: UnsafeMutableRawPointer) {
        switch MemoryLayout<Word>.size {
        case 2:
            let (p0, p1) = (planes[0], planes[1])
            interleave(Word.self, elements: elements, base: base, delta: delta, into: output) { element in
                Word(truncatingIfNeeded: p0[element]) | Word(truncatingIfNeeded: p1[element]) << 8
            }
        case 4:
            let (p0, p1, p2, p3) = (planes[0], planes[1], planes[2], planes[3])
            interleave(Word.self, elements: elements, base: base, delta: delta, into: output) { element in
                Word(truncatingIfNeeded: p0[element]) | Word(truncatingIfNeeded: p1[element]) << 8
                    | Word(truncatingIfNeeded: p2[element]) << 16 | Word(truncatingIfNeeded: p3[element]) << 24
            }
        default:
            let (p0, p1, p2, p3) = (planes[0], planes[1], planes[2], planes[3])
            let (p4, p5, p6, p7) = (planes[4], planes[5], planes[6], planes[7])
            interleave(Word.self, elements: elements, base: base, delta: delta, into: output) { element in
                Word(truncatingIfNeeded: p0[element]) | Word(truncatingIfNeeded: p1[element]) << 8
                    | Word(truncatingIfNeeded: p2[element]) << 16 | Word(truncatingIfNeeded: p3[element]) << 24
                    | Word(truncatingIfNeeded: p4[element]) << 32 | Word(truncatingIfNeeded: p5[element]) << 40
                    | Word(truncatingIfNeeded: p6[element]) << 48 | Word(truncatingIfNeeded: p7[element]) << 56
            }
        }
    }

    @inline(__always)
    private static func interleave<Word: FixedWidthInteger & UnsignedInteger>(_: Word.Type, elements: Int, base: UnsafeRawPointer?, delta: Delta, into output: UnsafeMutableRawPointer, _ value: (Int) -> Word) {
        let width = MemoryLayout<Word>.size
        if let base, delta == .difference {
            for element in 0..<elements {
                output.storeBytes(of: addZigzag(value(element), to: base.loadUnaligned(fromByteOffset: element &* width, as: Word.self)), toByteOffset: element &* width, as: Word.self)
            }
        } else if let base {
            for element in 0..<elements {
                output.storeBytes(of: value(element) ^ base.loadUnaligned(fromByteOffset: element &* width, as: Word.self), toByteOffset: element &* width, as: Word.self)
            }
        } else {
            for element in 0..<elements {
                output.storeBytes(of: value(element), toByteOffset: element &* width, as: Word.self)
            }
        }
    }
}
