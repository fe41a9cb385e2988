/// Store-wide defaults for new chunks, kept in the catalogue (`ckstore init --level`, `ckstore settings`).
/// A put may override each for itself (``PutOptions``).
public struct StoreSettings: Sendable, Equatable {
    /// The zstd level for new chunks.
    public var compressionLevel: CompressionLevel
    /// The longest chain of XOR-delta frames a put may write: a chunk whose base is already this many
    /// deltas deep is stored in full (a "keyframe"). Restoring a chunk decodes at most this many frames
    /// beyond its keyframe. 0 turns deltas off.
    public var maxDeltaDepth: Int

    /// Level 3 and chains of at most 4 deltas: the choice `docs/benchmarks.md` explains (higher levels
    /// save under 1% of float data at a third of the speed; deeper chains save a few percent more and
    /// restore the newest checkpoint more slowly).
    public static let defaults = StoreSettings(compressionLevel: .default, maxDeltaDepth: 4)

    /// The deepest chain a store may be set to; decoding refuses chains beyond ``CheckpointStore/hardChainLimit``.
    public static let maxDeltaDepthLimit = 32

    public init(compressionLevel: CompressionLevel, maxDeltaDepth: Int) {
        self.compressionLevel = compressionLevel
        self.maxDeltaDepth = maxDeltaDepth
    }
}

extension Catalogue {
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
        guard (0...StoreSettings.maxDeltaDepthLimit).contains(settings.maxDeltaDepth) else {
            throw CKStoreError(.invalidArgument, "maximum delta depth \(settings.maxDeltaDepth) is outside 0…\(StoreSettings.maxDeltaDepthLimit)")
        }
        try withCatalogue { catalogue in try catalogue.database.transaction { try catalogue.save(settings) } }
    }
}
