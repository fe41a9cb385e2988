extension Manifest {
    /// The longest name of one path component that Linux file systems take (`NAME_MAX`, in bytes).
    static let longestName = 255

    /// Refuses a manifest that `get` could not restore whole and safely: a path or link target that would
    /// leave the destination (I-7), a path named twice, a file that is also another file's folder (`a`
    /// beside `a/b`), or a name longer than a file system takes.
    ///
    /// The one judge of a manifest's paths: `get` refuses what it refuses before writing anything, and
    /// `verify` reports the same manifests as damaged, so that a store `verify` calls sound restores.
    ///
    /// - Throws: `unsafePath` naming the checkpoint and the path.
    func checkRestorable(id: CheckpointID) throws {
        var links = [String: String]()
        for file in files { if let target = file.linkTarget { links[file.path] = target } }
        for (path, target) in links.sorted(by: { $0.key < $1.key }) where !RelativePath.linkStaysInside(path, target: target, links: links) {
            throw CKStoreError(.unsafePath, "checkpoint \(id.short): symbolic link \(path) points to \(target), which leaves the target folder once the checkpoint's other links are followed; refused")
        }
        var paths = Set<String>()
        for file in files {
            guard RelativePath.isSafe(file.path) else {
                throw CKStoreError(.unsafePath, "checkpoint \(id.short): manifest names the path \(file.path.debugDescription), which would leave the target folder; refused")
            }
            if let long = file.path.split(separator: "/").first(where: { $0.utf8.count > Self.longestName }) {
                throw CKStoreError(.unsafePath, "checkpoint \(id.short): manifest names the path \(file.path.debugDescription), whose name \(long.prefix(16))… is \(long.utf8.count) bytes long (a file system takes \(Self.longestName)); refused")
            }
            guard paths.insert(file.path).inserted else {
                throw CKStoreError(.unsafePath, "checkpoint \(id.short): manifest names the path \(file.path.debugDescription) twice; refused")
            }
            if let target = file.linkTarget {
                let folder = file.path.split(separator: "/").dropLast().joined(separator: "/")
                guard !target.hasPrefix("/"), RelativePath.normalize(folder.isEmpty ? target : folder + "/" + target) != nil else {
                    throw CKStoreError(.unsafePath, "checkpoint \(id.short): symbolic link \(file.path) points to \(target), outside the target folder; refused")
                }
            }
        }
        for path in paths.sorted() {
            var folder = Substring(path)
            while let slash = folder.lastIndex(of: "/") {
                folder = folder[..<slash]
                if paths.contains(String(folder)) {
                    throw CKStoreError(.unsafePath, "checkpoint \(id.short): manifest names \(String(folder).debugDescription) as a file and as the folder of \(path.debugDescription); refused")
                }
            }
        }
    }
}
