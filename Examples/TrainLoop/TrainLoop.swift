import ArgumentParser
import CKStore
import CKStoreS3
import Dispatch
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Trains a two-layer network on generated data with Adam written out by hand, checkpoints every N steps
/// in the background with ckstore, and on start resumes from the run's newest valid checkpoint.
///
/// The run is deterministic for a seed: interrupted and resumed, it ends with the same weights, bit for
/// bit, as a run that was never interrupted.
@main
struct TrainLoop: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "TrainLoop",
        abstract: "Train a small network in plain Swift, checkpointing to ckstore in the background and resuming after a crash."
    )

    @Option(help: "The ckstore store.") var store = "trainloop-store"
    @Option(help: "The run name.") var run = "trainloop"
    @Option(help: "Train until this step.") var steps = 60
    @Option(help: "Checkpoint every N steps.") var checkpointEvery = 10
    @Option(help: "Seed of the data and the initial weights.") var seed: UInt64 = 1
    @Option(help: "Hidden units.") var hidden = 256
    @Option(help: "Kill this process with SIGKILL right after step N (and after starting its checkpoint).") var crashAfterStep: Int?
    @Option(help: "With --remote: kill this process with SIGKILL once the checkpoint of step N is uploaded (later saves may be in flight).") var crashAfterUpload: Int?
    @Option(help: "Push every checkpoint to this remote (s3://BUCKET/PREFIX or file:///PATH) once committed, and resume from it when the local store has no checkpoint of the run.") var remote: String?
    @Option(help: "The S3 endpoint of --remote (default: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, else AWS).") var endpoint: String?

    func validate() throws {
        guard steps > 0, checkpointEvery > 0, hidden > 0 else { throw ValidationError("--steps, --checkpoint-every and --hidden must be positive") }
    }

    func run() async throws {
        // The preemption notice (EC2's spot notice, GCP's, Azure's, or SIGTERM), watched from the start:
        // it makes the loop checkpoint the current step, wait until it is committed and uploaded (with
        // the uploads before it), and exit.
        let preemption = PreemptionWatcher(signals: [SIGTERM])
        preemption.start()
        defer { preemption.stop() }
        let checkpoints = try CheckpointStore.open(at: store, create: true)
        let target = try remote.map { url -> Remote in
            let definition = RemoteDefinition(name: url, url: url, endpoint: endpoint, pathStyle: endpoint != nil)
            if case .file = try definition.location() { return try Remote.folder(definition) }
            return Remote(name: url, url: url, objects: try S3ObjectStore(definition))
        }
        // The newest valid checkpoint of this store and the remote together: a fresh machine pulls it, and
        // one that comes back with an older store pulls the newer step another machine reached.
        var resumeID: CheckpointID?
        if let target {
            let point: ResumePoint?
            do {
                point = try await checkpoints.resumePoint(run: run, remote: target)
            } catch {
                guard error.code == .notFound else { throw error }
                point = nil
            }
            resumeID = point?.id
            if let point, point.source == "remote" { print("pulled step \(point.step) from \(target.name)") }
            if point == nil { print("the remote has no checkpoint yet") }
        }
        let data = Dataset(seed: seed, count: 1024)
        var state: TrainingState
        if resumeID == nil { resumeID = try? await checkpoints.latestValid(run: run) }
        if let id = resumeID {
            state = try await TrainingState(loading: checkpoints.load(id))
            print("resumed from step \(state.step) (checkpoint \(id.short))")
        } else {
            state = TrainingState(seed: seed, inputs: Dataset.inputs, hidden: hidden)
            print("starting from scratch")
        }

        let saver = BackgroundSaver(store: checkpoints, maxInFlight: 1, push: target)
        while state.step < steps {
            let loss = state.trainStep(on: data)
            let terminated = preemption.requested
            if state.step % checkpointEvery == 0 || terminated {
                let handle = await saver.save(try state.contents(run: run, loss: loss))
                print("step \(state.step): loss \(loss), checkpoint started")
                if let crashAfterUpload, state.step == crashAfterUpload {
                    _ = try await handle.uploaded()
                    FileHandle.standardError.write(Data("crashing after the upload of step \(state.step)\n".utf8))
                    kill(getpid(), SIGKILL)
                }
            }
            if terminated, let notice = preemption.notice {
                try await saver.finish()
                print("terminated: step \(state.step) committed\(target == nil ? "" : " and uploaded")")
                print(PreemptionWatcher.durableMessage(run: run, step: Int64(state.step), remote: target?.name, notice: notice))
                return
            }
            if let crashAfterStep, state.step == crashAfterStep {
                FileHandle.standardError.write(Data("crashing after step \(state.step)\n".utf8))
                kill(getpid(), SIGKILL)
            }
        }
        try await saver.finish()
        print("final-weights-sha256: \(state.weightsDigest())")
    }
}

