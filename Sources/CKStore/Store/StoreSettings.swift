/// Store-wide defaults for new chunks, kept in the catalogue (`ckstore init --level`, `ckstore settings`).
/// A put may override each for itself (``PutOptions``).
public struct StoreSettings: Sendable, Equatable {
    /// The zstd level for new chunks.
    public var compressionLevel: CompressionLevel
    /// The longest chain of delta frames a put may write: a chunk whose base is already this many
    /// deltas deep is stored in full (a "keyframe"). Restoring a chunk decodes at most this many frames
    /// beyond its keyframe. 0 turns deltas off.
    public var maxDeltaDepth: Int

    /// zstd level 1 and chains of at most 3 deltas, the choice `docs/benchmarks.md` measures: on byte
    /// planes level 1 stores slightly less than level 3 and is faster; chains of 3 store 1.3% less than
    /// chains of 2 and as little as chains of 4, whose newest checkpoint restores more slowly.
    public static let defaults = StoreSettings(compressionLevel: .default, maxDeltaDepth: 3)

    /// The deepest chain a store may be set to; decoding refuses chains beyond ``CheckpointStore/hardChainLimit``.
    public static let maxDeltaDepthLimit = 32

    /// Throws `invalidArgument` for a depth outside 0…``maxDeltaDepthLimit``.
    static func checkDeltaDepth(_ depth: Int) throws {
        guard (0...maxDeltaDepthLimit).contains(depth) else {
            throw CKStoreError(.invalidArgument, "maximum delta depth \(depth) is outside 0…\(maxDeltaDepthLimit)")
        }
    }

    public init(compressionLevel: CompressionLevel, maxDeltaDepth: Int) {
        self.compressionLevel = compressionLevel
        self.maxDeltaDepth = maxDeltaDepth
    }
}

extension Catalogue {
    /// Where a chunk and its bases are, down to its full frame or `limit + 1` frames, whichever is first.
    func chainLocations(of digest: ChunkDigest, limit: Int) throws -> [ChunkLocation] {
        let base = try statement("SELECT base FROM chunks WHERE digest = ?")
        var out = [ChunkLocation]()
        var current: ChunkDigest? = digest
        while let digest = current, out.count <= limit, let location = try location(of: digest) {
            out.append(location)
            current = try base.firstRow([.blob(digest.bytes)]) { (row) throws -> ChunkDigest? in row.isNull(0) ? nil : try row.digest(0) } ?? nil
        }
        return out
    }

    func settings() throws -> StoreSettings {
        var settings = StoreSettings.defaults
        let rows = try statement("SELECT key, value FROM settings").rows([]) { ($0.text(0), $0.text(1)) }
        for (key, value) in rows {
            switch key {
            case "compression_level":
                if let level = Int(value).flatMap(CompressionLevel.init) { settings.compressionLevel = level }
            case "max_delta_depth":
                if let depth = Int(value), (0...StoreSettings.maxDeltaDepthLimit).contains(depth) { settings.maxDeltaDepth = depth }
            default:
                continue
            }
        }
        return settings
    }

    func save(_ settings: StoreSettings) throws {
        let upsert = try statement("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
        try upsert.run([.text("compression_level"), .text(String(settings.compressionLevel.rawValue))])
        try upsert.run([.text("max_delta_depth"), .text(String(settings.maxDeltaDepth))])
    }
}

extension CheckpointStore {
    /// The store's settings.
    public func settings() throws -> StoreSettings {
        try withCatalogue { try $0.settings() }
    }

    /// Changes the store's settings; later puts use them, stored chunks stay as they are.
    ///
    /// - Throws: `invalidArgument` for a delta depth outside 0…``StoreSettings/maxDeltaDepthLimit``.
    public func updateSettings(_ settings: StoreSettings) throws {
        try StoreSettings.checkDeltaDepth(settings.maxDeltaDepth)
        try withCatalogue { catalogue in try catalogue.database.transaction { try catalogue.save(settings) } }
    }
}
