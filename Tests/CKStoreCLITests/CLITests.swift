import CKStoreTestSupport
import Foundation
import Testing

@Suite struct CLITests {
    @Test func putListShowGetThroughTheBinary() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            let source = root + "/run/checkpoint-10"
            try RandomCheckpoint.write(to: source, megabytes: 3, step: 10)
            try Files.write(Array(#"{"architectures": ["Tiny"]}"#.utf8), to: source + "/config.json")

            let initialized = try CLI.run(["init", "--store", store])
            #expect(initialized.status == 0)

            let put = try CLI.run(["put", source, "--store", store, "--run", "demo", "--metric", "acc=0.5", "--tag", "first", "--meta", "note=hi", "--json"])
            #expect(put.status == 0, "\(put.stderr)")
            let object = try #require(try CLI.json(put.stdout) as? [String: Any])
            for key in ["id", "run", "step", "logical_bytes", "stored_bytes_added", "chunks_total", "chunks_new", "seconds"] {
                #expect(object[key] != nil, "put --json lacks \(key)")
            }
            let id = try #require(object["id"] as? String)
            #expect(id.count == 64)
            #expect(object["step"] as? Int == 10)
            #expect(object["logical_bytes"] as? Int == (try Files.tree(source).values.reduce(0) { $0 + $1.count }))

            // Without --json, put prints the id alone; again under the same step it is a no-op.
            let again = try CLI.run(["put", source, "--run", "demo", "--metric", "acc=0.5", "--tag", "first", "--meta", "note=hi"], environment: ["CKSTORE_PATH": store])
            #expect(again.status == 0 && again.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == id)
            #expect(again.stderr.contains("already stored"))

            let list = try CLI.run(["ls", "--store", store, "--json"])
            let rows = try #require(try CLI.json(list.stdout) as? [[String: Any]])
            #expect(rows.count == 1)
            #expect((rows[0]["metrics"] as? [String: Double])?["acc"] == 0.5)
            #expect((rows[0]["metrics"] as? [String: Double])?["loss"] == 2.5)
            #expect(rows[0]["tags"] as? [String] == ["first"])
            let table = try CLI.run(["ls", "--store", store])
            #expect(table.stdout.contains(String(id.prefix(12))) && table.stdout.contains("demo"))

            let show = try CLI.run(["show", "demo@latest", "--store", store, "--json"])
            let shown = try #require(try CLI.json(show.stdout) as? [String: Any])
            #expect(shown["id"] as? String == id)
            #expect((shown["metadata"] as? [String: String])?["note"] == "hi")
            let files = try #require(shown["files"] as? [[String: Any]])
            #expect(files.map { $0["path"] as? String } == ["config.json", "model.safetensors", "optimizer.pt", "trainer_state.json"])
            #expect(try CLI.run(["show", String(id.prefix(8)), "--store", store]).stdout.contains("model.safetensors"))

            let get = try CLI.run(["get", "demo@10", root + "/out", "--store", store])
            #expect(get.status == 0, "\(get.stderr)")
            #expect(try Files.tree(root + "/out") == (try Files.tree(source)))
            let subset = try CLI.run(["get", id, root + "/subset", "--store", store, "--tensor", "w1", "--json"])
            #expect(subset.status == 0)
            #expect(Files.listing(root + "/subset") == ["model.safetensors"])
        }
    }

