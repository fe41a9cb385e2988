@testable import CKStore
import CKStoreTestSupport
import Foundation
import Testing

@Suite struct TrainLoopTests {
    static func finalDigest(_ output: CLI.Output) -> String? {
        output.stdout.split(separator: "\n").first { $0.hasPrefix("final-weights-sha256: ") }.map { String($0.dropFirst("final-weights-sha256: ".count)) }
    }

    @Test func killedDuringABackgroundSaveItResumesAndEndsBitForBitTheSame() async throws {
        try await withTemporaryDirectory { root in
            let arguments = ["--steps", "60", "--checkpoint-every", "10", "--seed", "7"]
            let uninterrupted = try CLI.run(arguments + ["--store", root + "/a"], program: "TrainLoop")
            #expect(uninterrupted.status == 0, "\(uninterrupted.stderr)")
            let expected = try #require(Self.finalDigest(uninterrupted))
            #expect(uninterrupted.stdout.contains("starting from scratch"))

            // Killed right after step 30's checkpoint started: that save is in flight.
            let crashed = try CLI.run(arguments + ["--store", root + "/b", "--crash-after-step", "30"], program: "TrainLoop")
            #expect(crashed.killed && crashed.status == SIGKILL, "status \(crashed.status)")
            #expect(crashed.stderr.contains("crashing after step 30"))
            let newest: CheckpointSummary
            do {
                let store = try CheckpointStore.open(at: root + "/b")
                newest = try #require(try store.list(run: "trainloop").last)
                #expect([20, 30].contains(newest.step), "committed before the kill: up to step \(newest.step)")
                #expect(try await store.verify(VerifyOptions(depth: .full)).ok)
            }

            let resumed = try CLI.run(arguments + ["--store", root + "/b"], program: "TrainLoop")
            #expect(resumed.status == 0, "\(resumed.stderr)")
            #expect(resumed.stdout.contains("resumed from step \(newest.step) (checkpoint \(newest.id.short))"))
            #expect(Self.finalDigest(resumed) == expected, "the resumed run ends with different weights")

            // `ckstore get` of a checkpoint saved from memory gives the files a trainer would have written.
            let get = try CLI.run(["get", "trainloop@60", root + "/out", "--store", root + "/b"])
            #expect(get.status == 0, "\(get.stderr)")
            #expect(Files.listing(root + "/out") == ["config.json", "model.safetensors", "optimizer.safetensors", "sampler_state.bin", "training_config.json"])
            #expect(try FormatValidation.safetensors(try Files.read(root + "/out/model.safetensors")) == 4)
            #expect(try FormatValidation.safetensors(try Files.read(root + "/out/optimizer.safetensors")) == 8)

            // The checkpoints themselves match too: the same step holds the same weights in both stores.
            let a = try CheckpointStore.open(at: root + "/a"), b = try CheckpointStore.open(at: root + "/b")
            for step: Int64 in [10, 40, 60] {
                let left = try await a.loadFile(try a.resolve(.step(run: "trainloop", step: step)), path: "model.safetensors")
                let right = try await b.loadFile(try b.resolve(.step(run: "trainloop", step: step)), path: "model.safetensors")
                #expect(left == right, "step \(step)")
            }
        }
    }
}
