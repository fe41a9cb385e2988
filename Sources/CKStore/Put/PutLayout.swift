import Foundation

/// A checkpoint's files laid out as byte ranges of one source file: how a process that holds the
/// checkpoint in memory (the Python package's saves, a snapshot of a training state) hands it to a put
/// without writing the files first.
///
/// The writer lays the files' bytes into one file, typically in memory (a `memfd` or a file in
/// `/dev/shm`): tensor bytes once, where its snapshot copied them, and each file's other bytes (headers,
/// pickles) beside them. Each file of the checkpoint is then a list of ranges of that source, laid end to
/// end. The put maps the source read-only and reads the ranges in place, so the store receives exactly
/// the bytes a put of the folder holding those files would: the same chunks, the same manifest, the same
/// checkpoint id. See docs/design.md, "Saves without a staging copy".
///
/// In JSON (`ckstore put --layout FILE`):
/// ```json
/// {"source": "/proc/self/fd/3",
///  "files": [{"path": "model.safetensors", "pieces": [[0, 1024], [4096, 1048576]]},
///            {"path": "optimizer.pt", "mode": 420, "pieces": [[1052672, 16777216]]}]}
/// ```
public struct PutLayout: Sendable, Codable, Equatable {
    /// One file of the checkpoint: its path inside the checkpoint, its permission bits (0o644 when nil),
    /// and its bytes as `[offset, length]` ranges of the source, in order.
    public struct File: Sendable, Codable, Equatable {
        public var path: String
        public var mode: UInt32?
        public var pieces: [[Int64]]

        public init(path: String, mode: UInt32? = nil, pieces: [[Int64]]) {
            self.path = path
            self.mode = mode
            self.pieces = pieces
        }
    }

    /// The file every piece is a range of.
    public var source: String
    public var files: [File]

    public init(source: String, files: [File]) {
        self.source = source
        self.files = files
    }

    /// Reads a layout from JSON; throws `invalidArgument` naming what is wrong.
    public static func decode(_ json: [UInt8]) throws(CKStoreError) -> PutLayout {
        do {
            return try JSONDecoder().decode(PutLayout.self, from: Data(json))
        } catch {
            throw CKStoreError(.invalidArgument, "the layout is not a JSON object {\"source\": PATH, \"files\": [{\"path\", \"pieces\": [[OFFSET, LENGTH], …]}]}: \(error)")
        }
    }

    /// The put's inputs over the mapped source, after checking every path and range.
    func inputs() throws -> [CheckpointStore.PutInput] {
        guard !files.isEmpty else { throw CKStoreError(.invalidArgument, "the layout names no file") }
        let mapping = try MappedFile(path: source)
        var seen = Set<String>()
        // In the order a folder holding the files is scanned (each folder's names sorted), so that the
        // manifest, and the id, are those of a put of that folder.
        let ordered = files.sorted { $0.path.split(separator: "/").map(String.init).lexicographicallyPrecedes($1.path.split(separator: "/").map(String.init)) }
        return try ordered.map { file in
            try Self.validate(path: file.path)
            guard seen.insert(file.path).inserted else {
                throw CKStoreError(.invalidArgument, "the layout names \(file.path) twice")
            }
            if let mode = file.mode, mode & ~0o7777 != 0 {
                throw CKStoreError(.invalidArgument, "the layout gives \(file.path) mode \(String(mode, radix: 8)), which is not permission bits")
            }
            var ranges = [Range<Int>]()
            for piece in file.pieces {
                guard piece.count == 2, piece[0] >= 0, piece[1] >= 0, piece[0] <= Int64(mapping.size) - piece[1] else {
                    throw CKStoreError(.invalidArgument, "the layout's piece \(piece) of \(file.path) is not an [OFFSET, LENGTH] inside \(source) (\(mapping.size) bytes)")
                }
                if piece[1] > 0 { ranges.append(Int(piece[0])..<Int(piece[0] + piece[1])) }
            }
            return CheckpointStore.PutInput(path: file.path, mode: file.mode ?? 0o644, content: .memory(MappedPiecesFile(mapping: mapping, ranges: ranges)))
        }
    }

    /// A path inside the checkpoint: relative, `/`-separated, no empty, `.` or `..` component.
    static func validate(path: String) throws {
        let components = path.split(separator: "/", omittingEmptySubsequences: false)
        guard !path.isEmpty, !path.hasPrefix("/"), !path.contains("\0"),
              components.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." }) else {
            throw CKStoreError(.invalidArgument, "the layout names the file \(path.debugDescription): give a relative path with no empty, . or .. component")
        }
    }
}

extension CheckpointStore {
    /// Stores the files a ``PutLayout`` lays out as a new checkpoint: the same checkpoint, with the same
    /// id, as ``put(directory:options:)`` of a folder holding those files.
    public func put(layout: PutLayout, options: PutOptions) async throws(CKStoreError) -> PutResult {
        try await CKStoreError.wrapping("put of the layout over \(layout.source)") {
            try await put(layout.inputs(), options: options, describing: layout.source, defaultStep: nil)
        }
    }
}

/// A file made of ranges of a mapped source, laid end to end (a ``PutLayout`` file).
struct MappedPiecesFile: PutSource {
    let mapping: MappedFile
    let ranges: [Range<Int>]
    private let starts: PieceStarts

    init(mapping: MappedFile, ranges: [Range<Int>]) {
        self.mapping = mapping
        self.ranges = ranges
        starts = PieceStarts(ranges.map(\.count))
    }

    func size() -> Int64 { starts.size }

    func identity() -> FileIdentity? { nil }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws {
        try starts.copy(into: buffer, at: offset, what: "mapped file") { piece, inPiece, target in
            let start = ranges[piece].lowerBound + inPiece
            target.copyMemory(from: mapping.slice(start..<(start + target.count)))
        }
    }
}

/// Where each piece of a file made of pieces begins, and the copy of a byte range out of them.
struct PieceStarts: Sendable {
    /// `starts[i]` is the offset of piece `i`; `starts.last` is the size.
    private let starts: [Int64]

    init(_ counts: [Int]) {
        var starts = [Int64(0)]
        starts.reserveCapacity(counts.count + 1)
        for count in counts { starts.append((starts.last ?? 0) + Int64(count)) }
        self.starts = starts
    }

    var size: Int64 { starts.last ?? 0 }

    /// Fills `buffer` with the bytes at `offset`: `copy(piece, offsetInPiece, target)` copies the start of
    /// piece `piece` from `offsetInPiece` into `target`.
    func copy(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64, what: String,
              _ copy: (Int, Int, UnsafeMutableRawBufferPointer) -> Void) throws {
        guard offset >= 0, offset + Int64(buffer.count) <= size else {
            throw CKStoreError(.invalidArgument, "read of \(buffer.count) bytes at \(offset) runs past the end of a \(size)-byte \(what)")
        }
        guard buffer.count > 0 else { return }
        // The last piece starting at or before `offset`.
        var low = 0, high = starts.count - 2
        while low < high {
            let middle = (low + high + 1) / 2
            if starts[middle] <= offset { low = middle } else { high = middle - 1 }
        }
        var written = 0, piece = low, position = offset
        while written < buffer.count {
            let inPiece = Int(position - starts[piece])
            let count = min(Int(starts[piece + 1] - position), buffer.count - written)
            copy(piece, inPiece, UnsafeMutableRawBufferPointer(rebasing: buffer[written..<(written + count)]))
            written += count
            position += Int64(count)
            piece += 1
        }
    }
}
