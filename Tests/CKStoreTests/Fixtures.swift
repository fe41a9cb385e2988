import CKStoreTestSupport
import Foundation

/// `Tests/Fixtures/real`: small files written by real PyTorch and safetensors (its README says which
/// versions wrote what), inside the repository so that a clone alone passes.
enum RealFixtures {
    static let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<2 { url.deleteLastPathComponent() }
        return url.path + "/Fixtures/real"
    }()

    static func path(_ relative: String) -> String { root + "/" + relative }
}

/// The repository root, from this file.
enum Repository {
    static let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()
}

extension SafetensorsBuilder {
    /// A file with every dtype the issue names: f32, f16, bf16, i64, a 0-dim scalar, an empty tensor, metadata.
    static func mixedDtypes() -> SafetensorsBuilder {
        var random = SeededRandom(seed: 7)
        var builder = SafetensorsBuilder(metadata: ["format": "pt", "note": "mixed"])
        builder.add("weight.f32", dtype: "F32", shape: [3, 5], data: random.bytes(count: 60))
        builder.add("weight.f16", dtype: "F16", shape: [7], data: random.bytes(count: 14))
        builder.add("weight.bf16", dtype: "BF16", shape: [2, 3, 4], data: random.bytes(count: 48))
        builder.add("ids.i64", dtype: "I64", shape: [2, 3], data: random.bytes(count: 48))
        builder.add("scalar", dtype: "F32", shape: [], data: random.bytes(count: 4))
        builder.add("empty", dtype: "F32", shape: [0, 4], data: [])
        builder.add("big", dtype: "F32", shape: [700_000], data: random.floatBytes(count: 700_000))
        return builder
    }
}
