/// Where new frames go: packs under `tmp/`, opened on the first frame and sealed (fsynced and renamed into
/// `packs/`) once they reach the target size or the caller is done.
///
/// Not Sendable: owned by one task (a put's coordinator, gc's executor, repair).
final class PackSink {
    private let layout: StoreLayout
    private let targetSize: Int64
    private var writer: PackWriter?
    private var sealedPacks = [SealedPack]()

    init(layout: StoreLayout, targetSize: Int64 = PackFormat.targetSize) {
        self.layout = layout
        self.targetSize = targetSize
    }

    /// Appends one frame; returns where it is (valid once its pack is sealed).
    @discardableResult
    func append(_ chunk: EncodedChunk, kind: FrameKind) throws -> ChunkLocation {
        let current = try writer ?? PackWriter(layout: layout)
        writer = current
        let written = try current.append(chunk, kind: kind)
        if current.size >= targetSize {
            sealedPacks.append(try current.seal())
            writer = nil
        }
        return ChunkLocation(written.header, pack: current.id, offset: written.offset)
    }

    /// Seals the open pack, if any, and returns every pack sealed since the last call.
    func seal() throws -> [SealedPack] {
        if let writer {
            sealedPacks.append(try writer.seal())
            self.writer = nil
        }
        defer { sealedPacks.removeAll() }
        return sealedPacks
    }
}
