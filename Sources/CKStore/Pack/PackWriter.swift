/// Appends frames to a new pack under `tmp/` and seals it into `packs/` (commit protocol step 2).
///
/// Not Sendable: owned by the put that writes it. The pack is invisible to readers until ``seal()``
/// renames it, and unreferenced by the catalogue until the put's transaction commits; a crash before then
/// leaves an orphan in `tmp/` or `packs/` that garbage collection removes.
final class PackWriter {
    /// A frame as written: where it is and what it holds.
    struct WrittenFrame: Sendable {
        var offset: Int64
        var header: FrameHeader
    }

    let id: PackID
    private let layout: StoreLayout
    private let file: SystemFile
    private(set) var size: Int64
    private(set) var frames: [WrittenFrame] = []
    private var sealed = false
    /// Bytes before this offset have been handed to writeback already.
    private var writebackStart: Int64 = 0
    /// Writeback is started every this many bytes, so that sealing (fsync) waits only for the tail
    /// instead of the whole pack: on this machine's disk a 200 MiB pack's fsync took 0.2 s of a 1 s put.
    static let writebackInterval: Int64 = 16 << 20

    init(layout: StoreLayout) throws {
        self.layout = layout
        self.id = PackID.random()
        let file = try SystemFile.createNew(layout.temporaryPackPath(id))
        let header = PackFormat.fileHeader()
        do {
            try file.write(header, at: 0)
        } catch {
            try? FileSystem.removeFile(file.path)
            throw error
        }
        self.file = file
        self.size = Int64(header.count)
    }

    deinit {
        // A writer dropped without sealing (a failed put) removes its temporary file.
        if !sealed { try? FileSystem.removeFile(file.path) }
    }

    /// Appends one frame; returns its offset.
    @discardableResult
    func append(_ chunk: EncodedChunk, kind: FrameKind = .chunk) throws -> WrittenFrame {
        let header = FrameHeader(kind: kind, chunk: chunk)
        let offset = size
        try file.write(header.serialized(), at: offset)
        try file.write(chunk.payload, at: offset + Int64(PackFormat.frameHeaderSize))
        size = offset + Int64(PackFormat.frameHeaderSize + chunk.payload.count)
        if size - writebackStart >= Self.writebackInterval {
            file.startWriteback(at: writebackStart, count: size - writebackStart)
            writebackStart = size
        }
        let frame = WrittenFrame(offset: offset, header: header)
        frames.append(frame)
        return frame
    }

    /// Writes the trailer, fsyncs, renames into `packs/` and fsyncs the folder.
    func seal() throws -> SealedPack {
        let trailerOffset = size
        let end = PackFormat.trailerAndFooter(frames, trailerOffset: trailerOffset)
        try file.write(end, at: trailerOffset)
        size = trailerOffset + Int64(end.count)
        try file.sync()
        let destination = layout.packPath(id)
        let folder = layout.packFolder(id)
        if !FileSystem.isDirectory(folder) {
            try FileSystem.createDirectory(folder)
            try FileSystem.syncDirectory(layout.packsRoot)
        }
        try FileSystem.rename(file.path, destination)
        sealed = true
        try FileSystem.syncDirectory(folder)
        return SealedPack(id: id, size: size, frames: frames)
    }
}

/// A pack that is durable in `packs/`.
struct SealedPack: Sendable {
    var id: PackID
    var size: Int64
    var frames: [PackWriter.WrittenFrame]
}
