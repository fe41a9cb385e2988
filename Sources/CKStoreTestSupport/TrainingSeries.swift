import Dispatch
import Foundation

/// A training run that writes checkpoints like a real one: weights drawn like a trained network's
/// (per-tensor scales by fan-in, norm weights near 1), updated by AdamW steps with noisy gradients and a
/// warmup-then-cosine learning-rate schedule; Adam's moments saved in a torch-zip-shaped `optimizer.pt`.
///
/// Variants: ``Variant/fp32`` (full fine-tuning in fp32), ``Variant/bf16`` (training from scratch with
/// bf16 weights and fp32 optimizer state) and ``Variant/frozen`` (a frozen fp32 base with rank-8
/// adapters next to each projection, named and ordered as PEFT saves them, so adapters sit between
/// base tensors in the file). Deterministic for a seed; tensors are simulated in parallel.
public struct TrainingSeries: Sendable {
    public enum Variant: String, CaseIterable, Sendable {
        case fp32, bf16, frozen
    }

    final class Tensor: @unchecked Sendable {
        // Mutated only by the one task that simulates this tensor at a time.
        let name: String
        let shape: [Int]
        let trained: Bool
        /// For an embedding: rows, which get a gradient only in steps whose batch holds their token.
        let rows: Int?
        var weights: [Float]
        var expAvg: [Float]
        var expAvgSq: [Float]
        /// Each element's persistent gradient component (what the data keeps pushing it towards).
        let signal: [Float]
        let noiseScale: Float
        var random: SeededRandom

        init(name: String, shape: [Int], trained: Bool, initial: (inout SeededRandom) -> Float, noiseScale: Float, seed: UInt64, rows: Int? = nil) {
            var random = SeededRandom(seed: seed)
            let count = shape.reduce(1, *)
            self.name = name
            self.shape = shape
            self.trained = trained
            self.rows = rows
            self.weights = (0..<count).map { _ in initial(&random) }
            self.expAvg = trained ? [Float](repeating: 0, count: count) : []
            self.expAvgSq = trained ? [Float](repeating: 0, count: count) : []
            self.signal = trained ? (0..<count).map { _ in random.normal() * 0.3 * noiseScale } : []
            self.noiseScale = noiseScale
            self.random = random
        }
    }

    public let variant: Variant
    /// Simulated optimizer steps between two checkpoints.
    public let stepsPerCheckpoint: Int
    public private(set) var step = 0
    private let tensors: [Tensor]
    private let peakLearningRate: Float
    private let totalSteps: Int
    private var losses = [Double]()