/// Inputs and targets: y = sin(x · a) + 0.5 · cos(x · b), for fixed random a and b.
struct Dataset {
    static let inputs = 32
    var x: [[Float]]
    var y: [Float]

    init(seed: UInt64, count: Int) {
        var random = SplitMix(state: seed ^ 0xDA7A)
        let a = (0..<Self.inputs).map { _ in random.uniform() }
        let b = (0..<Self.inputs).map { _ in random.uniform() }
        x = (0..<count).map { _ in (0..<Self.inputs).map { _ in random.uniform() } }
        y = x.map { row in
            sin(zip(row, a).reduce(0) { $0 + $1.0 * $1.1 }) + 0.5 * cos(zip(row, b).reduce(0) { $0 + $1.0 * $1.1 })
        }
    }
}

/// SplitMix64: a tiny generator whose whole state is one word, saved with the checkpoint.
struct SplitMix {
    var state: UInt64

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    mutating func uniform() -> Float { Float(next() >> 40) / Float(1 << 23) - 1 }
}

/// Weights, Adam's moments, the step and the batch sampler: everything a resumed run needs.
struct TrainingState {
    static let names = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    static let batch = 16
    static let learningRate: Float = 0.01

    var hidden: Int
    var parameters: [[Float]]
    var firstMoments: [[Float]]
    var secondMoments: [[Float]]
    var step = 0
    var sampler: SplitMix

    init(seed: UInt64, inputs: Int, hidden: Int) {
        self.hidden = hidden
        var random = SplitMix(state: seed)
        let scale1 = 1 / Float(inputs).squareRoot(), scale2 = 1 / Float(hidden).squareRoot()
        parameters = [
            (0..<(hidden * inputs)).map { _ in random.uniform() * scale1 },
            [Float](repeating: 0, count: hidden),
            (0..<hidden).map { _ in random.uniform() * scale2 },
            [0],
        ]
        firstMoments = parameters.map { [Float](repeating: 0, count: $0.count) }
        secondMoments = firstMoments
        sampler = SplitMix(state: seed ^ 0x5A3B1E)
    }

