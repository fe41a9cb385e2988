import Synchronization

/// Where a tensor chunk sits: the place a delta base is looked up by, and what encoding learns about.
struct TensorPlace: Sendable {
    /// The file's path in the checkpoint.
    var file: String
    /// The tensor's name (a storage's entry name in a torch zip).
    var tensor: String
    var dtype: DType?
    var shape: [Int]?
    /// The whole tensor's size in bytes.
    var byteCount: Int64
    /// The chunk's index within the tensor.
    var index: Int
    /// Bytes per element: 2, 4 or 8 to group into planes; anything else is not grouped.
    var elementWidth: Int
}

/// Encodes the new chunks of tensors: byte planes, or a difference delta against the chunk at the same
/// place in the parent checkpoint followed by planes, whichever is smaller; raw when neither saves anything.
///
/// Trying every encoding on every chunk would cost a base decode and two encodes per chunk, so the
/// encoder remembers per tensor, and per file and element width for tensors not seen yet, what won (delta
/// or not) and which planes zstd shrinks, and tries everything again on one chunk in ``probeInterval``.
/// Shared by a put's worker tasks.
final class TensorEncoder: Sendable {
    /// The chunks of one tensor in the parent checkpoint.
    struct ParentTensor: Sendable {
        var dtype: DType?
        var shape: [Int]?
        var byteCount: Int64
        var chunks: ArraySlice<ChunkRef>
    }

    /// What encoding the chunks of one tensor so far has shown.
    private struct Hint {
        /// Whether the delta won when both were tried; nil before any comparison.
        var deltaWins: Bool?
        /// Chunks encoded since the alternatives were last tried.
        var sinceProbe = 0
        /// Per plane, whether zstd is worth trying (full frames and delta frames separately).
        var compressPlanes: [Bool]
        var compressDeltaPlanes: [Bool]
    }

    static let probeInterval = 16

    private let index: ChunkIndex
    private let reader: ChunkReader
    private let codec: FrameCodec
    private let maxDepth: Int
    /// The parent checkpoint's tensors by file path and tensor name.
    private let parent: [String: [String: ParentTensor]]
    private let hints = Mutex<[String: Hint]>([:])
    /// The bases the frames of this put name; the commit checks they are still there.
    let bases = Mutex<Set<ChunkDigest>>([])

    /// An encoder that finds delta bases through `index` and reads them with `reader`.
    init(index: ChunkIndex, reader: ChunkReader, codec: FrameCodec, maxDepth: Int, parent: Manifest?) {
        self.index = index
        self.reader = reader
        self.codec = codec
        self.maxDepth = maxDepth
        var index = [String: [String: ParentTensor]]()
        for file in parent?.files ?? [] {
            for tensor in file.tensors ?? [] where tensor.chunkCount > 0 {
                index[file.path, default: [:]][tensor.name] = ParentTensor(
                    dtype: tensor.dtype, shape: tensor.shape, byteCount: tensor.byteCount,
                    chunks: file.chunks[tensor.firstChunk..<(tensor.firstChunk + tensor.chunkCount)]
                )
            }
        }
        self.parent = index
    }

    /// The chunk at the same place in the parent checkpoint, if the tensor there has the same dtype,
    /// shape and size (a reshaped or retyped tensor gets no delta).
    func baseChunk(for place: TensorPlace, length: Int) -> ChunkRef? {
        guard maxDepth > 0, let tensor = parent[place.file]?[place.tensor],
              tensor.dtype == place.dtype, tensor.shape == place.shape, tensor.byteCount == place.byteCount,
              place.index < tensor.chunks.count else { return nil }
        let chunk = tensor.chunks[tensor.chunks.startIndex + place.index]
        return chunk.length == length ? chunk : nil
    }

    /// Starts reading, in the background, the frames that encoding this chunk as a delta will decode:
    /// its base and the base's own bases. Called as the chunk is read, a few chunks before a worker
    /// encodes it, so that a store whose packs left the page cache does not stall the workers on disk
    /// reads. Skipped for tensors whose file has shown that deltas do not pay.
    func prefetchBase(for place: TensorPlace, length: Int) {
        guard place.index == 0 || hints.withLock({ $0[Self.fileKey(place.file, width: place.elementWidth)]?.deltaWins }) != false,
              let base = baseChunk(for: place, length: length) else { return }
        let chain = (try? index.chain(of: base.digest, limit: maxDepth)) ?? []
        // A chain already at the maximum depth is not decoded (the chunk becomes a keyframe).
        guard let depth = ChunkIndex.depth(of: chain), depth < maxDepth else { return }
        for location in chain {
            try? reader.packs.reader(for: location.pack).prefetch(offset: location.offset, storedLength: location.storedLength)
        }
    }

