/// How a frame's payload encodes its chunk.
///
/// The raw values are written into pack files: never renumber them, only add.
public enum FrameEncoding: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// The chunk's bytes as they are.
    case raw = 0
    /// One zstd frame of the chunk's bytes.
    case zstd = 1
    /// The chunk's 2-, 4- or 8-byte elements grouped into byte planes, each plane stored raw or as one zstd
    /// frame (see ``PlanePayload``).
    case planes = 2
    /// The XOR of the chunk with its base chunk (named in the frame header), grouped into byte planes
    /// like ``planes``. Puts write ``differencePlanes`` instead; these still decode.
    case deltaPlanes = 3
    /// The chunk's elements minus its base chunk's (named in the frame header), as wrapping unsigned
    /// integers mapped by zigzag (see ``ByteGrouping/Delta/difference``), grouped into byte planes like
    /// ``planes``. On real training checkpoints it stores weights 2, Adam's first moment 2 and its second
    /// moment 6 points of raw size smaller than the XOR did.
    case differencePlanes = 4
    /// fp32 weights as the zigzag difference from a prediction (``WeightPrediction``) built from the base
    /// chunk (the parent checkpoint's weights) and four inputs (Adam's moments of this checkpoint and of the
    /// parent), grouped into byte planes like ``planes``. The payload is the prediction (inputs and
    /// constants) followed by a ``PlanePayload`` of width 4.
    case predictedPlanes = 5

    public var description: String {
        switch self {
        case .raw: "raw"
        case .zstd: "zstd"
        case .planes: "planes"
        case .deltaPlanes: "delta+planes"
        case .differencePlanes: "difference+planes"
        case .predictedPlanes: "predicted+planes"
        }
    }

    /// Whether frames of this encoding need their base chunk to decode.
    var hasBase: Bool { self == .deltaPlanes || self == .differencePlanes || self == .predictedPlanes }
    /// Whether frames of this encoding name inputs besides their base, at the start of their payload.
    var hasInputs: Bool { self == .predictedPlanes }
}

/// An encoded chunk, ready to append to a pack.
struct EncodedChunk: Sendable {
    var digest: ChunkDigest
    var encoding: FrameEncoding
    var rawLength: Int
    var payload: [UInt8]
    /// The chunk this one is a delta against (encodings with ``FrameEncoding/hasBase`` only).
    var base: ChunkDigest? = nil
    /// The other chunks decoding needs (encodings with ``FrameEncoding/hasInputs`` only).
    var inputs: [ChunkDigest] = []
}

/// The payload of ``FrameEncoding/planes``, ``FrameEncoding/deltaPlanes`` and
/// ``FrameEncoding/differencePlanes`` frames:
///
/// ```
/// width (u8) · per plane: mode (u8: 0 raw, 1 zstd) · stored length (u32)
/// plane payloads, in plane order
/// tail: the raw-length mod width last bytes, as they are (XORed with the base's for either delta)
/// ```
/// Plane `b` holds byte `b` (little-endian order) of every element.
enum PlanePayload {
    static func headerSize(width: Int) -> Int { 1 + 5 * width }
}

/// What encoding one chunk's planes found out, for the next chunk of the same tensor.
struct PlaneOutcome: Sendable, Equatable {
    /// Per plane: true when zstd was kept, false when it was tried and saved too little, nil when not tried.
    var compressed: [Bool?]
}

/// Chooses and applies a frame encoding, and decodes frames back.
struct FrameCodec: Sendable {
    var level: CompressionLevel
    let contexts: ZstdContextPool

    /// A chunk is stored raw unless zstd saves at least this share of it: decoding raw costs nothing, and
    /// a compressor that saves 1% is not worth its decode time on restore.
    static let minimumSaving = 0.02
    /// The same for one byte plane: mantissa planes that zstd shrinks by a few percent stay raw, so that
    /// restoring them is a copy and not a decompression.
    static let minimumPlaneSaving = 0.04
    /// zstd's shortest match for byte planes (see ``ZstdCompressor/compress(_:level:minimumMatch:)``). On
    /// the real fp32 series it stores the third plane of the weights' differences in 0.506 of its size
    /// where the level's own (5) took 0.550, and the exponent plane of Adam's first moment in 0.265 where
    /// it took 0.299; no plane measured grew.
    static let planeMinimumMatch: Int32 = 7

