import CZstd
import Synchronization

/// Owns one `ZSTD_CCtx`; frees it in `deinit`.
///
/// `@unchecked Sendable` because a context is used by one task at a time: tasks take one from
/// ``ZstdContextPool`` (whose mutex hands it over) and give it back when done.
final class ZstdCompressor: @unchecked Sendable {
    private let context: OpaquePointer

    init() throws {
        guard let context = ZSTD_createCCtx() else {
            throw CKStoreError(.compression, "zstd: cannot allocate a compression context (out of memory?)")
        }
        self.context = context
    }

    deinit { ZSTD_freeCCtx(context) }

    /// Compresses `input` at `level`; returns the compressed bytes.
    func compress(_ input: UnsafeRawBufferPointer, level: CompressionLevel) throws -> [UInt8] {
        let bound = ZSTD_compressBound(input.count)
        var failure: Int?
        let output = [UInt8](unsafeUninitializedCapacity: bound) { out, initialized in
            let written = ZSTD_compressCCtx(context, out.baseAddress, out.count, input.baseAddress, input.count, level.rawValue)
            if ZSTD_isError(written) != 0 {
                failure = written
                initialized = 0
            } else {
                initialized = written
            }
        }
        if let failure {
            throw CKStoreError(.compression, "zstd: compression failed: \(String(cString: ZSTD_getErrorName(failure)))")
        }
        return output
    }
}

/// Owns one `ZSTD_DCtx`; frees it in `deinit`. Sendable on the same terms as ``ZstdCompressor``.
final class ZstdDecompressor: @unchecked Sendable {
    private let context: OpaquePointer

    init() throws {
        guard let context = ZSTD_createDCtx() else {
            throw CKStoreError(.compression, "zstd: cannot allocate a decompression context (out of memory?)")
        }
        self.context = context
    }

    deinit { ZSTD_freeDCtx(context) }

    /// Decompresses `input` into exactly `output.count` bytes; anything else is damage.
    func decompress(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws {
        let written = ZSTD_decompressDCtx(context, output.baseAddress, output.count, input.baseAddress, input.count)
        if ZSTD_isError(written) != 0 {
            throw CKStoreError(.damaged, "zstd: cannot decompress: \(String(cString: ZSTD_getErrorName(written)))")
        }
        guard written == output.count else {
            throw CKStoreError(.damaged, "zstd: decompressed \(written) bytes where \(output.count) were expected")
        }
    }
}

/// A small pool of zstd contexts shared by the tasks of a put or get, so that contexts (and their
/// megabytes of workspace) are reused across chunks instead of allocated per chunk.
final class ZstdContextPool: Sendable {
    // Idle contexts, protected by these mutexes.
    private let compressors = Mutex<[ZstdCompressor]>([])
    private let decompressors = Mutex<[ZstdDecompressor]>([])

    func withCompressor<T>(_ body: (ZstdCompressor) throws -> T) throws -> T {
        let compressor = try compressors.withLock { $0.popLast() } ?? ZstdCompressor()
        defer { compressors.withLock { $0.append(compressor) } }
        return try body(compressor)
    }

    func withDecompressor<T>(_ body: (ZstdDecompressor) throws -> T) throws -> T {
        let decompressor = try decompressors.withLock { $0.popLast() } ?? ZstdDecompressor()
        defer { decompressors.withLock { $0.append(decompressor) } }
        return try body(decompressor)
    }
}
