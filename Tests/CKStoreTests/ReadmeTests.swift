import CKStore
import CKStoreTestSupport
import Foundation
import Testing

@Suite struct ReadmeTests {
    /// The lines between two markers of a file.
    static func lines(of path: String, between begin: String, and end: String) throws -> [String] {
        let text = String(decoding: try Files.read(path), as: UTF8.self)
        let lines = text.components(separatedBy: "\n")
        let first = try #require(lines.firstIndex { $0.hasPrefix(begin) }), last = try #require(lines.firstIndex { $0.hasPrefix(end) })
        return Array(lines[(first + 1)..<last])
    }

    @Test func theLibrarySampleIsTheCompiledOne() throws {
        let readme = String(decoding: try Files.read(Repository.root + "/README.md"), as: UTF8.self)
        let section = try #require(readme.components(separatedBy: "\n## Library\n").dropFirst().first, "README has no Library section")
        let block = try #require(section.components(separatedBy: "```swift\n").dropFirst().first?.components(separatedBy: "\n```").first)
        let compiled = try Self.lines(of: Repository.root + "/Tests/CKStoreTests/ReadmeSample.swift", between: "// README SAMPLE BEGIN", and: "// README SAMPLE END")
        #expect(block.components(separatedBy: "\n") == compiled)
    }

    @Test func theLibrarySampleResumes() async throws {
        try await withTemporaryDirectory { root in
            let straight = try await train(storePath: root + "/a", run: "readme", steps: 500)
            _ = try await train(storePath: root + "/b", run: "readme", steps: 300)
            let resumed = try await train(storePath: root + "/b", run: "readme", steps: 500)
            #expect(resumed == straight)

            // It resumes from what the store holds: a step-300 checkpoint of other weights carries through.
            let store = try CheckpointStore.open(at: root + "/c", create: true)
            var seeded = CheckpointContents(run: "readme", step: 300)
            seeded.tensors = [try TensorValue(name: "w", shape: [1024], floats: [Float](repeating: 42, count: 1024))]
            _ = try await store.save(seeded)
            let fromSeed = try await train(storePath: root + "/c", run: "readme", steps: 500)
            var expected = [Float](repeating: 42, count: 1024)
            for _ in 301...500 { for i in expected.indices { expected[i] += 0.001 * Float(i % 7) } }
            #expect(fromSeed == expected)
            #expect(fromSeed != straight)
        }
    }
}
