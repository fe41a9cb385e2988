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

    init(_ path: String, force: Bool) {
        self.path = path
        self.force = force
    }

    /// Refuses a manifest whose paths or link targets would leave the destination (I-7).
    static func checkPaths(of manifest: Manifest, id: CheckpointID) throws {
        for file in manifest.files {
            guard RelativePath.isSafe(file.path) else {
                throw CKStoreError(.unsafePath, "checkpoint \(id.short): manifest names the path \(file.path.debugDescription), which would leave the target folder; refused")
            }
            if let target = file.linkTarget {
                let folder = file.path.split(separator: "/").dropLast().joined(separator: "/")
                guard !target.hasPrefix("/"), RelativePath.normalize(folder.isEmpty ? target : folder + "/" + target) != nil else {
                    throw CKStoreError(.unsafePath, "checkpoint \(id.short): symbolic link \(file.path) points to \(target), outside the target folder; refused")
                }
            }
        }
    }

    /// Writes every output and link of `plan` through `restorer` into a staging folder, then moves them
    /// into place; a failure leaves the destination as it was (and removes it if this created it).
    func write(_ plan: RestorePlan, with restorer: Restorer) async throws -> Int64 {
        let created = try prepare()
        let staging = path + "/.ckstore-restore-" + PackID.random().hex.prefix(12)
        var succeeded = false
        defer {
            FileSystem.removeTree(staging)
            if !succeeded && created { FileSystem.removeTree(path) }
        }
        try FileSystem.createDirectory(staging)
        let bytes = try await restorer.fill(plan) { output in
            let file = staging + "/" + output.path
            try FileSystem.createDirectory(Self.parentFolder(of: file))
            return try SharedOutputFile(creating: file, mode: 0o600)
        }
        for output in plan.outputs {
            if case .failure(let error) = system_chmod(staging + "/" + output.path, mode_t(output.mode)) {
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
        for name in plan.paths {
            try moveIntoPlace(name, from: staging, to: path)
        }
        succeeded = true
        return bytes
    }

    /// Creates the destination if missing (returns true), or checks that it is empty unless `force`.
    private func prepare() throws -> Bool {
        if FileSystem.exists(path) {
            guard FileSystem.isDirectory(path) else {
                throw CKStoreError(.alreadyExists, "\(path) exists and is not a folder")
            }
            let contents = try FileSystem.contents(of: path).filter { !$0.hasPrefix(".ckstore-restore-") }
            guard contents.isEmpty || force else {
                throw CKStoreError(.alreadyExists, "\(path) is not empty; restore into an empty folder or pass --force to replace files in it")
            }
            return false
        }
        try FileSystem.createDirectory(path)
        return true
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

    private static func parentFolder(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return String(path[..<slash])
    }
}
