@testable import CKStore
import CKStoreTestSupport
import Foundation
import Testing

/// `ckstore advise` (issue 27): how often to checkpoint, from the put and push times and the steps and
/// times the store recorded, against hand-computed figures.
@Suite struct AdviseTests {
    static func advise(_ store: String, _ arguments: [String]) throws -> [String: Any] {
        let output = try CLI.run(["advise", "r", "--store", store, "--json"] + arguments)
        #expect(output.status == 0, "\(output.stderr)")
        return try #require(try CLI.json(output.stdout) as? [String: Any])
    }

    static func close(_ value: Any?, _ expected: Double, _ what: String) {
        let number = (value as? NSNumber)?.doubleValue
        #expect(number.map { abs($0 - expected) <= 1e-9 * max(1, abs(expected)) } == true, "\(what): \(value ?? "absent"), expected \(expected)")
    }

    /// Six checkpoints 100 steps apart; each put and push is timed as the store records it, then the
    /// records are set to known values: puts of 2, 2, 4, 4, 4 and 6 s, pushes of 6, 6, 8, 8, 8 and 10 s,
    /// and 50 s of training between checkpoints (0.5 s a step), each made when its put ended.
    @Test func theIntervalLostComputeAndStorageAreTheHandComputedOnes() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            let steps: [Int64] = [100, 200, 300, 400, 500, 600]
            for step in steps {
                try RandomCheckpoint.write(to: root + "/in-\(step)", megabytes: 1, step: Int(step))
                let put = try CLI.run(["put", root + "/in-\(step)", "--run", "r", "--store", store])
                #expect(put.status == 0, "\(put.stderr)")
            }
            // Puts and pushes record what they took.
            let pushed = try CLI.run(["push", "--run", "r", "--remote", "file://" + root + "/remote", "--store", store])
            #expect(pushed.status == 0, "\(pushed.stderr)")
            let opened = try CheckpointStore.open(at: store)
            let recorded = try opened.costs(run: "r")
            #expect(recorded.filter { $0.kind == .put }.count == 6 && recorded.filter { $0.kind == .push }.count == 6)
            #expect(recorded.allSatisfy { $0.seconds > 0 && $0.bytes > 0 }, "\(recorded)")

            let puts: [Double] = [2, 2, 4, 4, 4, 6]
            let pushes: [Double] = [6, 6, 8, 8, 8, 10]
            var sql = "DELETE FROM checkpoint_costs;"
            var made = 1_000_000.0
            for (index, step) in steps.enumerated() {
                if index > 0 { made += 50 + puts[index] }
                let id = "(SELECT id FROM checkpoints WHERE step = \(step))"
                sql += "UPDATE checkpoints SET created_at = \(made) WHERE step = \(step);"
                sql += "INSERT INTO checkpoint_costs VALUES (\(id), 'put', \(puts[index]), 1000, \(made));"
                sql += "INSERT INTO checkpoint_costs VALUES (\(id), 'push', \(pushes[index]), 1000, \(made + 1));"
            }
            try SQLiteDatabase(path: store + "/ckstore.db").execute(sql)
            try opened.setPolicy(try RetentionPolicy(parsingRules: "keep-last=2,keep-within=1h"), run: "r")

            let prices = ["--compute-cost-per-hour", "3", "--storage-cost-per-gb-month", "0.023"]
            let advice = try Self.advise(store, ["--mtbf", "6h"] + prices)
            // C = median put (4) + median push (8) = 12 s; 0.5 s a step (50 s less nothing: the later put is
            // subtracted from each gap); today every 100 steps = 50 s.
            Self.close(advice["put_seconds"], 4, "put")
            Self.close(advice["push_seconds"], 8, "push")
            Self.close(advice["checkpoint_seconds"], 12, "C")
            #expect(advice["checkpoint_seconds_source"] as? String == "measured")
            Self.close(advice["seconds_per_step"], 0.5, "seconds per step")
            Self.close(advice["mtbf_seconds"], 21_600, "MTBF")
            // √(2 · 12 · 21600) = 720 s = 1440 steps = 12 minutes.
            Self.close(advice["young_daly_seconds"], 720, "Young–Daly")

            // Storage from the audit's projection of the run.
            let audit = try CLI.run(["audit", "--run", "r", "--budget", "1TB", "--json", "--store", store])
            let projection = try #require(((try CLI.json(audit.stdout) as? [String: Any])?["budget"] as? [String: Any])?["runs"] as? [[String: Any]]).first
            let perCheckpoint = try #require(projection?["bytes_per_checkpoint"] as? Int64)
            let base = try #require(projection?["base_bytes"] as? Int64)
            #expect(perCheckpoint > 1 << 20 && advice["bytes_per_checkpoint"] as? Int64 == perCheckpoint && advice["base_bytes"] as? Int64 == base)

            let current = try #require(advice["current"] as? [String: Any])
            #expect(current["steps"] as? Int64 == 100)
            Self.close(current["seconds"], 50, "current interval")
            Self.close(current["minutes"], 50.0 / 60, "current minutes")
            Self.close(current["lost_seconds_per_interruption"], 25, "lost now")
            Self.close(current["lost_cost_per_interruption"], 25.0 / 3600 * 3, "lost now, USD")
            Self.close(current["overhead_fraction"], 12.0 / 50 + 50.0 / 43_200, "overhead now")
            Self.close(current["checkpoints_per_day"], 1728, "checkpoints a day now")
            // keep-within 1h spans ⌈3600/50⌉ = 72, keep-last 2, and the newest: 75.
            #expect(current["kept_checkpoints"] as? Int == 75 && current["bounded"] as? Bool == true)
            #expect(current["stored_bytes"] as? Int64 == 75 * perCheckpoint + base)
            Self.close(current["storage_cost_per_month"], Double(75 * perCheckpoint + base) / Double(1 << 30) * 0.023, "storage now, USD")

