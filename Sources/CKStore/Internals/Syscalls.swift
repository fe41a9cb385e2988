// Every POSIX call ckstore makes goes through this file, as in swift-system's Internals/Syscalls.swift:
// one place converts `-1/errno` (retrying on EINTR) and one place lets tests inject faults.

#if os(Linux)
import CLinux
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// The system calls that fault injection can target: one per `system_*` wrapper, named as it is.
///
/// A wrapper never names its operation itself: ``valueOrErrno(_:function:_:)`` takes it from the
/// wrapper's own name (`#function`), so a call cannot be recorded under another call's name.
package enum SyscallOperation: String, Sendable, CaseIterable {
    case open, close, pread, pwrite, fsync, fallocate, rename, link, unlink, mkdir, flock, fstat, stat, lstat, readlink, chmod, symlink, mmap
    /// The `COMMIT` of a catalogue write transaction (``system_commitTransaction(_:)``): SQLite does its
    /// own I/O, so its durable commit is the one point of it that faults target.
    case commitTransaction

    /// The operation of the wrapper `function` (`system_chmod(_:_:)` → `chmod`), as `#function` names it.
    init?(wrapper function: StaticString) {
        let name = function.description
        guard name.hasPrefix("system_") else { return nil }
        self.init(rawValue: String(name.dropFirst("system_".count).prefix { $0 != "(" }))
    }
}

/// A fault injection seam for tests: rules decide, per call, whether to fail it with an errno (or to make
/// a write short) instead of calling the system.
///
/// Each rule is scoped to a path prefix (a test's temporary folder), so tests that run in parallel inject
/// faults only into their own files.
package final class FaultInjector: Sendable {
    /// What an injected fault does to the call.
    package enum Fault: Sendable {
        /// Fail the call with this errno.
        case fail(Int32)
        /// For `pwrite`: write only this many bytes (a short write).
        case shortWrite(Int)
    }

    /// A rule sees the operation, the path, and the number of earlier calls of that operation on paths in
    /// its scope since it was installed.
    package typealias Rule = @Sendable (_ operation: SyscallOperation, _ path: String, _ callIndex: Int) -> Fault?

    private struct Installed: Sendable {
        var scope: String
        var rule: Rule
        var counts: [SyscallOperation: Int] = [:]
    }

    // Installed rules by token, protected by this mutex.
    private let rules = Mutex<[Int: Installed]>([:])
    private let nextToken = Mutex(0)

    package static let shared = FaultInjector()

    /// Installs `rule` for calls on paths under `scope` while `body` runs.
    package func with<T>(scope: String, _ rule: @escaping Rule, _ body: () async throws -> T) async rethrows -> T {
        let token = nextToken.withLock { value in
            value += 1
            return value
        }
        rules.withLock { $0[token] = Installed(scope: scope, rule: rule) }
        defer { _ = rules.withLock { $0.removeValue(forKey: token) } }
        return try await body()
    }

    /// The fault to inject into the call that the wrapper `function` makes on `path`, if a rule says so.
    func fault(_ function: StaticString, _ path: String?) -> Fault? {
        guard let path else { return nil }
        return rules.withLock { rules in
            // Most calls run with no rule installed: the wrapper's name is read only when one is.
            guard !rules.isEmpty, let operation = SyscallOperation(wrapper: function) else { return nil }
            for (token, var installed) in rules where path.hasPrefix(installed.scope) {
                let index = installed.counts[operation] ?? 0
                installed.counts[operation] = index + 1
                rules[token] = installed
                if let fault = installed.rule(operation, path, index) { return fault }
            }
            return nil
        }
    }
}

/// Runs `body` until it does not fail with EINTR; converts -1 into a thrown ``Errno``.
@inline(__always)
func valueOrErrno<I: FixedWidthInteger>(
    _ path: String?,
    retryOnInterrupt: Bool = true,
    function: StaticString = #function,
    _ body: () -> I
) -> Result<I, Errno> {
    if case .fail(let code) = FaultInjector.shared.fault(function, path) {
        return .failure(Errno(rawValue: code))
    }
    while true {
        let result = body()
        if result == -1 {
            let code = errno
            if retryOnInterrupt && code == EINTR { continue }
            return .failure(Errno(rawValue: code))
        }
        return .success(result)
    }
}

