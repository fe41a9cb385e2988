extension Catalogue {
    /// Logical bytes of each checkpoint's pieces, summed per checkpoint.
    func logicalBytesByCheckpoint() throws -> [(CheckpointID, Int64)] {
        try statement("SELECT checkpoint_id, sum(logical_bytes) FROM checkpoint_labels GROUP BY checkpoint_id")
            .rows([]) { (row) throws in (CheckpointID(try row.digest(0)), row.int(1)) }
    }

    /// A label: one tensor (or file) of one run, by row id.
    struct LabelRow: Sendable {
        var id: Int64
        var run: String
        var path: String
        var tensor: String
    }

    /// Every label, by row id.
    func labelRows() throws -> [LabelRow] {
        try statement("SELECT l.id, r.name, l.path, l.tensor FROM labels l JOIN runs r ON r.id = l.run_id ORDER BY l.id")
            .rows([]) { LabelRow(id: $0.int(0), run: $0.text(1), path: $0.text(2), tensor: $0.text(3)) }
    }

    /// Logical bytes per label id, over every checkpoint.
    func logicalBytesByLabel() throws -> [(label: Int64, bytes: Int64)] {
        try statement("SELECT label, sum(logical_bytes) FROM checkpoint_labels GROUP BY label").rows([]) { ($0.int(0), $0.int(1)) }
    }

    /// One chunk row as an audit reads it.
    struct ChunkUsageRow {
        var digest: ChunkDigest
        var storedLength: Int64
        var rawLength: Int64
        var kind: FrameKind
        var base: ChunkDigest?
        var label: Int64?
        /// The pack's hex name; empty unless asked for (it costs a string per row).
        var pack: String
    }

    /// Calls `body` for every chunk row, streaming: audits read millions.
    func forEachChunkRow(withPacks: Bool, _ body: (ChunkUsageRow) throws -> Void) throws {
        let chunks = try statement("SELECT digest, stored_length, raw_length, kind, base, label\(withPacks ? ", pack_id" : "") FROM chunks")
        try chunks.bind([])
        defer { chunks.reset() }
        while try chunks.step() {
            try body(ChunkUsageRow(
                digest: try chunks.digest(0), storedLength: chunks.int(1), rawLength: chunks.int(2),
                kind: FrameKind(rawValue: UInt8(truncatingIfNeeded: chunks.int(3))) ?? .chunk,
                base: chunks.isNull(4) ? nil : try chunks.digest(4),
                label: chunks.isNull(5) ? nil : chunks.int(5),
                pack: withPacks ? chunks.text(6) : ""
            ))
        }
    }

    /// Calls `body` for every input a frame names besides its base (predicted frames only).
    func forEachInput(_ body: (ChunkDigest, ChunkDigest) throws -> Void) throws {
        for (digest, input) in try statement("SELECT digest, input FROM chunk_inputs").rows([], { (try $0.digest(0), try $0.digest(1)) }) {
            try body(digest, input)
        }
    }

    /// Calls `body` for every (checkpoint, chunk) reference, in primary-key order: one checkpoint's
    /// references come one after another.
    func forEachReference(_ body: (CheckpointID, ChunkDigest) throws -> Void) throws {
        let references = try statement("SELECT checkpoint_id, digest FROM checkpoint_chunks")
        try references.bind([])
        defer { references.reset() }
        while try references.step() {
            try body(CheckpointID(try references.digest(0)), try references.digest(1))
        }
    }
}
