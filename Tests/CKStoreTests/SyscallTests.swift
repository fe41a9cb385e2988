@testable import CKStore
import CKStoreTestSupport
import Foundation
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Fault injection names each call by the wrapper that makes it.
@Suite struct SyscallTests {
    @Test func everyWrapperIsRecordedUnderItsOwnName() async throws {
        try await withTemporaryDirectory { root in
            let seen = Mutex<[SyscallOperation]>([])
            try await FaultInjector.shared.with(scope: root, { operation, _, _ in
                seen.withLock { $0.append(operation) }
                return nil
            }) {
                let file = root + "/file"
                _ = system_mkdir(root + "/folder")
                let fd = try system_open(file, O_CREAT | O_RDWR).get()
                _ = try [UInt8](repeating: 1, count: 8).withUnsafeBytes { try system_pwrite(fd, $0, 0, path: file).get() }
                _ = system_fsync(fd, path: file)
                _ = system_fstat(fd, path: file)
                _ = system_close(fd)
                _ = system_stat(file)
                _ = system_lstat(file)
                _ = system_chmod(file, 0o600)
                _ = system_symlink("file", root + "/link")
                _ = system_readlink(root + "/link")
                _ = system_rename(root + "/link", root + "/link2")
                _ = system_unlink(root + "/link2")
            }
            // close passes no path (it is never injected); every other call is recorded as itself.
            #expect(seen.withLock { $0 } == [.mkdir, .open, .pwrite, .fsync, .fstat, .stat, .lstat, .chmod, .symlink, .readlink, .rename, .unlink])
        }
    }

    @Test func wrapperNamesMapToOperations() {
        #expect(SyscallOperation(wrapper: "system_chmod(_:_:)") == .chmod)
        #expect(SyscallOperation(wrapper: "system_fallocate(_:_:path:)") == .fallocate)
        #expect(SyscallOperation(wrapper: "somethingElse()") == nil)
    }
}