    /// Encodes one new chunk of a tensor.
    func encode(_ bytes: [UInt8], digest: ChunkDigest, place: TensorPlace) throws -> EncodedChunk {
        let width = place.elementWidth
        guard ByteGrouping.widths.contains(width), bytes.count >= 2 * width else {
            return try codec.encode(bytes, digest: digest)
        }
        // What this tensor showed so far; for a tensor not seen yet, what the other tensors of its file
        // with the same element width showed (its first chunk tries everything anyway). Chunks of one
        // tensor run in parallel, so a tensor's later chunks often start before its first is done.
        let tensorKey = place.file + "\u{0}" + place.tensor, fileKey = Self.fileKey(place.file, width: width)
        let (known, prior) = hints.withLock { ($0[tensorKey], $0[fileKey]) }
        let fresh = Hint(compressPlanes: Array(repeating: true, count: width), compressDeltaPlanes: Array(repeating: true, count: width))
        var hint = known ?? prior.map { Hint(deltaWins: $0.deltaWins, compressPlanes: $0.compressPlanes, compressDeltaPlanes: $0.compressDeltaPlanes) } ?? fresh
        // Both encodings, every plane, are tried when nothing is known yet, and then on one chunk in
        // `probeInterval`: of a tensor, or of its file for a tensor's first chunks. (Probing every tensor's
        // first chunk cost a quarter of the chunks two full encodings with tensors of 4 MiB.)
        let probing = hint.deltaWins == nil || (known ?? prior).map { $0.sinceProbe >= Self.probeInterval } ?? true
        let allPlanes = Array(repeating: true, count: width)

        var delta: (payload: [UInt8], outcome: PlaneOutcome, base: ChunkDigest)?
        if probing || hint.deltaWins == true, let base = baseChunk(for: place, length: bytes.count), base.digest != digest,
           // A base already `maxDepth` deep is not used (this chunk becomes a keyframe); the depth comes
           // from the catalogue, so such a base is not decoded for nothing.
           try baseDepth(base.digest).map({ $0 < maxDepth }) == true,
           let decoded = try loadBase(base.digest) {
            let encoded = try decoded.withUnsafeBytes { base in
                try bytes.withUnsafeBytes { try codec.encodePlanes($0, base: base, delta: .difference, width: width, tryCompressing: probing ? allPlanes : hint.compressDeltaPlanes) }
            }
            delta = (encoded.payload, encoded.outcome, base.digest)
        }
        var full: (payload: [UInt8], outcome: PlaneOutcome)?
        if delta == nil || probing {
            full = try bytes.withUnsafeBytes { try codec.encodePlanes($0, base: nil, width: width, tryCompressing: probing ? allPlanes : hint.compressPlanes) }
        }

        // A delta must beat the full frame by a margin worth a chain: on noise-like data the two differ by
        // a few bytes either way, and such a delta would only add decode work and a base to keep.
        let margin = Int(Double(bytes.count) * FrameCodec.minimumSaving)
        let deltaWins = delta.flatMap { delta in full.map { delta.payload.count + margin < $0.payload.count } }
        if let deltaWins { hint.deltaWins = deltaWins }
        if let delta { Self.learn(delta.outcome, into: &hint.compressDeltaPlanes) }
        if let full { Self.learn(full.outcome, into: &hint.compressPlanes) }
        hint.sinceProbe = probing ? 0 : hint.sinceProbe + 1
        hints.withLock { hints in
            hints[tensorKey] = hint
            var fileHint = hints[fileKey] ?? fresh
            if let deltaWins { fileHint.deltaWins = deltaWins }
            if let delta { Self.learn(delta.outcome, into: &fileHint.compressDeltaPlanes) }
            if let full { Self.learn(full.outcome, into: &fileHint.compressPlanes) }
            fileHint.sinceProbe = probing ? 0 : fileHint.sinceProbe + 1
            hints[fileKey] = fileHint
        }

        let rawLimit = Double(bytes.count) * (1 - FrameCodec.minimumSaving)
        if let delta, delta.payload.count + (full == nil ? 0 : margin) < full?.payload.count ?? .max, Double(delta.payload.count) <= rawLimit {
            bases.withLock { _ = $0.insert(delta.base) }
            return EncodedChunk(digest: digest, encoding: .differencePlanes, rawLength: bytes.count, payload: delta.payload, base: delta.base)
        }
        if let full, Double(full.payload.count) <= rawLimit {
            return EncodedChunk(digest: digest, encoding: .planes, rawLength: bytes.count, payload: full.payload)
        }
        return EncodedChunk(digest: digest, encoding: .raw, rawLength: bytes.count, payload: bytes)
    }

    /// The hint key of the tensors of one file and element width (tensor keys are `file NUL tensor`).
    private static func fileKey(_ file: String, width: Int) -> String {
        file + "\u{0}\u{0}\(width)"
    }

    /// How many delta frames lie between the base and a full frame, or nil when that is more than
    /// `maxDepth` (or a chunk on the way is missing).
    private func baseDepth(_ digest: ChunkDigest) throws -> Int? {
        try index.depth(of: digest, limit: maxDepth)
    }

    private static func learn(_ outcome: PlaneOutcome, into planes: inout [Bool]) {
        for (plane, compressed) in outcome.compressed.enumerated() {
            if let compressed { planes[plane] = compressed }
        }
    }

    /// The base chunk's bytes. A base that is gone (a concurrent gc took it) or
    /// damaged means no delta, and `verify` reports the damage; failing I/O fails the put.
    private func loadBase(_ digest: ChunkDigest) throws -> ChunkBytes? {
        guard let location = try index.location(of: digest) else { return nil }
        do {
            // Checksums, not SHA-256: a delta only needs its base to decode to the same bytes on restore,
            // where the SHA-256 of the chunk built on it covers them; re-hashing every base would cost a
            // third of a put.
            return try reader.decode(at: location, checks: .checksums)
        } catch let error as CKStoreError where error.code == .damaged {
            return nil
        }
    }
}
