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
            case "predict_weights":
                if let flag = Bool(value) { settings.predictWeights = flag }
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
        try upsert.run([.text("predict_weights"), .text(String(settings.predictWeights))])
    }
}

