/// The cache of what remotes hold (schema 005): index objects read, where their frames are, commit objects.
extension Catalogue {
    /// A frame a remote holds, with the index object that listed it and the pack it is in.
    struct RemoteFrameRow: Sendable {
        var frame: PackedFrame
        var index: String
        var pack: String
    }

    func knownRemoteIndexes(_ remote: String) throws -> Set<String> {
        Set(try statement("SELECT name FROM remote_indexes WHERE remote = ?").rows([.text(remote)]) { $0.text(0) })
    }

    /// Records an index object and the frames it lists.
    func insertRemoteIndex(_ remote: String, name: String, packs: [(name: String, frames: [PackedFrame])]) throws {
        try statement("INSERT OR IGNORE INTO remote_indexes (remote, name) VALUES (?, ?)").run([.text(remote), .text(name)])
        let insert = try statement("""
            INSERT OR IGNORE INTO remote_frames (remote, digest, index_name, pack, offset, stored_length, raw_length, encoding, kind, base, inputs)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """)
        for pack in packs {
            for frame in pack.frames {
                try insert.run([
                    .text(remote), .blob(frame.digest.bytes), .text(name), .text(pack.name), .integer(frame.offset),
                    .integer(Int64(frame.storedLength)), .integer(Int64(frame.rawLength)), .integer(Int64(frame.encoding)),
                    .integer(Int64(frame.kind)), frame.base.map { .blob($0.bytes) } ?? .null,
                    frame.inputs.isEmpty ? .null : .blob(frame.inputs.flatMap(\.bytes)),
                ])
            }
        }
    }

    /// Forgets index objects (remote gc condemned or deleted them) and the frames known through them.
    func forgetRemoteIndexes(_ remote: String, _ names: some Sequence<String>) throws {
        let frames = try statement("DELETE FROM remote_frames WHERE remote = ? AND index_name = ?")
        let indexes = try statement("DELETE FROM remote_indexes WHERE remote = ? AND name = ?")
        for name in names {
            try frames.run([.text(remote), .text(name)])
            try indexes.run([.text(remote), .text(name)])
        }
    }

    /// Where a remote holds `digest`: a copy an index object lists, rather than one only pending; with
    /// `indexes`, only a copy one of those index objects lists (a pull uses what its commit names, not a
    /// copy the cache remembers from an index a remote gc may have deleted since).
    func remoteFrame(_ remote: String, _ digest: ChunkDigest, in indexes: Set<String>? = nil) throws -> RemoteFrameRow? {
        let rows = try statement("""
            SELECT index_name, pack, offset, stored_length, raw_length, encoding, kind, base, inputs FROM remote_frames
            WHERE remote = ? AND digest = ? ORDER BY index_name LIKE 'pending:%', index_name
            """).rows([.text(remote), .blob(digest.bytes)]) { (row) throws in
                RemoteFrameRow(
                    frame: PackedFrame(digest: digest, offset: row.int(2), storedLength: Int(row.int(3)), rawLength: Int(row.int(4)),
                                       encoding: UInt8(truncatingIfNeeded: row.int(5)), kind: UInt8(truncatingIfNeeded: row.int(6)),
                                       base: row.isNull(7) ? nil : try row.digest(7), inputs: try Self.digestList(row, 8)),
                    index: row.text(0), pack: row.text(1))
            }
        guard let indexes else { return rows.first }
        return rows.first { indexes.contains($0.index) }
    }

    /// A column of concatenated digests (a remote frame's inputs); empty when null.
    static func digestList(_ row: SQLiteStatement, _ column: Int32) throws -> [ChunkDigest] {
        guard !row.isNull(column) else { return [] }
        let bytes = row.blob(column)
        guard bytes.count % 32 == 0 else { throw CKStoreError(.catalogue, "catalogue holds a malformed list of frame inputs; run `ckstore repair`") }
        return bytes.withUnsafeBytes { raw in stride(from: 0, to: bytes.count, by: 32).map { ChunkDigest(loading: UnsafeRawBufferPointer(rebasing: raw[$0..<($0 + 32)])) } }
    }

