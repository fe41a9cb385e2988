/// Where a put reads one file's bytes from: a file on disk, or bytes in memory (a save from a training
/// loop). Either way the file is chunked, hashed and stored the same, so the two are indistinguishable in
/// the store.
protocol PutSource: ByteSource, Sendable {
    /// The file's size.
    func size() throws -> Int64
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws
    /// What identifies this version of the file, to notice a file changed while it was read; nil when
    /// the bytes cannot change (memory).
    func identity() throws -> FileIdentity?
}

extension PutSource {
    /// `count` bytes at `offset`, read through ``read(into:at:)``.
    func read(count: Int, at offset: Int64) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try read(into: $0, at: offset) }
        return out
    }
}

extension SharedFile: PutSource {
    func identity() throws -> FileIdentity? { try FileIdentity(self) }
}

/// A file assembled in memory from pieces laid end to end (a safetensors header, then each tensor's
/// bytes) without copying them into one buffer. The pieces are the caller's arrays: copy-on-write keeps
/// them as they were when the save began, whatever the caller does with its own copies.
struct MemoryFile: PutSource {
    let pieces: [[UInt8]]
    private let starts: PieceStarts

    init(pieces: [[UInt8]]) {
        self.pieces = pieces.filter { !$0.isEmpty }
        starts = PieceStarts(self.pieces.map(\.count))
    }

    func size() -> Int64 { starts.size }

    func identity() -> FileIdentity? { nil }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws {
        try starts.copy(into: buffer, at: offset, what: "file in memory") { piece, inPiece, target in
            pieces[piece].withUnsafeBytes { source in
                target.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[inPiece..<(inPiece + target.count)]))
            }
        }
    }
}
