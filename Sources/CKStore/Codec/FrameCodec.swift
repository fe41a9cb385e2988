/// How a frame's payload encodes its chunk.
///
/// The raw values are written into pack files: never renumber them, only add.
public enum FrameEncoding: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// The chunk's bytes as they are.
    case raw = 0
    /// One zstd frame of the chunk's bytes.
    case zstd = 1
    /// The bytes of 2-, 4- or 8-byte elements grouped into planes (every element's first byte, then every
    /// second byte, …; a tail shorter than an element stays last), then one zstd frame. The planes that
    /// hold signs and exponents of floats compress well; mixed with mantissas they hardly do.
    case grouped2 = 2
    case grouped4 = 3
    case grouped8 = 4

    public var description: String {
        switch self {
        case .raw: "raw"
        case .zstd: "zstd"
        case .grouped2, .grouped4, .grouped8: "grouped\(elementWidth)+zstd"
        }
    }

    /// The element width the bytes are grouped by; 1 for encodings that do not group.
    var elementWidth: Int {
        switch self {
        case .grouped2: 2
        case .grouped4: 4
        case .grouped8: 8
        case .raw, .zstd: 1
        }
    }

    /// The grouped encoding for elements of `width` bytes, if there is one.
    static func grouped(width: Int) -> FrameEncoding? {
        switch width {
        case 2: .grouped2
        case 4: .grouped4
        case 8: .grouped8
        default: nil
        }
    }
}

/// Byte grouping: element `e`'s byte `b` moves to plane `b`, position `e`.
enum ByteGrouping {
    static func group(_ input: UnsafeRawBufferPointer, width: Int, into output: UnsafeMutableRawBufferPointer) {
        let elements = input.count / width
        let source = input.bindMemory(to: UInt8.self), target = output.bindMemory(to: UInt8.self)
        for plane in 0..<width {
            let base = plane * elements
            for element in 0..<elements { target[base + element] = source[element * width + plane] }
        }
        for index in (elements * width)..<input.count { target[index] = source[index] }
    }

    static func ungroup(_ input: UnsafeRawBufferPointer, width: Int, into output: UnsafeMutableRawBufferPointer) {
        let elements = input.count / width
        let source = input.bindMemory(to: UInt8.self), target = output.bindMemory(to: UInt8.self)
        for plane in 0..<width {
            let base = plane * elements
            for element in 0..<elements { target[element * width + plane] = source[base + element] }
        }
        for index in (elements * width)..<input.count { target[index] = source[index] }
    }
}

/// An encoded chunk, ready to append to a pack.
struct EncodedChunk: Sendable {
    var digest: ChunkDigest
    var encoding: FrameEncoding
    var rawLength: Int
    var payload: [UInt8]
}

/// Chooses and applies a frame encoding, and decodes frames back.
struct FrameCodec: Sendable {
    var level: CompressionLevel
    let contexts: ZstdContextPool

    /// A chunk is stored raw unless zstd saves at least this share of it: decoding raw costs nothing, and
    /// a compressor that saves 1% is not worth its decode time on restore.
    static let minimumSaving = 0.02

    init(level: CompressionLevel, contexts: ZstdContextPool = ZstdContextPool()) {
        self.level = level
        self.contexts = contexts
    }

    /// Encodes `bytes`, whose digest is `digest`. Tensor bytes whose elements are 2, 4 or 8 bytes wide
    /// (`elementWidth`) are grouped into byte planes before zstd; other bytes go to zstd as they are. Either
    /// way the chunk is stored raw unless compression saves ``minimumSaving``.
    func encode(_ bytes: [UInt8], digest: ChunkDigest, elementWidth: Int = 1) throws -> EncodedChunk {
        let level = self.level
        let grouped = FrameEncoding.grouped(width: elementWidth).flatMap { bytes.count >= 2 * elementWidth ? $0 : nil }
        let compressed = try contexts.withCompressor { (compressor) throws in
            try bytes.withUnsafeBytes { (raw) throws in
                guard let grouped else { return try compressor.compress(raw, level: level) }
                let planes = [UInt8](unsafeUninitializedCapacity: raw.count) { out, count in
                    ByteGrouping.group(raw, width: grouped.elementWidth, into: UnsafeMutableRawBufferPointer(out))
                    count = raw.count
                }
                return try planes.withUnsafeBytes { try compressor.compress($0, level: level) }
            }
        }
        if Double(compressed.count) <= Double(bytes.count) * (1 - Self.minimumSaving) {
            return EncodedChunk(digest: digest, encoding: grouped ?? .zstd, rawLength: bytes.count, payload: compressed)
        }
        return EncodedChunk(digest: digest, encoding: .raw, rawLength: bytes.count, payload: bytes)
    }

    /// Decodes a frame payload into its `rawLength` bytes. The caller checks the digest.
    func decode(_ payload: ChunkBytes, encoding: FrameEncoding, rawLength: Int) throws -> ChunkBytes {
        switch encoding {
        case .raw:
            guard payload.count == rawLength else {
                throw CKStoreError(.damaged, "raw frame holds \(payload.count) bytes where \(rawLength) were expected")
            }
            return payload
        case .zstd:
            // Uninitialized: decompress fills exactly rawLength bytes or throws.
            return ChunkBytes(try [UInt8](unsafeUninitializedCapacity: rawLength) { out, initialized in
                try contexts.withDecompressor { decompressor in
                    try payload.withUnsafeBytes { input in
                        try decompressor.decompress(input, into: UnsafeMutableRawBufferPointer(out))
                    }
                }
                initialized = rawLength
            })
        case .grouped2, .grouped4, .grouped8:
            let planes = try [UInt8](unsafeUninitializedCapacity: rawLength) { out, initialized in
                try contexts.withDecompressor { decompressor in
                    try payload.withUnsafeBytes { input in
                        try decompressor.decompress(input, into: UnsafeMutableRawBufferPointer(out))
                    }
                }
                initialized = rawLength
            }
            return ChunkBytes([UInt8](unsafeUninitializedCapacity: rawLength) { out, initialized in
                planes.withUnsafeBytes { ByteGrouping.ungroup($0, width: encoding.elementWidth, into: UnsafeMutableRawBufferPointer(out)) }
                initialized = rawLength
            })
        }
    }
}
