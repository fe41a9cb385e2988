import Foundation

extension CheckpointStore {
    /// Re-encoding is not worth a new pack, and the dead frames it leaves until repacking, unless it frees
    /// at least this much in all.
    static let minimumRebaseSaving: Int64 = 1 << 20

    /// What re-encoding delta frames whose bases lost their checkpoints did.
    struct RebaseOutcome {
        var chunks = 0
        /// Stored bytes the bases took that the re-encoded frames let go, minus what the frames grew by.
        var bytesSaved: Int64 = 0
    }

    /// Re-encodes, as full frames, live delta frames whose base no checkpoint references any more (its
    /// checkpoint was deleted) when the bases they alone keep alive take more than the full frame adds.
    ///
    /// Without this a chain's dead keyframe stays as long as any later delta needs it (I-4): with
    /// `keep_last 3` and chains of 4, the store would keep deleted checkpoints' full frames forever. The
    /// new frames go to a new pack, fsynced and renamed before one transaction points the catalogue at
    /// them; the caller's next sweep then removes the bases. A crash in between leaves an orphan pack.
    func rebaseOrphanedDeltas() throws -> RebaseOutcome {
        struct Delta {
            var base: ChunkDigest
            var stored: Int64
        }
        // Every delta frame (an index keeps this from scanning every chunk), and which are referenced.
        let (deltas, storedOf, referenced) = try withCatalogue { (catalogue) throws -> ([ChunkDigest: Delta], [ChunkDigest: Int64], Set<ChunkDigest>) in
            var deltas = [ChunkDigest: Delta]()
            for (digest, base, stored) in try catalogue.statement("SELECT digest, base, stored_length FROM chunks WHERE base IS NOT NULL").rows([], { (try $0.digest(0), try $0.digest(1), $0.int(2)) }) {
                deltas[digest] = Delta(base: base, stored: stored)
            }
            guard !deltas.isEmpty else { return ([:], [:], []) }
            let isReferenced = try catalogue.statement("SELECT 1 FROM checkpoint_chunks WHERE digest = ? LIMIT 1")
            let storedLength = try catalogue.statement("SELECT stored_length FROM chunks WHERE digest = ?")
            var referenced = Set<ChunkDigest>()
            var stored = deltas.mapValues(\.stored)
            for digest in Set(deltas.keys).union(deltas.values.map(\.base)) {
                if try isReferenced.firstRow([.blob(digest.bytes)], { _ in true }) == true { referenced.insert(digest) }
                if stored[digest] == nil { stored[digest] = try storedLength.firstRow([.blob(digest.bytes)]) { $0.int(0) } }
            }
            return (deltas, stored, referenced)
        }
        var dependents = [ChunkDigest: Int]()
        for delta in deltas.values { dependents[delta.base, default: 0] += 1 }

        var outcome = RebaseOutcome()
        let readers = PackReaderCache(layout: layout)
        let codec = FrameCodec(level: try settings().compressionLevel, contexts: contexts)
        var writer: PackWriter?
        var moved = [(digest: ChunkDigest, base: ChunkDigest, offset: Int64, chunk: EncodedChunk)]()
        for (digest, delta) in deltas.sorted(by: { $0.key < $1.key }) where referenced.contains(digest) && !referenced.contains(delta.base) {
            // The bases only this chain keeps: up the chain while a base is unreferenced and has no other
            // dependent.
            var pinned: Int64 = 0
            var base: ChunkDigest? = delta.base
            while let current = base, !referenced.contains(current), dependents[current] == 1, let stored = storedOf[current] {
                pinned += stored + Int64(PackFormat.frameHeaderSize)
                base = deltas[current]?.base
            }
            guard pinned > 0, let location = try withCatalogue({ (catalogue) throws in try catalogue.location(of: digest) }) else { continue }
            // The element width is the first byte of a byte-plane payload; read it before decoding anything
            // (unchecked: readChunk below checks the whole frame).
            let (_, payload) = try readers.reader(for: location.pack).readFrame(at: location.offset, storedLength: location.storedLength, expected: digest, checkChecksum: false)
            guard let width = payload.withUnsafeBytes({ $0.first.map(Int.init) }), ByteGrouping.widths.contains(width) else { continue }
            let bytes = try readChunk(at: location, readers: readers, what: "re-encoding chunk \(digest)")
            let (full, _) = try bytes.withUnsafeBytes { try codec.encodePlanes($0, base: nil, width: width, tryCompressing: Array(repeating: true, count: width)) }
            // Raw unless planes save what any frame must (FrameCodec.minimumSaving), as a put decides.
            let chunk = Double(full.count) <= Double(bytes.count) * (1 - FrameCodec.minimumSaving)
                ? EncodedChunk(digest: digest, encoding: .planes, rawLength: bytes.count, payload: full)
                : EncodedChunk(digest: digest, encoding: .raw, rawLength: bytes.count, payload: bytes.array)
            let growth = Int64(chunk.payload.count) - delta.stored
            guard growth < pinned else { continue }
            let current = try writer ?? PackWriter(layout: layout)
            writer = current
            let written = try current.append(chunk, kind: .chunk)
            moved.append((digest, delta.base, written.offset, chunk))
            outcome.chunks += 1
            outcome.bytesSaved += pinned - growth
        }
        guard let writer, outcome.bytesSaved >= Self.minimumRebaseSaving else { return RebaseOutcome() }
        let sealed = try writer.seal()
        try withCatalogue { catalogue in
            try catalogue.database.transaction {
                // The frames are known digests, so the insert records only the pack; the update moves them.
                _ = try catalogue.insert(pack: sealed, now: Date().timeIntervalSince1970)
                let update = try catalogue.statement("UPDATE chunks SET pack_id = ?, offset = ?, stored_length = ?, encoding = ?, base = NULL WHERE digest = ? AND base = ?")
                for frame in moved {
                    try update.run([.text(sealed.id.hex), .integer(frame.offset), .integer(Int64(frame.chunk.payload.count)), .integer(Int64(frame.chunk.encoding.rawValue)), .blob(frame.digest.bytes), .blob(frame.base.bytes)])
                }
            }
        }
        return outcome
    }
}
