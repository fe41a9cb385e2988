import Dispatch
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
    /// The bases and inputs the frames of this put name; the commit checks they are all there.
    let bases = Mutex<Set<ChunkDigest>>([])
    /// What weights may be predicted from; set once the optimizer's files are stored.
    private let predictions = Mutex<PredictionSources?>(nil)
    /// The chunks this put stored as predicted frames and the inputs they name: no predicted frame may
    /// be another's input, so that no two frames can need each other.
    private let predictionUse = Mutex<(predicted: Set<ChunkDigest>, inputs: Set<ChunkDigest>)>(([], []))
    /// Predictions computed at once: each holds the chunk's parent, its four moment chunks and the
    /// prediction (about 8 chunks), so their number, not the number of cores, bounds a put's memory
    /// (16: about 130 MiB).
    private let predicting = DispatchSemaphore(value: 16)
    /// Per weight tensor, the optimizer parameter its last chunk was predicted from.
    private let matches = Mutex<[String: Int]>([:])
    /// Where base prefetches run. `madvise(WILLNEED)` allocates the page cache and submits the reads
    /// itself, and blocks once the disk's queue is full; called on the task that feeds a put's workers,
    /// it held them up while a cold store's bases were read. A queue of its own (its thread is not one
    /// of the cores' worth that Swift's tasks run on); serial, so that bases are read in the order the
    /// workers need them. Walking further ahead than the chunks the put has taken was tried: it queued
    /// reads the workers needed later in front of those they needed now, and was no faster.
    private let prefetcher = DispatchQueue(label: "ckstore.put.prefetch")
    /// Per weight tensor, whether its last chunk compared was smallest predicted, and chunks since.
    private let predictionWins = Mutex<[String: (won: Bool, since: Int)]>([:])

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
    /// its base and the base's own bases. Called as the put takes the chunk, a few chunks before a worker
    /// encodes it, so that a store whose packs left the page cache does not stall the workers on disk
    /// reads. Skipped for tensors whose file has shown that deltas do not pay.
    ///
    /// Returns at once: the chain's lookup and the reads run on ``prefetcher``, in the order asked.
    func prefetchBase(for place: TensorPlace, length: Int) {
        guard place.index == 0 || hints.withLock({ $0[Self.fileKey(place.file, width: place.elementWidth)]?.deltaWins }) != false,
              let base = baseChunk(for: place, length: length) else { return }
        prefetcher.async { [self] in
            let chain = (try? index.chain(of: base.digest, limit: maxDepth)) ?? []
            // A chain already at the maximum depth is not decoded (the chunk becomes a keyframe).
            guard let depth = ChunkIndex.depth(of: chain), depth < maxDepth else { return }
            for location in chain {
                try? reader.packs.reader(for: location.pack).prefetch(offset: location.offset, storedLength: location.storedLength)
            }
        }
    }

    /// Lets the chunks encoded from now on be predicted from `sources`.
    func predict(from sources: PredictionSources?) {
        predictions.withLock { $0 = sources }
    }

    /// Encodes one new chunk of a tensor: as ``encodeWithoutPrediction(_:digest:place:)`` would, or as a
    /// predicted frame when that is smaller.
    func encode(_ bytes: [UInt8], digest: ChunkDigest, place: TensorPlace) throws -> EncodedChunk {
        guard let sources = predictions.withLock({ $0 }) else { return try encodeWithoutPrediction(bytes, digest: digest, place: place).chunk }
        // Once prediction has won for a tensor, its chunks are predicted without encoding them any other
        // way first, but for one in `probeInterval`.
        let tensorKey = place.file + "\u{0}" + place.tensor
        let known = predictionWins.withLock { wins -> Bool in
            let (won, since) = wins[tensorKey] ?? (false, 0)
            wins[tensorKey] = (won, since + 1)
            return won && since % Self.probeInterval != Self.probeInterval - 1
        }
        if known {
            if let predicted = try encodePredicted(bytes, digest: digest, place: place, parent: nil, sources: sources, toBeat: bytes.count) {
                return predicted
            }
            // Tried and declined: not predicted again for this chunk, and the tensor compares both next time.
            predictionWins.withLock { $0[tensorKey, default: (false, 0)].won = false }
            return try encodeWithoutPrediction(bytes, digest: digest, place: place).chunk
        }
        let (chosen, parent) = try encodeWithoutPrediction(bytes, digest: digest, place: place)
        let predicted = chosen.payload.count > bytes.count / 8
            ? try encodePredicted(bytes, digest: digest, place: place, parent: parent, sources: sources, toBeat: chosen.payload.count) : nil
        predictionWins.withLock { $0[tensorKey, default: (false, 0)].won = predicted != nil }
        return predicted ?? chosen
    }

    /// Encodes one new chunk of a tensor as byte planes, a difference or raw.
    ///
    /// - Returns: the frame, and the decoded delta base when it was read.
    private func encodeWithoutPrediction(_ bytes: [UInt8], digest: ChunkDigest, place: TensorPlace) throws -> (chunk: EncodedChunk, base: ChunkBytes?) {
        let width = place.elementWidth
        guard ByteGrouping.widths.contains(width), bytes.count >= 2 * width else {
            return (try codec.encode(bytes, digest: digest), nil)
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
        var decodedBase: ChunkBytes?
        if probing || hint.deltaWins == true, let base = baseChunk(for: place, length: bytes.count), base.digest != digest,
           // A base already `maxDepth` deep is not used (this chunk becomes a keyframe); the depth comes
           // from the catalogue, so such a base is not decoded for nothing.
           try baseDepth(base.digest).map({ $0 < maxDepth }) == true,
           let decoded = try loadBase(base.digest) {
            decodedBase = decoded
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
            return (EncodedChunk(digest: digest, encoding: .differencePlanes, rawLength: bytes.count, payload: delta.payload, base: delta.base), decodedBase)
        }
        if let full, Double(full.payload.count) <= rawLimit {
            return (EncodedChunk(digest: digest, encoding: .planes, rawLength: bytes.count, payload: full.payload), decodedBase)
        }
        return (EncodedChunk(digest: digest, encoding: .raw, rawLength: bytes.count, payload: bytes), decodedBase)
    }

    /// The chunk as a predicted frame (``WeightPrediction``), when it is an fp32 weight chunk with a base
    /// in the parent, a parameter's moments match its change, and the frame is smaller than `size` by the
    /// margin a delta must win by. Nil otherwise.
    ///
    /// - Parameter known: the base chunk's bytes when the caller decoded them already.
    private func encodePredicted(_ bytes: [UInt8], digest: ChunkDigest, place: TensorPlace, parent known: ChunkBytes?, sources: PredictionSources, toBeat size: Int) throws -> EncodedChunk? {
        guard place.elementWidth == 4, place.dtype == DType(safetensorsName: "F32"), bytes.count % 4 == 0,
              !sources.optimizerFiles.contains(place.file), let shape = place.shape, let candidates = sources.byShape[shape],
              let base = baseChunk(for: place, length: bytes.count), base.digest != digest,
              try baseDepth(base.digest).map({ $0 < maxDepth }) == true,
              let parent = try known ?? loadBase(base.digest) else { return nil }
        let usable = candidates.filter { candidate in
            [candidate.average.chunks, candidate.averageSquare.chunks, candidate.parentAverage, candidate.parentAverageSquare].allSatisfy {
                place.index < $0.count && $0[place.index].length == bytes.count
            }
        }
        predicting.wait()
        defer { predicting.signal() }
        let tensorKey = place.file + "\u{0}" + place.tensor
        guard let match = try bestMatch(bytes, parent: parent, place: place, candidates: usable, previous: matches.withLock { $0[tensorKey] }) else { return nil }
        matches.withLock { $0[tensorKey] = match.param }

        // This checkpoint's moments are read again from the file they were stored from, and must still
        // be the bytes stored: the prediction is decoded from the stored ones.
        let index = place.index
        let current = try [match.average, match.averageSquare].map { (tensor) throws -> [UInt8]? in
            let chunk = tensor.chunks[index]
            let read = try tensor.source.read(count: chunk.length, at: tensor.offset(ofChunk: index))
            return SHA256Hasher.digest(read) == chunk.digest ? read : nil
        }
        guard let average = current[0], let square = current[1],
              let parentAverage = try loadBase(match.parentAverage[index].digest),
              let parentSquare = try loadBase(match.parentAverageSquare[index].digest) else { return nil }
        let inputs = [match.average.chunks[index].digest, match.averageSquare.chunks[index].digest,
                      match.parentAverage[index].digest, match.parentAverageSquare[index].digest]
        guard !inputs.contains(digest) else { return nil }
        let moments = [ChunkBytes(average), ChunkBytes(square), parentAverage, parentSquare]
        let payload = try bytes.withUnsafeBytes { weights in
            try parent.withUnsafeBytes { parent in
                try FrameCodec.withUnsafeBytes(of: moments) { moments -> [UInt8]? in
                    guard let (a, b, c) = WeightPrediction.fit(count: bytes.count / 4, weights: weights.baseAddress!, parent: parent.baseAddress!,
                                                              moments: moments.map { $0.baseAddress! }, scale: match.scale,
                                                              parentScale: match.parentScale, epsilon: match.epsilon) else { return nil }
                    let prediction = WeightPrediction(inputs: inputs, scale: match.scale, parentScale: match.parentScale, epsilon: match.epsilon, a: a, b: b, c: c)
                    return try codec.encodePredicted(weights, parent: parent, moments: moments, prediction: prediction, tryCompressing: Array(repeating: true, count: 4)).payload
                }
            }
        }
        let margin = Int(Double(bytes.count) * FrameCodec.minimumSaving)
        guard let payload, payload.count + margin < size else { return nil }
        // No frame of this put may be both predicted and an input of a predicted frame.
        let allowed = predictionUse.withLock { use in
            guard !use.inputs.contains(digest), !inputs.contains(where: use.predicted.contains) else { return false }
            use.predicted.insert(digest)
            use.inputs.formUnion(inputs)
            return true
        }
        guard allowed else { return nil }
        bases.withLock { $0.formUnion([base.digest] + inputs) }
        return EncodedChunk(digest: digest, encoding: .predictedPlanes, rawLength: bytes.count, payload: payload, base: base.digest, inputs: inputs)
    }

    /// The candidate whose update `m/(√(v·s)+ε)` correlates best with the chunk's change from its parent
    /// over a sample of its elements (``matchWindows`` windows spread over the chunk, read from the
    /// optimizer file); the one `previous` names (the match of the tensor's earlier chunks) is tried first
    /// and kept when it correlates well. When none correlates, the previous match, or the only candidate
    /// of this shape, is still taken: where the moments say nothing (rows of an embedding no batch
    /// touched) the fitted weight-decay term predicts the change alone, and the frame is kept only if it
    /// is the smallest anyway.
    private func bestMatch(_ bytes: [UInt8], parent: ChunkBytes, place: TensorPlace, candidates: [PredictionSources.Candidate], previous: Int?) throws -> PredictionSources.Candidate? {
        let count = bytes.count / 4
        let window = min(count, Self.matchSample / Self.matchWindows)
        guard window > 0 else { return nil }
        // Window starts, spread evenly (the first and last elements included).
        let starts = Array(Set((0..<Self.matchWindows).map { Self.matchWindows == 1 ? 0 : $0 * (count - window) / (Self.matchWindows - 1) })).sorted()
        func score(_ candidate: PredictionSources.Candidate) throws -> Double {
            var (product, changes, updates) = (0.0, 0.0, 0.0)
            let (mStart, vStart) = (candidate.average.offset(ofChunk: place.index), candidate.averageSquare.offset(ofChunk: place.index))
            for start in starts {
                let m = try candidate.average.source.read(count: window * 4, at: mStart + Int64(start * 4))
                let v = try candidate.averageSquare.source.read(count: window * 4, at: vStart + Int64(start * 4))
                bytes.withUnsafeBytes { w in
                    parent.withUnsafeBytes { p in
                        m.withUnsafeBytes { m in
                            v.withUnsafeBytes { v in
                                for element in 0..<window {
                                    let change = Double(WeightPrediction.float(w.baseAddress!, start + element)) - Double(WeightPrediction.float(p.baseAddress!, start + element))
                                    let update = Double(WeightPrediction.update(m.baseAddress!, v.baseAddress!, at: element, scale: candidate.scale, epsilon: candidate.epsilon))
                                    guard change.isFinite, update.isFinite else { continue }
                                    product += change * update
                                    changes += change * change
                                    updates += update * update
                                }
                            }
                        }
                    }
                }
            }
            let denominator = (changes * updates).squareRoot()
            return denominator > 0 ? abs(product) / denominator : 0
        }
        let known = previous.flatMap { previous in candidates.first { $0.param == previous } }
        if let known, try score(known) >= Self.goodMatch { return known }
        var best: (score: Double, candidate: PredictionSources.Candidate)?
        for candidate in candidates {
            let value = try score(candidate)
            if value > best?.score ?? Self.poorMatch { best = (value, candidate) }
        }
        return best?.candidate ?? known ?? (candidates.count == 1 ? candidates.first : nil)
    }

    /// Elements of a chunk compared with each candidate's update to find its parameter, in windows.
    static let matchSample = 4096
    static let matchWindows = 8
    /// A correlation below this is no match; above `goodMatch`, the tensor's previous match is kept.
    static let poorMatch = 0.1
    static let goodMatch = 0.3

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
