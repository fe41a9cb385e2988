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
        try withCatalogue { catalogue in try catalogue.write { try catalogue.save(settings) } }
    }
}