    init(level: CompressionLevel, contexts: ZstdContextPool = ZstdContextPool()) {
        self.level = level
        self.contexts = contexts
    }

    /// Encodes `bytes`, whose digest is `digest`, as zstd, or raw when zstd saves too little.
    func encode(_ bytes: [UInt8], digest: ChunkDigest) throws -> EncodedChunk {
        let level = self.level
        let compressed = try contexts.withCompressor { (compressor) throws in
            try bytes.withUnsafeBytes { (raw) throws in try compressor.compress(raw, level: level) }
        }
        if Double(compressed.count) <= Double(bytes.count) * (1 - Self.minimumSaving) {
            return EncodedChunk(digest: digest, encoding: .zstd, rawLength: bytes.count, payload: compressed)
        }
        return EncodedChunk(digest: digest, encoding: .raw, rawLength: bytes.count, payload: bytes)
    }

    /// Encodes `bytes` as byte planes of `width`-byte elements, taken as a `delta` against `base` first
    /// when one is given (it must be as long as `bytes`). Planes whose `tryCompressing` entry is false are
    /// stored raw without trying zstd.
    ///
    /// - Returns: the payload and what each plane's compression did.
    func encodePlanes(_ bytes: UnsafeRawBufferPointer, base: UnsafeRawBufferPointer?, delta: ByteGrouping.Delta = .difference, width: Int, tryCompressing: [Bool]) throws -> (payload: [UInt8], outcome: PlaneOutcome) {
        precondition(ByteGrouping.widths.contains(width) && tryCompressing.count == width && (base == nil || base?.count == bytes.count))
        let elements = bytes.count / width
        let tail = bytes.count - elements * width
        var grouped = [UInt8](unsafeUninitializedCapacity: bytes.count) { out, count in
            if let input = bytes.baseAddress, let target = out.baseAddress {
                ByteGrouping.group(input, base: base?.baseAddress, delta: delta, width: width, elements: elements, into: target)
                ByteGrouping.xor(input + elements * width, base.flatMap { $0.baseAddress.map { $0 + elements * width } }, count: tail, into: target + elements * width)
            }
            count = bytes.count
        }
        // The payload is written in place: zstd compresses each plane straight into it, and a plane that
        // saves less than ``minimumPlaneSaving`` is copied raw over the attempt, so every plane takes at
        // most its own size. An attempt may run past its plane's place into the later planes' (not written
        // yet); the buffer ends `bound - elements` bytes after the payload's largest size, so that zstd
        // always has the room it asks for and keeps exactly what it would with a buffer of its own.
        let headerSize = PlanePayload.headerSize(width: width)
        let keepAtMost = Int(Double(elements) * (1 - Self.minimumPlaneSaving))
        let room = headerSize + bytes.count + ZstdCompressor.bound(elements) - elements
        var outcome = PlaneOutcome(compressed: Array(repeating: nil, count: width))
        let level = self.level
        let payload = try grouped.withUnsafeBytes { (planes) throws -> [UInt8] in
            try [UInt8](unsafeUninitializedCapacity: room) { out, initialized in
                let target = UnsafeMutableRawBufferPointer(out)
                target[0] = UInt8(width)
                var end = headerSize
                for plane in 0..<width {
                    let source = UnsafeRawBufferPointer(rebasing: planes[(plane * elements)..<((plane + 1) * elements)])
                    var stored: Int?
                    if tryCompressing[plane] && elements > 0 {
                        let attempt = UnsafeMutableRawBufferPointer(rebasing: target[end...])
                        let size = try contexts.withCompressor { try $0.compress(source, into: attempt, level: level, minimumMatch: Self.planeMinimumMatch) }
                        stored = size.flatMap { $0 <= keepAtMost ? $0 : nil }
                        outcome.compressed[plane] = stored != nil
                    }
                    if stored == nil {
                        UnsafeMutableRawBufferPointer(rebasing: target[end..<(end + elements)]).copyMemory(from: source)
                    }
                    target[1 + 5 * plane] = stored == nil ? 0 : 1
                    target.storeBytes(of: UInt32(stored ?? elements).littleEndian, toByteOffset: 2 + 5 * plane, as: UInt32.self)
                    end += stored ?? elements
                }
                let tail = UnsafeRawBufferPointer(rebasing: planes[(elements * width)...])
                UnsafeMutableRawBufferPointer(rebasing: target[end..<(end + tail.count)]).copyMemory(from: tail)
                initialized = end + tail.count
            }
        }
        grouped = []
        return (payload, outcome)
    }

