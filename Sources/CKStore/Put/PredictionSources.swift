/// What a put may predict fp32 weights from (``WeightPrediction``): for each optimizer parameter that has
/// Adam's state in this checkpoint and in the parent, the chunks of its moments in both, where to read
/// this checkpoint's again, and the bias corrections of both.
///
/// A put stores the optimizer's files first and builds this from what they stored, then stores the other
/// files; a weight chunk is predicted from the parameter whose update best matches its change.
struct PredictionSources: Sendable {
    /// One tensor's chunks in a file being put, and where they start in it.
    struct TensorChunks: Sendable {
        var source: any PutSource
        var chunks: [ChunkRef]
        /// The file offset of each chunk (asked for each candidate of each weight chunk).
        private let offsets: [Int64]

        init(source: any PutSource, begin: Int64, chunks: [ChunkRef]) {
            self.source = source
            self.chunks = chunks
            var offsets = [Int64](), position = begin
            for chunk in chunks {
                offsets.append(position)
                position += Int64(chunk.length)
            }
            self.offsets = offsets
        }

        /// The file offset of chunk `index`.
        func offset(ofChunk index: Int) -> Int64 { offsets[index] }
    }

    /// One optimizer parameter whose moments can predict a weight tensor of the same shape.
    struct Candidate: Sendable {
        var param: Int
        var average: TensorChunks
        var averageSquare: TensorChunks
        var parentAverage: [ChunkRef]
        var parentAverageSquare: [ChunkRef]
        /// `1/(1 − β₂^step)` in this checkpoint and in the parent.
        var scale: Float
        var parentScale: Float
        var epsilon: Float
    }

    /// Candidates by the shape of their moments.
    var byShape: [[Int]: [Candidate]]
    /// The files the moments come from: their tensors are never predicted.
    var optimizerFiles: Set<String>

    /// Builds the sources from the optimizer files this put stored (`stored`, readable again through
    /// `sources`) and the parent's manifest; nil when there is nothing to predict from.
    init?(stored: [FileEntry], sources: [String: any PutSource], parent: Manifest?) {
        guard let parent else { return nil }
        var byShape = [[Int]: [Candidate]]()
        var optimizerFiles = Set<String>()
        for file in stored {
            guard let optimizer = file.optimizer, let source = sources[file.path],
                  let parentFile = parent.files.first(where: { $0.path == file.path && $0.optimizer != nil }),
                  let parentOptimizer = parentFile.optimizer else { continue }
            optimizerFiles.insert(file.path)
            let tensors = Dictionary((file.tensors ?? []).map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
            let parentTensors = Dictionary((parentFile.tensors ?? []).map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
            for group in optimizer.groups {
                guard let eps = group.eps, let step = group.step, let beta2 = group.betas?.last else { continue }
                for param in group.params {
                    guard let parentGroup = parentOptimizer.groups.first(where: { $0.params.contains(param) }),
                          let parentStep = parentGroup.step, let parentBeta2 = parentGroup.betas?.last,
                          let scale = Self.biasCorrection(beta2: beta2, step: step),
                          let parentScale = Self.biasCorrection(beta2: parentBeta2, step: parentStep) else { continue }
                    let names = ("state.\(param).exp_avg", "state.\(param).exp_avg_sq")
                    guard let average = tensors[names.0], let square = tensors[names.1],
                          let parentAverage = parentTensors[names.0], let parentSquare = parentTensors[names.1],
                          let shape = average.shape, average.dtype == DType(safetensorsName: "F32"),
                          [square, parentAverage, parentSquare].allSatisfy({ $0.dtype == average.dtype && $0.shape == shape && $0.byteCount == average.byteCount }) else { continue }
                    let chunks = { (tensor: TensorEntry, file: FileEntry) in Array(file.chunks[tensor.firstChunk..<(tensor.firstChunk + tensor.chunkCount)]) }
                    byShape[shape, default: []].append(Candidate(
                        param: param,
                        average: TensorChunks(source: source, begin: average.begin, chunks: chunks(average, file)),
                        averageSquare: TensorChunks(source: source, begin: square.begin, chunks: chunks(square, file)),
                        parentAverage: chunks(parentAverage, parentFile), parentAverageSquare: chunks(parentSquare, parentFile),
                        scale: scale, parentScale: parentScale, epsilon: Float(eps)))
                }
            }
        }
        guard !byShape.isEmpty else { return nil }
        self.byShape = byShape
        self.optimizerFiles = optimizerFiles
    }

    /// `1/(1 − β₂^step)` as a finite float, or nil.
    static func biasCorrection(beta2: Double, step: Double) -> Float? {
        guard step >= 1, beta2 > 0, beta2 < 1 else { return nil }
        let value = Float(1 / (1 - pow(beta2, step)))
        return value.isFinite ? value : nil
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
