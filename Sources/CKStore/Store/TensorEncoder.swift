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

/// Encodes the new chunks of tensors: byte planes, or an XOR delta against the chunk at the same place in
/// the parent checkpoint followed by planes, whichever is smaller; raw when neither saves anything.
///
/// Trying every encoding on every chunk would cost a base decode and two encodes per chunk, so the
/// encoder remembers per tensor what won (delta or not) and which planes zstd shrinks, and tries the
/// alternatives again on the tensor's first chunk and every ``probeInterval``-th one after. Shared by a
/// put's worker tasks.
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

    private let store: CheckpointStore
    private let codec: FrameCodec
    private let readers: PackReaderCache
    private let maxDepth: Int
    /// The parent checkpoint's tensors by file path and tensor name.
    private let parent: [String: [String: ParentTensor]]
    private let hints = Mutex<[String: Hint]>([:])
    /// The bases the frames of this put name; the commit checks they are still there.
    let bases = Mutex<Set<ChunkDigest>>([])

    init(store: CheckpointStore, codec: FrameCodec, maxDepth: Int, parent: Manifest?) {
        self.store = store
        self.codec = codec
        self.readers = PackReaderCache(layout: store.layout)
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

    /// Encodes one new chunk of a tensor.
    func encode(_ bytes: [UInt8], digest: ChunkDigest, place: TensorPlace) throws -> EncodedChunk {
        let width = place.elementWidth
        guard ByteGrouping.widths.contains(width), bytes.count >= 2 * width else {
            return try codec.encode(bytes, digest: digest)
        }
        let key = place.file + "\u{0}" + place.tensor
        var hint = hints.withLock { $0[key] } ?? Hint(compressPlanes: Array(repeating: true, count: width), compressDeltaPlanes: Array(repeating: true, count: width))
        let probing = place.index == 0 || hint.sinceProbe >= Self.probeInterval || hint.deltaWins == nil
        let allPlanes = Array(repeating: true, count: width)

        var delta: (payload: [UInt8], outcome: PlaneOutcome, base: ChunkDigest)?
        if probing || hint.deltaWins == true, let base = baseChunk(for: place, length: bytes.count), base.digest != digest,
           let decoded = try loadBase(base.digest), decoded.depth < maxDepth {
            // A base already `maxDepth` deep is not used: this chunk becomes a keyframe.
            let encoded = try decoded.bytes.withUnsafeBytes { base in
                try bytes.withUnsafeBytes { try codec.encodePlanes($0, base: base, width: width, tryCompressing: probing ? allPlanes : hint.compressDeltaPlanes) }
            }
            delta = (encoded.payload, encoded.outcome, base.digest)
        }
        var full: (payload: [UInt8], outcome: PlaneOutcome)?
        if delta == nil || probing {
            full = try bytes.withUnsafeBytes { try codec.encodePlanes($0, base: nil, width: width, tryCompressing: probing ? allPlanes : hint.compressPlanes) }
        }

        if let delta, let full { hint.deltaWins = delta.payload.count < full.payload.count }
        if let delta { Self.learn(delta.outcome, into: &hint.compressDeltaPlanes) }
        if let full { Self.learn(full.outcome, into: &hint.compressPlanes) }
        hint.sinceProbe = probing ? 0 : hint.sinceProbe + 1
        hints.withLock { $0[key] = hint }

        let rawLimit = Double(bytes.count) * (1 - FrameCodec.minimumSaving)
        if let delta, delta.payload.count < full?.payload.count ?? .max, Double(delta.payload.count) <= rawLimit {
            bases.withLock { _ = $0.insert(delta.base) }
            return EncodedChunk(digest: digest, encoding: .deltaPlanes, rawLength: bytes.count, payload: delta.payload, base: delta.base)
        }
        if let full, Double(full.payload.count) <= rawLimit {
            return EncodedChunk(digest: digest, encoding: .planes, rawLength: bytes.count, payload: full.payload)
        }
        return EncodedChunk(digest: digest, encoding: .raw, rawLength: bytes.count, payload: bytes)
    }

    private static func learn(_ outcome: PlaneOutcome, into planes: inout [Bool]) {
        for (plane, compressed) in outcome.compressed.enumerated() {
            if let compressed { planes[plane] = compressed }
        }
    }

    /// The base chunk's bytes and its delta depth. A base that is gone (a concurrent gc took it) or
    /// damaged means no delta, and `verify` reports the damage; failing I/O fails the put.
    private func loadBase(_ digest: ChunkDigest) throws -> (bytes: ChunkBytes, depth: Int)? {
        guard let location = try store.withCatalogue({ (catalogue) throws in try catalogue.location(of: digest) }) else { return nil }
        do {
            return try store.loadChunkAndDepth(at: location, readers: readers)
        } catch let error as CKStoreError where error.code == .damaged {
            return nil
        }
    }
}