    /// A model of about `parameterCount` parameters; `checkpoints` sets the schedule's length.
    public init(variant: Variant, parameterCount: Int, checkpoints: Int, stepsPerCheckpoint: Int = 20, seed: UInt64 = 1) {
        self.variant = variant
        self.stepsPerCheckpoint = stepsPerCheckpoint
        self.totalSteps = checkpoints * stepsPerCheckpoint
        // Fine-tuning rates for the fp32 and adapter runs; a from-scratch rate for bf16.
        self.peakLearningRate = variant == .bf16 ? 1e-4 : 1e-5
        // A decoder-only transformer: per layer four h×h attention projections, a 4h MLP, two norms.
        var hidden = 64
        while 12 * (hidden + 64) * (hidden + 64) * 4 + 8192 * (hidden + 64) <= parameterCount { hidden += 64 }
        let layers = max(1, (parameterCount - 8192 * hidden) / (12 * hidden * hidden + 2 * hidden))
        var specs = [(name: String, shape: [Int], kind: Int)]()  // kind: 0 matrix, 1 norm, 2 embedding
        specs.append(("model.embed_tokens.weight", [8192, hidden], 2))
        for layer in 0..<layers {
            let prefix = "model.layers.\(layer)."
            for projection in ["q_proj", "k_proj", "v_proj", "o_proj"] { specs.append((prefix + "self_attn." + projection, [hidden, hidden], 0)) }
            specs.append((prefix + "mlp.up_proj", [4 * hidden, hidden], 0))
            specs.append((prefix + "mlp.down_proj", [hidden, 4 * hidden], 0))
            specs.append((prefix + "input_layernorm.weight", [hidden], 1))
            specs.append((prefix + "post_attention_layernorm.weight", [hidden], 1))
        }
        specs.append(("model.norm.weight", [hidden], 1))
        var tensors = [Tensor]()
        var seedCounter = seed &* 1_000_003
        func next() -> UInt64 { seedCounter &+= 1; return seedCounter }
        for spec in specs {
            let fanIn = Float(spec.shape.last ?? 1)
            let scale = spec.kind == 2 ? 0.02 : 1 / fanIn.squareRoot()
            let noise: Float = 1e-3 * (0.5 + Float(next() % 100) / 100)
            func matrix(_ random: inout SeededRandom) -> Float { random.normal() * scale * 0.6 }
            func norm(_ random: inout SeededRandom) -> Float { 1 + random.normal() * 0.08 }
            switch (spec.kind, variant) {
            case (1, .frozen):
                tensors.append(Tensor(name: spec.name, shape: spec.shape, trained: false, initial: norm, noiseScale: noise, seed: next()))
            case (1, _):
                tensors.append(Tensor(name: spec.name, shape: spec.shape, trained: true, initial: norm, noiseScale: noise, seed: next()))
            case (0, .frozen):
                // PEFT names: q_proj.base_layer.weight, q_proj.lora_A.weight, q_proj.lora_B.weight.
                let (out, input) = (spec.shape[0], spec.shape[1])
                tensors.append(Tensor(name: spec.name + ".base_layer.weight", shape: spec.shape, trained: false, initial: matrix, noiseScale: noise, seed: next()))
                tensors.append(Tensor(name: spec.name + ".lora_A.weight", shape: [8, input], trained: true, initial: { $0.normal() / Float(input).squareRoot() }, noiseScale: noise, seed: next()))
                tensors.append(Tensor(name: spec.name + ".lora_B.weight", shape: [out, 8], trained: true, initial: { _ in 0 }, noiseScale: noise, seed: next()))
            case (0, _):
                tensors.append(Tensor(name: spec.name + ".weight", shape: spec.shape, trained: true, initial: matrix, noiseScale: noise, seed: next()))
            default:
                tensors.append(Tensor(name: spec.name, shape: spec.shape, trained: variant != .frozen, initial: matrix, noiseScale: noise, seed: next(), rows: spec.shape[0]))
            }
        }
        // Saved in name order, as safetensors' reference writer orders tensors of one dtype.
        self.tensors = tensors.sorted { $0.name < $1.name }
    }

    /// The number of parameters (trained or not).
    public var parameterCount: Int { tensors.reduce(0) { $0 + $1.weights.count } }

    /// Warmup over the first 10% of steps, then cosine decay to 10% of the peak.
    func learningRate(at step: Int) -> Float {
        let warmup = max(1, totalSteps / 10)
        if step < warmup { return peakLearningRate * Float(step + 1) / Float(warmup) }
        let progress = min(1, Float(step - warmup) / Float(max(1, totalSteps - warmup)))
        return peakLearningRate * (0.1 + 0.9 * 0.5 * (1 + cos(.pi * progress)))
    }

    /// Runs the optimizer up to the next checkpoint.
    public mutating func advance() {
        let first = step
        let steps = stepsPerCheckpoint
        let rates = (0..<steps).map { learningRate(at: first + $0) }
        let trained = tensors.filter(\.trained)
        DispatchQueue.concurrentPerform(iterations: trained.count) { index in
            Self.adamW(trained[index], firstStep: first, rates: rates)
        }
        step += steps
        losses.append(3.2 * exp(-Double(step) / Double(max(1, totalSteps))) + 0.4)
    }

    /// AdamW (β1 0.9, β2 0.95, ε 1e-8, weight decay 0.01) on gradients `signal + noise`.
    private static func adamW(_ tensor: Tensor, firstStep: Int, rates: [Float]) {
        let (beta1, beta2, epsilon, decay): (Float, Float, Float, Float) = (0.9, 0.95, 1e-8, 0.01)
        var random = tensor.random
        let noise = tensor.noiseScale
        tensor.weights.withUnsafeMutableBufferPointer { weights in
            tensor.expAvg.withUnsafeMutableBufferPointer { m in
                tensor.expAvgSq.withUnsafeMutableBufferPointer { v in
                    tensor.signal.withUnsafeBufferPointer { signal in
                        let rows = tensor.rows ?? 1
                        let rowLength = weights.count / rows
                        for (offset, rate) in rates.enumerated() {
                            let t = Float(firstStep + offset + 1)
                            let correction1 = 1 - pow(beta1, t), correction2 = 1 - pow(beta2, t)
                            for row in 0..<rows {
                                // An embedding row has a gradient only when its token is in the batch (4096
                                // tokens per step from a Zipf distribution over the vocabulary); without one
                                // its moments decay and decoupled weight decay still moves it.
                                let hasGradient = tensor.rows == nil || Float(random.next() % 1_000_000) / 1_000_000 < 1 - exp(-4096 / (Float(row + 1) * 9.6))
                                for index in (row * rowLength)..<((row + 1) * rowLength) {
                                    let gradient = hasGradient ? signal[index] + random.normal() * noise : 0
                                    m[index] = beta1 * m[index] + (1 - beta1) * gradient
                                    v[index] = beta2 * v[index] + (1 - beta2) * gradient * gradient
                                    let update = (m[index] / correction1) / ((v[index] / correction2).squareRoot() + epsilon)
                                    weights[index] -= rate * (update + decay * weights[index])
                                }
                            }
                        }
                    }
                }
            }
        }
        tensor.random = random
    }