    func remoteCommitBodies(_ remote: String) throws -> [(key: String, body: String)] {
        try statement("SELECT key, body FROM remote_commits WHERE remote = ? ORDER BY key").rows([.text(remote)]) { ($0.text(0), $0.text(1)) }
    }

    func setRemoteCommit(_ remote: String, key: String, id: CheckpointID, body: String) throws {
        try statement("INSERT OR REPLACE INTO remote_commits (remote, key, id, body) VALUES (?, ?, ?, ?)")
            .run([.text(remote), .text(key), .blob(id.digest.bytes), .text(body)])
    }

    func forgetRemoteCommit(_ remote: String, key: String) throws {
        try statement("DELETE FROM remote_commits WHERE remote = ? AND key = ?").run([.text(remote), .text(key)])
    }

    func remoteSyncTime(_ remote: String) throws -> Double? {
        try statement("SELECT synced_at FROM remote_state WHERE remote = ?").firstRow([.text(remote)]) { $0.double(0) }
    }

    func setRemoteSyncTime(_ remote: String, _ time: Double) throws {
        try statement("INSERT OR REPLACE INTO remote_state (remote, synced_at) VALUES (?, ?)").run([.text(remote), .real(time)])
    }

    /// Forgets everything cached about a remote (`remote rm`).
    func forgetRemote(_ remote: String) throws {
        for table in ["remote_frames", "remote_indexes", "remote_commits", "remote_state"] {
            try statement("DELETE FROM \(table) WHERE remote = ?").run([.text(remote)])
        }
        let prefix = Self.remoteFactPrefix(remote)
        try statement("DELETE FROM settings WHERE substr(key, 1, ?) = ?").run([.integer(Int64(prefix.unicodeScalars.count)), .text(prefix)])
    }

    /// What this store learned of a remote's server (whether it honours conditional creates, its
    /// bucket's region), in the settings table under `remote:URL:NAME`; a cache, like the rest.
    func remoteFact(_ remote: String, _ name: String) throws -> String? {
        try statement("SELECT value FROM settings WHERE key = ?").rows([.text(Self.remoteFactPrefix(remote) + name)]) { $0.text(0) }.first
    }

    func setRemoteFact(_ remote: String, _ name: String, _ value: String) throws {
        try statement("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
            .run([.text(Self.remoteFactPrefix(remote) + name), .text(value)])
    }

    static func remoteFactPrefix(_ remote: String) -> String { "remote:" + remote + ":" }
}

extension Catalogue {
    /// The pack objects that the index objects `indexes` list frames in.
    func remotePacks(_ remote: String, indexes: [String]) throws -> Set<String> {
        let query = try statement("SELECT DISTINCT pack FROM remote_frames WHERE remote = ? AND index_name = ?")
        var out = Set<String>()
        for name in indexes { for pack in try query.rows([.text(remote), .text(name)], { $0.text(0) }) { out.insert(pack) } }
        return out
    }
}

extension Catalogue {
    /// The frames the cache knows through one index object (or one pending pack), grouped by pack.
    func remoteFrames(_ remote: String, index: String) throws -> [String: [PackedFrame]] {
        var out = [String: [PackedFrame]]()
        let rows = try statement("""
            SELECT digest, pack, offset, stored_length, raw_length, encoding, kind, base, inputs FROM remote_frames
            WHERE remote = ? AND index_name = ? ORDER BY pack, offset
            """).rows([.text(remote), .text(index)]) { (row) throws in
                (row.text(1), PackedFrame(digest: try row.digest(0), offset: row.int(2), storedLength: Int(row.int(3)), rawLength: Int(row.int(4)),
                                          encoding: UInt8(truncatingIfNeeded: row.int(5)), kind: UInt8(truncatingIfNeeded: row.int(6)),
                                          base: row.isNull(7) ? nil : try row.digest(7), inputs: try Self.digestList(row, 8)))
            }
        for (pack, frame) in rows { out[pack, default: []].append(frame) }
        return out
    }
}
