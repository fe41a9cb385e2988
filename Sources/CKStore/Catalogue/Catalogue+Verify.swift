extension Catalogue {
    /// `PRAGMA quick_check`: "ok", or SQLite's list of problems.
    func integrityProblems() throws -> [String] {
        let rows = try database.prepare("PRAGMA quick_check").rows { $0.text(0) }
        return rows == ["ok"] ? [] : rows
    }

    /// A pack row.
    struct PackRow: Sendable {
        var id: PackID
        var size: Int64
        var frameCount: Int
    }

    func packRows() throws -> [PackRow] {
        try statement("SELECT id, size, frame_count FROM packs ORDER BY id").rows { (row) throws in
            guard let id = PackID(hex: row.text(0)) else { throw CKStoreError(.damaged, "catalogue lists a pack with a malformed name \(row.text(0)); run `ckstore repair`") }
            return PackRow(id: id, size: row.int(1), frameCount: Int(row.int(2)))
        }
    }

    /// Every chunk row.
    func chunkLocations() throws -> [ChunkLocation] {
        try statement("SELECT digest, pack_id, offset, stored_length, raw_length, encoding, kind FROM chunks")
            .rows([]) { (row) throws in
                guard let pack = PackID(hex: row.text(1)),
                      let encoding = FrameEncoding(rawValue: UInt8(truncatingIfNeeded: row.int(5))),
                      let kind = FrameKind(rawValue: UInt8(truncatingIfNeeded: row.int(6))) else {
                    throw CKStoreError(.damaged, "catalogue holds a malformed chunk row; run `ckstore repair`")
                }
                return ChunkLocation(digest: try row.digest(0), pack: pack, offset: row.int(2), storedLength: Int(row.int(3)), rawLength: Int(row.int(4)), encoding: encoding, kind: kind)
            }
    }

    /// Every chunk some checkpoint needs (as content or as a delta base).
    func referencedDigests(of checkpoints: [CheckpointID]? = nil) throws -> Set<ChunkDigest> {
        var out = Set<ChunkDigest>()
        if let checkpoints {
            // A pending shard's manifest id names its references as a checkpoint's id names its.
            let query = try statement("SELECT digest FROM checkpoint_chunks WHERE checkpoint_id = ?1 UNION SELECT digest FROM shard_chunks WHERE manifest_id = ?1")
            for id in checkpoints {
                for digest in try query.rows([.blob(id.digest.bytes)], { try $0.digest(0) }) { out.insert(digest) }
            }
        } else {
            for digest in try statement("SELECT digest FROM checkpoint_chunks UNION SELECT digest FROM shard_chunks").rows([], { try $0.digest(0) }) { out.insert(digest) }
        }
        // Delta bases of the chunks needed are needed too, transitively.
        var frontier = Array(out)
        let base = try statement(Self.prerequisitesQuery)
        while let digest = frontier.popLast() {
            for next in try base.rows([.blob(digest.bytes)], { try $0.digest(0) }) where out.insert(next).inserted {
                frontier.append(next)
            }
        }
        return out
    }

    /// The checkpoints that need each of `digests`: one scan of the references (there is no index by
    /// digest; this is only asked when something is damaged).
    func checkpoints(using digests: Set<ChunkDigest>) throws -> [ChunkDigest: [CheckpointID]] {
        var out = [ChunkDigest: [CheckpointID]]()
        guard !digests.isEmpty else { return out }
        let scan = try statement("SELECT checkpoint_id, digest FROM checkpoint_chunks")
        try scan.bind([])
        while try scan.step() {
            let digest = try scan.digest(1)
            if digests.contains(digest) { out[digest, default: []].append(CheckpointID(try scan.digest(0))) }
        }
        return out
    }

    func allCheckpointIDs() throws -> [CheckpointID] {
        try statement("SELECT id FROM checkpoints").rows([]) { CheckpointID(try $0.digest(0)) }
    }

    /// The run's checkpoints, newest step first.
    func checkpointsNewestFirst(run: String) throws -> [CheckpointID] {
        try statement("SELECT c.id FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE r.name = ? ORDER BY c.step DESC")
            .rows([.text(run)]) { CheckpointID(try $0.digest(0)) }
    }
}
