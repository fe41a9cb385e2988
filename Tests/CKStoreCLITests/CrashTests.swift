import CKStoreTestSupport
import Foundation
import Testing

/// SIGKILL a `ckstore put` at random moments: a checkpoint is either fully there or not there at all, and
/// every checkpoint committed before still restores byte for byte (DESIGN.md I-5, I-6).
@Suite struct CrashTests {
    @Test func putKilledAtRandomMomentsNeverLeavesAPartialCheckpoint() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            var sources = [Int: String]()   // step → source folder

            func listed() throws -> [Int: String] {
                let list = try CLI.run(["ls", "--store", store, "--json"])
                #expect(list.status == 0, "\(list.stderr)")
                let rows = try #require(try CLI.json(list.stdout) as? [[String: Any]])
                var out = [Int: String]()
                for row in rows { out[try #require(row["step"] as? Int)] = try #require(row["id"] as? String) }
                return out
            }
            func restoresExactly(_ step: Int, _ scratch: String) throws {
                let get = try CLI.run(["get", "crash@\(step)", scratch, "--store", store])
                #expect(get.status == 0, "\(get.stderr)")
                #expect(try Files.tree(scratch) == (try Files.tree(try #require(sources[step]))), "step \(step)")
            }

            // A committed base checkpoint, and the time an uninterrupted put takes.
            sources[0] = root + "/src-0"
            try RandomCheckpoint.write(to: sources[0]!, megabytes: 24, step: 0)
            let started = Date()
            #expect(try CLI.run(["put", sources[0]!, "--store", store, "--run", "crash", "--step", "0"]).status == 0)
            let putDuration = max(0.05, Date().timeIntervalSince(started))

            var random = SeededRandom(seed: UInt64(Date().timeIntervalSince1970))
            var committedBefore = try listed()
            var interrupted = 0
            let trials = 24
            for trial in 1...trials {
                let source = root + "/src-\(trial)"
                try RandomCheckpoint.write(to: source, megabytes: 24, step: trial)
                sources[trial] = source
                let delay = Double(random.next() % 1000) / 1000 * putDuration * 1.2
                let outcome = try CLI.runAndKill(["put", source, "--store", store, "--run", "crash", "--step", String(trial)], after: delay)
                if outcome.killed { interrupted += 1 }

                let now = try listed()
                // Nothing committed before is lost; the only possible newcomer is this trial's checkpoint.
                for (step, id) in committedBefore { #expect(now[step] == id, "step \(step) lost after trial \(trial)") }
                #expect(Set(now.keys).subtracting(committedBefore.keys).isSubset(of: [trial]))
                if !outcome.killed { #expect(now[trial] != nil, "a put that finished must be listed") }
                // A listed checkpoint is complete: it restores byte for byte.
                if now[trial] != nil { try restoresExactly(trial, root + "/check-\(trial)") }
                try? FileManager.default.removeItem(atPath: root + "/check-\(trial)")
                committedBefore = now
                if now[trial] == nil { try? FileManager.default.removeItem(atPath: source) ; sources[trial] = nil }
            }
            #expect(interrupted >= trials / 4, "only \(interrupted) of \(trials) puts were interrupted; the kill timing does not exercise the commit protocol")
            for step in committedBefore.keys.sorted() {
                try restoresExactly(step, root + "/final-\(step)")
                try? FileManager.default.removeItem(atPath: root + "/final-\(step)")
            }
        }
    }
}
