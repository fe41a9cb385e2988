/// Byte grouping ("byte planes"): byte `b` of element `e` moves to plane `b`, position `e`, optionally
/// XORed first with the element at the same position of a base chunk.
///
/// Floats of one tensor share their sign and exponent bits, so the plane of the most significant bytes
/// compresses well once it is no longer interleaved with mantissa bytes; after an XOR against the same
/// tensor one step earlier, the upper planes are mostly zero. The loops load whole elements and shift, so
/// that the compiler vectorizes them (6–20 GB/s for 2- and 4-byte elements on one core here).
enum ByteGrouping {
    /// The element widths grouping supports.
    static let widths: Set<Int> = [2, 4, 8]

    /// Writes `elements` elements of `width` bytes from `input` (XORed with `base` when given) into
    /// `width` consecutive planes of `elements` bytes at `planes`.
    static func group(_ input: UnsafeRawPointer, base: UnsafeRawPointer?, width: Int, elements: Int, into planes: UnsafeMutablePointer<UInt8>) {
        switch width {
        case 2: group(UInt16.self, input, base: base, elements: elements, into: planes)
        case 4: group(UInt32.self, input, base: base, elements: elements, into: planes)
        case 8: group(UInt64.self, input, base: base, elements: elements, into: planes)
        default: preconditionFailure("byte grouping of \(width)-byte elements")
        }
    }

    /// The inverse of ``group(_:base:width:elements:into:)``: interleaves `planes` (one pointer per byte
    /// of an element) into `output`, XORing with `base` when given.
    static func ungroup(_ planes: [UnsafePointer<UInt8>], base: UnsafeRawPointer?, elements: Int, into output: UnsafeMutableRawPointer) {
        switch planes.count {
        case 2: ungroup(UInt16.self, planes, base: base, elements: elements, into: output)
        case 4: ungroup(UInt32.self, planes, base: base, elements: elements, into: output)
        case 8: ungroup(UInt64.self, planes, base: base, elements: elements, into: output)
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

    @inline(__always)
    private static func group<Word: FixedWidthInteger & UnsignedInteger>(_: Word.Type, _ input: UnsafeRawPointer, base: UnsafeRawPointer?, elements: Int, into planes: UnsafeMutablePointer<UInt8>) {
        let width = MemoryLayout<Word>.size
        // Two copies of the loop, so that neither tests for a base per element.
        if let base {
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

    @inline(__always)
    private static func ungroup<Word: FixedWidthInteger & UnsignedInteger>(_: Word.Type, _ planes: [UnsafePointer<UInt8>], base: UnsafeRawPointer?, elements: Int, into output: UnsafeMutableRawPointer) {
        let width = MemoryLayout<Word>.size
        planes.withUnsafeBufferPointer { planes in
            if let base {
                for element in 0..<elements {
                    var value: Word = 0
                    for plane in 0..<width { value |= Word(truncatingIfNeeded: planes[plane][element]) << (8 &* plane) }
                    value ^= base.loadUnaligned(fromByteOffset: element &* width, as: Word.self)
                    output.storeBytes(of: value, toByteOffset: element &* width, as: Word.self)
                }
            } else {
                for element in 0..<elements {
                    var value: Word = 0
                    for plane in 0..<width { value |= Word(truncatingIfNeeded: planes[plane][element]) << (8 &* plane) }
                    output.storeBytes(of: value, toByteOffset: element &* width, as: Word.self)
                }
            }
        }
    }
}