/// The fault, if any, to inject into the commit of a write transaction on the catalogue at `path`.
func system_commitTransaction(_ path: String) -> Errno? {
    if case .fail(let code) = FaultInjector.shared.fault(#function, path) { return Errno(rawValue: code) }
    return nil
}

func system_open(_ path: String, _ flags: Int32, _ mode: mode_t = 0o644) -> Result<Int32, Errno> {
    valueOrErrno(path) { open(path, flags | O_CLOEXEC, mode) }
}

func system_close(_ fd: Int32) -> Result<Int32, Errno> {
    // close must not be retried on EINTR: the descriptor is gone either way on Linux.
    valueOrErrno(nil, retryOnInterrupt: false) { close(fd) }
}

func system_pread(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, _ offset: Int64, path: String?) -> Result<Int, Errno> {
    valueOrErrno(path) { pread(fd, buffer.baseAddress, buffer.count, off_t(offset)) }
}

func system_pwrite(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, _ offset: Int64, path: String?) -> Result<Int, Errno> {
    switch FaultInjector.shared.fault(#function, path) {
    case .fail(let code):
        return .failure(Errno(rawValue: code))
    case .shortWrite(let count):
        let limited = UnsafeRawBufferPointer(rebasing: buffer.prefix(max(0, min(count, buffer.count))))
        return valueOrErrnoNoInjection { pwrite(fd, limited.baseAddress, limited.count, off_t(offset)) }
    case nil:
        return valueOrErrnoNoInjection { pwrite(fd, buffer.baseAddress, buffer.count, off_t(offset)) }
    }
}

private func valueOrErrnoNoInjection<I: FixedWidthInteger>(_ body: () -> I) -> Result<I, Errno> {
    while true {
        let result = body()
        if result == -1 {
            if errno == EINTR { continue }
            return .failure(Errno(rawValue: errno))
        }
        return .success(result)
    }
}

func system_fsync(_ fd: Int32, path: String?) -> Result<Int32, Errno> {
    valueOrErrno(path) { fsync(fd) }
}

/// Starts writeback of a byte range without waiting for it (Linux `sync_file_range`, `SYNC_FILE_RANGE_WRITE`);
/// a no-op elsewhere. A hint, not a durability point: the later `fsync` still makes the data durable.
func system_start_writeback(_ fd: Int32, _ offset: Int64, _ count: Int64) {
    #if os(Linux)
    _ = ckstore_start_writeback(fd, offset, count)
    #endif
}

/// Allocates the first `length` bytes of a file's blocks (Linux `fallocate`), so that writing them later
/// cannot run out of space and skips the file system's per-page delayed allocation. Succeeds without
/// doing anything where the file system or the platform cannot.
func system_fallocate(_ fd: Int32, _ length: Int64, path: String?) -> Result<Int32, Errno> {
    #if os(Linux)
    let result = valueOrErrno(path) { ckstore_allocate(fd, length) }
    if case .failure(let error) = result, error.rawValue == EOPNOTSUPP || error.rawValue == ENOSYS {
        return .success(0)
    }
    return result
    #else
    return .success(0)
    #endif
}

func system_rename(_ from: String, _ to: String) -> Result<Int32, Errno> {
    valueOrErrno(to) { rename(from, to) }
}

/// A new name for an existing file; fails with EEXIST when `to` exists, so that of two processes
/// linking the same name exactly one succeeds.
func system_link(_ from: String, _ to: String) -> Result<Int32, Errno> {
    valueOrErrno(to) { link(from, to) }
}

func system_unlink(_ path: String) -> Result<Int32, Errno> {
    valueOrErrno(path) { unlink(path) }
}

func system_mkdir(_ path: String, _ mode: mode_t = 0o755) -> Result<Int32, Errno> {
    valueOrErrno(path) { mkdir(path, mode) }
}

func system_flock(_ fd: Int32, _ operation: Int32, path: String?) -> Result<Int32, Errno> {
    valueOrErrno(path) { flock(fd, operation) }
}

func system_fstat(_ fd: Int32, path: String?) -> Result<stat, Errno> {
    var info = stat()
    return valueOrErrno(path) { fstat(fd, &info) }.map { _ in info }
}

func system_stat(_ path: String) -> Result<stat, Errno> {
    var info = stat()
    return valueOrErrno(path) { stat(path, &info) }.map { _ in info }
}

func system_lstat(_ path: String) -> Result<stat, Errno> {
    var info = stat()
    return valueOrErrno(path) { lstat(path, &info) }.map { _ in info }
}

func system_readlink(_ path: String) -> Result<String, Errno> {
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    let count = buffer.withUnsafeMutableBufferPointer { pointer -> Result<Int, Errno> in
        guard let base = pointer.baseAddress else { return .failure(Errno(rawValue: EINVAL)) }
        return valueOrErrno(path) { readlink(path, base, pointer.count - 1) }
    }
    return count.map { length in
        String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

func system_chmod(_ path: String, _ mode: mode_t) -> Result<Int32, Errno> {
    valueOrErrno(path) { chmod(path, mode) }
}

func system_symlink(_ target: String, _ path: String) -> Result<Int32, Errno> {
    valueOrErrno(path) { symlink(target, path) }
}

func system_mmap(_ fd: Int32, _ length: Int, path: String) -> Result<UnsafeRawPointer, Errno> {
    if case .fail(let code) = FaultInjector.shared.fault(#function, path) { return .failure(Errno(rawValue: code)) }
    guard let pointer = mmap(nil, length, PROT_READ, MAP_SHARED, fd, 0), pointer != MAP_FAILED else {
        return .failure(Errno(rawValue: errno))
    }
    return .success(UnsafeRawPointer(pointer))
}

func system_munmap(_ pointer: UnsafeRawPointer, _ length: Int) {
    _ = munmap(UnsafeMutableRawPointer(mutating: pointer), length)
}

/// Prepares a range of a read-only mapping for reading: populates its page tables in one call
/// (MADV_POPULATE_READ, Linux 5.14+), which is much cheaper than taking one page fault per 4 KiB; on older
/// kernels falls back to starting readahead. Advisory: a failure only means slower reads.
func system_madvise_populate(_ pointer: UnsafeRawPointer, _ length: Int) {
    #if os(Linux)
    if advisePages(pointer, length, CKSTORE_MADV_POPULATE_READ) == 0 { return }
    #endif
    _ = advisePages(pointer, length, MADV_WILLNEED)
}

/// Keeps freed heap memory for reuse: buffers up to `mmapThreshold` come from the heap instead of fresh
/// `mmap`s, and the heap is not trimmed back to the system below `trimThreshold`. No-op outside glibc.
func system_keep_freed_memory(mmapThreshold: Int32, trimThreshold: Int32) {
    #if os(Linux)
    ckstore_keep_freed_memory(mmapThreshold, trimThreshold)
    #endif
}

/// Starts reading a mapped range in the background (MADV_WILLNEED); returns at once.
func system_madvise_willneed(_ pointer: UnsafeRawPointer, _ length: Int) {
    _ = advisePages(pointer, length, MADV_WILLNEED)
}

/// Drops the page-table entries of a range of a read-only file mapping once it has been used, so the
/// process's resident size does not grow with the packs it reads (the pages stay in the page cache).
func system_madvise_dontneed(_ pointer: UnsafeRawPointer, _ length: Int) {
    _ = advisePages(pointer, length, MADV_DONTNEED)
}

/// `madvise` over every page that `length` bytes at `pointer` touch (madvise wants a page-aligned start).
private func advisePages(_ pointer: UnsafeRawPointer, _ length: Int, _ advice: Int32) -> Int32 {
    let page = Int(sysconf(Int32(_SC_PAGESIZE)))
    let start = Int(bitPattern: pointer) & ~(page - 1)
    let end = Int(bitPattern: pointer) + length
    return madvise(UnsafeMutableRawPointer(bitPattern: start), end - start, advice)
}

/// Prepares fresh anonymous memory that is about to be filled: asks for transparent huge pages and
/// populates the page tables in one call (MADV_POPULATE_WRITE, Linux 5.14+) instead of one fault per
/// 4 KiB, which in a virtual machine costs more than the copy that follows. Advisory: a failure only
/// means slower writes. Whole pages inside the range only.
func system_madvise_prepare_write(_ pointer: UnsafeMutableRawPointer, _ length: Int) {
    let page = Int(sysconf(Int32(_SC_PAGESIZE)))
    let start = (Int(bitPattern: pointer) + page - 1) & ~(page - 1)
    let end = (Int(bitPattern: pointer) + length) & ~(page - 1)
    guard end > start, let base = UnsafeMutableRawPointer(bitPattern: start) else { return }
    #if os(Linux)
    _ = madvise(base, end - start, MADV_HUGEPAGE)
    _ = madvise(base, end - start, CKSTORE_MADV_POPULATE_WRITE)
    #endif
}