    @Test func storeSettingsThroughTheBinary() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            let initialized = try CLI.run(["init", "--store", store, "--level", "5", "--max-delta-depth", "2"])
            #expect(initialized.status == 0, "\(initialized.stderr)")
            let shown = try #require(try CLI.json(try CLI.run(["settings", "--store", store, "--json"]).stdout) as? [String: Any])
            #expect(shown["compression_level"] as? Int == 5 && shown["max_delta_depth"] as? Int == 2)
            #expect(try CLI.run(["settings", "--store", store, "--max-delta-depth", "0"]).status == 0)
            let changed = try #require(try CLI.json(try CLI.run(["settings", "--store", store, "--json"]).stdout) as? [String: Any])
            #expect(changed["compression_level"] as? Int == 5 && changed["max_delta_depth"] as? Int == 0)
            // Out-of-range values are usage errors that change nothing.
            #expect(try CLI.run(["settings", "--store", store, "--max-delta-depth", "99"]).status == 2)
            #expect(try CLI.run(["settings", "--store", store, "--level", "42"]).status == 2)
            let source = root + "/checkpoint-1"
            try RandomCheckpoint.write(to: source, megabytes: 1, step: 1)
            #expect(try CLI.run(["put", source, "--store", store, "--run", "r", "--max-delta-depth", "40"]).status == 2)
            #expect(try CLI.run(["put", source, "--store", store, "--run", "r", "--level", "3", "--max-delta-depth", "1"]).status == 0)
            let unchanged = try #require(try CLI.json(try CLI.run(["settings", "--store", store, "--json"]).stdout) as? [String: Any])
            #expect(unchanged["compression_level"] as? Int == 5 && unchanged["max_delta_depth"] as? Int == 0, "a put's own flags leave the store's settings alone")
        }
    }

    @Test func exitCodesAndMessages() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            try RandomCheckpoint.write(to: root + "/src", megabytes: 1, step: 3)
            #expect(try CLI.run(["put", root + "/src", "--store", store, "--run", "r"]).status == 0)

            let missing = try CLI.run(["get", "r@99", root + "/out", "--store", store])
            #expect(missing.status == 1 && missing.stderr.contains("run r has no checkpoint at step 99"))
            let noStore = try CLI.run(["ls", "--store", root + "/nowhere"])
            #expect(noStore.status == 1 && noStore.stderr.contains("no ckstore store"))
            let badRef = try CLI.run(["show", "zz", "--store", store])
            #expect(badRef.status == 1 && badRef.stderr.contains("reference zz"))
            let usage = try CLI.run(["put", root + "/src", "--store", store])
            #expect(usage.status == 2 && usage.stderr.contains("--run"))
            let badMetric = try CLI.run(["put", root + "/src", "--store", store, "--run", "r", "--metric", "loss"])
            #expect(badMetric.status == 2)
            try Files.write([1], to: root + "/full/x")
            let notEmpty = try CLI.run(["get", "r@latest", root + "/full", "--store", store])
            #expect(notEmpty.status == 1 && notEmpty.stderr.contains("not empty"))
            let help = try CLI.run(["--help"])
            #expect(help.status == 0 && help.stdout.contains("put"))
        }
    }
}

@Suite struct MaintenanceCLITests {
    @Test func verifyAndRepairThroughTheBinary() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            try RandomCheckpoint.write(to: root + "/a", megabytes: 2, step: 1)
            try RandomCheckpoint.write(to: root + "/b", megabytes: 2, step: 2)
            #expect(try CLI.run(["put", root + "/a", "--store", store, "--run", "r"]).status == 0)
            let packsOfFirst = Set(Files.listing(store + "/packs").filter { $0.hasSuffix(".pack") })
            #expect(try CLI.run(["put", root + "/b", "--store", store, "--run", "r"]).status == 0)
            let packsOfSecond = Set(Files.listing(store + "/packs").filter { $0.hasSuffix(".pack") }).subtracting(packsOfFirst)
            #expect(packsOfSecond.count == 1)

            let clean = try CLI.run(["verify", "--store", store, "--full", "--json"])
            #expect(clean.status == 0, "\(clean.stderr)")
            let report = try #require(try CLI.json(clean.stdout) as? [String: Any])
            for key in ["ok", "chunks_checked", "damaged_chunks", "missing_chunks", "affected_checkpoints"] {
                #expect(report[key] != nil, "verify --json lacks \(key)")
            }
            #expect(report["ok"] as? Bool == true)
            #expect((report["chunks_checked"] as? Int ?? 0) > 0)
            #expect(try CLI.run(["verify", "--store", store, "--sample", "50"]).status == 0)
            #expect(try CLI.run(["verify", "r@1", "--store", store]).status == 0)
            #expect(try CLI.run(["verify", "--store", store, "--full", "--sample", "5"]).status == 2)

