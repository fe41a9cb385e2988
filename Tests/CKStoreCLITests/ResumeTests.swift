import CKStore
import CKStoreTestSupport
import Foundation
import Testing

/// `ckstore resume` (issue 27): the newest valid checkpoint of the local store and the remote together.
@Suite struct ResumeTests {
    static func ckstore(_ arguments: [String], store: String, server: SeaweedServer) throws -> CLI.Output {
        try CLI.run(arguments + ["--store", store], environment: server.environment)
    }

    /// Machine A trains to an older step and pushes; machine B resumes from the bucket, trains further and
    /// pushes; A comes back with its local store and resumes from B's newer step, pulling only what it
    /// lacks; an empty machine and an empty remote give `not_found`.
    @Test func aMachineWithAnOlderStoreResumesFromTheNewerRemoteStep() async throws {
        try await SeaweedServer.with { server in
            try await withTemporaryDirectory { root in
                try await server.createBucket("resume")
                let gen = try CLI.run([root + "/series", "--checkpoints", "3", "--parameters", "200000", "--frozen", "embed"], program: "ckstore-gen")
                #expect(gen.status == 0, "\(gen.stderr)")
                let folders = try FileManager.default.contentsOfDirectory(atPath: root + "/series").sorted { $0.count == $1.count ? $0 < $1 : $0.count < $1.count }
                let steps = folders.map { Int64($0.split(separator: "-").last!)! }
                let remote = ["--remote", "s3://resume/run", "--endpoint", server.endpoint]
                let a = root + "/a", b = root + "/b"
                for folder in folders.prefix(2) {
                    #expect(try Self.ckstore(["put", root + "/series/" + folder, "--run", "gpt"], store: a, server: server).status == 0)
                }
                #expect(try Self.ckstore(["push", "--run", "gpt"] + remote, store: a, server: server).status == 0)

                // B, empty, resumes from the remote.
                let fromBucket = try Self.ckstore(["resume", "gpt", root + "/b-resume", "--json"] + remote, store: b, server: server)
                #expect(fromBucket.status == 0, "\(fromBucket.stderr)")
                let first = try #require(try CLI.json(fromBucket.stdout) as? [String: Any])
                #expect(first["step"] as? Int64 == steps[1] && first["source"] as? String == "remote")
                #expect(first["local_step"] is NSNull)
                // B trains on and pushes the third.
                #expect(try Self.ckstore(["put", root + "/series/" + folders[2], "--run", "gpt"], store: b, server: server).status == 0)
                #expect(try Self.ckstore(["push", "gpt@latest"] + remote, store: b, server: server).status == 0)

                // A, back with its older store: B's newer step, not its own.
                let back = try Self.ckstore(["resume", "gpt", root + "/a-resume", "--json"] + remote, store: a, server: server)
                #expect(back.status == 0, "\(back.stderr)")
                let report = try #require(try CLI.json(back.stdout) as? [String: Any])
                #expect(report["step"] as? Int64 == steps[2] && report["source"] as? String == "remote")
                #expect(report["local_step"] as? Int64 == steps[1] && report["remote_step"] as? Int64 == steps[2])
                #expect(try Files.tree(root + "/a-resume") == Files.tree(root + "/series/" + folders[2]))
                // Only what A lacked came down (the frozen embedding was there already): less than an empty
                // machine downloads for the same checkpoint.
                let downloaded = try #require(report["bytes_downloaded"] as? Int64)
                let empty = try Self.ckstore(["resume", "gpt", root + "/d-resume", "--json"] + remote, store: root + "/d", server: server)
                let whole = try #require((try CLI.json(empty.stdout) as? [String: Any])?["bytes_downloaded"] as? Int64)
                #expect(downloaded > 0 && downloaded < whole, "downloaded \(downloaded), an empty store \(whole)")

                // Now A has it: from the store, nothing downloaded; the text form prints the step alone.
                let again = try Self.ckstore(["resume", "gpt", root + "/a-resume", "--force"] + remote, store: a, server: server)
                #expect(again.status == 0, "\(again.stderr)")
                #expect(again.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == String(steps[2]))
                #expect(again.stderr.contains("from this store"))
                // Without a remote, the local store alone.
                let localOnly = try Self.ckstore(["resume", "gpt", root + "/a-local", "--json"], store: a, server: server)
                #expect(try #require(try CLI.json(localOnly.stdout) as? [String: Any])["source"] as? String == "local")

                // Nothing anywhere: not_found, which a restart script reads as "start from scratch".
                let nothing = try Self.ckstore(["resume", "gpt", root + "/none", "--remote", "s3://resume/empty", "--endpoint", server.endpoint, "--json"],
                                               store: root + "/c", server: server)
                #expect(nothing.status == 1)
                #expect(nothing.stderr.contains("\"not_found\""), "\(nothing.stderr)")
            }
        }
    }
}
