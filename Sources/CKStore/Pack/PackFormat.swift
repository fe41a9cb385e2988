/// The on-disk layout of pack files. Every number is little-endian.
///
/// ```
/// header   16 bytes   "CKPACK\0\u{1}" · format version (u32) · reserved (u32)
/// frame    96 bytes   "CKFR" · kind (u8) · encoding (u8) · flags (u16) · raw length (u64) · stored length (u64)
///                     · digest (32) · base digest (32, zero when none) · checksum (u64)
///          payload    stored-length bytes
/// …
/// trailer  per frame: offset of its header (u64) + a copy of its 96-byte header
/// footer   40 bytes   trailer offset (u64) · frame count (u64) · XXH64 of the trailer (u64) · reserved (u64) · "CKPKEND1"
/// ```
/// The frame checksum is XXH64 of the payload, seeded with XXH64 of the header's first 88 bytes, so a flipped
/// bit anywhere in a frame is found without decoding it. A pack is self-describing: the catalogue can be
/// rebuilt from the trailers (or, for a pack whose trailer is damaged, by walking the frames).
enum PackFormat {
    /// The size of a pack holding `frames` frames of `frameBytes` (headers included).
    static func packSize(frames: Int, frameBytes: Int64) -> Int64 {
        Int64(headerSize + footerSize + frames * trailerEntrySize) + frameBytes
    }

    static let headerMagic: [UInt8] = Array("CKPACK".utf8) + [0, 1]
    static let footerMagic: [UInt8] = Array("CKPKEND1".utf8)
    static let frameMagic: [UInt8] = Array("CKFR".utf8)
    static let formatVersion: UInt32 = 1
    static let headerSize = 16
    static let frameHeaderSize = 96
    static let trailerEntrySize = 8 + frameHeaderSize
    static let footerSize = 40
    /// A pack is sealed once it holds this many bytes; large enough to keep file counts low, small enough
    /// that rewriting a mostly-dead pack during gc is cheap.
    static let targetSize: Int64 = 256 << 20

    /// The trailer (every frame's offset and header) and the footer that end a pack whose frames end at
    /// `trailerOffset`.
    static func trailerAndFooter(_ frames: [PackWriter.WrittenFrame], trailerOffset: Int64) -> [UInt8] {
        var trailer = [UInt8]()
        trailer.reserveCapacity(frames.count * trailerEntrySize + footerSize)
        for frame in frames {
            trailer.appendLittleEndian(UInt64(frame.offset))
            trailer += frame.header.serialized()
        }
        var footer = [UInt8]()
        footer.appendLittleEndian(UInt64(trailerOffset))
        footer.appendLittleEndian(UInt64(frames.count))
        footer.appendLittleEndian(XXH64.hash(trailer))
        footer.appendLittleEndian(UInt64(0))
        footer += footerMagic
        return trailer + footer
    }

    static func fileHeader() -> [UInt8] {
        var out = headerMagic
        out.appendLittleEndian(formatVersion)
        out.appendLittleEndian(UInt32(0))
        return out
    }
}

/// What a frame holds: a chunk of file content, a checkpoint manifest, or an annotation (a later change
/// to the store's state, see ``Annotation``).
enum FrameKind: UInt8, Sendable {
    case chunk = 0
    case manifest = 1
    case annotation = 2
}

/// The fixed-size header in front of every frame.
struct FrameHeader: Sendable, Equatable {
    var kind: FrameKind
    var encoding: FrameEncoding
    var rawLength: Int
    var storedLength: Int
    var digest: ChunkDigest
    var base: ChunkDigest?
    var checksum: UInt64
    /// The chunks besides the base that decoding reads (``FrameEncoding/hasInputs``). Not part of the 96
    /// header bytes: they open the payload, and the pack parser reads them from there
    /// (``attachInputs(payload:pack:offset:)``), so every header a parser returns has them.
    var inputs: [ChunkDigest] = []

