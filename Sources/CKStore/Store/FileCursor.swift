/// Reads one file front to back, cutting it into chunks by its layout and hashing every byte once, in
/// order, for the file's SHA-256. Chunks come out in file order; hashing and compressing them is left to
/// worker tasks.
struct FileCursor {
    /// The fixed chunk size for tensor bytes: large enough for zstd to work well and for per-chunk
    /// overhead (a catalogue row, a frame header) to vanish, small enough for parallelism and dedup.
    static let tensorChunkSize = 1 << 20

    let file: SharedFile
    let path: String
    let layout: FileLayout
    let size: Int64
    private let chunker = FastCDC.standard

    private var regionIndex = 0
    private var position: Int64 = 0
    private var hasher = SHA256Hasher()
    private(set) var chunkCount = 0
    /// For each tensor region: its index in the layout and the chunk indices it spans.
    private(set) var tensorChunks: [Int: Range<Int>] = [:]

    // Opaque regions are read in large blocks; `pending[pendingStart...]` are read, hashed, not yet cut.
    private var pending = [UInt8]()
    private var pendingStart = 0
    private var readPosition: Int64 = 0

    init(file: SharedFile, path: String, layout: FileLayout, size: Int64) {
        self.file = file
        self.path = path
        self.layout = layout
        self.size = size
    }

    /// The next chunk and its offset in the file, or nil at the end.
    mutating func next() throws -> (offset: Int64, bytes: [UInt8])? {
        while regionIndex < layout.regions.count {
            let region = layout.regions[regionIndex]
            if position >= region.end {
                regionIndex += 1
                continue
            }
            let offset = position
            let bytes: [UInt8]
            switch region.kind {
            case .tensor:
                let count = Int(min(Int64(Self.tensorChunkSize), region.end - position))
                bytes = try file.read(count: count, at: position)
                bytes.withUnsafeBytes { hasher.update($0) }
                readPosition = position + Int64(count)
                let range = tensorChunks[regionIndex] ?? chunkCount..<chunkCount
                tensorChunks[regionIndex] = range.lowerBound..<(chunkCount + 1)
            case .opaque:
                bytes = try nextOpaqueChunk(regionEnd: region.end)
            }
            position += Int64(bytes.count)
            chunkCount += 1
            return (offset, bytes)
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
            block.withUnsafeBytes { hasher.update($0) }
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

    /// The SHA-256 of the whole file, once every chunk has been taken; checks that the file did not
    /// change size while it was read.
    consuming func finish() throws -> ChunkDigest {
        let now = try file.size()
        guard position == size, now == size else {
            throw CKStoreError(.conflict, "\(path) changed while it was being stored (\(size) bytes when the put started, \(now) now); put it again once the trainer has finished writing")
        }
        return hasher.finalize()
    }
}
