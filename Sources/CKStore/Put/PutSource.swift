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

extension SharedFile: PutSource {
    func identity() throws -> FileIdentity? { try FileIdentity(self) }
}

/// A file assembled in memory from pieces laid end to end (a safetensors header, then each tensor's
/// bytes) without copying them into one buffer. The pieces are the caller's arrays: copy-on-write keeps
/// them as they were when the save began, whatever the caller does with its own copies.
struct MemoryFile: PutSource {
    let pieces: [[UInt8]]
    /// `starts[i]` is the offset of `pieces[i]`; `starts.last` is the size.
    private let starts: [Int64]

    init(pieces: [[UInt8]]) {
        self.pieces = pieces.filter { !$0.isEmpty }
        var starts = [Int64(0)]
        for piece in self.pieces { starts.append((starts.last ?? 0) + Int64(piece.count)) }
        self.starts = starts
    }

    func size() -> Int64 { starts.last ?? 0 }

    func identity() -> FileIdentity? { nil }

    func read(count: Int, at offset: Int64) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try read(into: $0, at: offset) }
        return out
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws {
        guard offset >= 0, offset + Int64(buffer.count) <= size() else {
            throw CKStoreError(.invalidArgument, "read of \(buffer.count) bytes at \(offset) runs past the end of a \(size())-byte file in memory")
        }
        // The last piece starting at or before `offset`.
        var low = 0, high = starts.count - 2
        while low < high {
            let middle = (low + high + 1) / 2
            if starts[middle] <= offset { low = middle } else { high = middle - 1 }
        }
        var written = 0, piece = low, position = offset
        while written < buffer.count {
            let inPiece = Int(position - starts[piece])
            let count = min(pieces[piece].count - inPiece, buffer.count - written)
            pieces[piece].withUnsafeBytes { source in
                UnsafeMutableRawBufferPointer(rebasing: buffer[written..<(written + count)])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: source[inPiece..<(inPiece + count)]))
            }
            written += count
            position += Int64(count)
            piece += 1
        }
    }
}
