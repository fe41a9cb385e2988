#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Lists the files of a checkpoint folder in a stable order, deciding what to do with symbolic links.
struct DirectoryScanner {
    /// One entry to store.
    struct Entry: Sendable {
        enum Kind: Sendable, Equatable {
            case regular
            /// A link stored as a link: its target is relative and stays inside the folder.
            case symlink(target: String)
        }

        /// Path relative to the folder, `/`-separated.
        var relativePath: String
        /// Path to read the bytes from (the link's target when a link is followed).
        var sourcePath: String
        var kind: Kind
        var mode: UInt32
        var size: Int64
    }

    let root: String
    /// Store links that point outside the folder as the files they point to, instead of refusing them.
    var followExternalLinks = false
    /// A path to leave out (the store itself, when it lives inside the folder).
    var excluded: String?

    func scan() throws -> [Entry] {
        guard FileSystem.isDirectory(root) else {
            if FileSystem.exists(root) {
                throw CKStoreError(.invalidArgument, "\(root) is not a folder; put takes a checkpoint folder")
            }
            throw CKStoreError(.notFound, "\(root): no such folder")
        }
        var entries = [Entry]()
        try walk(relative: "", into: &entries)
        // A link kept as a link must stay inside the folder when every link on its way is followed, not
        // only lexically: `k -> ..` inside a chain of `b/k/b/k/…/../..` climbs out (I-7).
        var links = [String: String]()
        for entry in entries { if case .symlink(let target) = entry.kind { links[entry.relativePath] = target } }
        for (index, entry) in entries.enumerated() {
            guard case .symlink(let target) = entry.kind, !RelativePath.linkStaysInside(entry.relativePath, target: target, links: links) else { continue }
            entries[index] = try external(relativePath: entry.relativePath, absolute: entry.sourcePath, target: target)
        }
        return entries
    }

    private func walk(relative: String, into entries: inout [Entry]) throws {
        let folder = relative.isEmpty ? root : root + "/" + relative
        for name in try FileSystem.contents(of: folder) {
            let relativePath = relative.isEmpty ? name : relative + "/" + name
            let absolute = root + "/" + relativePath
            if let excluded, FileSystem.canonicalPath(absolute) == excluded { continue }
            let info: stat
            switch system_lstat(absolute) {
            case .success(let value): info = value
            case .failure(let error) where error.rawValue == ENOENT && name.contains("\u{FFFD}"):
                // The listing replaced bytes that are not UTF-8, so the name no longer finds the file.
                throw CKStoreError(.invalidArgument, "a file name in \(folder) is not valid UTF-8 (\(name.debugDescription)); ckstore stores UTF-8 names only: rename the file")
            case .failure(let error): throw CKStoreError.io("cannot read \(absolute)", error)
            }
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                try walk(relative: relativePath, into: &entries)
            case S_IFREG:
                entries.append(Entry(relativePath: relativePath, sourcePath: absolute, kind: .regular, mode: UInt32(info.st_mode & 0o7777), size: Int64(info.st_size)))
            case S_IFLNK:
                entries.append(try link(relativePath: relativePath, absolute: absolute))
            default:
                throw CKStoreError(.invalidArgument, "\(absolute) is not a regular file, folder or symbolic link (a device, socket or FIFO); ckstore does not store those")
            }
        }
    }

    private func link(relativePath: String, absolute: String) throws -> Entry {
        let target: String
        switch system_readlink(absolute) {
        case .success(let value): target = value
        case .failure(let error): throw CKStoreError.io("cannot read symbolic link \(absolute)", error)
        }
        let linkFolder = relativePath.split(separator: "/").dropLast().joined(separator: "/")
        if !target.hasPrefix("/"), RelativePath.normalize(linkFolder.isEmpty ? target : linkFolder + "/" + target) != nil {
            // Relative and lexically inside the folder: kept as a link, unless following the other links
            // of the folder takes it out (checked once every link is known).
            return Entry(relativePath: relativePath, sourcePath: absolute, kind: .symlink(target: target), mode: 0o777, size: 0)
        }
        return try external(relativePath: relativePath, absolute: absolute, target: target)
    }

    /// A link whose target is absolute or leaves the folder: the file it points to when that is inside the
    /// folder or `--follow-symlinks` says so, else refused.
    private func external(relativePath: String, absolute: String, target: String) throws -> Entry {
        guard let resolved = FileSystem.realPath(absolute) else {
            throw CKStoreError(.unsafePath, "\(absolute) is a symbolic link to \(target), which does not resolve to a file (missing, a loop, or outside \(root)); refused")
        }
        let canonicalRoot = FileSystem.canonicalPath(root)
        let inside = resolved.hasPrefix(canonicalRoot + "/")
        guard inside || followExternalLinks else {
            throw CKStoreError(
                .unsafePath,
                "\(absolute) is a symbolic link to \(target), outside \(root); refused (use --follow-symlinks to store the file it points to)"
            )
        }
        guard FileSystem.exists(resolved), !FileSystem.isDirectory(resolved) else {
            throw CKStoreError(.unsafePath, "\(absolute) is a symbolic link to \(target), which is missing or a folder; ckstore stores it only when it points to a file")
        }
        let info: stat
        switch system_stat(resolved) {
        case .success(let value): info = value
        case .failure(let error): throw CKStoreError.io("cannot read \(resolved), the target of \(absolute)", error)
        }
        return Entry(relativePath: relativePath, sourcePath: resolved, kind: .regular, mode: UInt32(info.st_mode & 0o7777), size: Int64(info.st_size))
    }
}
