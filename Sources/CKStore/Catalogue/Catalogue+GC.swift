extension Catalogue {
    /// What a sweep found: the dead chunks, the live frames per pack, and the packs.
    struct SweepOutcome: Sendable {
        var deadChunks: Int
        var deadBytes: Int64
        var live: [PackID: (count: Int, bytes: Int64)]
        var packs: [PackRow]
    }

    /// Starts a sweep inside a transaction: temporary tables for the live set, the checkpoints whose
    /// references are counted separately, and `deleting`, whose references no longer count.
    func prepareSweep(deleting: [CheckpointID]) throws {
        try database.execute("""
            CREATE TEMP TABLE IF NOT EXISTS gc_live (d BLOB PRIMARY KEY) WITHOUT ROWID;
            CREATE TEMP TABLE IF NOT EXISTS gc_excluded (id BLOB PRIMARY KEY) WITHOUT ROWID;
            CREATE TEMP TABLE IF NOT EXISTS gc_deleted (id BLOB PRIMARY KEY) WITHOUT ROWID;
            CREATE TEMP TABLE IF NOT EXISTS gc_direct (d BLOB PRIMARY KEY) WITHOUT ROWID;
            DELETE FROM temp.gc_direct;
            DELETE FROM temp.gc_live;
            DELETE FROM temp.gc_excluded;
            DELETE FROM temp.gc_deleted;
            """)
        let exclude = try statement("INSERT OR IGNORE INTO temp.gc_excluded (id) VALUES (?)")
        let delete = try statement("INSERT OR IGNORE INTO temp.gc_deleted (id) VALUES (?)")
        for id in deleting {
            try exclude.run([.blob(id.digest.bytes)])
            try delete.run([.blob(id.digest.bytes)])
        }
    }

    /// Computes the live set (references of every checkpoint not excluded, plus the explicitly added, plus
    /// delta bases transitively), measures what is dead, and deletes the excluded checkpoints in
    /// `gc_deleted` and the dead chunks. Planning runs it in a transaction it rolls back.
    func sweep() throws -> SweepOutcome {
        try database.execute("""
            INSERT OR IGNORE INTO temp.gc_live (d) SELECT digest FROM chunks WHERE kind = \(FrameKind.annotation.rawValue);
            INSERT OR IGNORE INTO temp.gc_live (d)
                SELECT digest FROM checkpoint_chunks
                WHERE checkpoint_id IN (SELECT id FROM checkpoints WHERE id NOT IN (SELECT id FROM temp.gc_excluded));
            INSERT OR IGNORE INTO temp.gc_live (d)
                SELECT digest FROM shard_chunks
                WHERE manifest_id IN (SELECT manifest_id FROM pending_shards WHERE manifest_id NOT IN (SELECT id FROM temp.gc_excluded));
            DELETE FROM chunk_holds WHERE expires_at <= (julianday('now') - 2440587.5) * 86400.0;
            INSERT OR IGNORE INTO temp.gc_live (d) SELECT digest FROM chunk_holds;
            """)
        // What checkpoints name themselves, before their bases join: gc's re-encoding looks for bases
        // that only deltas keep alive.
        try database.execute("INSERT OR IGNORE INTO temp.gc_direct (d) SELECT d FROM temp.gc_live")
        // Delta bases and inputs of live chunks are live (I-4), to any depth.
        let bases = try statement("""
            INSERT OR IGNORE INTO temp.gc_live (d)
                SELECT c.base FROM chunks c JOIN temp.gc_live l ON c.digest = l.d WHERE c.base IS NOT NULL
            """)
        let inputs = try statement("""
            INSERT OR IGNORE INTO temp.gc_live (d)
                SELECT i.input FROM chunk_inputs i JOIN temp.gc_live l ON i.digest = l.d
            """)
        var added: Int
        repeat {
            try bases.run()
            added = database.changes
            try inputs.run()
            added += database.changes
        } while added > 0
        let dead = try statement("SELECT count(*), coalesce(sum(stored_length), 0) FROM chunks WHERE digest NOT IN (SELECT d FROM temp.gc_live)")
            .firstRow([]) { ($0.int(0), $0.int(1)) } ?? (0, 0)
        var live = [PackID: (count: Int, bytes: Int64)]()
        for (pack, count, bytes) in try statement("SELECT pack_id, count(*), sum(stored_length) FROM chunks WHERE digest IN (SELECT d FROM temp.gc_live) GROUP BY pack_id").rows([], { ($0.text(0), Int($0.int(1)), $0.int(2)) }) {
            if let id = PackID(hex: pack) { live[id] = (count, bytes + Int64(count * PackFormat.frameHeaderSize)) }
        }
        let packs = try packRows()
        do {
            try database.execute("""
                DELETE FROM checkpoint_chunks WHERE checkpoint_id IN (SELECT id FROM temp.gc_deleted);
                DELETE FROM checkpoint_labels WHERE checkpoint_id IN (SELECT id FROM temp.gc_deleted);
                DELETE FROM checkpoint_costs WHERE checkpoint IN (SELECT id FROM temp.gc_deleted);
                DELETE FROM checkpoints WHERE id IN (SELECT id FROM temp.gc_deleted);
                DELETE FROM shard_chunks WHERE manifest_id IN (SELECT id FROM temp.gc_deleted);
                DELETE FROM pending_shards WHERE manifest_id IN (SELECT id FROM temp.gc_deleted);
                DELETE FROM chunks WHERE digest NOT IN (SELECT d FROM temp.gc_live);
                """)
        }
        return SweepOutcome(deadChunks: Int(dead.0), deadBytes: dead.1 + dead.0 * Int64(PackFormat.frameHeaderSize), live: live, packs: packs)
    }

    /// A live delta frame, during a sweep: what gc's re-encoding weighs.
    struct LiveDelta: Sendable {
        var digest: ChunkDigest
        var base: ChunkDigest
        var storedLength: Int64
    }

    /// Every live delta frame of the sweep in progress that gc may store in full (an index keeps this from
    /// scanning every chunk). Predicted frames are not among them: see ``livePredictionSources()``.
    func liveDeltas() throws -> [LiveDelta] {
        try statement("SELECT digest, base, stored_length FROM chunks WHERE base IS NOT NULL AND encoding != \(FrameEncoding.predictedPlanes.rawValue) AND digest IN (SELECT d FROM temp.gc_live)")
            .rows([]) { LiveDelta(digest: try $0.digest(0), base: try $0.digest(1), storedLength: $0.int(2)) }
    }

    /// The bases and inputs of the live predicted frames of the sweep in progress. gc does not re-encode
    /// predicted frames, so these stay as long as the frames do, as if a checkpoint named them.
    func livePredictionSources() throws -> Set<ChunkDigest> {
        let bases = try statement("SELECT base FROM chunks WHERE base IS NOT NULL AND encoding = \(FrameEncoding.predictedPlanes.rawValue) AND digest IN (SELECT d FROM temp.gc_live)")
            .rows([]) { try $0.digest(0) }
        let inputs = try statement("SELECT input FROM chunk_inputs WHERE digest IN (SELECT d FROM temp.gc_live)").rows([]) { try $0.digest(0) }
        return Set(bases + inputs)
    }

    /// Whether a checkpoint of the sweep in progress names `digest` itself (not only as a delta base).
    func isDirectlyReferenced(_ digest: ChunkDigest) throws -> Bool {
        try statement("SELECT 1 FROM temp.gc_direct WHERE d = ?").firstRow([.blob(digest.bytes)]) { _ in true } ?? false
    }

    /// The stored length of `digest`'s frame (payload only), if the catalogue has it.
    func storedLength(of digest: ChunkDigest) throws -> Int64? {
        try statement("SELECT stored_length FROM chunks WHERE digest = ?").firstRow([.blob(digest.bytes)]) { $0.int(0) }
    }

    /// Points a delta chunk at its full frame at `location`; nothing changes unless it is still a delta
    /// against `base`. Returns whether it was.
    @discardableResult
    func rebase(_ digest: ChunkDigest, from base: ChunkDigest, to location: ChunkLocation) throws -> Bool {
        try statement("UPDATE chunks SET pack_id = ?, offset = ?, stored_length = ?, encoding = ?, base = NULL WHERE digest = ? AND base = ?")
            .run([.text(location.pack.hex), .integer(location.offset), .integer(Int64(location.storedLength)),
                  .integer(Int64(location.encoding.rawValue)), .blob(digest.bytes), .blob(base.bytes)])
        return database.changes > 0
    }

    /// The chunk rows whose frames are in `pack`, by offset.
    func chunkLocations(inPack pack: PackID) throws -> [ChunkLocation] {
        try statement("SELECT digest, offset, stored_length, raw_length, encoding, kind FROM chunks WHERE pack_id = ? ORDER BY offset")
            .rows([.text(pack.hex)]) { (row) throws in
                guard let encoding = FrameEncoding(rawValue: UInt8(truncatingIfNeeded: row.int(4))),
                      let kind = FrameKind(rawValue: UInt8(truncatingIfNeeded: row.int(5))) else {
                    throw CKStoreError(.damaged, "catalogue holds a malformed chunk row; run `ckstore repair`")
                }
                return ChunkLocation(digest: try row.digest(0), pack: pack, offset: row.int(1), storedLength: Int(row.int(2)),
                                     rawLength: Int(row.int(3)), encoding: encoding, kind: kind)
            }
    }

    /// Moves chunk `digest`'s row from `pack` to where its copy is; nothing changes when it is no longer in `pack`.
    func moveChunk(_ digest: ChunkDigest, from pack: PackID, to location: ChunkLocation) throws {
        try statement("UPDATE chunks SET pack_id = ?, offset = ? WHERE digest = ? AND pack_id = ?")
            .run([.text(location.pack.hex), .integer(location.offset), .blob(digest.bytes), .text(pack.hex)])
    }

    /// Points chunk `digest`'s row at `offset` of `pack`, wherever it was.
    func relocateChunk(_ digest: ChunkDigest, to pack: PackID, offset: Int64) throws {
        try statement("UPDATE chunks SET pack_id = ?, offset = ? WHERE digest = ?").run([.text(pack.hex), .integer(offset), .blob(digest.bytes)])
    }

    /// Forgets chunk `digest` (its frame is gone); the next put of that content writes it again.
    func deleteChunk(_ digest: ChunkDigest) throws {
        try statement("DELETE FROM chunks WHERE digest = ?").run([.blob(digest.bytes)])
    }

    /// The packs some chunk row points into.
    func packsInUse() throws -> Set<PackID> {
        Set(try statement("SELECT DISTINCT pack_id FROM chunks").rows([]) { PackID(hex: $0.text(0)) }.compactMap { $0 })
    }

    /// Forgets the frames of `packs` that no checkpoint references and no frame is a delta against, and
    /// the packs left with none: what a put whose commit it had to take back leaves behind. Frames a
    /// concurrent put reused meanwhile stay. The files become orphans for gc.
    func forgetUnusedFrames(inPacks packs: [PackID]) throws {
        let frames = try statement("""
            DELETE FROM chunks WHERE pack_id = ?
              AND digest NOT IN (SELECT digest FROM checkpoint_chunks)
              AND digest NOT IN (SELECT digest FROM shard_chunks)
              AND digest NOT IN (SELECT digest FROM chunk_holds)
              AND digest NOT IN (SELECT base FROM chunks WHERE base IS NOT NULL)
              AND digest NOT IN (SELECT input FROM chunk_inputs)
            """)
        let pack = try statement("DELETE FROM packs WHERE id = ? AND NOT EXISTS (SELECT 1 FROM chunks WHERE pack_id = ?)")
        for id in packs {
            try frames.run([.text(id.hex)])
            try pack.run([.text(id.hex), .text(id.hex)])
        }
    }

    /// Forgets a pack row (its file is deleted after the commit).
    func deletePackRow(_ id: PackID) throws {
        try statement("DELETE FROM packs WHERE id = ?").run([.text(id.hex)])
    }
}
