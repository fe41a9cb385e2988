/// A named piece of a checkpoint: one tensor (or torch storage) of a file, the rest of a tensor-aware
/// file (`tensor` empty), or a whole file without tensors. The unit audits count bytes by.
struct CheckpointPiece: Equatable {
    var path: String
    var tensor: String
    var logicalBytes: Int64
    /// Indexes into the file's chunk list.
    var chunks: [Int]

    /// The pieces of every file of `manifest`, in file order.
    static func pieces(of manifest: Manifest) -> [(file: FileEntry, pieces: [CheckpointPiece])] {
        manifest.files.map { file in
            guard let tensors = file.tensors, !tensors.isEmpty else {
                return (file, [CheckpointPiece(path: file.path, tensor: "", logicalBytes: file.size, chunks: Array(file.chunks.indices))])
            }
            var pieces = [CheckpointPiece]()
            var inTensors = Set<Int>()
            var tensorBytes: Int64 = 0
            for tensor in tensors {
                // Clamped: a manifest that names chunks it does not have is reported by verify, not here.
                let lower = min(max(tensor.firstChunk, 0), file.chunks.count)
                let range = lower..<min(max(lower, tensor.firstChunk + tensor.chunkCount), file.chunks.count)
                inTensors.formUnion(range)
                tensorBytes += tensor.byteCount
                pieces.append(CheckpointPiece(path: file.path, tensor: tensor.name, logicalBytes: tensor.byteCount, chunks: Array(range)))
            }
            let rest = file.chunks.indices.filter { !inTensors.contains($0) }
            pieces.append(CheckpointPiece(path: file.path, tensor: "", logicalBytes: file.size - tensorBytes, chunks: rest))
            return (file, pieces)
        }
    }
}

extension Catalogue {
    /// The label id of a piece of a run, created when new.
    func label(runID: Int64, path: String, tensor: String) throws -> Int64 {
        let find = try statement("SELECT id FROM labels WHERE run_id = ? AND path = ? AND tensor = ?")
        if let id = try find.firstRow([.integer(runID), .text(path), .text(tensor)], { $0.int(0) }) { return id }
        try statement("INSERT INTO labels (run_id, path, tensor) VALUES (?, ?, ?)").run([.integer(runID), .text(path), .text(tensor)])
        return database.lastInsertRowID
    }

    /// Records the pieces of a committed checkpoint with their logical sizes, and labels the chunks that
    /// no piece labelled before (the first piece to store a chunk owns its bytes in audits).
    func recordPieces(of id: CheckpointID, runID: Int64, manifest: Manifest) throws {
        let key = SQLiteStatement.Value.blob(id.digest.bytes)
        let row = try statement("""
            INSERT INTO checkpoint_labels (checkpoint_id, label, logical_bytes) VALUES (?, ?, ?)
            ON CONFLICT (checkpoint_id, label) DO UPDATE SET logical_bytes = logical_bytes + excluded.logical_bytes
            """)
        let mark = try statement("UPDATE chunks SET label = ? WHERE digest = ? AND label IS NULL")
        for (file, pieces) in CheckpointPiece.pieces(of: manifest) {
            for piece in pieces {
                let label = try label(runID: runID, path: piece.path, tensor: piece.tensor)
                try row.run([key, .integer(label), .integer(piece.logicalBytes)])
                for index in piece.chunks { try mark.run([.integer(label), .blob(file.chunks[index].digest.bytes)]) }
            }
        }
    }

    /// Forgets the pieces a part rule dropped from a checkpoint: whole files and single tensors.
    func forgetPieces(of id: CheckpointID, paths: [String], tensors: [String: [String]]) throws {
        let key = SQLiteStatement.Value.blob(id.digest.bytes)
        let file = try statement("DELETE FROM checkpoint_labels WHERE checkpoint_id = ? AND label IN (SELECT id FROM labels WHERE path = ?)")
        for path in paths { try file.run([key, .text(path)]) }
        let tensor = try statement("DELETE FROM checkpoint_labels WHERE checkpoint_id = ? AND label IN (SELECT id FROM labels WHERE path = ? AND tensor = ?)")
        for (path, names) in tensors { for name in names { try tensor.run([key, .text(path), .text(name)]) } }
    }

    /// Checkpoints without recorded pieces: those committed before schema version 3.
    func checkpointsWithoutPieces() throws -> [(id: CheckpointID, runID: Int64)] {
        try statement("SELECT id, run_id FROM checkpoints WHERE id NOT IN (SELECT DISTINCT checkpoint_id FROM checkpoint_labels)")
            .rows { (row) throws in (CheckpointID(try row.digest(0)), row.int(1)) }
    }
}
