// The code of README.md's "Library" section, compiled with the tests; ReadmeTests checks that the README
// shows exactly the lines between the markers, and runs it.
// README SAMPLE BEGIN
import CKStore

/// Resumes `run` from its newest valid checkpoint, trains to `steps`, checkpointing every 100 steps in
/// the background, and returns the weights.
func train(storePath: String, run: String, steps: Int64) async throws -> [Float] {
    let store = try CheckpointStore.open(at: storePath, create: true)
    var weights = [Float](repeating: 0, count: 1024)
    var step: Int64 = 0
    if let id = try? await store.latestValid(run: run) {
        let checkpoint = try await store.load(id)
        weights = try checkpoint.tensors().first { $0.name == "w" }?.floats() ?? weights
        step = checkpoint.manifest.step
    }
    let saver = BackgroundSaver(store: store, maxInFlight: 1)
    while step < steps {
        step += 1
        for i in weights.indices { weights[i] += 0.001 * Float(i % 7) }   // a training step
        if step % 100 == 0 {
            var contents = CheckpointContents(run: run, step: step)
            contents.tensors = [try TensorValue(name: "w", shape: [weights.count], floats: weights)]
            contents.metrics["loss"] = 1 / Double(step)
            _ = await saver.save(contents)             // returns at once; training goes on
        }
    }
    try await saver.finish()                           // every checkpoint committed, or the first error
    if let id = try store.latest(run: run) {           // one tensor back, reading only its chunks
        weights = try await store.loadTensors(id, matching: ["w"]).first?.floats() ?? weights
    }
    _ = try await store.gc()                           // apply the retention policies, as `ckstore gc` does
    return weights
}
// README SAMPLE END
