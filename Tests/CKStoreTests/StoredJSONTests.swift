@testable import CKStore
import Foundation
import Testing

/// The objects ckstore keeps as JSON (commit records, remote objects, `remotes.json`, policies) name their
/// fields only in Swift and take their snake_case keys from an encoder's key strategy, with property
/// wrappers for a key that may be missing or must be null. These tests pin the bytes that earlier versions
/// wrote and read, so that the strategy never changes a stored object's meaning.
@Suite struct StoredJSONTests {
    static let a = String(repeating: "a", count: 64), b = String(repeating: "b", count: 64), c = String(repeating: "c", count: 64)

    private func json(_ value: some Encodable) throws -> [String: Any] {
        try #require(JSONSerialization.jsonObject(with: Data(try RemoteJSON.encode(value))) as? [String: Any])
    }

    @Test func aCommitObjectAsEarlierVersionsWroteItStillReads() throws {
        // Written by ckstore before the commit object held the checkpoint summary: snake_case keys from
        // hand-written coding keys, no `pinned` or `dropped_parts`.
        let old = """
            {"chunk_count":7,"content":"\(Self.b)","created_at":1700000000.5,"dropped_files":{"optimizer.pt":"optimizer"},\
            "dropped_tensors":{},"epoch":1.5,"file_count":3,"format":1,"id":"\(Self.a)","indexes":["\(Self.c)"],\
            "logical_bytes":4096,"metrics":{"eval_loss":0.25,"evalLoss":0.5},"parent":null,"run":"r","step":20,\
            "stored_bytes_added":1024,"tags":["best"],"tensor_count":5}
            """
        let commit = try RemoteJSON.decode(RemoteCommit.self, Array(old.utf8), what: "commit")
        #expect(commit.run == "r" && commit.step == 20 && commit.epoch == 1.5 && commit.createdAt == 1700000000.5)
        #expect(commit.id.hex == Self.a && commit.content.hex == Self.b && commit.indexes == [Self.c])
        #expect(commit.logicalBytes == 4096 && commit.storedBytesAdded == 1024 && commit.chunkCount == 7)
        #expect(commit.fileCount == 3 && commit.tensorCount == 5 && commit.parent == nil && commit.tags == ["best"])
        // Dictionary keys are data, not field names: neither strategy touches them.
        #expect(commit.metrics == ["eval_loss": 0.25, "evalLoss": 0.5])
        #expect(commit.droppedFiles == ["optimizer.pt": "optimizer"])
        #expect(commit.summary.droppedParts == ["optimizer"] && !commit.summary.pinned)

        let written = try json(commit)
        for key in ["chunk_count", "created_at", "dropped_files", "dropped_tensors", "file_count", "logical_bytes", "stored_bytes_added", "tensor_count", "indexes", "content", "format"] {
            #expect(written[key] != nil, "\(key) missing from \(written.keys.sorted())")
        }
        #expect(written["createdAt"] == nil && written["storedBytesAdded"] == nil)
        #expect((written["metrics"] as? [String: Double]) == ["eval_loss": 0.25, "evalLoss": 0.5])
        #expect(try RemoteJSON.decode(RemoteCommit.self, try RemoteJSON.encode(commit), what: "commit") == commit)
    }

    @Test func aCommitDoesNotCarryThePushingStoresPin() throws {
        var summary = CheckpointSummary(id: CheckpointID(hex: Self.a)!, run: "r", step: 1, epoch: nil, createdAt: 1,
                                        logicalBytes: 1, storedBytesAdded: 1, chunkCount: 1, fileCount: 1, tensorCount: 0, parent: nil,
                                        metrics: [:], tags: [])
        summary.pinned = true
        summary.droppedParts = ["weights"]
        let commit = RemoteCommit(summary, content: ChunkDigest(hex: Self.b)!, indexes: [], shards: nil)
        #expect(!commit.summary.pinned && commit.summary.droppedParts.isEmpty)
        #expect((try json(commit))["pinned"] as? Bool == false)
    }

