import Foundation

extension Catalogue {
    private static let pendingColumns = "p.manifest_id, r.name, p.step, p.shard_index, p.shard_count, p.content_digest, p.created_at, p.logical_bytes, p.stored_bytes_added"

    /// Pending shards of `run` (every run when nil), at `step` when given.
    func pendingShards(run: String? = nil, step: Int64? = nil) throws -> [PendingShard] {
        var filter = ["1"], values = [SQLiteStatement.Value]()
        if let run { filter.append("r.name = ?"); values.append(.text(run)) }
        if let step { filter.append("p.step = ?"); values.append(.integer(step)) }
        return try statement("SELECT \(Self.pendingColumns) FROM pending_shards p JOIN runs r ON r.id = p.run_id WHERE \(filter.joined(separator: " AND ")) ORDER BY r.name, p.step, p.shard_index")
            .rows(values) { (row) throws in
                PendingShard(id: CheckpointID(try row.digest(0)), run: row.text(1), step: row.int(2),
                             shard: try ShardSpec(index: Int(row.int(3)), count: Int(row.int(4))),
                             content: try row.digest(5), createdAt: row.double(6), logicalBytes: row.int(7), storedBytesAdded: row.int(8))
            }
    }

    /// Records a committed shard and the chunks it needs. Runs inside the put's transaction.
    func insertPendingShard(_ shard: PendingShard, chunkUses: [ChunkDigest: Int], now: Double) throws {
        let runID = try ensureRun(named: shard.run, now: now)
        let id = SQLiteStatement.Value.blob(shard.id.digest.bytes)
        try statement("""
            INSERT INTO pending_shards (run_id, step, shard_index, shard_count, manifest_id, content_digest, created_at, logical_bytes, stored_bytes_added)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
            """).run([.integer(runID), .integer(shard.step), .integer(Int64(shard.shard.index)), .integer(Int64(shard.shard.count)),
                      id, .blob(shard.content.bytes), .real(shard.createdAt), .integer(shard.logicalBytes), .integer(shard.storedBytesAdded)])
        let reference = try statement("INSERT OR REPLACE INTO shard_chunks (manifest_id, digest, uses) VALUES (?, ?, ?)")
        for (digest, uses) in chunkUses.sorted(by: { $0.key < $1.key }) {
            try reference.run([id, .blob(digest.bytes), .integer(Int64(uses))])
        }
    }

    /// Forgets pending shards and what they kept alive: once combined into their checkpoint, or when
    /// gc removes them as stale.
    func deletePendingShards(_ ids: [CheckpointID]) throws {
        let shard = try statement("DELETE FROM pending_shards WHERE manifest_id = ?")
        let references = try statement("DELETE FROM shard_chunks WHERE manifest_id = ?")
        for id in ids {
            try shard.run([.blob(id.digest.bytes)])
            try references.run([.blob(id.digest.bytes)])
        }
    }

    /// Every chunk some pending shard needs, or a partial pull holds (without delta bases): what gc keeps
    /// though no checkpoint needs it.
    func pendingShardDigests() throws -> [ChunkDigest] {
        try statement("SELECT digest FROM shard_chunks UNION SELECT digest FROM chunk_holds WHERE expires_at > ?")
            .rows([.real(Date().timeIntervalSince1970)]) { try $0.digest(0) }
    }

    /// Keeps `digests` from gc until `expiry` (unix seconds): the chunks a partial pull brought for the
    /// restore that follows it.
    func holdChunks(withBases digests: some Sequence<ChunkDigest>, until expiry: Double) throws {
        let hold = try statement("INSERT INTO chunk_holds (digest, expires_at) VALUES (?, ?) ON CONFLICT(digest) DO UPDATE SET expires_at = max(expires_at, excluded.expires_at)")
        let base = try statement(Self.prerequisitesQuery)
        var held = Set<ChunkDigest>()
        var frontier = Array(digests)
        while let digest = frontier.popLast() {
            guard held.insert(digest).inserted else { continue }
            try hold.run([.blob(digest.bytes), .real(expiry)])
            frontier += try base.rows([.blob(digest.bytes)]) { try $0.digest(0) }
        }
    }

    /// The newest committed shard `shard` of `run` before `step`: a shard's delta bases when the store
    /// holds no complete checkpoint newer (a rank that keeps its own store holds only its own shards).
    func previousShard(run: String, before step: Int64, shard: ShardSpec) throws -> (id: CheckpointID, step: Int64)? {
        try statement("""
            SELECT p.manifest_id, p.step FROM pending_shards p JOIN runs r ON r.id = p.run_id
            WHERE r.name = ? AND p.step < ? AND p.shard_index = ? AND p.shard_count = ? ORDER BY p.step DESC LIMIT 1
            """).firstRow([.text(run), .integer(step), .integer(Int64(shard.index)), .integer(Int64(shard.count))]) { (row) throws in
            (CheckpointID(try row.digest(0)), row.int(1))
        }
    }
}
