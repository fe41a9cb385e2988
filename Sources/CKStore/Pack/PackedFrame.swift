/// A frame as a pack's index lists it: where it is in its pack and what it is, enough to fetch it with a
/// ranged read and to know its delta base and inputs before reading anything. Remote index objects list
/// frames so (``RemoteFrame``, their wire form), and the catalogue caches them.
struct PackedFrame: Sendable, Equatable {
    var digest: ChunkDigest
    /// Offset of the frame header in the pack.
    var offset: Int64
    /// Payload bytes (the frame adds a 96-byte header).
    var storedLength: Int
    var rawLength: Int
    var encoding: UInt8
    var kind: UInt8
    var base: ChunkDigest?
    /// What a predicted frame decodes from besides its base.
    var inputs: [ChunkDigest] = []

    init(_ header: FrameHeader, offset: Int64) {
        self.digest = header.digest
        self.offset = offset
        self.storedLength = header.storedLength
        self.rawLength = header.rawLength
        self.encoding = header.encoding.rawValue
        self.kind = header.kind.rawValue
        self.base = header.base
        self.inputs = header.inputs
    }

    init(digest: ChunkDigest, offset: Int64, storedLength: Int, rawLength: Int, encoding: UInt8, kind: UInt8, base: ChunkDigest?, inputs: [ChunkDigest] = []) {
        self.digest = digest
        self.offset = offset
        self.storedLength = storedLength
        self.rawLength = rawLength
        self.encoding = encoding
        self.kind = kind
        self.base = base
        self.inputs = inputs
    }

    /// The bytes of the frame in its pack, header included.
    var range: Range<Int64> { offset..<(offset + Int64(PackFormat.frameHeaderSize + storedLength)) }
}
