/// A whole file mapped read-only; unmapped in `deinit`.
///
/// Used for sealed packs, which are immutable: frames are checked, hashed and decoded straight from the
/// page cache, and raw frames are written to their destination without an intermediate copy. Sendable:
/// the mapping is read-only and lives as long as the object.
final class MappedFile: Sendable {
    let path: String
    /// The mapped bytes (empty for an empty file).
    nonisolated(unsafe) let bytes: UnsafeRawBufferPointer

    init(path: String) throws {
        self.path = path
        let file = try SystemFile.openForReading(path)
        let size = Int(try file.size())
        if size == 0 {
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            return
        }
        switch system_mmap(file.descriptor, size, path: path) {
        case .success(let pointer): bytes = UnsafeRawBufferPointer(start: pointer, count: size)
        case .failure(let error): throw CKStoreError.io("cannot map \(path)", error)
        }
    }

    deinit {
        if let base = bytes.baseAddress { system_munmap(base, bytes.count) }
    }

    var size: Int { bytes.count }

    /// Bytes `range` of the file; the caller checks the range is inside.
    func slice(_ range: Range<Int>) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: bytes[range])
    }
}

/// The decoded (or stored) bytes of one chunk: either a range of a mapped pack, kept alive by this
/// value, or an array of their own.
struct ChunkBytes: Sendable {
    private enum Storage: Sendable {
        case mapped(MappedFile, Range<Int>)
        case owned([UInt8])
    }

    private let storage: Storage

    init(_ bytes: [UInt8]) { storage = .owned(bytes) }
    init(_ file: MappedFile, _ range: Range<Int>) { storage = .mapped(file, range) }

    var count: Int {
        switch storage {
        case .mapped(_, let range): range.count
        case .owned(let bytes): bytes.count
        }
    }

    func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        switch storage {
        case .mapped(let file, let range): try withExtendedLifetime(file) { try body(file.slice(range)) }
        case .owned(let bytes): try bytes.withUnsafeBytes(body)
        }
    }

    /// Lets the kernel drop the mapping's pages for these bytes once they have been used (a no-op for
    /// owned bytes). The bytes must not be read afterwards.
    func releaseMapping() {
        if case .mapped(let file, let range) = storage, let base = file.slice(range).baseAddress {
            system_madvise_dontneed(base, range.count)
        }
    }

    /// A copy as an array.
    var array: [UInt8] {
        switch storage {
        case .mapped: withUnsafeBytes { [UInt8](copying: $0) }
        case .owned(let bytes): bytes
        }
    }
}

extension [UInt8] {
    /// A copy of `buffer` made with one `memcpy` (`Array(buffer)` goes byte by byte: 4 s for 1 GiB).
    init(copying buffer: UnsafeRawBufferPointer) {
        self.init(unsafeUninitializedCapacity: buffer.count) { target, count in
            // Large copies land in fresh memory: ask for huge pages, or first-touch faults (one per 4 KiB,
            // slow in a virtual machine) cost more than the copy.
            if buffer.count >= 64 << 20, let base = target.baseAddress {
                system_madvise_prepare_write(UnsafeMutableRawPointer(base), buffer.count)
            }
            UnsafeMutableRawBufferPointer(target).copyMemory(from: buffer)
            count = buffer.count
        }
    }
}
