/// How a frame's payload encodes its chunk.
///
/// The raw values are written into pack files: never renumber them, only add.
public enum FrameEncoding: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// The chunk's bytes as they are.
    case raw = 0
    /// One zstd frame of the chunk's bytes.
    case zstd = 1

    public var description: String {
        switch self {
        case .raw: "raw"
        case .zstd: "zstd"
        }
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

    /// Encodes `bytes`, whose digest is `digest`, with the smallest encoding.
    func encode(_ bytes: [UInt8], digest: ChunkDigest) throws -> EncodedChunk {
        let level = self.level
        let compressed = try contexts.withCompressor { (compressor) throws in
            try bytes.withUnsafeBytes { (raw) throws in try compressor.compress(raw, level: level) }
        }
        if Double(compressed.count) <= Double(bytes.count) * (1 - Self.minimumSaving) {
            return EncodedChunk(digest: digest, encoding: .zstd, rawLength: bytes.count, payload: compressed)
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
        }
    }
}
