/// The narrow parts of the catalogue that operations depend on (issue 32): each protocol names the
/// queries one operation makes, so that the operation reaches nothing else of the catalogue, as
/// ``ChunkLocating`` does for the chunk reader. ``LockedCatalogue`` is the one type that conforms to them;
/// each call holds the connection for its own query only.

/// What a restore asks the catalogue: where chunks are, and which parts a retention rule dropped.
protocol RestoreQueries: Sendable {
    /// Where each of `digests` is stored, in order; nil for a chunk the store lacks.
    func locations(of digests: [ChunkDigest]) throws -> [ChunkLocation?]
    /// The files (path → part) and the tensors of safetensors files (path → names) that part rules took
    /// from checkpoint `id`.
    func droppedParts(of id: CheckpointID) throws -> (files: [String: String], tensors: [String: Set<String>])
}

extension LockedCatalogue: RestoreQueries {
    func locations(of digests: [ChunkDigest]) throws -> [ChunkLocation?] {
        try with { catalogue in try digests.map { try catalogue.location(of: $0) } }
    }

    func droppedParts(of id: CheckpointID) throws -> (files: [String: String], tensors: [String: Set<String>]) {
        try with { (try $0.droppedFiles(of: id), try $0.droppedTensors(of: id)) }
    }
}

/// What `verify` asks the catalogue, through a connection that holds one snapshot for the whole check.
protocol VerifyQueries: Sendable {
    /// SQLite's own integrity check and the catalogue's foreign-key check, as messages.
    func integrityProblems() throws -> [String]
    /// Every chunk the checkpoints `ids` need (all checkpoints and pending shards when nil), bases included.
    func referencedDigests(of ids: [CheckpointID]?) throws -> Set<ChunkDigest>
    /// Where every catalogued frame is.
    func chunkLocations() throws -> [ChunkLocation]
    func packRows() throws -> [Catalogue.PackRow]
    func pendingShards() throws -> [PendingShard]
    func allCheckpointIDs() throws -> [CheckpointID]
    /// The checkpoints that need each of `digests`.
    func checkpoints(using digests: Set<ChunkDigest>) throws -> [ChunkDigest: [CheckpointID]]
    func summary(of id: CheckpointID) throws -> CheckpointSummary?
}

extension LockedCatalogue: VerifyQueries {
    func integrityProblems() throws -> [String] { try with { try $0.integrityProblems() } }
    func referencedDigests(of ids: [CheckpointID]?) throws -> Set<ChunkDigest> { try with { try $0.referencedDigests(of: ids) } }
    func chunkLocations() throws -> [ChunkLocation] { try with { try $0.chunkLocations() } }
    func packRows() throws -> [Catalogue.PackRow] { try with { try $0.packRows() } }
    func pendingShards() throws -> [PendingShard] { try with { try $0.pendingShards() } }
    func allCheckpointIDs() throws -> [CheckpointID] { try with { try $0.allCheckpointIDs() } }
    func checkpoints(using digests: Set<ChunkDigest>) throws -> [ChunkDigest: [CheckpointID]] { try with { try $0.checkpoints(using: digests) } }
    func summary(of id: CheckpointID) throws -> CheckpointSummary? { try with { try $0.summary(of: id) } }
}
