#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Cuts one file into chunks by its layout, front to back. Chunks come out in file order; hashing and
/// compressing them is left to worker tasks. A tensor's chunks have fixed sizes, so they are handed out
/// unread and each worker reads its own (the reads then run on every core); opaque regions are read here,
/// since content-defined chunking needs the bytes to find the cuts.
struct FileCursor {
    /// The fixed chunk size for tensor bytes: large enough for zstd to work well and for per-chunk
    /// overhead (a catalogue row, a frame header) to vanish, small enough for parallelism and dedup.
    static let tensorChunkSize = 1 << 20

    let file: any PutSource
    let path: String
    let layout: FileLayout
    let size: Int64
    private let chunker = FastCDC.standard

    private var regionIndex = 0
    private var position: Int64 = 0
    private(set) var chunkCount = 0
    /// For each tensor region: its index in the layout and the chunk indices it spans.
    private(set) var tensorChunks: [Int: Range<Int>] = [:]

    // Opaque regions are read in large blocks; `pending[pendingStart...]` are read, hashed, not yet cut.
    private var pending = [UInt8]()
    private var pendingStart = 0
    private var readPosition: Int64 = 0

    init(file: any PutSource, path: String, layout: FileLayout, size: Int64) {
        self.file = file
        self.path = path
        self.layout = layout
        self.size = size
    }

    /// One chunk as the cursor cuts it.
    struct Chunk {
        /// Where it starts in the file.
        var offset: Int64
        var length: Int
        /// The bytes, when the cursor had to read them to cut the chunk; nil for a tensor's chunk, which
        /// ``read(_:)`` reads.
        var bytes: [UInt8]?
        /// The tensor or torch storage it belongs to, if any.
        var tensor: TensorPlace?

        /// The chunk's bytes from `file`, read now unless the cursor read them already.
        func read(_ file: any PutSource) throws -> [UInt8] {
            try bytes ?? file.read(count: length, at: offset)
        }
    }

    /// The next chunk, or nil at the end.
    mutating func next() throws -> Chunk? {
        while regionIndex < layout.regions.count {
            let region = layout.regions[regionIndex]
            if position >= region.end {
                regionIndex += 1
                continue
            }
            let offset = position
            let length: Int
            var bytes: [UInt8]?
            var place: TensorPlace?
            switch region.kind {
            case .tensor(let name, let dtype, let shape):
                length = Int(min(Int64(Self.tensorChunkSize), region.end - position))
                readPosition = position + Int64(length)
                let range = tensorChunks[regionIndex] ?? chunkCount..<chunkCount
                tensorChunks[regionIndex] = range.lowerBound..<(chunkCount + 1)
                place = TensorPlace(
                    file: path, tensor: name, dtype: dtype, shape: shape, byteCount: region.length, index: range.count,
                    // A torch storage's element type lives in the pickle; 4 bytes (fp32) is the common case.
                    elementWidth: dtype.map { $0.bitWidth / 8 } ?? layout.storageElementWidths[name] ?? 4
                )
            case .opaque:
                let read = try nextOpaqueChunk(regionEnd: region.end)
                length = read.count
                bytes = read
            }
            position += Int64(length)
            chunkCount += 1
            return Chunk(offset: offset, length: length, bytes: bytes, tensor: place)
        }
        return nil
    }

    private mutating func nextOpaqueChunk(regionEnd: Int64) throws -> [UInt8] {
        if readPosition < position { readPosition = position }
        if pending.count - pendingStart < chunker.maximumSize && readPosition < regionEnd {
            pending.removeFirst(pendingStart)
            pendingStart = 0
            let count = Int(min(Int64(8 << 20), regionEnd - readPosition))
            let block = try file.read(count: count, at: readPosition)
            pending += block
            readPosition += Int64(count)
        }
        let isEnd = readPosition == regionEnd
        let length = pending.withUnsafeBytes { chunker.cut(UnsafeRawBufferPointer(rebasing: $0[pendingStart...]), isEnd: isEnd) }
        let bytes = Array(pending[pendingStart..<(pendingStart + length)])
        pendingStart += length
        if pendingStart == pending.count {
            pending.removeAll(keepingCapacity: true)
            pendingStart = 0
        }
        return bytes
    }

    /// Checks, once every chunk has been taken, that the file did not change while it was read: same
    /// size, modification and change times as when the put opened it.
    func finish(openedAs before: FileIdentity?) throws {
        let now = try file.identity()
        guard position == size, now == before else {
            throw CKStoreError(.conflict, "\(path) changed while it was being stored (\(before?.size ?? size) bytes when the put started, \(now?.size ?? position) now); put it again once the trainer has finished writing")
        }
    }
}

/// What identifies a file's version: size and modification and change times. A file whose identity
/// changed during a put was being written meanwhile.
struct FileIdentity: Equatable, Sendable {
    var size: Int64
    var modified: timespec
    var changed: timespec

    init(_ file: SharedFile) throws {
        let info = try file.status()
        size = Int64(info.st_size)
        modified = info.st_mtim
        changed = info.st_ctim
    }

    static func == (lhs: FileIdentity, rhs: FileIdentity) -> Bool {
        lhs.size == rhs.size && lhs.modified.tv_sec == rhs.modified.tv_sec && lhs.modified.tv_nsec == rhs.modified.tv_nsec
            && lhs.changed.tv_sec == rhs.changed.tv_sec && lhs.changed.tv_nsec == rhs.changed.tv_nsec
    }
}
