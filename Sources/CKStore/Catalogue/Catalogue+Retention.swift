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
    func effectivePolicy(run: String) throws -> (RetentionPolicy, source: PolicySource) {
        if let own = try policy(scope: run) { return (own, .run) }
        if let fallback = try policy(scope: "*") { return (fallback, .default) }
        return (RetentionPolicy(), .none)
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

    /// Files a part rule dropped whole from a checkpoint, with the part's name.
    func droppedFiles(of id: CheckpointID) throws -> [String: String] {
        var out = [String: String]()
        for (path, part) in try statement("SELECT path, part FROM dropped_files WHERE checkpoint_id = ? AND tensor = ''").rows([.blob(id.digest.bytes)], { ($0.text(0), $0.text(1)) }) {
            out[path] = part
        }
        return out
    }

    /// Tensors a part rule dropped from files of a checkpoint: path → tensor names.
    func droppedTensors(of id: CheckpointID) throws -> [String: Set<String>] {
        var out = [String: Set<String>]()
        for (path, tensor) in try statement("SELECT path, tensor FROM dropped_files WHERE checkpoint_id = ? AND tensor != ''").rows([.blob(id.digest.bytes)], { ($0.text(0), $0.text(1)) }) {
            out[path, default: []].insert(tensor)
        }
        return out
    }

    /// Removes a checkpoint's row and its references; its chunks stay until gc sweeps them.
    func deleteCheckpoint(_ id: CheckpointID) throws {
        try statement("DELETE FROM checkpoint_chunks WHERE checkpoint_id = ?").run([.blob(id.digest.bytes)])
        try statement("DELETE FROM checkpoint_labels WHERE checkpoint_id = ?").run([.blob(id.digest.bytes)])
        try statement("DELETE FROM checkpoint_costs WHERE checkpoint = ?").run([.blob(id.digest.bytes)])
        try statement("DELETE FROM checkpoints WHERE id = ?").run([.blob(id.digest.bytes)])
    }

    /// Records that `paths` and `tensors` (path → names; part `part`) are dropped from `id`, and re-counts
    /// its chunk references from what remains of `manifest`. With `sweep`, the sweep in progress counts
    /// this checkpoint's references from what remains too.
    func drop(_ paths: [String], tensors: [String: [String]] = [:], part: CheckpointPart, from id: CheckpointID, manifest: Manifest, sweep: Bool = false) throws {
        let key = SQLiteStatement.Value.blob(id.digest.bytes)
        let droppedPaths = try Set(droppedFiles(of: id).keys).union(paths)
        var droppedNames = try droppedTensors(of: id)
        for (path, names) in tensors { droppedNames[path, default: []].formUnion(names) }
        let uses = manifest.chunkUses(id: id, droppedPaths: droppedPaths, droppedTensors: droppedNames)
        if sweep {
            // The sweep counts this checkpoint's references from what remains only.
            try statement("INSERT OR IGNORE INTO temp.gc_excluded (id) VALUES (?)").run([key])
            let live = try statement("INSERT OR IGNORE INTO temp.gc_live (d) VALUES (?)")
            for digest in uses.keys { try live.run([.blob(digest.bytes)]) }
        }
        try forgetPieces(of: id, paths: paths, tensors: tensors)
        let record = try statement("INSERT OR IGNORE INTO dropped_files (checkpoint_id, path, tensor, part) VALUES (?, ?, ?, ?)")
        for path in paths { try record.run([key, .text(path), .text(""), .text(part.rawValue)]) }
        for (path, names) in tensors { for name in names { try record.run([key, .text(path), .text(name), .text(part.rawValue)]) } }
        try statement("DELETE FROM checkpoint_chunks WHERE checkpoint_id = ?").run([key])
        let insert = try statement("INSERT INTO checkpoint_chunks (checkpoint_id, digest, uses) VALUES (?, ?, ?)")
        for (digest, count) in uses.sorted(by: { $0.key < $1.key }) { try insert.run([key, .blob(digest.bytes), .integer(Int64(count))]) }
    }
}
