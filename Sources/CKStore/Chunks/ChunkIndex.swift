import Synchronization

/// The catalogue's chunk lookups, and nothing else of it: what puts, reads and the encoder may ask.
///
/// Each call holds the catalogue connection only for its own query.
struct ChunkIndex: ChunkLocating {
    let catalogue: LockedCatalogue

    /// Whether the store has a frame for `digest`.
    func contains(_ digest: ChunkDigest) throws -> Bool {
        try catalogue.with { try $0.containsChunk(digest) }
    }

    func location(of digest: ChunkDigest) throws -> ChunkLocation? {
        try catalogue.with { try $0.location(of: digest) }
    }

    /// Where a chunk and its bases are, down to its full frame or `limit + 1` frames, whichever is first.
    func chain(of digest: ChunkDigest, limit: Int) throws -> [ChunkLocation] {
        try catalogue.with { try $0.chainLocations(of: digest, limit: limit) }
    }

    /// The number of delta frames between `digest`'s frame and a full frame, or nil when that is more
    /// than `limit` (or a chunk on the way is missing).
    func depth(of digest: ChunkDigest, limit: Int) throws -> Int? {
        Self.depth(of: try chain(of: digest, limit: limit))
    }

    /// The depth of a chain from ``chain(of:limit:)``: nil unless it ends in a full frame.
    static func depth(of chain: [ChunkLocation]) -> Int? {
        guard let last = chain.last, !last.encoding.hasBase else { return nil }
        return chain.count - 1
    }
}
