@testable import CKStore
import CKStoreTestSupport
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// What users of restic, borg and git take for granted: --version, machine-readable errors, progress,
/// completions, a man page and an install step.
@Suite struct ConventionsTests {
    @Test func versionAndFormats() throws {
        let short = try CLI.run(["--version"])
        #expect(short.status == 0 && short.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == CKStoreVersion.release)
        let long = try CLI.run(["version", "--json"])
        #expect(long.status == 0)
        let object = try #require(try CLI.json(long.stdout) as? [String: Any])
        #expect(object["version"] as? String == CKStoreVersion.release)
        #expect(object["pack_format"] as? Int == Int(PackFormat.formatVersion))
        #expect(object["manifest_format"] as? Int == Manifest.currentFormat)
        #expect(object["catalogue_schema"] as? Int == Schema.currentVersion)
    }

    /// The JSON error on standard error, its code, and the exit status.
    static func error(_ output: CLI.Output) throws -> (code: String, message: String) {
        let line = try #require(output.stderr.split(separator: "\n").last.map(String.init), "no error printed")
        let object = try #require(try CLI.json(line) as? [String: Any], "not JSON: \(line)")
        let error = try #require(object["error"] as? [String: Any])
        return (try #require(error["code"] as? String), try #require(error["message"] as? String))
    }

    @Test func everyErrorCodeAsJSON() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            try RandomCheckpoint.write(to: root + "/src", megabytes: 1, step: 3)
            #expect(try CLI.run(["put", root + "/src", "--store", store, "--run", "r"]).status == 0)

            func expectCode(_ arguments: [String], _ code: String, status: Int32 = 1, environment: [String: String] = [:], sourceLocation: SourceLocation = #_sourceLocation) throws {
                let output = try CLI.run(arguments + ["--json"], environment: environment)
                #expect(output.status == status, "\(arguments): \(output.stderr)", sourceLocation: sourceLocation)
                let error = try Self.error(output)
                #expect(error.code == code, "\(arguments): \(error.message)", sourceLocation: sourceLocation)
                #expect(!error.message.isEmpty, sourceLocation: sourceLocation)
            }

            try expectCode(["get", "r@99", root + "/out", "--store", store], "not_found")
            try expectCode(["ls", "--store", root + "/nowhere"], "not_found")
            try expectCode(["show", "zz", "--store", store], "invalid_input")
            try expectCode(["put", root + "/src", "--store", store], "usage", status: 2)
            try expectCode(["ls", "--bogus", "--store", store], "usage", status: 2)
            try Files.write([1], to: root + "/full/x")
            try expectCode(["get", "r@latest", root + "/full", "--store", store], "already_exists")
            // A folder the system refuses to create (sysfs takes no new entries).
            try expectCode(["get", "r@latest", "/sys/kernel/ckstore-test-\(getpid())", "--store", store], "io")

            // Same run and step, different content.
            try RandomCheckpoint.write(to: root + "/other", megabytes: 1, step: 3)
            try expectCode(["put", root + "/other", "--store", store, "--run", "r", "--step", "3"], "conflict")

            // Two checkpoints whose ids share a prefix.
            let ambiguous = root + "/ambiguous"
            let opened = try CheckpointStore.open(at: ambiguous, create: true)
            try opened.withCatalogue { catalogue in
                try catalogue.database.execute("INSERT INTO runs (id, name, created_at) VALUES (1, 'r', 0)")
                for (step, tail) in [(1, "11"), (2, "22")] {
                    let id = "deadbeef00" + tail + String(repeating: "0", count: 52)
                    try catalogue.database.execute("""
                        INSERT INTO checkpoints (id, run_id, step, created_at, logical_bytes, stored_bytes_added, chunk_count, file_count, tensor_count, content_digest)
                        VALUES (x'\(id)', 1, \(step), 0, 0, 0, 0, 0, 0, x'\(id)')
                        """)
                }
            }
            try expectCode(["show", "deadbeef00", "--store", ambiguous], "ambiguous_reference")

            // A catalogue written by a newer ckstore.
            let newer = root + "/newer"
            _ = try CheckpointStore.open(at: newer, create: true)
            try SQLiteDatabase(path: newer + "/ckstore.db").execute("PRAGMA user_version = 99")
            try expectCode(["ls", "--store", newer], "unsupported_version")

            // Another process holds the catalogue's write lock past the wait.
            let holder = try SQLiteDatabase(path: store + "/ckstore.db")
            try holder.execute("BEGIN IMMEDIATE")
            try RandomCheckpoint.write(to: root + "/third", megabytes: 1, step: 4)
            try expectCode(["put", root + "/third", "--store", store, "--run", "r"], "locked", environment: ["CKSTORE_LOCK_TIMEOUT": "0.5"])
            try holder.execute("ROLLBACK")

            // Damage in every pack, so in the one the checkpoint needs.
            for pack in Files.listing(store + "/packs") where pack.hasSuffix(".pack") {
                var bytes = try Files.read(store + "/packs/" + pack)
                for index in stride(from: bytes.count / 4, to: bytes.count * 3 / 4, by: 4096) { bytes[index] ^= 0xFF }
                try Files.write(bytes, to: store + "/packs/" + pack)
            }
            try expectCode(["get", "r@3", root + "/damaged-out", "--store", store], "damaged")
        }
    }

    @Test func aFullDiskIsNoSpace() async throws {
        try await withTemporaryDirectory { root in
            let mountPoint = root + "/small"
            try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
            guard Self.shell("mount -t tmpfs -o size=1m tmpfs \(mountPoint)") == 0 else {
                print("ConventionsTests.aFullDiskIsNoSpace: skipped, mounting a tmpfs is not permitted here")
                return
            }
            defer { _ = Self.shell("umount \(mountPoint)") }
            try RandomCheckpoint.write(to: root + "/src", megabytes: 2, step: 1)
            let output = try CLI.run(["put", root + "/src", "--store", mountPoint + "/store", "--run", "r", "--json"])
            #expect(output.status == 1)
            #expect(try Self.error(output).code == "no_space", "\(output.stderr)")
        }
    }

    static func shell(_ command: String) -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", command + " >/dev/null 2>&1"]
        guard (try? process.run()) != nil else { return -1 }
        process.waitUntilExit()
        return process.terminationStatus
    }

    @Test func progressIsSilentOffATerminalAndJSONWhenAsked() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            try RandomCheckpoint.write(to: root + "/src", megabytes: 4, step: 1)
            let quiet = try CLI.run(["put", root + "/src", "--store", store, "--run", "r"])
            #expect(quiet.status == 0 && !quiet.stderr.contains("\r") && !quiet.stderr.contains("\"progress\""))

            let json = try CLI.run(["get", "r@1", root + "/out", "--store", store, "--progress", "json"])
            #expect(json.status == 0)
            let events = try json.stderr.split(separator: "\n").filter { $0.hasPrefix("{") }.map { try #require(try CLI.json(String($0)) as? [String: Any]) }
            #expect(!events.isEmpty)
            #expect(events.allSatisfy { $0["type"] as? String == "progress" && $0["operation"] as? String == "get" })
            let last = try #require(events.last)
            #expect(last["done"] as? Bool == true)
            #expect(last["bytes_done"] as? Int == last["bytes_total"] as? Int && (last["bytes_total"] as? Int ?? 0) >= 4 << 20)

            let silenced = try CLI.run(["verify", "--full", "--store", store, "--progress", "json", "--quiet"])
            #expect(silenced.status == 0 && !silenced.stderr.contains("\"progress\""))
        }
    }

    @Test func progressOnATerminalIsOneUpdatingLineEndingInASummary() async throws {
        try await withTemporaryDirectory { root in
            try RandomCheckpoint.write(to: root + "/src", megabytes: 16, step: 1)
            // `script` runs the command on a pseudo-terminal and copies what it writes.
            let command = "\(CLI.binary) put \(root)/src --store \(root)/store --run r"
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/script")
            process.arguments = ["-qec", command, "/dev/null"]
            let out = Pipe()
            process.standardOutput = out
            process.standardError = FileHandle.nullDevice
            try process.run()
            let data = out.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            #expect(process.terminationStatus == 0)
            let text = String(decoding: data, as: UTF8.self)
            // Redrawn in place with carriage returns, ending in the summary line.
            #expect(text.contains("\r\u{1B}[Kput: "), "\(text.debugDescription)")
            let summary = try #require(text.components(separatedBy: "\r\u{1B}[K").last)
            #expect(summary.hasPrefix("put: ") && summary.contains(" of ") && summary.contains(" s ("), "\(summary.debugDescription)")
        }
    }

    @Test func completionScriptsLoad() throws {
        let bash = try CLI.run(["completion", "bash"])
        #expect(bash.status == 0)
        let script = FileManager.default.temporaryDirectory.path + "/ckstore-completion-\(getpid()).bash"
        try Data(bash.stdout.utf8).write(to: URL(fileURLWithPath: script))
        defer { try? FileManager.default.removeItem(atPath: script) }
        #expect(Self.shell("bash -c 'source \(script) && complete -p ckstore'") == 0)
        for shell in ["zsh", "fish"] {
            let output = try CLI.run(["completion", shell])
            #expect(output.status == 0 && output.stdout.contains("ckstore"))
        }
        #expect(try CLI.run(["completion", "tcsh"]).status == 2)
    }

    @Test func makeInstallIntoAPrefixAndRun() async throws {
        try await withTemporaryDirectory { root in
            let prefix = root + "/prefix"
            let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
            #expect(FileManager.default.fileExists(atPath: repository + "/ckstore.1"), "run `make man` before the tests (make test does)")
            #expect(Self.shell("make -C \(repository) install PREFIX=\(prefix) BIN=\(CLI.buildFolder)") == 0)
            let installed = prefix + "/bin/ckstore"
            let version = Process()
            version.executableURL = URL(fileURLWithPath: installed)
            version.arguments = ["--version"]
            let out = Pipe()
            version.standardOutput = out
            try version.run()
            let printed = out.fileHandleForReading.readDataToEndOfFile()
            version.waitUntilExit()
            #expect(String(decoding: printed, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) == CKStoreVersion.release)
            #expect(Self.shell("\(installed) init --store \(root)/store && \(installed) ls --store \(root)/store --json") == 0)
            let manual = try String(contentsOfFile: prefix + "/share/man/man1/ckstore.1", encoding: .utf8)
            #expect(manual.contains(".Dt CKSTORE 1"))
            #expect(Self.shell("bash -c 'source \(prefix)/share/bash-completion/completions/ckstore && complete -p ckstore'") == 0)
            #expect(FileManager.default.fileExists(atPath: prefix + "/share/zsh/site-functions/_ckstore"))
            #expect(FileManager.default.fileExists(atPath: prefix + "/share/fish/vendor_completions.d/ckstore.fish"))
            #expect(Self.shell("make -C \(repository) uninstall PREFIX=\(prefix)") == 0)
            #expect(!FileManager.default.fileExists(atPath: installed))
            #expect(!FileManager.default.fileExists(atPath: prefix + "/share/man/man1/ckstore.1"))
        }
    }

    @Test func rmDryRunSaysWhatGCWouldFreeAndChangesNothing() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            for step in 1...2 {
                try RandomCheckpoint.write(to: root + "/src-\(step)", megabytes: 1, step: step)
                #expect(try CLI.run(["put", root + "/src-\(step)", "--store", store, "--run", "r"]).status == 0)
            }
            let dry = try CLI.run(["rm", "r@1", "--dry-run", "--json", "--store", store])
            #expect(dry.status == 0, "\(dry.stderr)")
            let plan = try #require(try CLI.json(dry.stdout) as? [String: Any])
            #expect(plan["dry_run"] as? Bool == true)
            #expect((plan["removed"] as? [[String: Any]])?.first?["step"] as? Int == 1)
            let predicted = try #require(plan["bytes_freed"] as? Int)
            #expect(predicted > 1 << 20)
            #expect(try CLI.run(["ls", "--store", store, "--json"]).stdout.contains("\"step\" : 1"))

            #expect(try CLI.run(["rm", "r@1", "--store", store]).status == 0)
            let gc = try #require(try CLI.json(try CLI.run(["gc", "--json", "--store", store]).stdout) as? [String: Any])
            #expect(gc["bytes_freed"] as? Int == predicted)
        }
    }
}
