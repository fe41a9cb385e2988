@testable import CKStore
import CKStoreTestSupport
import Foundation
import Testing

/// `put(layout:)`: a checkpoint's files as ranges of one source file (what the Python package's saves
/// hand over without writing the files) are the checkpoint a put of the folder holding them makes.
@Suite struct PutLayoutTests {
    static func bytes(_ count: Int, seed: UInt64) -> [UInt8] {
        var random = SeededRandom(seed: seed)
        return (0..<count).map { _ in UInt8(truncatingIfNeeded: random.next() % 7) }
    }

    @Test func aLayoutPutsTheCheckpointOfTheFolderItDescribes() async throws {
        try await withTemporaryDirectory { root in
            // The source: two tensors' bytes, then the files' other bytes after them, as a snapshot lays them out.
            let weights = Self.bytes(3 << 20, seed: 1), moments = Self.bytes(1 << 20, seed: 2)
            let header = Array("header".utf8), pickle = Array("pickle and zip records".utf8)
            let source = weights + moments + header + pickle
            try Files.write(source, to: root + "/source")
            let w = Int64(weights.count), m = Int64(moments.count), h = Int64(header.count), p = Int64(pickle.count)
            let layout = PutLayout(source: root + "/source", files: [
                // Listed out of the folder's order, with empty pieces: neither changes the checkpoint.
                .init(path: "z.bin", pieces: [[w, m]]),
                .init(path: "model.safetensors", pieces: [[w + m, h], [0, w], [7, 0]]),
                .init(path: "sub/optimizer.pt", mode: 0o600, pieces: [[w + m + h, p], [w, m], [0, 1 << 20]]),
                .init(path: "sub.pt", pieces: [[w + m + h, 6]]),
            ])
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let saved = try await store.put(layout: layout, options: PutOptions(run: "layout", step: 3))
            #expect(!saved.alreadyStored && saved.logicalBytes == (h + w) + (p + m + (1 << 20)) + m + 6)

            // The folder those files make, put the same way: the same checkpoint, nothing stored again.
            let folder = root + "/folder"
            try Files.write(header + weights, to: folder + "/model.safetensors")
            try Files.write(pickle + moments + Array(weights[0..<(1 << 20)]), to: folder + "/sub/optimizer.pt")
            try Files.write(Array(pickle[0..<6]), to: folder + "/sub.pt")
            try Files.write(moments, to: folder + "/z.bin")
            for name in ["model.safetensors", "sub.pt", "z.bin"] { chmod(folder + "/" + name, 0o644) }
            chmod(folder + "/sub/optimizer.pt", 0o600)
            let put = try await store.put(directory: folder, options: PutOptions(run: "layout", step: 3))
            #expect(put.alreadyStored && put.id == saved.id && put.storedBytesAdded == 0)

            _ = try await store.restore(saved.id, to: root + "/out")
            #expect(try Files.tree(root + "/out") == (try Files.tree(folder)))
        }
    }

    @Test(arguments: [
        (#"{"source": "SOURCE", "files": []}"#, "names no file"),
        (#"{"source": "SOURCE", "files": [{"path": "a", "pieces": [[0, 17]]}]}"#, "inside"),
        (#"{"source": "SOURCE", "files": [{"path": "a", "pieces": [[-1, 2]]}]}"#, "inside"),
        (#"{"source": "SOURCE", "files": [{"path": "a", "pieces": [[9223372036854775807, 2]]}]}"#, "inside"),
        (#"{"source": "SOURCE", "files": [{"path": "a", "pieces": [[0]]}]}"#, "inside"),
        (#"{"source": "SOURCE", "files": [{"path": "a", "pieces": []}, {"path": "a", "pieces": []}]}"#, "twice"),
        (#"{"source": "SOURCE", "files": [{"path": "../a", "pieces": []}]}"#, "relative path"),
        (#"{"source": "SOURCE", "files": [{"path": "/etc/a", "pieces": []}]}"#, "relative path"),
        (#"{"source": "SOURCE", "files": [{"path": "a//b", "pieces": []}]}"#, "relative path"),
        (#"{"source": "SOURCE", "files": [{"path": "a/./b", "pieces": []}]}"#, "relative path"),
        (#"{"source": "SOURCE", "files": [{"path": "a", "mode": 33188, "pieces": []}]}"#, "permission bits"),
        (#"{"source": "SOURCE", "files": [{"path": "a"}]}"#, "not a JSON object"),
        (#"["SOURCE"]"#, "not a JSON object"),
    ])
    func aBadLayoutIsRefusedAndStoresNothing(json: String, says: String) async throws {
        try await withTemporaryDirectory { root in
            try Files.write(Array(repeating: 1, count: 16), to: root + "/source")
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let error = await #expect(throws: CKStoreError.self) {
                let layout = try PutLayout.decode(Array(json.replacingOccurrences(of: "SOURCE", with: root + "/source").utf8))
                _ = try await store.put(layout: layout, options: PutOptions(run: "bad", step: 1))
            }
            #expect(error?.code == .invalidArgument)
            #expect(error?.message.contains(says) == true, "\(error?.message ?? "")")
            #expect(try store.list().isEmpty)
        }
    }

    @Test func aMissingSourceIsNamed() async throws {
        try await withTemporaryDirectory { root in
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            let layout = PutLayout(source: root + "/gone", files: [.init(path: "a", pieces: [])])
            let error = await #expect(throws: CKStoreError.self) {
                _ = try await store.put(layout: layout, options: PutOptions(run: "gone", step: 1))
            }
            #expect(error?.message.contains(root + "/gone") == true)
        }
    }
}