    /// Encodes fp32 `weights` as their difference from `prediction`'s guess, computed from `parent` (the
    /// base chunk's bytes) and `moments` (the inputs' bytes, in ``WeightPrediction/inputs`` order).
    func encodePredicted(_ weights: UnsafeRawBufferPointer, parent: UnsafeRawBufferPointer, moments: [UnsafeRawBufferPointer], prediction: WeightPrediction, tryCompressing: [Bool]) throws -> (payload: [UInt8], outcome: PlaneOutcome) {
        precondition(weights.count % 4 == 0 && parent.count == weights.count && moments.allSatisfy { $0.count == weights.count })
        let guess = Self.predicted(prediction, count: weights.count / 4, parent: parent, moments: moments)
        let (planes, outcome) = try guess.withUnsafeBytes { try encodePlanes(weights, base: $0, delta: .difference, width: 4, tryCompressing: tryCompressing) }
        return (prediction.serialized() + planes, outcome)
    }

    /// The predicted bytes of `count` fp32 elements.
    private static func predicted(_ prediction: WeightPrediction, count: Int, parent: UnsafeRawBufferPointer, moments: [UnsafeRawBufferPointer]) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: count * 4) { out, initialized in
            if count > 0, let target = out.baseAddress, let parent = parent.baseAddress {
                prediction.predict(count: count, parent: parent, moments: moments.map { $0.baseAddress! }, into: UnsafeMutableRawPointer(target))
            }
            initialized = count * 4
        }
    }

    /// Decodes a frame payload into its `rawLength` bytes. The caller checks the digest.
    ///
    /// - Parameters:
    ///   - base: the decoded base chunk, asked for only by encodings that have one.
    ///   - input: the decoded bytes of one of the frame's inputs, asked for only by encodings that have them.
    func decode(_ payload: ChunkBytes, encoding: FrameEncoding, rawLength: Int,
                base: () throws -> ChunkBytes = { throw CKStoreError(.damaged, "a delta frame's base is not available") },
                input: (ChunkDigest) throws -> ChunkBytes = { _ in throw CKStoreError(.damaged, "a predicted frame's inputs are not available") }) throws -> ChunkBytes {
        switch encoding {
        case .raw:
            guard payload.count == rawLength else {
                throw CKStoreError(.damaged, "raw frame holds \(payload.count) bytes where \(rawLength) were expected")
            }
            return payload
        case .zstd:
            // Uninitialized: decompress fills exactly rawLength bytes or throws.
            return ChunkBytes(try [UInt8](unsafeUninitializedCapacity: rawLength) { out, initialized in
                try contexts.withDecompressor { decompressor in
                    try payload.withUnsafeBytes { input in
                        try decompressor.decompress(input, into: UnsafeMutableRawBufferPointer(out))
                    }
                }
                initialized = rawLength
            })
        case .planes:
            return try payload.withUnsafeBytes { try decodePlanes($0, rawLength: rawLength, base: nil, delta: .xor) }
        case .deltaPlanes, .differencePlanes:
            let base = try base()
            guard base.count == rawLength else {
                throw CKStoreError(.damaged, "delta frame of \(rawLength) bytes names a base of \(base.count) bytes")
            }
            let delta = encoding == .deltaPlanes ? ByteGrouping.Delta.xor : .difference
            return try base.withUnsafeBytes { base in try payload.withUnsafeBytes { try decodePlanes($0, rawLength: rawLength, base: base, delta: delta) } }
        case .predictedPlanes:
            let prediction = try payload.withUnsafeBytes { try WeightPrediction(parsing: $0) }
            guard rawLength % 4 == 0 else { throw CKStoreError(.damaged, "predicted frame of \(rawLength) bytes, not a whole number of fp32 values") }
            let parent = try base()
            let moments = try prediction.inputs.map { try input($0) }
            guard parent.count == rawLength, moments.allSatisfy({ $0.count == rawLength }) else {
                throw CKStoreError(.damaged, "predicted frame of \(rawLength) bytes names a base or input of another length")
            }
            let guess = try parent.withUnsafeBytes { parent in
                try Self.withUnsafeBytes(of: moments) { moments in Self.predicted(prediction, count: rawLength / 4, parent: parent, moments: moments) }
            }
            return try guess.withUnsafeBytes { guess in
                try payload.withUnsafeBytes { payload in
                    try decodePlanes(UnsafeRawBufferPointer(rebasing: payload[WeightPrediction.encodedSize...]), rawLength: rawLength, base: guess, delta: .difference)
                }
            }
        }
    }

    /// Calls `body` with the bytes of every chunk of `chunks` at once.
    static func withUnsafeBytes<T>(of chunks: [ChunkBytes], _ body: ([UnsafeRawBufferPointer]) throws -> T) throws -> T {
        func nest(_ index: Int, _ buffers: [UnsafeRawBufferPointer]) throws -> T {
            guard index < chunks.count else { return try body(buffers) }
            return try chunks[index].withUnsafeBytes { try nest(index + 1, buffers + [$0]) }
        }
        return try nest(0, [])
    }

    private func decodePlanes(_ payload: UnsafeRawBufferPointer, rawLength: Int, base: UnsafeRawBufferPointer?, delta: ByteGrouping.Delta) throws -> ChunkBytes {
        func damaged(_ what: String) -> CKStoreError { CKStoreError(.damaged, "byte-plane frame: \(what)") }
        guard let width = payload.first.map(Int.init), ByteGrouping.widths.contains(width) else {
            throw damaged("unsupported element width \(payload.first.map(String.init) ?? "(empty payload)")")
        }
        let headerSize = PlanePayload.headerSize(width: width)
        guard payload.count >= headerSize else { throw damaged("header is cut short") }
        let elements = rawLength / width
        let tail = rawLength - elements * width
        var planes = [(compressed: Bool, range: Range<Int>)]()
        var offset = headerSize
        for plane in 0..<width {
            let mode = payload[1 + 5 * plane]
            let length = Int(payload.loadLittleEndian(UInt32.self, at: 2 + 5 * plane))
            guard mode <= 1 else { throw damaged("plane \(plane) has unknown mode \(mode)") }
            guard mode == 1 || length == elements else { throw damaged("raw plane \(plane) holds \(length) bytes where \(elements) were expected") }
            guard offset + length <= payload.count else { throw damaged("plane \(plane) runs past the payload") }
            planes.append((mode == 1, offset..<(offset + length)))
            offset += length
        }
        guard payload.count - offset == tail else { throw damaged("\(payload.count - offset) bytes after the planes where the tail is \(tail)") }
        let compressedCount = planes.count { $0.compressed }
        // Compressed planes decompress into one scratch buffer; raw planes are read where they are.
        let scratch = try [UInt8](unsafeUninitializedCapacity: compressedCount * elements) { out, initialized in
            var slot = 0
            for plane in planes where plane.compressed {
                try contexts.withDecompressor { decompressor in
                    try decompressor.decompress(UnsafeRawBufferPointer(rebasing: payload[plane.range]), into: UnsafeMutableRawBufferPointer(UnsafeMutableBufferPointer(rebasing: out[(slot * elements)..<((slot + 1) * elements)])))
                }
                slot += 1
            }
            initialized = compressedCount * elements
        }
        let output = scratch.withUnsafeBufferPointer { scratch in
            [UInt8](unsafeUninitializedCapacity: rawLength) { out, initialized in
                guard let target = out.baseAddress, let source = payload.baseAddress else {
                    initialized = 0
                    return
                }
                var slot = 0
                var pointers = [UnsafePointer<UInt8>]()
                for plane in planes {
                    if plane.compressed, let start = scratch.baseAddress {
                        pointers.append(start + slot * elements)
                        slot += 1
                    } else {
                        pointers.append((source + plane.range.lowerBound).assumingMemoryBound(to: UInt8.self))
                    }
                }
                ByteGrouping.ungroup(pointers, base: base?.baseAddress, delta: delta, elements: elements, into: UnsafeMutableRawPointer(target))
                ByteGrouping.xor(source + offset, base?.baseAddress.map { $0 + elements * width }, count: tail, into: UnsafeMutableRawPointer(target) + elements * width)
                initialized = rawLength
            }
        }
        guard output.count == rawLength else { throw damaged("empty payload") }
        return ChunkBytes(output)
    }
}