    @Test func anIndexFrameLeavesOutEmptyInputsAndReadsTheirAbsence() throws {
        let plain = PackedFrame(digest: ChunkDigest(hex: Self.a)!, offset: 32, storedLength: 10, rawLength: 20, encoding: 1, kind: 0, base: nil)
        let text = String(decoding: try RemoteJSON.encode(plain), as: UTF8.self)
        #expect(text == #"{"d":"\#(Self.a)","e":1,"k":0,"o":32,"r":20,"s":10}"#)
        #expect(try RemoteJSON.decode(PackedFrame.self, Array(text.utf8), what: "frame") == plain)

        let predicted = PackedFrame(digest: ChunkDigest(hex: Self.a)!, offset: 32, storedLength: 10, rawLength: 20, encoding: 5, kind: 0,
                                    base: ChunkDigest(hex: Self.b)!, inputs: [ChunkDigest(hex: Self.c)!])
        let written = try json(predicted)
        #expect(written["i"] as? [String] == [Self.c] && written["b"] as? String == Self.b)
        #expect(try RemoteJSON.decode(PackedFrame.self, try RemoteJSON.encode(predicted), what: "frame") == predicted)
    }

    @Test func aRemoteDefinitionWritesItsOptionalFlagsOnlyWhenSet() throws {
        let plain = RemoteDefinition(name: "r", url: "s3://b/p")
        let written = try json(plain)
        #expect(written["path_style"] as? Bool == false)
        #expect(written["virtual_hosted"] == nil && written["unsafe_unconditional_commits"] == nil && written["endpoint"] == nil)
        let flagged = try json(RemoteDefinition(name: "r", url: "s3://b/p", virtualHosted: true, unsafeUnconditionalCommits: true))
        #expect(flagged["virtual_hosted"] as? Bool == true && flagged["unsafe_unconditional_commits"] as? Bool == true)
        // remotes.json as the first versions wrote it, before path_style existed.
        let registry = try RemoteJSON.decode(RemoteRegistry.self, Array(#"{"remotes":[{"name":"r","url":"s3://b"}],"push_on_commit":"r"}"#.utf8), what: "remotes.json")
        #expect(registry.pushOnCommit == "r" && registry.remotes == [RemoteDefinition(name: "r", url: "s3://b")])
    }

    @Test func aPolicyWithoutItsListRulesReadsThemAsEmpty() throws {
        let policy = try JSONDecoder().decode(RetentionPolicy.self, from: Data(#"{"keep_last":2}"#.utf8))
        #expect(policy.keepLast == 2 && policy.keepBest.isEmpty && policy.keepTags.isEmpty && policy.parts.isEmpty)
        let written = try #require(JSONSerialization.jsonObject(with: JSONEncoder().encode(policy)) as? [String: Any])
        #expect(written["keep_tags"] as? [String] == [] && written["keep_best"] != nil && written["parts"] != nil)
    }

    @Test func anUnboundedBudgetFigureIsAnExplicitNull() throws {
        let budget = AuditReport.Budget(budgetBytes: 10, diskBytes: 5, headroomBytes: 5, fits: true, steadyStateBytes: nil, moreCheckpoints: 3,
                                        runs: [.init(run: "r", bytesPerCheckpoint: 1, baseBytes: 0, keptAtSteadyState: nil, steadyStateBytes: nil, moreCheckpoints: nil)])
        let text = String(decoding: try ReportJSON.encoder().encode(budget), as: UTF8.self)
        #expect(text.contains(#""steady_state_bytes":null"#) && text.contains(#""more_checkpoints":3"#))
        #expect(text.contains(#""kept_at_steady_state":null"#) && text.contains(#""more_checkpoints":null"#))
    }

    @Test func aCommitRecordAsEarlierVersionsWroteItStillReads() throws {
        let old = #"{"content":"\#(Self.b)","created_at":12.5,"id":"\#(Self.a)","run":"r","shard":{"count":2,"index":1},"step":3}"#
        let record = try StoredJSON.decoder().decode(CommitLog.Record.self, from: Data(old.utf8))
        let shard = try ShardSpec(index: 1, count: 2)
        #expect(record.createdAt == 12.5 && record.shard == shard && record.step == 3)
        let again = String(decoding: try StoredJSON.encoder().encode(record), as: UTF8.self)
        #expect(again == old)
    }
}
