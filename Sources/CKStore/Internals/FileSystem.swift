#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// Folder and path operations used by the store, routed through the syscall layer.
enum FileSystem {
    /// Creates `path` and any missing parents.
    static func createDirectory(_ path: String) throws {
        var current = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            current += "/" + component
            switch system_mkdir(current) {
            case .success: continue
            case .failure(let error) where error.rawValue == EEXIST:
                guard isDirectory(current) else {
                    throw CKStoreError(.alreadyExists, "\(current) exists and is not a folder")
                }
            case .failure(let error): throw CKStoreError.io("cannot create folder \(current)", error)
            }
        }
    }

    /// fsyncs a folder so that renames and creations inside it are durable.
    static func syncDirectory(_ path: String) throws {
        try SystemFile.openDirectory(path).sync()
    }

    /// Renames atomically.
    static func rename(_ from: String, _ to: String) throws {
        if case .failure(let error) = system_rename(from, to) {
            throw CKStoreError.io("cannot rename \(from) to \(to)", error)
        }
    }

    /// Gives the file at `from` the new name `to`, atomically; false (and nothing changed) when `to`
    /// exists already. Of two processes linking one name, exactly one gets true.
    static func linkExclusively(_ from: String, _ to: String) throws -> Bool {
        switch system_link(from, to) {
        case .success: return true
        case .failure(let error) where error.rawValue == EEXIST: return false
        case .failure(let error): throw CKStoreError.io("cannot link \(from) to \(to)", error)
        }
    }

    /// Whether `path` lies on a file system mounted read-only.
    static func isReadOnlyMount(_ path: String) -> Bool {
        var info = statvfs()
        guard statvfs(path, &info) == 0 || statvfs(URL(fileURLWithPath: path).deletingLastPathComponent().path, &info) == 0 else { return false }
        return info.f_flag & UInt(ST_RDONLY) != 0
    }

    /// Removes a file; a file that is already gone is not an error.
    static func removeFile(_ path: String) throws {
        switch system_unlink(path) {
        case .success: return
        case .failure(let error) where error.rawValue == ENOENT: return
        case .failure(let error): throw CKStoreError.io("cannot remove \(path)", error)
        }
    }

    static func exists(_ path: String) -> Bool {
        if case .success = system_lstat(path) { return true }
        return false
    }

    /// The size of a file in bytes; 0 when it does not exist.
    static func size(of path: String) -> Int64 {
        if case .success(let info) = system_stat(path) { return Int64(info.st_size) }
        return 0
    }

    static func isDirectory(_ path: String) -> Bool {
        if case .success(let info) = system_stat(path) { return info.st_mode & S_IFMT == S_IFDIR }
        return false
    }

    /// The names in a folder, sorted; `.` and `..` left out.
    static func contents(of path: String) throws -> [String] {
        do {
            return try FileManager.default.contentsOfDirectory(atPath: path).sorted()
        } catch {
            throw CKStoreError(.ioFailure, "cannot list folder \(path): \(error.localizedDescription)")
        }
    }

    /// Removes a folder tree (used for temporary restore folders only).
    static func removeTree(_ path: String) {
        try? FileManager.default.removeItem(atPath: path)
    }

    /// The absolute, symlink-free form of `path`, or nil when it does not resolve (a missing file, a loop).
    static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    /// The absolute, symlink-free form of `path`.
    static func canonicalPath(_ path: String) -> String {
        guard let resolved = realpath(path, nil) else {
            return URL(fileURLWithPath: path).standardizedFileURL.path
        }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
