import Foundation

/// Builds catalogues of a given shape without writing packs, for benchmarking catalogue-only work
/// (retention planning, sweeping, audits) at sizes no test would put for real. Not for stores in use:
/// the catalogue it writes names pack files that do not exist.
@_spi(Benchmarking)
public enum SyntheticCatalogue {
    /// Fills `catalogue` with `checkpoints` checkpoints of one run, each referencing
    /// `chunksPerCheckpoint` chunks of which `sharedFraction` are shared with the previous checkpoint
    /// (frozen tensors) and the rest are new. ``build(at:run:checkpoints:chunksPerCheckpoint:sharedFraction:)``
    /// makes the store around it.
    static func fill(_ catalogue: Catalogue, run: String, checkpoints: Int, chunksPerCheckpoint: Int, sharedFraction: Double) throws {
        let chunkSize = 1 << 20, storedSize = (1 << 20) - 4096
        try catalogue.write {
                var counter: UInt64 = 0
                // Uniformly distributed, like real SHA-256 digests (a counter would make every digest share
                // its first words, which is all a digest's hash looks at).
                func nextDigest() -> ChunkDigest {
                    counter += 1
                    return withUnsafeBytes(of: counter.bigEndian) { SHA256Hasher.digest($0) }
                }
                let insertPack = try catalogue.statement("INSERT INTO packs (id, size, frame_count, created_at) VALUES (?, ?, ?, ?)")
                let insertChunk = try catalogue.statement("INSERT INTO chunks (digest, pack_id, offset, stored_length, raw_length, encoding, kind, base, label) VALUES (?, ?, ?, ?, ?, 1, ?, NULL, ?)")
                let runID = try catalogue.ensureRun(named: run, now: 0)
                // Pieces: 100 tensors of 20 chunks each, the first half weights, the second optimizer state.
                let chunksPerPiece = 20
                let pieces = try (0..<(chunksPerCheckpoint + chunksPerPiece - 1) / chunksPerPiece).map { index in
                    index < chunksPerCheckpoint / chunksPerPiece / 2
                        ? try catalogue.label(runID: runID, path: "model.safetensors", tensor: "layers.\(index).weight")
                        : try catalogue.label(runID: runID, path: "optimizer.pt", tensor: "optimizer/data/\(index)")
                }
                let insertPiece = try catalogue.statement("INSERT INTO checkpoint_labels (checkpoint_id, label, logical_bytes) VALUES (?, ?, ?)")
                let insertCheckpoint = try catalogue.statement("""
                    INSERT INTO checkpoints (id, run_id, step, epoch, created_at, logical_bytes, stored_bytes_added, chunk_count, file_count, tensor_count, content_digest, parent)
                    VALUES (?, ?, ?, NULL, ?, ?, ?, ?, 2, 0, ?, NULL)
                    """)
                let insertReference = try catalogue.statement("INSERT INTO checkpoint_chunks (checkpoint_id, digest, uses) VALUES (?, ?, 1)")
                let insertMetric = try catalogue.statement("INSERT INTO metrics (checkpoint_id, key, value) VALUES (?, 'loss', ?)")
                var previous = [ChunkDigest]()
                let shared = Int(Double(chunksPerCheckpoint) * sharedFraction)
                for index in 0..<checkpoints {
                    // One pack per checkpoint, as one put writes.
                    let pack = PackID.random()
                    var current = Array(previous.prefix(shared))
                    let newChunks = chunksPerCheckpoint - min(shared, previous.count)
                    let frames = newChunks + 1
                    let packSize = Int64(PackFormat.headerSize + newChunks * (PackFormat.frameHeaderSize + storedSize) + PackFormat.frameHeaderSize + 4096 + frames * PackFormat.trailerEntrySize + PackFormat.footerSize)
                    try insertPack.run([.text(pack.hex), .integer(packSize), .integer(Int64(frames)), .real(0)])
                    var offset: Int64 = Int64(PackFormat.headerSize)
                    var added: Int64 = 0
                    while current.count < chunksPerCheckpoint {
                        let digest = nextDigest()
                        try insertChunk.run([.blob(digest.bytes), .text(pack.hex), .integer(offset), .integer(Int64(storedSize)), .integer(Int64(chunkSize)), .integer(0), .integer(pieces[current.count / chunksPerPiece])])
                        offset += Int64(PackFormat.frameHeaderSize + storedSize)
                        added += Int64(PackFormat.frameHeaderSize + storedSize)
                        current.append(digest)
                    }
                    let manifest = nextDigest()
                    try insertChunk.run([.blob(manifest.bytes), .text(pack.hex), .integer(offset), .integer(4096), .integer(16384), .integer(1), .null])
                    let id = SQLiteStatement.Value.blob(manifest.bytes)
                    try insertCheckpoint.run([id, .integer(runID), .integer(Int64(index + 1) * 100), .real(1_767_571_200 + Double(index) * 600),
                                              .integer(Int64(chunksPerCheckpoint * chunkSize)), .integer(added), .integer(Int64(chunksPerCheckpoint)), .blob(manifest.bytes)])
                    for digest in Set(current + [manifest]) { try insertReference.run([id, .blob(digest.bytes)]) }
                    for (index, label) in pieces.enumerated() {
                        let chunks = min(chunksPerPiece, chunksPerCheckpoint - index * chunksPerPiece)
                        try insertPiece.run([id, .integer(label), .integer(Int64(chunks * chunkSize))])
                    }
                    try insertMetric.run([id, .real(3.0 / Double(index + 1) + Double(index % 7) / 100)])
                    previous = current
                }
            }
    }
}