    /// Builds the header for a payload and computes its checksum.
    init(kind: FrameKind, chunk: EncodedChunk) {
        self.kind = kind
        self.encoding = chunk.encoding
        self.rawLength = chunk.rawLength
        self.storedLength = chunk.payload.count
        self.digest = chunk.digest
        self.base = chunk.base
        self.inputs = chunk.inputs
        self.checksum = 0
        self.checksum = chunk.payload.withUnsafeBytes { Self.checksum(prefix: serializedPrefix(), payload: $0) }
    }

    /// Reads the inputs a frame of this header's encoding names at the start of its payload.
    mutating func attachInputs(payload: UnsafeRawBufferPointer, pack: String, offset: Int64) throws {
        guard encoding.hasInputs else { return }
        do {
            inputs = try WeightPrediction(parsing: payload).inputs
        } catch let error as CKStoreError {
            throw CKStoreError(.damaged, "pack \(pack): frame at offset \(offset): \(error.message)")
        }
    }

    static func checksum(prefix: [UInt8], payload: UnsafeRawBufferPointer) -> UInt64 {
        let seed = prefix.withUnsafeBytes { XXH64.hash($0) }
        return XXH64.hash(payload, seed: seed)
    }

    /// The 88 bytes the checksum's seed covers.
    func serializedPrefix() -> [UInt8] {
        var out = PackFormat.frameMagic
        out.reserveCapacity(PackFormat.frameHeaderSize)
        out.append(kind.rawValue)
        out.append(encoding.rawValue)
        out.appendLittleEndian(UInt16(base == nil ? 0 : 1))
        out.appendLittleEndian(UInt64(rawLength))
        out.appendLittleEndian(UInt64(storedLength))
        out += digest.bytes
        out += (base ?? .zero).bytes
        return out
    }

    func serialized() -> [UInt8] {
        var out = serializedPrefix()
        out.appendLittleEndian(checksum)
        return out
    }

    /// Parses a header; nil-free: every malformed field is an error that names the pack and offset.
    init(parsing bytes: UnsafeRawBufferPointer, pack: String, offset: Int64) throws {
        func damaged(_ what: String) -> CKStoreError {
            CKStoreError(.damaged, "pack \(pack): frame at offset \(offset): \(what)")
        }
        guard bytes.count >= PackFormat.frameHeaderSize else { throw damaged("header is cut short") }
        guard Array(bytes[0..<4]) == PackFormat.frameMagic else { throw damaged("no frame magic") }
        guard let kind = FrameKind(rawValue: bytes[4]) else { throw damaged("unknown frame kind \(bytes[4])") }
        guard let encoding = FrameEncoding(rawValue: bytes[5]) else { throw damaged("unknown encoding \(bytes[5])") }
        let flags = bytes.loadLittleEndian(UInt16.self, at: 6)
        guard flags & ~1 == 0 else { throw damaged("unknown flags \(flags)") }
        guard flags & 1 == 1 || bytes[56..<88].allSatisfy({ $0 == 0 }) else { throw damaged("base digest bytes set without a base") }
        guard (flags & 1 == 1) == encoding.hasBase else { throw damaged("\(encoding) frame \(encoding.hasBase ? "without" : "with") a base digest") }
        let raw = bytes.loadLittleEndian(UInt64.self, at: 8)
        let stored = bytes.loadLittleEndian(UInt64.self, at: 16)
        guard raw <= UInt64(Int32.max), stored <= UInt64(Int32.max) else { throw damaged("implausible lengths (raw \(raw), stored \(stored))") }
        self.kind = kind
        self.encoding = encoding
        self.rawLength = Int(raw)
        self.storedLength = Int(stored)
        self.digest = ChunkDigest(loading: UnsafeRawBufferPointer(rebasing: bytes[24..<56]))
        self.base = flags & 1 == 1 ? ChunkDigest(loading: UnsafeRawBufferPointer(rebasing: bytes[56..<88])) : nil
        self.checksum = bytes.loadLittleEndian(UInt64.self, at: 88)
    }
}

extension Array where Element == UInt8 {
    mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }
}

extension UnsafeRawBufferPointer {
    func loadLittleEndian<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        T(littleEndian: loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}

extension Array where Element == UInt8 {
    func loadLittleEndian<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        withUnsafeBytes { $0.loadLittleEndian(type, at: offset) }
    }
}
