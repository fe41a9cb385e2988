import Foundation

extension Catalogue {
    /// The policy stored for `scope` (a run name, or `*` for the store default).
    func policy(scope: String) throws -> RetentionPolicy? {
        guard let text = try statement("SELECT policy FROM policies WHERE scope = ?").firstRow([.text(scope)], { $0.text(0) }) else { return nil }
        do {
            return try JSONDecoder().decode(RetentionPolicy.self, from: Data(text.utf8))
        } catch {
            throw CKStoreError(.damaged, "the stored policy of \(scope == "*" ? "the store" : "run " + scope) cannot be read: \(error)")
        }
    }

    func setPolicy(_ policy: RetentionPolicy, scope: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let text = String(decoding: try encoder.encode(policy), as: UTF8.self)
        try statement("INSERT INTO policies (scope, policy, updated_at) VALUES (?, ?, ?) ON CONFLICT(scope) DO UPDATE SET policy = excluded.policy, updated_at = excluded.updated_at")
            .run([.text(scope), .text(text), .real(Date().timeIntervalSince1970)])
    }

    func clearPolicy(scope: String) throws -> Bool {
        try statement("DELETE FROM policies WHERE scope = ?").run([.text(scope)])
        return database.changes > 0
    }

    func policyScopes() throws -> [String] {
        try statement("SELECT scope FROM policies ORDER BY scope").rows([]) { $0.text(0) }
    }

    /// The policy that applies to `run`: its own, else the store default, else the empty policy.
    func effectivePolicy(run: String) throws -> (RetentionPolicy, source: String) {
        if let own = try policy(scope: run) { return (own, "run") }
        if let fallback = try policy(scope: "*") { return (fallback, "default") }
        return (RetentionPolicy(), "none")
    }

    func isPinned(_ id: CheckpointID) throws -> Bool {
        try statement("SELECT 1 FROM pins WHERE checkpoint_id = ?").firstRow([.blob(id.digest.bytes)]) { _ in true } ?? false
    }

    func setPinned(_ id: CheckpointID, _ pinned: Bool) throws {
        if pinned {
            try statement("INSERT OR IGNORE INTO pins (checkpoint_id, pinned_at) VALUES (?, ?)").run([.blob(id.digest.bytes), .real(Date().timeIntervalSince1970)])
        } else {
            try statement("DELETE FROM pins WHERE checkpoint_id = ?").run([.blob(id.digest.bytes)])
        }
    }

    func setTag(_ id: CheckpointID, _ tag: String, _ present: Bool) throws {
        if present {
            try statement("INSERT OR IGNORE INTO tags (checkpoint_id, tag) VALUES (?, ?)").run([.blob(id.digest.bytes), .text(tag)])
        } else {
            try statement("DELETE FROM tags WHERE checkpoint_id = ? AND tag = ?").run([.blob(id.digest.bytes), .text(tag)])
        }
    }

    /// Files a part rule dropped from a checkpoint, with the part's name.
    func droppedFiles(of id: CheckpointID) throws -> [String: String] {
        var out = [String: String]()
        for (path, part) in try statement("SELECT path, part FROM dropped_files WHERE checkpoint_id = ?").rows([.blob(id.digest.bytes)], { ($0.text(0), $0.text(1)) }) {
            out[path] = part
        }
        return out
    }

    /// Removes a checkpoint's row and its references; its chunks stay until gc sweeps them.
    func deleteCheckpoint(_ id: CheckpointID) throws {
        try statement("DELETE FROM checkpoints WHERE id = ?").run([.blob(id.digest.bytes)])
    }

    /// Records that `paths` (part `part`) are dropped from `id`, and re-counts its chunk references from
    /// the remaining files of `manifest`.
    func drop(_ paths: [String], part: String, from id: CheckpointID, manifest: Manifest) throws {
        let key = SQLiteStatement.Value.blob(id.digest.bytes)
        let record = try statement("INSERT OR IGNORE INTO dropped_files (checkpoint_id, path, part) VALUES (?, ?, ?)")
        for path in paths { try record.run([key, .text(path), .text(part)]) }
        let dropped = try Set(droppedFiles(of: id).keys)
        var uses = [ChunkDigest: Int]()
        for file in manifest.files where !dropped.contains(file.path) {
            for chunk in file.chunks { uses[chunk.digest, default: 0] += 1 }
        }
        uses[id.digest, default: 0] += 1
        try statement("DELETE FROM checkpoint_chunks WHERE checkpoint_id = ?").run([key])
        let insert = try statement("INSERT INTO checkpoint_chunks (checkpoint_id, digest, uses) VALUES (?, ?, ?)")
        for (digest, count) in uses.sorted(by: { $0.key < $1.key }) { try insert.run([key, .blob(digest.bytes), .integer(Int64(count))]) }
    }

    /// Chunk rows that no checkpoint needs, as content or as a delta base of a needed chunk.
    func unreferencedChunks() throws -> [ChunkLocation] {
        // Live: every chunk a checkpoint references, and transitively the delta bases of live chunks (I-4).
        try chunkLocations(where: """
            digest NOT IN (
                WITH RECURSIVE live(d) AS (
                    SELECT digest FROM checkpoint_chunks
                    UNION SELECT c.base FROM chunks c JOIN live ON c.digest = live.d WHERE c.base IS NOT NULL
                )
                SELECT d FROM live
            )
            """)
    }

    /// Deletes the chunk rows of `digests`.
    func deleteChunks(_ digests: [ChunkDigest]) throws {
        let delete = try statement("DELETE FROM chunks WHERE digest = ?")
        for digest in digests { try delete.run([.blob(digest.bytes)]) }
    }

    /// Live frames per pack: count and bytes (frame headers included).
    func liveFramesByPack() throws -> [PackID: (count: Int, bytes: Int64)] {
        var out = [PackID: (count: Int, bytes: Int64)]()
        for (pack, count, bytes) in try statement("SELECT pack_id, count(*), sum(stored_length) FROM chunks GROUP BY pack_id").rows([], { ($0.text(0), Int($0.int(1)), $0.int(2)) }) {
            if let id = PackID(hex: pack) { out[id] = (count, bytes + Int64(count * PackFormat.frameHeaderSize)) }
        }
        return out
    }
}
