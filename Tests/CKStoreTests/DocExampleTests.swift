import CKStore
import CKStoreTestSupport
import Foundation
import Testing

/// The examples in public doc comments, compiled and run, so that they cannot drift from the API.
@Suite struct CheckpointStoreDocTests {
    @Test func theTypeExampleRuns() async throws {
        try await withTemporaryDirectory { root in
            try FileManager.default.createDirectory(atPath: root + "/out/checkpoint-500", withIntermediateDirectories: true)
            try Data("{}".utf8).write(to: URL(fileURLWithPath: root + "/out/checkpoint-500/config.json"))
            // From CheckpointStore's doc comment, with the paths under the temporary folder.
            let store = try CheckpointStore.open(at: root + "/data/ckstore", create: true)
            let result = try await store.put(directory: root + "/out/checkpoint-500", options: PutOptions(run: "gpt2-finetune"))
            let id = try store.resolve(.latest(run: "gpt2-finetune"))
            _ = try await store.restore(id, to: root + "/resume/")
            #expect(id == result.id && result.step == 500)
            #expect(try Files.tree(root + "/resume") == (try Files.tree(root + "/out/checkpoint-500")))
        }
    }
}