    /// Writes the checkpoint folder of the current step (created if needed): `model.safetensors`,
    /// `optimizer.pt`, `scheduler.pt`, `rng_state.pth`, `trainer_state.json`, `config.json`.
    public func write(to folder: String) throws {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        func put(_ name: String, _ bytes: [UInt8]) throws {
            try Data(bytes).write(to: URL(fileURLWithPath: folder + "/" + name))
        }
        var model = SafetensorsBuilder(metadata: ["format": "pt"])
        for tensor in tensors {
            if variant == .bf16 {
                model.add(tensor.name, dtype: "BF16", shape: tensor.shape, data: Self.bf16Bytes(tensor.weights))
            } else {
                model.add(tensor.name, dtype: "F32", shape: tensor.shape, data: Self.bytes(tensor.weights))
            }
        }
        try put("model.safetensors", model.build())
        // The pickle AdamW's state_dict() has: one group of every trained parameter, numbered in order.
        let trained = tensors.filter(\.trained)
        let pickle = OptimizerPickle(
            parameters: trained.enumerated().map { ($0.offset, $0.element.shape) },
            groups: [.init(params: Array(trained.indices), lr: Double(learningRate(at: step)), betas: (0.9, 0.95), eps: 1e-8, weightDecay: 0.01)])
        var optimizer = TorchZipBuilder(archiveName: "optimizer", pickle: pickle.bytes())
        for tensor in trained {
            optimizer.addStorage(Self.bytes([Float(step)]))
            optimizer.addStorage(Self.bytes(tensor.expAvg))
            optimizer.addStorage(Self.bytes(tensor.expAvgSq))
        }
        try put("optimizer.pt", optimizer.build())
        var scheduler = TorchZipBuilder(archiveName: "scheduler", pickle: Array("scheduler last_epoch=\(step) lr=\(learningRate(at: step))".utf8))
        scheduler.pickle += [0x2e]
        try put("scheduler.pt", scheduler.build())
        var rng = TorchZipBuilder(archiveName: "rng_state", pickle: Array("rng".utf8))
        var random = SeededRandom(seed: UInt64(step))
        rng.addStorage(random.bytes(count: 5056))
        try put("rng_state.pth", rng.build())
        let history = losses.enumerated().map { index, loss in
            "    {\"step\": \((index + 1) * stepsPerCheckpoint), \"loss\": \(loss), \"learning_rate\": \(learningRate(at: (index + 1) * stepsPerCheckpoint))}"
        }
        try put("trainer_state.json", Array("{\n  \"global_step\": \(step),\n  \"epoch\": \(Double(step) / Double(max(1, totalSteps))),\n  \"log_history\": [\n\(history.joined(separator: ",\n"))\n  ]\n}\n".utf8))
        try put("config.json", Array(#"{"architectures": ["LlamaForCausalLM"], "torch_dtype": "\#(variant == .bf16 ? "bfloat16" : "float32")"}"#.utf8))
    }

    static func bytes(_ values: [Float]) -> [UInt8] {
        values.withUnsafeBytes { source in
            [UInt8](unsafeUninitializedCapacity: source.count) { target, count in
                UnsafeMutableRawBufferPointer(target).copyMemory(from: source)
                count = source.count
            }
        }
    }

    /// Rounds to bfloat16 (nearest, ties to even), as `tensor.to(torch.bfloat16)` does.
    static func bf16Bytes(_ values: [Float]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: values.count * 2)
        out.withUnsafeMutableBytes { target in
            for (index, value) in values.enumerated() {
                let bits = value.bitPattern
                let rounded = UInt16(truncatingIfNeeded: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) >> 16)
                target.storeBytes(of: rounded.littleEndian, toByteOffset: index * 2, as: UInt16.self)
            }
        }
        return out
    }
}