            // Delete the catalogue: commands say to repair; repair brings every checkpoint back.
            let listed = try CLI.run(["ls", "--store", store, "--json"]).stdout
            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: store + "/ckstore.db" + suffix) }
            let refused = try CLI.run(["ls", "--store", store])
            #expect(refused.status == 1 && refused.stderr.contains("ckstore repair"))
            let repaired = try CLI.run(["repair", "--store", store, "--json"])
            #expect(repaired.status == 0, "\(repaired.stderr)")
            #expect((try CLI.json(repaired.stdout) as? [String: Any])?["catalogue_rebuilt"] as? Bool == true)
            let relisted = try CLI.run(["ls", "--store", store, "--json"]).stdout
            let ids = { (text: String) throws -> [String] in (try CLI.json(text) as? [[String: Any]] ?? []).compactMap { $0["id"] as? String } }
            #expect(try ids(relisted) == (try ids(listed)))

            // Damage the pack the second put wrote: verify exits 1 naming it; latest-valid picks the first.
            let newest = try #require(try ids(listed).last)
            let target = store + "/packs/" + (try #require(packsOfSecond.first))
            var bytes = try Files.read(target)
            bytes[bytes.count / 2] ^= 0xff
            try Files.write(bytes, to: target)
            let damaged = try CLI.run(["verify", "--store", store, "--full"])
            #expect(damaged.status == 1)
            #expect(damaged.stdout.contains("DAMAGE FOUND") && damaged.stdout.contains(String(newest.prefix(12))))
            let latestValid = try CLI.run(["show", "r@latest-valid", "--store", store, "--json"])
            #expect(latestValid.status == 0)
            #expect((try CLI.json(latestValid.stdout) as? [String: Any])?["step"] as? Int == 1)
        }
    }
}

@Suite struct RetentionCLITests {
    @Test func policyPinTagRemoveAndGCThroughTheBinary() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            for step in 1...4 {
                try RandomCheckpoint.write(to: root + "/src/\(step)", megabytes: 1, step: step)
                #expect(try CLI.run(["put", root + "/src/\(step)", "--store", store, "--run", "r"]).status == 0)
            }
            let set = try CLI.run(["policy", "set", "r", "--keep-last", "1", "--keep-best", "1:loss:min", "--keep-within", "90m", "--store", store])
            #expect(set.status == 0 && set.stdout.contains("keep-last 1"))
            let badRule = try CLI.run(["policy", "set", "r", "--keep-best", "1:loss", "--store", store])
            #expect(badRule.status == 2 && badRule.stderr.contains("N:METRIC:min"))
            #expect(try CLI.run(["policy", "set", "--store", store]).status == 2)
            let shown = try #require(try CLI.json(try CLI.run(["policy", "show", "r", "--json", "--store", store]).stdout) as? [String: Any])
            #expect((shown["policy"] as? [String: Any])?["keep_last"] as? Int == 1)
            // keep-within keeps everything here (all put within 90 minutes); make the rule that matters bite.
            #expect(try CLI.run(["policy", "set", "r", "--keep-last", "1", "--store", store]).status == 0)
            #expect(try CLI.run(["pin", "r@2", "--store", store]).status == 0)
            #expect(try CLI.run(["tag", "r@3", "keep-me", "--store", store]).status == 0)
            let dry = try CLI.run(["gc", "--dry-run", "--json", "--store", store])
            let report = try #require(try CLI.json(dry.stdout) as? [String: Any])
            #expect(report["bytes_freed"] as? Int ?? 0 > 0)
            let kept = try #require(report["kept"] as? [[String: Any]])
            #expect(kept.allSatisfy { $0["id"] is String && $0["reasons"] is [String] })
            #expect(Set(kept.compactMap { $0["step"] as? Int }) == [2, 4])
            #expect((report["deleted"] as? [String])?.count == 2)
            let table = try CLI.run(["gc", "--dry-run", "--store", store])
            #expect(table.stdout.contains("would delete") && table.stdout.contains("pinned"))
            #expect(try CLI.run(["gc", "--store", store]).status == 0)
            let steps = (try CLI.json(try CLI.run(["ls", "--json", "--store", store]).stdout) as? [[String: Any]] ?? []).compactMap { $0["step"] as? Int }
            #expect(Set(steps) == [2, 4])
            let pinnedRemove = try CLI.run(["rm", "r@2", "--store", store])
            #expect(pinnedRemove.status == 1 && pinnedRemove.stderr.contains("pinned"))
            #expect(try CLI.run(["rm", "r@2", "--force", "--store", store]).status == 0)
            #expect(try CLI.run(["policy", "clear", "r", "--store", store]).stdout.contains("cleared"))
            #expect(try CLI.run(["verify", "--full", "--store", store]).status == 0)
        }
    }
}