            let advised = try #require(advice["advised"] as? [String: Any])
            #expect(advised["steps"] as? Int64 == 1440)
            Self.close(advised["seconds"], 720, "advised interval")
            Self.close(advised["minutes"], 12, "advised minutes")
            Self.close(advised["lost_seconds_per_interruption"], 360, "lost advised")
            Self.close(advised["lost_cost_per_interruption"], 0.3, "lost advised, USD")
            Self.close(advised["overhead_fraction"], 12.0 / 720 + 720.0 / 43_200, "overhead advised")
            // ⌈3600/720⌉ = 5, keep-last 2, the newest: 8.
            #expect(advised["kept_checkpoints"] as? Int == 8 && advised["bounded"] as? Bool == true)
            #expect(advised["stored_bytes"] as? Int64 == 8 * perCheckpoint + base)
            Self.close(advised["storage_cost_per_month"], Double(8 * perCheckpoint + base) / Double(1 << 30) * 0.023, "storage advised, USD")

            // Four interruptions a day is the same MTBF; without prices, no costs in money.
            let perDay = try Self.advise(store, ["--interruptions-per-day", "4"])
            Self.close(perDay["young_daly_seconds"], 720, "Young–Daly from interruptions a day")
            #expect((perDay["current"] as? [String: Any])?["lost_cost_per_interruption"] == nil)

            // keep-every grows: after 30 days (2 592 000 s), 51 840 checkpoints made every 50 s fall in
            // 5 184 buckets of 1000 steps; every 720 s, 3 600 made, each its own bucket; plus the newest.
            try opened.setPolicy(try RetentionPolicy(parsingRules: "keep-every=1000"), run: "r")
            let growing = try Self.advise(store, ["--mtbf", "6h"])
            #expect((growing["current"] as? [String: Any])?["kept_checkpoints"] as? Int == 5185)
            #expect((growing["advised"] as? [String: Any])?["kept_checkpoints"] as? Int == 3601)
            #expect((growing["advised"] as? [String: Any])?["bounded"] as? Bool == false)
            // No policy keeps every checkpoint made.
            try opened.setPolicy(RetentionPolicy(), run: "r")
            let everything = try Self.advise(store, ["--mtbf", "6h"])
            #expect((everything["current"] as? [String: Any])?["kept_checkpoints"] as? Int == 51_840)
            #expect((everything["advised"] as? [String: Any])?["kept_checkpoints"] as? Int == 3600)

            // A given C replaces the measured one: √(2 · 50 · 21600) ≈ 1469.7 s, 2939 steps.
            let given = try Self.advise(store, ["--mtbf", "6h", "--checkpoint-seconds", "50"])
            #expect(given["checkpoint_seconds_source"] as? String == "given")
            Self.close(given["young_daly_seconds"], (2.0 * 50 * 21_600).squareRoot(), "Young–Daly, C given")
            #expect((given["advised"] as? [String: Any])?["steps"] as? Int64 == 2939)

            // The text form names both columns.
            let text = try CLI.run(["advise", "r", "--mtbf", "6h", "--store", store])
            #expect(text.status == 0 && text.stdout.contains("1440 steps, 12.0 min") && text.stdout.contains("100 steps, 50.0 s"), "\(text.stdout)")
        }
    }

    /// Bad input gets a clear error: no MTBF, both forms, a bad duration, an unknown run, and a run whose
    /// puts were never timed (it asks for --checkpoint-seconds, and then advises).
    @Test func badInputIsNamed() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            for step in [10, 20] {
                try RandomCheckpoint.write(to: root + "/in-\(step)", megabytes: 1, step: step)
                #expect(try CLI.run(["put", root + "/in-\(step)", "--run", "r", "--store", store]).status == 0)
                // Two checkpoints made at least a second apart.
                try await Task.sleep(nanoseconds: 1_100_000_000)
            }
            let none = try CLI.run(["advise", "r", "--store", store])
            #expect(none.status == 2 && none.stderr.contains("--mtbf 6h, or --interruptions-per-day 4"), "\(none.stderr)")
            let both = try CLI.run(["advise", "r", "--store", store, "--mtbf", "6h", "--interruptions-per-day", "2"])
            #expect(both.status == 2 && both.stderr.contains("not both"))
            let badDuration = try CLI.run(["advise", "r", "--store", store, "--mtbf", "six hours"])
            #expect(badDuration.status == 2 && badDuration.stderr.contains("a duration is a number"), "\(badDuration.stderr)")
            let badPrice = try CLI.run(["advise", "r", "--store", store, "--mtbf", "6h", "--compute-cost-per-hour", "-1"])
            #expect(badPrice.status == 2 && badPrice.stderr.contains("--compute-cost-per-hour"))
            let unknown = try CLI.run(["advise", "nope", "--store", store, "--mtbf", "6h"])
            #expect(unknown.status == 1 && unknown.stderr.contains("no checkpoints of run nope"))

            try SQLiteDatabase(path: store + "/ckstore.db").execute("DELETE FROM checkpoint_costs")
            let untimed = try CLI.run(["advise", "r", "--store", store, "--mtbf", "6h"])
            #expect(untimed.status == 1 && untimed.stderr.contains("--checkpoint-seconds"), "\(untimed.stderr)")
            let given = try CLI.run(["advise", "r", "--store", store, "--mtbf", "6h", "--checkpoint-seconds", "1", "--json"])
            #expect(given.status == 0, "\(given.stderr)")
            #expect((try CLI.json(given.stdout) as? [String: Any])?["put_seconds"] == nil)
        }
    }
}
