import CKStoreTestSupport
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Issue 14 through the binary: the lost-catalogue reproduction, killed restores, and bad numbers.
@Suite struct HostileWorldCLITests {
    /// Defect 1's reproduction: after `rm ckstore.db`, put refuses instead of starting an empty catalogue,
    /// and repair brings every checkpoint back; gc then deletes nothing.
    @Test func theLostCatalogueReproduction() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/r1"
            for step in [100, 200] { try RandomCheckpoint.write(to: root + "/g1/checkpoint-\(step)", megabytes: 1, step: step) }
            #expect(try CLI.run(["init", "--store", store]).status == 0)
            #expect(try CLI.run(["put", root + "/g1/checkpoint-100", "--run", "a", "--store", store]).status == 0)
            try FileManager.default.removeItem(atPath: store + "/ckstore.db")
            let put = try CLI.run(["put", root + "/g1/checkpoint-200", "--run", "a", "--store", store, "--json"])
            #expect(put.status == 1 && put.stderr.contains("repair"))
            #expect(try CLI.run(["policy", "set", "a", "--keep-last", "1", "--store", store]).status == 1)
            #expect(try CLI.run(["init", "--store", store]).status == 1)
            let repair = try CLI.run(["repair", "--store", store, "--json"])
            #expect(repair.status == 0, "\(repair.stderr)")
            #expect(try CLI.run(["put", root + "/g1/checkpoint-200", "--run", "a", "--store", store]).status == 0)
            let gc = try CLI.run(["gc", "--grace", "0s", "--store", store, "--json"])
            #expect(gc.status == 0)
            let collected = try #require(try CLI.json(gc.stdout) as? [String: Any])
            #expect((collected["deleted"] as? [Any])?.isEmpty == true)
            let listed = try CLI.json(try CLI.run(["ls", "--store", store, "--json"]).stdout) as? [[String: Any]]
            #expect(listed?.compactMap { $0["step"] as? Int } == [100, 200])
        }
    }

    /// Defect 10: get killed at any moment leaves a new destination absent or complete, never partial.
    @Test func aKilledGetLeavesTheDestinationAbsentOrComplete() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            try RandomCheckpoint.write(to: root + "/src", megabytes: 48, step: 1)
            #expect(try CLI.run(["put", root + "/src", "--run", "r", "--store", store]).status == 0)
            let expected = try Files.tree(root + "/src")
            var killed = 0
            for trial in 0..<8 {
                let destination = root + "/out-\(trial)"
                let outcome = try CLI.runAndKill(["get", "r@1", destination, "--store", store], after: 0.02 + Double(trial) * 0.04)
                if outcome.killed { killed += 1 }
                if FileManager.default.fileExists(atPath: destination) {
                    #expect(try Files.tree(destination) == expected, "trial \(trial): a partial destination")
                }
            }
            #expect(killed > 0, "no trial killed a get mid-way")
            // The next get cleans up what the killed ones left beside their destinations.
            #expect(try CLI.run(["get", "r@1", root + "/final", "--store", store]).status == 0)
            #expect(!(try FileManager.default.contentsOfDirectory(atPath: root)).contains { $0.hasPrefix(".ckstore-restore-") })
        }
    }

    /// Smaller: negative numbers say what is wrong, and a bad duration is a usage error everywhere.
    @Test func negativeNumbersAndBadDurationsAreUsageErrorsThatSayWhy() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            try RandomCheckpoint.write(to: root + "/src", megabytes: 1, step: 1)
            #expect(try CLI.run(["init", "--store", store]).status == 0)
            let cases: [([String], String)] = [
                (["put", root + "/src", "--run", "r", "--step", "-1"], "--step"),
                (["put", root + "/src", "--run", "r", "--epoch", "nan"], "--epoch"),
                (["put", root + "/src", "--run", "r", "--endpoint", "http://127.0.0.1:9"], "give --push too"),
                (["policy", "set", "r", "--keep-last", "-1"], "--keep-last"),
                (["gc", "--budget", "-5GB"], "negative"),
                (["verify", "--sample", "-3"], "--sample"),
                (["gc", "--grace", "5x"], "duration"),
            ]
            for (arguments, says) in cases {
                let output = try CLI.run(arguments + ["--store", store])
                #expect(output.status == 2, "\(arguments): \(output.stderr)")
                #expect(output.stderr.contains(says) && !output.stderr.contains("Missing value"), "\(arguments): \(output.stderr)")
            }
            let metric = try CLI.run(["put", root + "/src", "--run", "r", "--metric", "loss=nan", "--store", store, "--json"])
            #expect(metric.status == 0, "\(metric.stderr)")
            #expect(try CLI.run(["ls", "--store", store, "--json"]).stdout.contains("\"NaN\""))
        }
    }

    /// Defect 2's reproduction on a 16 MiB ext4 loop mount: a put onto a full disk says the disk is full,
    /// and ls, get, verify, rm and gc keep working so that space can be freed.
    @Test func aFullDiskSaysSoAndLetsSpaceBeFreed() async throws {
        try await withTemporaryDirectory { root in
            let mount = root + "/mnt"
            guard ConventionsTests.shell("truncate -s 16M \(root)/img && mkfs.ext4 -q -m 0 \(root)/img && mkdir \(mount) && mount -o loop \(root)/img \(mount)") == 0 else {
                print("HostileWorldCLITests.aFullDiskSaysSoAndLetsSpaceBeFreed: skipped, mounting a loop file system is not permitted here")
                return
            }
            defer { _ = ConventionsTests.shell("umount \(mount)") }
            let store = mount + "/st"
            #expect(try CLI.run(["init", "--store", store]).status == 0)
            try FileManager.default.createDirectory(atPath: root + "/t1", withIntermediateDirectories: true)
            try Data("{}".utf8).write(to: URL(fileURLWithPath: root + "/t1/config.json"))
            #expect(try CLI.run(["put", root + "/t1", "--run", "r", "--step", "1", "--store", store]).status == 0)
            try FileManager.default.createDirectory(atPath: root + "/big", withIntermediateDirectories: true)
            try Files.write(try RandomCheckpoint.randomBytes(190_000), to: root + "/big/data.bin")
            #expect(ConventionsTests.shell("fallocate -l $(( $(df -k --output=avail \(mount) | tail -1) - 8 ))K \(mount)/filler") == 0)

            let put = try CLI.run(["put", root + "/big", "--run", "r", "--step", "2", "--store", store, "--json"])
            #expect(put.status == 1, "\(put.stderr)")
            #expect(try ConventionsTests.error(put).code == "no_space", "\(put.stderr)")
            #expect(put.stderr.contains("full"))
            for arguments in [["ls"], ["show", "r@1"], ["verify"], ["get", "r@1", root + "/out"], ["rm", "r@1"], ["gc", "--grace", "0s"], ["ls"]] {
                let output = try CLI.run(arguments + ["--store", store])
                #expect(output.status == 0, "\(arguments) on a full disk: \(output.stderr)")
            }
            // With the filler gone, puts work again and the reserve is back.
            try FileManager.default.removeItem(atPath: mount + "/filler")
            #expect(try CLI.run(["put", root + "/big", "--run", "r", "--step", "2", "--store", store]).status == 0)
            #expect(FileManager.default.fileExists(atPath: store + "/reserve"))
        }
    }

    /// Smaller: a store on a read-only mount can be listed, shown, verified and restored from.
    @Test func aReadOnlyStoreCanBeReadFrom() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store", readOnly = root + "/ro"
            try RandomCheckpoint.write(to: root + "/src", megabytes: 2, step: 1)
            #expect(try CLI.run(["put", root + "/src", "--run", "r", "--store", store]).status == 0)
            try FileManager.default.createDirectory(atPath: readOnly, withIntermediateDirectories: true)
            guard ConventionsTests.shell("mount --bind \(store) \(readOnly) && mount -o remount,ro,bind \(readOnly)") == 0 else {
                print("HostileWorldCLITests.aReadOnlyStoreCanBeReadFrom: skipped, bind mounts are not permitted here")
                return
            }
            defer { _ = ConventionsTests.shell("umount \(readOnly)") }
            for arguments in [["ls", "--json"], ["show", "r@1"], ["verify", "--full"], ["audit"], ["get", "r@latest-valid", root + "/out"]] {
                let output = try CLI.run(arguments + ["--store", readOnly])
                #expect(output.status == 0, "\(arguments) on a read-only store: \(output.stderr)")
            }
            #expect(try Files.tree(root + "/out") == (try Files.tree(root + "/src")))
            let put = try CLI.run(["put", root + "/src", "--run", "r", "--step", "2", "--store", readOnly, "--json"])
            #expect(put.status == 1)
        }
    }

    /// Smaller: a file name that is not UTF-8 is refused with the reason, not "no such file".
    @Test func aFileNameThatIsNotUTF8IsRefusedSayingWhy() async throws {
        try await withTemporaryDirectory { root in
            try FileManager.default.createDirectory(atPath: root + "/src", withIntermediateDirectories: true)
            let name = root + "/src/bad-\u{FF}"
            // A name with the byte 0xFF, which no UTF-8 string holds.
            var bytes = Array((root + "/src/bad-").utf8) + [0xFF, 0]
            let fd = bytes.withUnsafeMutableBufferPointer { buffer in
                buffer.baseAddress!.withMemoryRebound(to: CChar.self, capacity: buffer.count) { open($0, O_CREAT | O_WRONLY, 0o644) }
            }
            #expect(fd >= 0, "cannot create \(name)")
            close(fd)
            let put = try CLI.run(["put", root + "/src", "--run", "r", "--step", "1", "--store", root + "/store", "--json"])
            #expect(put.status == 1)
            let error = try ConventionsTests.error(put)
            #expect(error.code == "invalid_input" && error.message.contains("not valid UTF-8"), "\(error)")
        }
    }
}
