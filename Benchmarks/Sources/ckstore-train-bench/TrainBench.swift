import ArgumentParser
import CKStore
import Foundation

/// What a background save costs a training loop: the mean step time of a loop that updates a model state
/// (weights and Adam's two moments, `--megabytes` in all) with and without a checkpoint every
/// `--checkpoint-seconds`, measured alternately in one process.
@main
struct TrainBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ckstore-train-bench", abstract: "Overhead of background saves on a training step loop.")

    @Option(help: "Model state in MiB (weights plus two Adam moments).") var megabytes = 1024
    @Option(help: "Seconds between checkpoints.") var checkpointSeconds = 60.0
    @Option(help: "Seconds of each measured phase.") var phaseSeconds = 120.0
    @Option(help: "Alternations of the two phases (the median of each is reported).") var rounds = 2
    @Option(help: "Scratch folder for the store.") var work = "/tmp/ckstore-train-bench"

    /// One Adam step over every parameter with a synthetic gradient: memory-bound like a real optimizer step.
    struct Model {
        var weights: [Float]
        var m: [Float]
        var v: [Float]
        var step = 0

        init(parameters: Int) {
            weights = (0..<parameters).map { Float($0 % 1000) / 1000 - 0.5 }
            m = [Float](repeating: 0, count: parameters)
            v = [Float](repeating: 0, count: parameters)
        }

        mutating func train() {
            step += 1
            let phase = Float(step % 17) * 0.01
            weights.withUnsafeMutableBufferPointer { w in
                m.withUnsafeMutableBufferPointer { m in
                    v.withUnsafeMutableBufferPointer { v in
                        for index in w.indices {
                            let gradient = w[index] * 0.01 + phase
                            m[index] = 0.9 * m[index] + 0.1 * gradient
                            v[index] = 0.999 * v[index] + 0.001 * gradient * gradient
                            w[index] -= 0.001 * m[index] / (v[index].squareRoot() + 1e-8)
                        }
                    }
                }
            }
        }

        /// The checkpoint's contents: snapshots of the state in buffers the saver reuses.
        func contents(step: Int64, saver: BackgroundSaver) async throws -> CheckpointContents {
            var contents = CheckpointContents(run: "bench", step: step)
            contents.tensors = [try await saver.snapshot(name: "w", shape: [weights.count], floats: weights)]
            contents.optimizerState = [
                try await saver.snapshot(name: "w.exp_avg", shape: [m.count], floats: m),
                try await saver.snapshot(name: "w.exp_avg_sq", shape: [v.count], floats: v),
            ]
            return contents
        }
    }

    func run() async throws {
        try? FileManager.default.removeItem(atPath: work)
        let store = try CheckpointStore.open(at: work + "/store", create: true)
        var model = Model(parameters: megabytes << 20 / 12)
        print(String(format: "model state %d MiB (%d parameters × 3 floats); a checkpoint every %.0f s; phases of %.0f s", megabytes, model.weights.count, checkpointSeconds, phaseSeconds))
        var plain = [Double](), checkpointed = [Double]()
        var saves = [Double]()
        // Time the loop spends building each checkpoint's contents (the snapshot copy).
        var snapshotSeconds = [Double]()
        var step: Int64 = 0
        let saver = BackgroundSaver(store: store, maxInFlight: 1)
        for round in 1...rounds {
            for withCheckpoints in [false, true] {
                let start = ContinuousClock.now
                var lastCheckpoint = start
                var steps = 0
                while (ContinuousClock.now - start) / .seconds(1) < phaseSeconds {
                    model.train()
                    step += 1
                    steps += 1
                    if withCheckpoints && (ContinuousClock.now - lastCheckpoint) / .seconds(1) >= checkpointSeconds {
                        lastCheckpoint = ContinuousClock.now
                        let contents = try await model.contents(step: step, saver: saver)
                        snapshotSeconds.append((ContinuousClock.now - lastCheckpoint) / .seconds(1))
                        print(String(format: "    checkpoint at step %d: snapshot %.2f s", step, snapshotSeconds.last ?? 0))
                        _ = await saver.save(contents)
                    }
                }
                let seconds = (ContinuousClock.now - start) / .seconds(1)
                let results = try await saver.finish()
                saves += results.map(\.seconds)
                let perStep = seconds / Double(steps)
                (withCheckpoints ? { checkpointed.append(perStep) } : { plain.append(perStep) })()
                print(String(format: "  round %d, %@: %d steps, %.1f ms per step, %d checkpoints", round, withCheckpoints ? "checkpointing" : "no checkpoints", steps, perStep * 1000, results.count))
                _ = try await store.gc(GCOptions())
            }
        }
        func median(_ values: [Double]) -> Double {
            let sorted = values.sorted()
            return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
        }
        let overhead = median(checkpointed) / median(plain) - 1
        print("")
        print("| measurement | value | target | met |")
        print("| --- | ---: | --- | --- |")
        print(String(format: "| step time without checkpoints (median of %d) | %.1f ms | | |", plain.count, median(plain) * 1000))
        print(String(format: "| step time with a background save every %.0f s | %.1f ms | | |", checkpointSeconds, median(checkpointed) * 1000))
        print(String(format: "| overhead | %.1f%% | < 5%% | %@ |", overhead * 100, overhead < 0.05 ? "yes" : "**no**"))
        print(String(format: "| background save of %d MiB, commit time (median of %d) | %.2f s | | |", megabytes, saves.count, median(saves)))
        print(String(format: "| snapshot copy in the loop per checkpoint (median of %d) | %.2f s | | |", snapshotSeconds.count, median(snapshotSeconds)))
    }
}
