#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Owns one open file descriptor and closes it in `deinit`.
///
/// Every read and write goes through the syscall layer and turns failures into ``CKStoreError``s that
/// name the file. Not `Sendable`: one owner at a time. Positioned reads and writes do not move a shared
/// offset, so `SharedFile` (below) may hand the descriptor to several tasks.
final class SystemFile {
    let descriptor: Int32
    let path: String

    private init(descriptor: Int32, path: String) {
        self.descriptor = descriptor
        self.path = path
    }

    deinit {
        _ = system_close(descriptor)
    }

    /// Opens an existing file for reading.
    static func openForReading(_ path: String) throws -> SystemFile {
        try open(path, O_RDONLY, action: "open")
    }

    /// Creates a new file for writing; fails if it exists.
    static func createNew(_ path: String, mode: mode_t = 0o644) throws -> SystemFile {
        try open(path, O_RDWR | O_CREAT | O_EXCL, mode: mode, action: "create")
    }

    /// Opens a file read-write, creating it if missing.
    static func openOrCreate(_ path: String, mode: mode_t = 0o644) throws -> SystemFile {
        try open(path, O_RDWR | O_CREAT, mode: mode, action: "open")
    }

    /// Opens a directory so that it can be fsynced.
    static func openDirectory(_ path: String) throws -> SystemFile {
        try open(path, O_RDONLY | O_DIRECTORY, action: "open folder")
    }

    private static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o644, action: String) throws -> SystemFile {
        switch system_open(path, flags, mode) {
        case .success(let fd): return SystemFile(descriptor: fd, path: path)
        case .failure(let error): throw CKStoreError.io("cannot \(action) \(path)", error)
        }
    }

    /// The file's current size in bytes.
    func size() throws -> Int64 { Int64(try status().st_size) }

    /// The file's `stat`.
    func status() throws -> stat {
        switch system_fstat(descriptor, path: path) {
        case .success(let info): return info
        case .failure(let error): throw CKStoreError.io("cannot stat \(path)", error)
        }
    }

    /// Reads exactly `buffer.count` bytes at `offset`; a file that ends first is reported as truncated.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws {
        var done = 0
        while done < buffer.count {
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[done...])
            switch system_pread(descriptor, slice, offset + Int64(done), path: path) {
            case .success(0):
                throw CKStoreError(
                    .damaged,
                    "\(path): file ends at \(offset + Int64(done)) bytes, \(buffer.count - done) bytes short of what was expected (read of \(buffer.count) bytes at offset \(offset))"
                )
            case .success(let count): done += count
            case .failure(let error): throw CKStoreError.io("cannot read \(path) at offset \(offset)", error)
            }
        }
    }

    /// Reads `count` bytes at `offset` into a new array.
    func read(count: Int, at offset: Int64) throws -> [UInt8] {
        // Uninitialized capacity: the read fills every byte or throws, so zero-filling first is wasted work.
        try [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            try read(into: UnsafeMutableRawBufferPointer(buffer), at: offset)
            initialized = count
        }
    }

    /// Writes all of `buffer` at `offset`, continuing after short writes.
    func write(_ buffer: UnsafeRawBufferPointer, at offset: Int64) throws {
        var done = 0
        while done < buffer.count {
            let slice = UnsafeRawBufferPointer(rebasing: buffer[done...])
            switch system_pwrite(descriptor, slice, offset + Int64(done), path: path) {
            case .success(let count): done += count
            case .failure(let error): throw CKStoreError.io("cannot write \(path) at offset \(offset + Int64(done))", error)
            }
        }
    }

    func write(_ bytes: [UInt8], at offset: Int64) throws {
        try bytes.withUnsafeBytes { (buffer) throws in try write(buffer, at: offset) }
    }

    /// Asks the kernel to start writing `count` bytes at `offset` to disk now, so that a later ``sync()``
    /// has less to wait for.
    func startWriteback(at offset: Int64, count: Int64) {
        system_start_writeback(descriptor, offset, count)
    }

    /// Flushes the file's data and metadata to stable storage.
    func sync() throws {
        if case .failure(let error) = system_fsync(descriptor, path: path) {
            throw CKStoreError.io("cannot fsync \(path)", error)
        }
    }
}

/// A read-only file shared by concurrent positioned reads.
///
/// `pread` does not touch the descriptor's offset, so reads from several tasks at once are safe; the
/// descriptor itself is immutable after init and closed when the last reference goes.
final class SharedFile: @unchecked Sendable {
    // Immutable after init; only positioned reads are issued, so no lock is needed.
    private let handle: SystemFile
    var path: String { handle.path }

    init(path: String) throws {
        handle = try SystemFile.openForReading(path)
    }

    func size() throws -> Int64 { try handle.size() }
    func status() throws -> stat { try handle.status() }

    func read(count: Int, at offset: Int64) throws -> [UInt8] {
        try handle.read(count: count, at: offset)
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws {
        try handle.read(into: buffer, at: offset)
    }
}

/// A file being written by concurrent positioned writes (a restore's temporary file).
final class SharedOutputFile: @unchecked Sendable {
    // Immutable after init; positioned writes to disjoint ranges need no lock.
    private let handle: SystemFile
    var path: String { handle.path }

    init(creating path: String, mode: mode_t) throws {
        handle = try SystemFile.createNew(path, mode: mode)
    }

    func write(_ buffer: UnsafeRawBufferPointer, at offset: Int64) throws {
        try handle.write(buffer, at: offset)
    }

    /// Allocates the file's first `length` bytes on disk before they are written: a full disk fails here,
    /// at once, and the writes skip delayed allocation (a third of the kernel's work per written page).
    func allocate(_ length: Int64) throws {
        guard length > 0 else { return }
        if case .failure(let error) = system_fallocate(handle.descriptor, length, path: handle.path) {
            throw CKStoreError.io("cannot allocate \(length) bytes for \(handle.path)", error)
        }
    }

}

extension CKStoreError {
    /// An I/O failure; ENOSPC becomes ``Code/noSpace`` with a message that says the disk is full.
    static func io(_ what: String, _ error: Errno) -> CKStoreError {
        if error.rawValue == ENOSPC {
            return CKStoreError(.noSpace, "\(what): no space left on device; free some space and try again", cause: error)
        }
        if error.rawValue == ENOENT {
            return CKStoreError(.notFound, "\(what): no such file or folder", cause: error)
        }
        return CKStoreError(.ioFailure, "\(what): \(error)", cause: error)
    }
}
