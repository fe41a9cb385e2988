import Foundation
import Testing
import CKStoreTestSupport

/// The names a torch.save pickle gives its storages, read as data, as users meet them: `show`, `audit`'s
/// largest tensors and `get --tensor`, on the optimizer.pt real PyTorch wrote.
@Suite struct OptimizerNamesCLITests {
    static let fixture: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<2 { url.deleteLastPathComponent() }
        return url.path + "/Fixtures/real/hf-tiny/checkpoint-4"
    }()

    @Test func showAuditAndGetNameOptimizerStoragesByParameterAndKey() async throws {
        try await withTemporaryDirectory { root in
            let store = root + "/store"
            #expect(try CLI.run(["init", "--store", store]).status == 0)
            let put = try CLI.run(["put", Self.fixture, "--store", store, "--run", "tiny", "--step", "4"])
            #expect(put.status == 0, "\(put.stderr)")

            // show --json: the storages by name, dtype and shape, and the optimizer's group.
            let show = try CLI.run(["show", "tiny@4", "--store", store, "--json"])
            let report = try #require(try CLI.json(show.stdout) as? [String: Any])
            let files = try #require(report["files"] as? [[String: Any]])
            let optimizer = try #require(files.first { $0["path"] as? String == "optimizer.pt" })
            let tensors = try #require(optimizer["tensors"] as? [[String: Any]])
            let names = Set(tensors.compactMap { $0["name"] as? String })
            #expect(names.count == 21 && names.contains("state.0.exp_avg") && names.contains("state.6.exp_avg_sq") && names.contains("state.3.step"), "\(names)")
            #expect(!names.contains { $0.contains("/data/") })
            let embedding = try #require(tensors.first { $0["name"] as? String == "state.0.exp_avg_sq" })
            #expect(embedding["dtype"] as? String == "F32" && embedding["shape"] as? [Int] == [64, 16])
            let groups = try #require((optimizer["optimizer"] as? [String: Any])?["groups"] as? [[String: Any]])
            #expect(groups.count == 1)
            #expect(groups.first?["params"] as? [Int] == [0, 1, 2, 3, 4, 5, 6])
            #expect(groups.first?["lr"] as? Double == 0.0064 && groups.first?["weight_decay"] as? Double == 0.01)
            #expect(groups.first?["betas"] as? [Double] == [0.9, 0.999] && groups.first?["step"] as? Double == 4)

            // show --tensors prints them; the plain show prints the group.
            let text = try CLI.run(["show", "tiny@4", "--store", store, "--tensors"])
            #expect(text.stdout.contains("state.1.exp_avg") && text.stdout.contains("[8, 64]"), "\(text.stdout)")
            #expect(text.stdout.contains("optimizer.pt group 0: 7 params, lr 0.0064, betas (0.9, 0.999), eps 1e-08, weight_decay 0.01, step 4"), "\(text.stdout)")

            // audit's largest tensors name them too.
            let audit = try CLI.run(["audit", "--store", store, "--json"])
            let largest = try #require((try CLI.json(audit.stdout) as? [String: Any])?["largest_tensors"] as? [[String: Any]])
            let largestNames = largest.compactMap { $0["tensor"] as? String }
            #expect(largestNames.contains("state.0.exp_avg") && largestNames.contains("state.0.exp_avg_sq"), "\(largestNames)")

            // get --tensor with a pattern over those names: a safetensors file beside where optimizer.pt
            // would be, holding exactly the bytes torch.save wrote for those storages.
            let out = root + "/out"
            let get = try CLI.run(["get", "tiny@4", out, "--store", store, "--tensor", "state.0.exp_avg*"])
            #expect(get.status == 0, "\(get.stderr)")
            let written = try Files.read(out + "/optimizer.pt.safetensors")
            let headerLength = Int(written.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) })
            let header = try #require(try JSONSerialization.jsonObject(with: Data(written[8..<(8 + headerLength)])) as? [String: Any])
            #expect(Set(header.keys) == ["__metadata__", "state.0.exp_avg", "state.0.exp_avg_sq"])
            let original = try Files.read(Self.fixture + "/optimizer.pt")
            // The fixture's storage 1 is state.0.exp_avg (as torch.load reports): 64×16 float32, aligned.
            let entry = try #require(header["state.0.exp_avg"] as? [String: Any])
            let offsets = try #require(entry["data_offsets"] as? [Int])
            let stored = Array(written[(8 + headerLength + offsets[0])..<(8 + headerLength + offsets[1])])
            #expect(stored.count == 64 * 16 * 4)
            #expect(original.firstRange(of: stored) != nil, "the tensor's bytes are the storage's bytes in optimizer.pt")

            // A pattern that matches nothing is a clear error.
            let none = try CLI.run(["get", "tiny@4", root + "/none", "--store", store, "--tensor", "state.99.*"])
            #expect(none.status == 1 && none.stderr.contains("no tensor matching state.99.*"), "\(none.stderr)")
        }
    }
}
