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
        file = try SystemFile.openOrCreate(path)
        if case .failure(let error) = system_flock(file.descriptor, mode == .shared ? LOCK_SH : LOCK_EX, path: path) {
            throw CKStoreError.io("cannot lock \(path)", error)
        }
    }
}
