@_spi(Benchmarking)
extension SyntheticCatalogue {
    /// Creates a store at `path` holding `checkpoints` checkpoints of one run, each referencing
    /// `chunksPerCheckpoint` chunks of which `sharedFraction` are shared with the previous checkpoint
    /// (frozen tensors) and the rest are new.
    public static func build(at path: String, run: String = "synthetic", checkpoints: Int, chunksPerCheckpoint: Int, sharedFraction: Double = 0.5) throws {
        let store = try CheckpointStore.open(at: path, create: true)
        try store.withCatalogue { catalogue in
            try fill(catalogue, run: run, checkpoints: checkpoints, chunksPerCheckpoint: chunksPerCheckpoint, sharedFraction: sharedFraction)
        }
    }
}
