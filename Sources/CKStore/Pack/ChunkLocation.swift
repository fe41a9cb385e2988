/// Where a frame is stored, and what the catalogue knows of it without reading it.
struct ChunkLocation: Sendable, Equatable {
    var digest: ChunkDigest
    var pack: PackID
    var offset: Int64
    var storedLength: Int
    var rawLength: Int
    var encoding: FrameEncoding
    var kind: FrameKind
}

extension ChunkLocation {
    /// The location of a frame whose header was read at `offset` of `pack`.
    init(_ header: FrameHeader, pack: PackID, offset: Int64) {
        self.init(digest: header.digest, pack: pack, offset: offset, storedLength: header.storedLength,
                  rawLength: header.rawLength, encoding: header.encoding, kind: header.kind)
    }

    /// The bytes the frame takes in its pack, header included.
    var frameBytes: Int64 { Int64(PackFormat.frameHeaderSize + storedLength) }
}

/// What reading a chunk checks.
struct ChunkChecks: OptionSet, Sendable {
    let rawValue: UInt8

    /// Each frame's checksum: the stored bytes (header and payload) are the ones written.
    static let checksums = ChunkChecks(rawValue: 1)
    /// The decoded bytes' SHA-256 against the chunk's digest: what was stored decodes to what was put.
    static let digest = ChunkChecks(rawValue: 2)
    /// Both: what `verify --full` and single reads do.
    static let all: ChunkChecks = [.checksums, .digest]
}
