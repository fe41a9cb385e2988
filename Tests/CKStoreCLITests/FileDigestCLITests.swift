import Foundation
import Testing
import CKStoreTestSupport

/// Manifests record each file's digest over its chunks instead of its whole SHA-256 (issue 18); `show
/// --sha256sum` gives the whole-file SHA-256 back, computed from the store, in the format `sha256sum -c`
/// reads.
@Suite struct FileDigestCLITests {
    private func sha256sum(_ arguments: [String], in folder: String) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["sha256sum"] + arguments
        process.currentDirectoryURL = URL(fileURLWithPath: folder)
        let out = Pipe()
        process.standardOutput = out
        process.standardError = out
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    @Test func showSHA256SumChecksARestoredFolderWithSHA256SumAndCatchesAChangedByte() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store", source = root + "/run/checkpoint-3"
            // Files of many chunks (about 6 MiB of tensors), a one-chunk file, and an empty one.
            try RandomCheckpoint.write(to: source, megabytes: 6, step: 3)
            try Files.write([], to: source + "/empty.txt")
            #expect(try CLI.run(["init", "--store", store]).status == 0)
            #expect(try CLI.run(["put", source, "--store", store, "--run", "d"]).status == 0)

            // The manifest: a digest for every file; a whole-file SHA-256 only where it cost nothing.
            let show = try #require(try CLI.json(try CLI.run(["show", "d@3", "--store", store, "--json"]).stdout) as? [String: Any])
            let files = try #require(show["files"] as? [[String: Any]])
            for file in files {
                #expect((file["digest"] as? String)?.count == 64, "\(file)")
                let chunks = try #require(file["chunks"] as? Int)
                #expect((file["sha256"] != nil) == (chunks <= 1), "sha256 is recorded for files of at most one chunk: \(file)")
            }
            #expect(files.contains { ($0["chunks"] as? Int ?? 0) > 1 }, "the test needs files of several chunks")

            // show --sha256sum: what sha256sum prints for the original files, and `sha256sum -c` passes in a
            // restored folder.
            let sums = try CLI.run(["show", "d@3", "--store", store, "--sha256sum"])
            #expect(sums.status == 0, "\(sums.stderr)")
            let original = try sha256sum(Files.tree(source).keys.sorted(), in: source)
            #expect(Set(sums.stdout.split(separator: "\n")) == Set(original.output.split(separator: "\n")), "\(sums.stdout)\nvs\n\(original.output)")
            try Files.write(Array(sums.stdout.utf8), to: root + "/SUMS")
            let restored = root + "/restored"
            #expect(try CLI.run(["get", "d@3", restored, "--store", store]).status == 0)
            let check = try sha256sum(["-c", root + "/SUMS"], in: restored)
            #expect(check.status == 0, "\(check.output)")

            // A changed byte in a restored file is caught by sha256sum -c.
            var model = try Files.read(restored + "/model.safetensors")
            model[model.count / 2] ^= 0x01
            try Files.write(model, to: restored + "/model.safetensors")
            let failed = try sha256sum(["-c", root + "/SUMS"], in: restored)
            #expect(failed.status != 0 && failed.output.contains("model.safetensors: FAILED"), "\(failed.output)")

            // --json --sha256sum fills in every file's sha256.
            let filled = try #require(try CLI.json(try CLI.run(["show", "d@3", "--store", store, "--json", "--sha256sum"]).stdout) as? [String: Any])
            #expect((filled["files"] as? [[String: Any]])?.allSatisfy { ($0["sha256"] as? String)?.count == 64 } == true)
        }
    }
}
