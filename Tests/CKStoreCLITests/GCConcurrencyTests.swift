import CKStoreTestSupport
import Foundation
import Testing

/// A source folder for step `step`: a shared 1 MiB tensor (reused chunks across puts, which is what a
/// concurrent gc can race with) plus 256 KiB of fresh bytes and a trainer state naming the step.
private func writeSource(_ folder: String, step: Int, shared: [UInt8]) throws {
    var model = SafetensorsBuilder(metadata: ["format": "pt"])
    model.add("frozen", dtype: "F32", shape: [shared.count / 4], data: shared)
    let fresh = try RandomCheckpoint.randomBytes(256 << 10)
    model.add("trained", dtype: "F32", shape: [fresh.count / 4], data: fresh)
    try Files.write(model.build(), to: folder + "/model.safetensors")
    try Files.write(Array(#"{"global_step": \#(step), "log_history": [{"loss": \#(1.0 / Double(step))}]}"#.utf8), to: folder + "/trainer_state.json")
}

@Suite(.serialized) struct GCConcurrencyTests {
    @Test func putAndGCInTwoProcessesForThirtySeconds() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            #expect(try CLI.run(["init", "--store", store]).status == 0)
            #expect(try CLI.run(["policy", "set", "loop", "--keep-last", "4", "--store", store]).status == 0)
            let shared = try RandomCheckpoint.randomBytes(1 << 20)

            // The collector: another process running gc in a loop for 30 s.
            let collector = Process()
            collector.executableURL = URL(fileURLWithPath: "/bin/sh")
            collector.arguments = ["-c", """
                end=$(( $(date +%s) + 30 )); runs=0
                while [ "$(date +%s)" -lt "$end" ]; do
                  "\(CLI.binary)" gc --store "\(store)" --grace 0s --repack-threshold 0.1 >/dev/null 2>"\(root)/gc.err" || { echo "gc failed: $(cat "\(root)/gc.err")"; exit 1; }
                  runs=$((runs + 1))
                done
                echo "gc runs: $runs"
                """]
            let output = Pipe()
            collector.standardOutput = output
            try collector.run()

            // The putter: this process puts checkpoints in a loop meanwhile.
            var reported = [Int: String]()
            var step = 0
            let started = Date()
            while collector.isRunning || Date().timeIntervalSince(started) < 30 {
                step += 1
                let folder = root + "/src/\(step)"
                try writeSource(folder, step: step, shared: shared)
                let put = try CLI.run(["put", folder, "--store", store, "--run", "loop", "--json"])
                #expect(put.status == 0, "put of step \(step) failed: \(put.stderr)")
                if let object = try? CLI.json(put.stdout) as? [String: Any], let id = object["id"] as? String { reported[step] = id }
                if !collector.isRunning && Date().timeIntervalSince(started) >= 30 { break }
            }
            collector.waitUntilExit()
            let summary = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(collector.terminationStatus == 0, "\(summary)")
            #expect(step >= 20, "only \(step) puts in 30 s")

            // A last gc with no put running, then: the rules keep the last 4 reported, and every listed
            // checkpoint restores byte for byte.
            #expect(try CLI.run(["gc", "--store", store, "--grace", "0s"]).status == 0)
            let list = try CLI.run(["ls", "--store", store, "--json"])
            let rows = try #require(try CLI.json(list.stdout) as? [[String: Any]])
            let listed = Dictionary(uniqueKeysWithValues: rows.compactMap { row in (row["step"] as? Int).map { ($0, row["id"] as? String ?? "") } })
            for kept in (step - 3)...step { #expect(listed[kept] == reported[kept], "step \(kept) was reported but is not kept") }
            for (listedStep, id) in listed {
                #expect(reported[listedStep] == id)
                let out = root + "/out/\(listedStep)"
                let get = try CLI.run(["get", id, out, "--store", store])
                #expect(get.status == 0, "\(get.stderr)")
                #expect(try Files.tree(out) == (try Files.tree(root + "/src/\(listedStep)")))
            }
            let verify = try CLI.run(["verify", "--full", "--store", store])
            #expect(verify.status == 0, "\(verify.stdout)")
        }
    }

    @Test func gcKilledAtRandomMomentsLeavesKeptCheckpointsRestorable() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            let shared = try RandomCheckpoint.randomBytes(1 << 20)
            #expect(try CLI.run(["init", "--store", store]).status == 0)
            #expect(try CLI.run(["policy", "set", "crash", "--keep-last", "2", "--keep-every", "10", "--store", store]).status == 0)
            var random = SeededRandom(seed: UInt64(Date().timeIntervalSince1970))
            var step = 0
            var interrupted = 0
            // How long a gc with this much garbage takes, to spread the kills over its whole run.
            for _ in 0..<3 {
                step += 1
                try writeSource(root + "/src/\(step)", step: step, shared: shared)
                #expect(try CLI.run(["put", root + "/src/\(step)", "--store", store, "--run", "crash"]).status == 0)
            }
            let started = Date()
            #expect(try CLI.run(["gc", "--store", store, "--grace", "0s", "--repack-threshold", "0.05"]).status == 0)
            // The shortest gc seen so far: on a loaded machine the first run can be much slower than later
            // ones, and kills spread over its length would mostly come after gc had finished.
            var gcDuration = max(0.05, Date().timeIntervalSince(started))
            for trial in 1...20 {
                // Make garbage: three more checkpoints, most of which the policy lets go.
                for _ in 0..<3 {
                    step += 1
                    try writeSource(root + "/src/\(step)", step: step, shared: shared)
                    #expect(try CLI.run(["put", root + "/src/\(step)", "--store", store, "--run", "crash"]).status == 0)
                }
                let delay = Double(random.next() % 1000) / 1000 * gcDuration * 0.9
                let began = Date()
                let outcome = try CLI.runAndKill(["gc", "--store", store, "--grace", "0s", "--repack-threshold", "0.05"], after: delay)
                if outcome.killed { interrupted += 1 } else { gcDuration = max(0.05, min(gcDuration, Date().timeIntervalSince(began))) }

                // Whatever gc got to, every listed checkpoint restores and nothing it needs is missing.
                let rows = try #require(try CLI.json(try CLI.run(["ls", "--store", store, "--json"]).stdout) as? [[String: Any]])
                #expect(rows.contains { $0["step"] as? Int == step }, "trial \(trial): the newest checkpoint is gone")
                for row in rows {
                    let listedStep = try #require(row["step"] as? Int)
                    let out = root + "/out-\(trial)-\(listedStep)"
                    let get = try CLI.run(["get", "crash@\(listedStep)", out, "--store", store])
                    #expect(get.status == 0, "trial \(trial), step \(listedStep): \(get.stderr)")
                    #expect(try Files.tree(out) == (try Files.tree(root + "/src/\(listedStep)")))
                    try? FileManager.default.removeItem(atPath: out)
                }
                let verify = try CLI.run(["verify", "--store", store, "--json"])
                let report = try #require(try CLI.json(verify.stdout) as? [String: Any])
                #expect((report["damaged_chunks"] as? [String])?.isEmpty == true && (report["missing_chunks"] as? [String])?.isEmpty == true, "trial \(trial): \(verify.stdout)")
            }
            #expect(interrupted >= 5, "only \(interrupted) of 20 gc runs were interrupted")
            // A gc that runs to the end leaves a clean store.
            #expect(try CLI.run(["gc", "--store", store, "--grace", "0s"]).status == 0)
            #expect(try CLI.run(["verify", "--full", "--store", store]).status == 0)
        }
    }
}
