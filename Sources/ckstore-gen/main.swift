public import ArgumentParser
import CKStoreTestSupport

extension TrainingSeries.Variant: ExpressibleByArgument {}

/// Generates trainer-shaped checkpoint folders for the demo, the end-to-end tests and the benchmarks.
@main
struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ckstore-gen",
        abstract: "Write a series of Hugging Face Trainer-shaped checkpoint folders (checkpoint-N/).",
        discussion: """
            Each checkpoint holds model.safetensors (f32 weights), optimizer.pt (AdamW moments in a
            torch.save-shaped zip), scheduler.pt, rng_state.pth, trainer_state.json and config.json.
            Between checkpoints every weight and moment changes (full training), except parameters whose
            names start with a --frozen prefix, which stay the same (a frozen base model).
            """
    )

    @Argument(help: "The folder to write checkpoint-N/ folders into.") var output: String
    @Option(help: "How many checkpoints.") var checkpoints = 3
    @Option(help: "Model parameters (f32 values); a checkpoint is about 12 bytes per parameter.") var parameters = 1_000_000
    @Option(help: "Steps between checkpoints.") var every = 100
    @Option(help: "Random seed.") var seed: UInt64 = 1
    @Option(help: "Parameter-name prefix to keep frozen (repeatable), e.g. 'layers.'.") var frozen: [String] = []
    @Option(help: "Instead of random updates, simulate AdamW training: fp32 (full fine-tuning), bf16 (bf16 weights, fp32 optimizer state) or frozen (frozen base with adapters). --every is then the number of optimizer steps simulated between checkpoints.")
    var series: TrainingSeries.Variant?

    func run() throws {
        if let series {
            var run = TrainingSeries(variant: series, parameterCount: parameters, checkpoints: checkpoints, stepsPerCheckpoint: every, seed: seed)
            for _ in 0..<checkpoints {
                run.advance()
                let folder = "\(output)/checkpoint-\(run.step)"
                try run.write(to: folder)
                print(folder)
            }
            return
        }
        var checkpoint = TrainerCheckpoint(seed: seed, layout: TrainerCheckpoint.layout(parameterCount: parameters))
        let frozen = self.frozen
        for _ in 0..<checkpoints {
            checkpoint.train(steps: every) { name in frozen.contains { name.hasPrefix($0) } }
            let folder = "\(output)/checkpoint-\(checkpoint.step)"
            try checkpoint.write(to: folder)
            print(folder)
        }
    }
}
