import Foundation

/// A checkpoint folder shaped like Hugging Face Trainer output (`checkpoint-N/`): `model.safetensors`,
/// `optimizer.pt` (AdamW's `exp_avg` and `exp_avg_sq` per parameter as torch.save storages),
/// `scheduler.pt`, `rng_state.pth`, `trainer_state.json` and `config.json`.
public struct TrainerCheckpoint: Sendable {
    public struct Parameter: Sendable {
        public var name: String
        public var shape: [Int]
        public var weights: [UInt8]
        public var expAvg: [UInt8]
        public var expAvgSq: [UInt8]

        public var elementCount: Int { shape.reduce(1, *) }
    }

    public var parameters: [Parameter]
    public var step: Int
    public var losses: [Double]
    public var rngState: [UInt8]
    private var random: SeededRandom

    /// A small transformer-ish layout whose weights add up to roughly `parameterCount` f32 values.
    public static func layout(parameterCount: Int) -> [(String, [Int])] {
        let hidden = max(8, Int(Double(parameterCount / 12).squareRoot()) / 8 * 8)
        var shapes: [(String, [Int])] = [("embed.weight", [hidden * 2, hidden])]
        var total = hidden * hidden * 2
        var layer = 0
        while total + hidden * hidden * 4 + hidden * 2 <= parameterCount || layer == 0 {
            shapes += [
                ("layers.\(layer).attn.weight", [hidden * 3, hidden]), ("layers.\(layer).attn.bias", [hidden * 3]),
                ("layers.\(layer).mlp.weight", [hidden, hidden]), ("layers.\(layer).norm.weight", [hidden]),
            ]
            total += hidden * hidden * 4 + hidden * 4
            layer += 1
        }
        shapes.append(("head.weight", [16, hidden]))
        return shapes
    }

    /// A freshly initialised model with zero optimizer moments at `step`.
    public init(seed: UInt64, layout: [(String, [Int])], step: Int = 0) {
        var random = SeededRandom(seed: seed)
        parameters = layout.map { name, shape in
            let count = shape.reduce(1, *)
            return Parameter(name: name, shape: shape, weights: random.floatBytes(count: count), expAvg: [UInt8](repeating: 0, count: count * 4), expAvgSq: [UInt8](repeating: 0, count: count * 4))
        }
        rngState = random.bytes(count: 5056)
        self.random = random
        self.step = step
        losses = []
    }

    /// One "training" interval: every weight and both moments change, as in full fine-tuning.
    /// Parameters whose names match `frozen` keep their weights and moments (a frozen base model).
    public mutating func train(steps: Int, frozen: (String) -> Bool = { _ in false }) {
        for index in parameters.indices where !frozen(parameters[index].name) {
            let count = parameters[index].elementCount
            parameters[index].weights = random.floatBytes(count: count)
            parameters[index].expAvg = random.floatBytes(count: count, scale: 0.001)
            parameters[index].expAvgSq = random.floatBytes(count: count, scale: 0.00001)
        }
        step += steps
        losses.append(3.0 / Double(1 + losses.count) + Double(random.next() % 100) / 1000)
        rngState = random.bytes(count: 5056)
    }

    /// Replaces one parameter's weights only.
    public mutating func perturb(parameter index: Int) {
        parameters[index].weights = random.floatBytes(count: parameters[index].elementCount)
    }

    public var modelFile: [UInt8] {
        var builder = SafetensorsBuilder(metadata: ["format": "pt"])
        for parameter in parameters {
            builder.add(parameter.name, dtype: "F32", shape: parameter.shape, data: parameter.weights)
        }
        return builder.build()
    }

    public var optimizerFile: [UInt8] {
        var builder = TorchZipBuilder(archiveName: "optimizer", pickle: Array("optimizer-state-pickle step=\(step)".utf8))
        for parameter in parameters {
            builder.addStorage(withUnsafeBytes(of: Float(step).bitPattern.littleEndian) { Array($0) })
            builder.addStorage(parameter.expAvg)
            builder.addStorage(parameter.expAvgSq)
        }
        return builder.build()
    }

    public var trainerStateJSON: String {
        let history = losses.enumerated().map { index, loss in
            "    {\"step\": \(index + 1), \"epoch\": \(Double(index + 1) / 4), \"loss\": \(loss), \"learning_rate\": 0.0001}"
        }
        return """
            {
              "global_step": \(step),
              "epoch": \(Double(step) / 100),
              "log_history": [
            \(history.joined(separator: ",\n"))
              ],
              "best_metric": null
            }
            """
    }

    /// Writes the folder; creates it if needed.
    public func write(to folder: String) throws {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        func put(_ name: String, _ bytes: [UInt8]) throws {
            try Data(bytes).write(to: URL(fileURLWithPath: folder + "/" + name))
        }
        try put("model.safetensors", modelFile)
        try put("optimizer.pt", optimizerFile)
        var scheduler = TorchZipBuilder(archiveName: "scheduler", pickle: Array("scheduler last_epoch=\(step)".utf8))
        scheduler.pickle += [0x2e]
        try put("scheduler.pt", scheduler.build())
        var rng = TorchZipBuilder(archiveName: "rng_state", pickle: Array("rng".utf8))
        rng.addStorage(rngState)
        try put("rng_state.pth", rng.build())
        try put("trainer_state.json", Array(trainerStateJSON.utf8))
        try put("config.json", Array(#"{"architectures": ["TinyNet"], "hidden_size": \#(parameters.first?.shape.last ?? 0), "torch_dtype": "float32"}"#.utf8))
    }
}