@Suite struct AuditCLITests {
    @Test func auditDuAndGCBudgetThroughTheBinary() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            for step in 1...4 {
                try RandomCheckpoint.write(to: root + "/src/\(step)", megabytes: 2, step: step)
                #expect(try CLI.run(["put", root + "/src/\(step)", "--store", store, "--run", "r"]).status == 0)
            }
            let audit = try CLI.run(["audit", "--store", store, "--json", "--budget", "6MiB", "--what-if", "keep-last=1", "--html", root + "/report.html"])
            #expect(audit.status == 0, "\(audit.stderr)")
            let object = try #require(try CLI.json(audit.stdout) as? [String: Any])
            for key in ["logical_bytes", "stored_bytes", "disk_bytes", "dead_bytes", "dedup_ratio", "compression_ratio", "runs", "checkpoints", "parts", "largest_tensors", "budget", "what_if"] {
                #expect(object[key] != nil, "audit --json lacks \(key)")
            }
            let checkpoints = try #require(object["checkpoints"] as? [[String: Any]])
            #expect(checkpoints.count == 4)
            for checkpoint in checkpoints {
                for key in ["id", "run", "step", "logical_bytes", "added_bytes", "exclusive_bytes"] {
                    #expect(checkpoint[key] != nil, "audit --json checkpoint lacks \(key)")
                }
            }
            let budget = try #require(object["budget"] as? [String: Any])
            #expect(budget["fits"] as? Bool == false)
            #expect(budget.keys.contains("steady_state_bytes"), "unbounded is an explicit null")
            let whatIf = try #require(object["what_if"] as? [String: Any])
            #expect((whatIf["deleted"] as? [Any])?.count == 3)
            #expect(try Files.read(root + "/report.html").count > 1000)

            let text = try CLI.run(["audit", "--store", store, "--run", "r"])
            #expect(text.status == 0 && text.stdout.contains("CHECKPOINTS") && text.stdout.contains("PARTS"))
            let du = try CLI.run(["du", "--store", store])
            #expect(du.status == 0 && du.stdout.contains("on disk") && du.stdout.contains("\nr "))

            // Bad input: a malformed size or rule is a usage error; an unknown run is not found.
            #expect(try CLI.run(["audit", "--store", store, "--budget", "lots"]).status == 2)
            #expect(try CLI.run(["audit", "--store", store, "--what-if", "keep-forever=1"]).status == 2)
            let unknown = try CLI.run(["audit", "--store", store, "--run", "nope"])
            #expect(unknown.status == 1 && unknown.stderr.contains("nope"))

            // A budget the newest checkpoint alone cannot meet: refused, says by how much, deletes nothing.
            let impossible = try CLI.run(["gc", "--store", store, "--budget", "1MiB"])
            #expect(impossible.status == 1 && impossible.stderr.contains("over") && impossible.stderr.contains("nothing was deleted"))
            #expect(try CLI.run(["audit", "--store", store, "--json"]).stdout.contains("\"checkpoint_count\" : 4"))
            let enforced = try CLI.run(["gc", "--store", store, "--budget", "5MiB", "--json"])
            #expect(enforced.status == 0, "\(enforced.stderr)")
            let report = try #require(try CLI.json(enforced.stdout) as? [String: Any])
            let outcome = try #require(report["budget"] as? [String: Any])
            #expect((outcome["deleted_for_budget"] as? [Any])?.count == 2)
            let after = try #require(try CLI.json(try CLI.run(["du", "--store", store, "--json"]).stdout) as? [String: Any])
            #expect((after["disk_bytes"] as? Int ?? .max) <= 5 << 20)
        }
    }
}
