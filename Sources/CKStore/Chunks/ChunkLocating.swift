/// Finds where a chunk's frame is: the catalogue (``ChunkIndex``), or a scan of the packs when the
/// catalogue is being rebuilt.
protocol ChunkLocating: Sendable {
    /// Where `digest`'s frame is, or nil when there is none.
    func location(of digest: ChunkDigest) throws -> ChunkLocation?
}

/// Frame locations found by reading the packs themselves, for a store whose catalogue is being rebuilt.
struct ScannedFrames: ChunkLocating {
    let locations: [ChunkDigest: ChunkLocation]

    func location(of digest: ChunkDigest) throws -> ChunkLocation? { locations[digest] }
}
