import Foundation

/// A fresh folder under the system's temporary folder, removed when `body` returns.
public func withTemporaryDirectory<T>(_ body: (String) async throws -> T) async throws -> T {
    let path = FileManager.default.temporaryDirectory.path + "/ckstore-test-" + UUID().uuidString.prefix(13).lowercased()
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try await body(path)
}

/// Small file helpers for tests.
public enum Files {
    public static func write(_ bytes: [UInt8], to path: String) throws {
        let folder = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    public static func read(_ path: String) throws -> [UInt8] {
        Array(try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    /// Every regular file and link under `root`, relative path → contents (a link's target for links).
    public static func tree(_ root: String) throws -> [String: [UInt8]] {
        var out = [String: [UInt8]]()
        let manager = FileManager.default
        guard let enumerator = manager.enumerator(atPath: root) else { return out }
        while let relative = enumerator.nextObject() as? String {
            let path = root + "/" + relative
            let attributes = try manager.attributesOfItem(atPath: path)
            switch attributes[.type] as? FileAttributeType {
            case .typeRegular?: out[relative] = try read(path)
            case .typeSymbolicLink?: out[relative] = Array(("link:" + (try manager.destinationOfSymbolicLink(atPath: path))).utf8)
            default: continue
            }
        }
        return out
    }

    /// The names of the files in a folder tree, recursively, sorted.
    public static func listing(_ root: String) -> [String] {
        (FileManager.default.enumerator(atPath: root)?.allObjects as? [String] ?? []).sorted()
    }
}