    init(loading checkpoint: LoadedCheckpoint) throws {
        let weights = Dictionary(uniqueKeysWithValues: try checkpoint.tensors().map { ($0.name, $0) })
        let moments = Dictionary(uniqueKeysWithValues: try checkpoint.tensors(in: "optimizer.safetensors").map { ($0.name, $0) })
        parameters = try Self.names.map { name in
            guard let tensor = weights[name] else { throw CKStoreError(.notFound, "checkpoint \(checkpoint.id.short) has no tensor \(name)") }
            return try tensor.floats()
        }
        firstMoments = try Self.names.map { try moments[$0 + ".exp_avg"]?.floats() ?? [] }
        secondMoments = try Self.names.map { try moments[$0 + ".exp_avg_sq"]?.floats() ?? [] }
        hidden = parameters[1].count
        step = Int(checkpoint.manifest.step)
        guard let rng = checkpoint.files["sampler_state.bin"], rng.count == 8 else {
            throw CKStoreError(.notFound, "checkpoint \(checkpoint.id.short) has no sampler_state.bin")
        }
        sampler = SplitMix(state: rng.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) })
    }

    /// One step of Adam on a minibatch; returns the batch's mean squared error before the update.
    mutating func trainStep(on data: Dataset) -> Float {
        let inputs = Dataset.inputs
        var gradients = parameters.map { [Float](repeating: 0, count: $0.count) }
        var loss: Float = 0
        for _ in 0..<Self.batch {
            let sample = Int(sampler.next() % UInt64(data.x.count))
            let x = data.x[sample]
            var activation = [Float](repeating: 0, count: hidden)
            var output = parameters[3][0]
            for unit in 0..<hidden {
                var sum = parameters[1][unit]
                for input in 0..<inputs { sum += parameters[0][unit * inputs + input] * x[input] }
                activation[unit] = tanh(sum)
                output += parameters[2][unit] * activation[unit]
            }
            let error = output - data.y[sample]
            loss += error * error
            let delta = 2 * error / Float(Self.batch)
            gradients[3][0] += delta
            for unit in 0..<hidden {
                gradients[2][unit] += delta * activation[unit]
                let back = delta * parameters[2][unit] * (1 - activation[unit] * activation[unit])
                gradients[1][unit] += back
                for input in 0..<inputs { gradients[0][unit * inputs + input] += back * x[input] }
            }
        }
        step += 1
        // Adam with a linear warm-up over 10 steps.
        let (beta1, beta2, epsilon): (Float, Float, Float) = (0.9, 0.999, 1e-8)
        let rate = Self.learningRate * min(1, Float(step) / 10)
        let correction1 = 1 - pow(beta1, Float(step)), correction2 = 1 - pow(beta2, Float(step))
        for tensor in parameters.indices {
            for index in parameters[tensor].indices {
                let gradient = gradients[tensor][index]
                firstMoments[tensor][index] = beta1 * firstMoments[tensor][index] + (1 - beta1) * gradient
                secondMoments[tensor][index] = beta2 * secondMoments[tensor][index] + (1 - beta2) * gradient * gradient
                let update = (firstMoments[tensor][index] / correction1) / ((secondMoments[tensor][index] / correction2).squareRoot() + epsilon)
                parameters[tensor][index] -= rate * update
            }
        }
        return loss / Float(Self.batch)
    }

    /// The checkpoint of the current state.
    func contents(run: String, loss: Float) throws -> CheckpointContents {
        let shapes = [[hidden, Dataset.inputs], [hidden], [1, hidden], [1]]
        var contents = CheckpointContents(run: run, step: Int64(step))
        contents.tensors = try zip(Self.names, zip(shapes, parameters)).map { try TensorValue(name: $0, shape: $1.0, floats: $1.1) }
        contents.optimizerState = try zip(Self.names, zip(shapes, zip(firstMoments, secondMoments))).flatMap { name, value in
            [try TensorValue(name: name + ".exp_avg", shape: value.0, floats: value.1.0), try TensorValue(name: name + ".exp_avg_sq", shape: value.0, floats: value.1.1)]
        }
        contents.files["sampler_state.bin"] = withUnsafeBytes(of: sampler.state.littleEndian) { Data($0) }
        contents.metrics["loss"] = Double(loss)
        try contents.setModelConfig(["inputs": Dataset.inputs, "hidden": hidden])
        try contents.setTrainingConfig(["optimizer": "adam", "learning_rate": "\(Self.learningRate)", "batch": "\(Self.batch)"])
        return contents
    }

    /// SHA-256 of every weight's bytes, in order, as hex.
    func weightsDigest() -> String {
        var bytes = [UInt8]()
        for tensor in parameters { tensor.withUnsafeBytes { bytes += $0 } }
        return ChunkDigest(hashing: bytes).hex
    }
}

