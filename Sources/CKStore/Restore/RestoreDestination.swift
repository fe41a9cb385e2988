#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The folder a restore writes into: checked paths, a staging folder inside it, files renamed into place
/// only once every one of them verified.
struct RestoreDestination {
    let path: String
    let force: Bool
    /// The mode bits applied to restored files: 0o777, or 0o7777 when special bits are kept.
    let modeMask: UInt32

    init(_ path: String, force: Bool, keepSpecialModeBits: Bool = false) {
        var trimmed = Substring(path)
        while trimmed.count > 1 && trimmed.hasSuffix("/") { trimmed = trimmed.dropLast() }
        self.path = String(trimmed)
        self.force = force
        self.modeMask = keepSpecialModeBits ? 0o7777 : 0o777
    }

    /// Writes every output and link of `plan` through `restorer` into a staging folder, then moves them
    /// into place. A destination that does not exist yet is staged whole beside itself and renamed into
    /// place at once: whatever happens, it is then either absent or complete. Into an existing folder
    /// (empty, or any with `force`) files are staged inside it and renamed one by one: it may be the
    /// working directory, or a mount point, which cannot be replaced.
    func write(_ plan: RestorePlan, with restorer: Restorer) async throws -> Int64 {
        let whole = try prepare()
        let parent = Self.parentFolder(of: path)
        // Staging folders of restores that were killed (their process is gone) are cleaned up here.
        Self.removeStaleStaging(in: whole ? parent : path)
        let staging = (whole ? parent : path) + "/" + Self.stagingPrefix + String(getpid()) + "-" + PackID.random().hex.prefix(12)
        defer { FileSystem.removeTree(staging) }
        try FileSystem.createDirectory(staging)
        let bytes = try await restorer.fill(plan) { output in
            let file = staging + "/" + output.path
            try FileSystem.createDirectory(Self.parentFolder(of: file))
            return try SharedOutputFile(creating: file, mode: 0o600)
        }
        for output in plan.outputs {
            if case .failure(let error) = system_chmod(staging + "/" + output.path, mode_t(output.mode & modeMask)) {
                throw CKStoreError.io("cannot set the mode of \(output.path)", error)
            }
        }
        for link in plan.links {
            let file = staging + "/" + link.path
            try FileSystem.createDirectory(Self.parentFolder(of: file))
            if case .failure(let error) = system_symlink(link.linkTarget ?? "", file) {
                throw CKStoreError.io("cannot create symbolic link \(link.path)", error)
            }
        }
        // Everything verified: move into place.
        if whole {
            try FileSystem.rename(staging, path)
            try FileSystem.syncDirectory(parent)
        } else {
            for name in plan.paths {
                try moveIntoPlace(name, from: staging, to: path)
            }
        }
        return bytes
    }

    /// Staging folders are named `.ckstore-restore-<pid>-<random>`.
    static let stagingPrefix = ".ckstore-restore-"

    /// Removes staging folders in `folder` whose process is no longer running.
    static func removeStaleStaging(in folder: String) {
        guard let names = try? FileSystem.contents(of: folder) else { return }
        for name in names where name.hasPrefix(stagingPrefix) {
            let pid = name.dropFirst(stagingPrefix.count).prefix { $0 != "-" }
            if let pid = Int32(pid), pid == getpid() || kill(pid, 0) == 0 || errno != ESRCH { continue }
            FileSystem.removeTree(folder + "/" + name)
        }
    }

    /// Checks the destination: a missing one is restored whole (returns true); an existing folder must
    /// be empty unless `force` (returns false).
    private func prepare() throws -> Bool {
        guard FileSystem.exists(path) else {
            try FileSystem.createDirectory(Self.parentFolder(of: path))
            return true
        }
        try checkUsable()
        Self.removeStaleStaging(in: path)
        return false
    }

    /// Throws what a restore would refuse this destination for, changing nothing: a pull into a folder
    /// checks it before it downloads anything.
    func checkUsable() throws {
        guard FileSystem.exists(path) else { return }
        guard FileSystem.isDirectory(path) else {
            throw CKStoreError(.alreadyExists, "\(path) exists and is not a folder")
        }
        let contents = try FileSystem.contents(of: path).filter { !$0.hasPrefix(Self.stagingPrefix) }
        guard contents.isEmpty || force else {
            throw CKStoreError(.alreadyExists, "\(path) is not empty; restore into an empty folder or pass --force to replace files in it")
        }
    }

    /// Renames `staging/name` to `destination/name`, creating real folders on the way and refusing to
    /// pass through a symbolic link that a `--force` target already had.
    private func moveIntoPlace(_ name: String, from staging: String, to destination: String) throws {
        var folder = destination
        for component in name.split(separator: "/").dropLast() {
            folder += "/" + component
            switch system_lstat(folder) {
            case .success(let info):
                guard info.st_mode & S_IFMT == S_IFDIR else {
                    throw CKStoreError(.unsafePath, "\(folder) exists and is not a folder (a file or symbolic link); cannot restore \(name) there")
                }
            case .failure:
                try FileSystem.createDirectory(folder)
            }
        }
        let target = destination + "/" + name
        if case .success(let info) = system_lstat(target), info.st_mode & S_IFMT == S_IFDIR {
            throw CKStoreError(.alreadyExists, "\(target) is a folder; cannot replace it with a file")
        }
        try FileSystem.rename(staging + "/" + name, target)
    }

    static func parentFolder(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }
}
