/// Copies frames as stored, never decoded or re-encoded, from the packs they are in to a ``PackSink``:
/// what gc's repack does with live frames and repair's salvage with the intact frames of damaged packs.
struct FrameCopier {
    let packs: PackReaderCache
    let sink: PackSink

    /// Copies the frame at `location`, checking its checksum on the way; returns where the copy is.
    ///
    /// - Throws: `damaged` when the stored frame is not the one written.
    @discardableResult
    func copy(_ location: ChunkLocation) throws -> ChunkLocation {
        let reader = try packs.reader(for: location.pack)
        let (header, payload) = try reader.readFrame(at: location.offset, storedLength: location.storedLength, expected: location.digest)
        let chunk = EncodedChunk(digest: header.digest, encoding: header.encoding, rawLength: header.rawLength, payload: payload.array, base: header.base)
        return try sink.append(chunk, kind: header.kind)
    }
}
