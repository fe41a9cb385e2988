#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An advisory `flock` on the store's `lock` file, released when the value is dropped.
///
/// Puts and gets hold it shared for their whole run; maintenance that deletes packs (gc's sweep) takes it
/// exclusive, briefly, so that it never removes a pack a put is still writing or a get is reading.
final class StoreLock {
    enum Mode { case shared, exclusive }

    private let file: SystemFile

    init(path: String, mode: Mode) throws {
        do {
            file = try SystemFile.openOrCreate(path)
        } catch let error as CKStoreError where mode == .shared && FileSystem.isReadOnlyMount(path) {
            // A store on a read-only mount: nothing can change it, a shared lock on a read-only
            // descriptor still orders readers against nothing, and reading goes on.
            _ = error
            file = try SystemFile.openForReading(path)
        }
        if case .failure(let error) = system_flock(file.descriptor, mode == .shared ? LOCK_SH : LOCK_EX, path: path) {
            throw CKStoreError.io("cannot lock \(path)", error)
        }
    }
}
