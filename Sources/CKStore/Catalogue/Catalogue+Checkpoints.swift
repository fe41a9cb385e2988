extension Catalogue {
    private static let summaryColumns = """
        c.id, r.name, c.step, c.epoch, c.created_at, c.logical_bytes, c.stored_bytes_added,
        c.chunk_count, c.file_count, c.tensor_count, c.parent
        """

    /// Summaries of the checkpoints of `run` (every run when nil), by run and step.
    func summaries(run: String? = nil) throws -> [CheckpointSummary] {
        if let run { return try summaries(where: "r.name = ?", [.text(run)]) }
        return try summaries(where: "1", [])
    }

    /// Summaries of the checkpoints matching `filter` (a SQL condition over `c` and `r`), oldest first.
    private func summaries(where filter: String, _ values: [SQLiteStatement.Value]) throws -> [CheckpointSummary] {
        let sql = "SELECT \(Self.summaryColumns) FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE \(filter) ORDER BY r.name, c.step, c.created_at"
        var summaries = try statement(sql).rows(values) { (row) throws in
            CheckpointSummary(
                id: CheckpointID(try row.digest(0)), run: row.text(1), step: row.int(2),
                epoch: row.isNull(3) ? nil : row.double(3), createdAt: row.double(4),
                logicalBytes: row.int(5), storedBytesAdded: row.int(6), chunkCount: Int(row.int(7)),
                fileCount: Int(row.int(8)), tensorCount: Int(row.int(9)),
                parent: row.isNull(10) ? nil : CheckpointID(try row.digest(10)), metrics: [:], tags: []
            )
        }
        let metrics = try statement("SELECT key, value FROM metrics WHERE checkpoint_id = ? ORDER BY key")
        let tags = try statement("SELECT tag FROM tags WHERE checkpoint_id = ? ORDER BY tag")
        let parts = try statement("SELECT DISTINCT part FROM dropped_files WHERE checkpoint_id = ? ORDER BY part")
        let pinned = try statement("SELECT 1 FROM pins WHERE checkpoint_id = ?")
        for index in summaries.indices {
            let id = SQLiteStatement.Value.blob(summaries[index].id.digest.bytes)
            for (key, value) in try metrics.rows([id], { ($0.text(0), $0.number(1)) }) {
                summaries[index].metrics[key] = value
            }
            summaries[index].tags = try tags.rows([id]) { $0.text(0) }
            summaries[index].droppedParts = try parts.rows([id]) { $0.text(0) }
            summaries[index].pinned = try pinned.firstRow([id]) { _ in true } ?? false
        }
        return summaries
    }

    func summary(of id: CheckpointID) throws -> CheckpointSummary? {
        try summaries(where: "c.id = ?", [.blob(id.digest.bytes)]).first
    }

    /// The checkpoint of `run` at `step`, with its content digest.
    func checkpoint(run: String, step: Int64) throws -> (id: CheckpointID, content: ChunkDigest)? {
        try statement("SELECT c.id, c.content_digest FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE r.name = ? AND c.step = ?")
            .firstRow([.text(run), .integer(step)]) { (row) throws in (CheckpointID(try row.digest(0)), try row.digest(1)) }
    }

    /// The run's checkpoint with the largest step below `step`: the new checkpoint's parent.
    func parent(run: String, before step: Int64) throws -> CheckpointID? {
        try statement("SELECT c.id FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE r.name = ? AND c.step < ? ORDER BY c.step DESC LIMIT 1")
            .firstRow([.text(run), .integer(step)]) { (row) throws in CheckpointID(try row.digest(0)) }
    }

    /// The run's checkpoint with the largest step.
    func latest(run: String) throws -> CheckpointID? {
        try statement("SELECT c.id FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE r.name = ? ORDER BY c.step DESC LIMIT 1")
            .firstRow([.text(run)]) { (row) throws in CheckpointID(try row.digest(0)) }
    }

    /// Checkpoint ids whose hex form starts with `prefix` (at most `limit`).
    func checkpoints(withPrefix prefix: String, limit: Int = 10) throws -> [CheckpointID] {
        // Ids are blobs; compare on their hex form. Checkpoint counts are small (thousands), so a scan is fine.
        try statement("SELECT id FROM checkpoints WHERE lower(hex(id)) LIKE ? || '%' ORDER BY id LIMIT ?")
            .rows([.text(prefix.lowercased()), .integer(Int64(limit))]) { (row) throws in CheckpointID(try row.digest(0)) }
    }

    /// What a put records in its commit transaction.
    struct NewCheckpoint {
        var id: CheckpointID
        var manifest: Manifest
        var contentDigest: ChunkDigest
        var storedBytesAdded: Int64
        /// Every chunk the checkpoint needs, the manifest frame included, with its number of uses.
        var chunkUses: [ChunkDigest: Int]
        /// What the put took up to its commit, recorded for `advise` (nil for pulls and repairs).
        var putSeconds: Double? = nil
    }

    /// Inserts the checkpoint row and its references. Runs inside the put's transaction.
    func insert(_ checkpoint: NewCheckpoint, now: Double) throws {
        let manifest = checkpoint.manifest
        let runID = try ensureRun(named: manifest.run, now: now)
        let id = SQLiteStatement.Value.blob(checkpoint.id.digest.bytes)
        try statement("""
            INSERT INTO checkpoints (id, run_id, step, epoch, created_at, logical_bytes, stored_bytes_added,
                                     chunk_count, file_count, tensor_count, content_digest, parent)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """).run([
            id, .integer(runID), .integer(manifest.step), manifest.epoch.map { .real($0) } ?? .null,
            .real(manifest.createdAt), .integer(manifest.logicalBytes), .integer(checkpoint.storedBytesAdded),
            .integer(Int64(manifest.chunkCount)), .integer(Int64(manifest.files.count)), .integer(Int64(manifest.tensorCount)),
            .blob(checkpoint.contentDigest.bytes), manifest.parent.map { .blob($0.digest.bytes) } ?? .null,
        ])
        let reference = try statement("INSERT INTO checkpoint_chunks (checkpoint_id, digest, uses) VALUES (?, ?, ?)")
        for (digest, uses) in checkpoint.chunkUses.sorted(by: { $0.key < $1.key }) {
            try reference.run([id, .blob(digest.bytes), .integer(Int64(uses))])
        }
        try recordPieces(of: checkpoint.id, runID: runID, manifest: manifest)
        let tag = try statement("INSERT OR IGNORE INTO tags (checkpoint_id, tag) VALUES (?, ?)")
        for name in manifest.tags { try tag.run([id, .text(name)]) }
        let metric = try statement("INSERT INTO metrics (checkpoint_id, key, value) VALUES (?, ?, ?)")
        // SQLite stores a NaN REAL as NULL; a diverged run's loss is kept as the text NaN instead.
        for (key, value) in manifest.metrics.sorted(by: { $0.key < $1.key }) { try metric.run([id, .text(key), value.isNaN ? .text("NaN") : .real(value)]) }
        if let seconds = checkpoint.putSeconds {
            try recordCost(CheckpointCost(checkpoint: checkpoint.id, kind: .put, seconds: seconds, bytes: checkpoint.storedBytesAdded, recordedAt: now))
        }
    }
}
