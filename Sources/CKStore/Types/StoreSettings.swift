/// Store-wide defaults for new chunks, kept in the catalogue (`ckstore init --level`, `ckstore settings`).
/// A put may override each for itself (``PutOptions``).
public struct StoreSettings: Sendable, Equatable {
    /// The zstd level for new chunks.
    public var compressionLevel: CompressionLevel
    /// The longest chain of delta frames a put may write: a chunk whose base is already this many
    /// deltas deep is stored in full (a "keyframe"). Restoring a chunk decodes at most this many frames
    /// beyond its keyframe. 0 turns deltas off.
    public var maxDeltaDepth: Int
    /// Whether puts store fp32 weights as their difference from a prediction made from the parent's
    /// weights and Adam's moments (``FrameEncoding/predictedPlanes``), where that is smaller. It stores the
    /// weights of real fine-tuning checkpoints in about a tenth fewer bytes, and makes restoring them
    /// decode the moments of every checkpoint down their delta chain: see docs/benchmarks.md.
    public var predictWeights: Bool = false

    /// zstd level 1 and chains of at most 3 deltas, the choice `docs/benchmarks.md` measures: on byte
    /// planes level 1 stores slightly less than level 3 and is faster; chains of 3 store 1.3% less than
    /// chains of 2 and as little as chains of 4, whose newest checkpoint restores more slowly.
    public static let defaults = StoreSettings(compressionLevel: .default, maxDeltaDepth: 3)

    /// The deepest chain a store may be set to; decoding refuses chains beyond ``CheckpointStore/hardChainLimit``.
    public static let maxDeltaDepthLimit = 32

    /// Throws `invalidArgument` for a depth outside 0…``maxDeltaDepthLimit``.
    static func checkDeltaDepth(_ depth: Int) throws {
        guard (0...maxDeltaDepthLimit).contains(depth) else {
            throw CKStoreError(.invalidArgument, "maximum delta depth \(depth) is outside 0…\(maxDeltaDepthLimit)")
        }
    }

    public init(compressionLevel: CompressionLevel, maxDeltaDepth: Int, predictWeights: Bool = false) {
        self.compressionLevel = compressionLevel
        self.maxDeltaDepth = maxDeltaDepth
        self.predictWeights = predictWeights
    }
}
