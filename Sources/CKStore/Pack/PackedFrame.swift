/// A frame as a pack's index lists it: where it is in its pack and what it is, enough to fetch it with a
/// ranged read and to know its delta base and inputs before reading anything. Remote index objects list
/// frames so (``RemoteFrame``: one-letter keys, `i` absent when empty), and the catalogue caches them.
struct PackedFrame: Codable, Sendable, Equatable {
    var digest: ChunkDigest
    /// Offset of the frame header in the pack.
    var offset: Int64
    /// Payload bytes (the frame adds a 96-byte header).
    var storedLength: Int
    var rawLength: Int
    var encoding: UInt8
    var kind: UInt8
    var base: ChunkDigest?
    /// What a predicted frame decodes from besides its base (absent from an index object when empty).
    @OmittedWhenEmpty var inputs: [ChunkDigest] = []

    enum CodingKeys: String, CodingKey {
        case digest = "d", offset = "o", storedLength = "s", rawLength = "r", encoding = "e", kind = "k", base = "b", inputs = "i"
    }
}

extension PackedFrame {
    init(_ header: FrameHeader, offset: Int64) {
        self.init(digest: header.digest, offset: offset, storedLength: header.storedLength, rawLength: header.rawLength,
                  encoding: header.encoding.rawValue, kind: header.kind.rawValue, base: header.base, inputs: header.inputs)
    }

    /// The bytes of the frame in its pack, header included.
    var range: Range<Int64> { offset..<(offset + Int64(PackFormat.frameHeaderSize + storedLength)) }
}
