/// What a put asks the catalogue (issue 32): the store's settings, the parent and a shard's previous
/// shard (delta bases), and what stands at a run and step. The catalogue connection conforms (each
/// call its own read), and so does ``Catalogue`` itself, which is what the committer hands a put's
/// decision inside its transaction: one conflict check serves both.
protocol PutQueries {
    func settings() throws -> StoreSettings
    /// The run's newest checkpoint before `step`.
    func parent(run: String, before step: Int64) throws -> CheckpointID?
    /// The run's newest pending shard `shard` before `step`.
    func previousShard(run: String, before step: Int64, shard: ShardSpec) throws -> (id: CheckpointID, step: Int64)?
    func summary(of id: CheckpointID) throws -> CheckpointSummary?
    /// The pending shards of `run` at `step`.
    func pendingShards(run: String?, step: Int64?) throws -> [PendingShard]
    /// The checkpoint of `run` at `step`, with its content digest.
    func checkpoint(run: String, step: Int64) throws -> (id: CheckpointID, content: ChunkDigest)?
}

extension Catalogue: PutQueries {}

extension LockedCatalogue: PutQueries {
    func parent(run: String, before step: Int64) throws -> CheckpointID? {
        try with { try $0.parent(run: run, before: step) }
    }

    func previousShard(run: String, before step: Int64, shard: ShardSpec) throws -> (id: CheckpointID, step: Int64)? {
        try with { try $0.previousShard(run: run, before: step, shard: shard) }
    }

    func pendingShards(run: String?, step: Int64?) throws -> [PendingShard] {
        try with { try $0.pendingShards(run: run, step: step) }
    }

    func checkpoint(run: String, step: Int64) throws -> (id: CheckpointID, content: ChunkDigest)? {
        try with { try $0.checkpoint(run: run, step: step) }
    }
}

/// The parts of the store a put works through, wired by the store's facade: the catalogue's
/// ``PutQueries``, the chunk index (which chunks are stored), the ``Committer``, the layout (packs), a
/// ``ChunkReader`` (the parent's manifest and delta bases) and the zstd contexts.
struct PutSeams: Sendable {
    let catalogue: any PutQueries & Sendable
    let index: ChunkIndex
    let committer: Committer
    let layout: StoreLayout
    let reader: ChunkReader
    let contexts: ZstdContextPool
}

extension CheckpointStore {
    /// The seams of a put into this store.
    func putSeams() -> PutSeams {
        PutSeams(catalogue: catalogue, index: ChunkIndex(catalogue: catalogue), committer: Committer(catalogue: catalogue, layout: layout),
                 layout: layout, reader: chunkReader(), contexts: contexts)
    }
}
