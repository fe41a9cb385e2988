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
    ///
    /// - Parameter minimumMatch: the shortest match zstd looks for (`ZSTD_c_minMatch`, 3…7); nil for the
    ///   level's own. Byte planes of floats hold no real repeats, and the 4- and 5-byte matches zstd finds
    ///   in them by chance cost more than the literals they replace: at 7, zstd codes such a plane almost
    ///   as Huffman-coded literals alone, which is what it is.
    func compress(_ input: UnsafeRawBufferPointer, level: CompressionLevel, minimumMatch: Int32? = nil) throws -> [UInt8] {
        try [UInt8](unsafeUninitializedCapacity: Self.bound(input.count)) { out, initialized in
            guard let written = try compress(input, into: UnsafeMutableRawBufferPointer(out), level: level, minimumMatch: minimumMatch) else {
                throw CKStoreError(.compression, "zstd: compression needed more than its own bound of \(out.count) bytes")
            }
            initialized = written
        }
    }

    /// The most bytes compressing `count` bytes can take (`ZSTD_compressBound`): with that much room,
    /// compressing never fails for want of it.
    static func bound(_ count: Int) -> Int { ZSTD_compressBound(count) }

    /// Compresses `input` into `output`, as ``compress(_:level:minimumMatch:)`` does; returns the
    /// compressed size, or nil when the result does not fit in `output`. zstd needs some room beyond
    /// what it finally writes, so give it ``bound(_:)`` bytes where a result must not be lost.
    func compress(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer, level: CompressionLevel, minimumMatch: Int32? = nil) throws -> Int? {
        try configure(level: level, minimumMatch: minimumMatch)
        let written = ZSTD_compress2(context, output.baseAddress, output.count, input.baseAddress, input.count)
        if ZSTD_isError(written) != 0 {
            if ZSTD_getErrorCode(written) == ZSTD_error_dstSize_tooSmall { return nil }
            throw CKStoreError(.compression, "zstd: compression failed: \(String(cString: ZSTD_getErrorName(written)))")
        }
        return written
    }

    /// Sets the level and minimum match of the next compression. A context is reused, so both are set
    /// every time (a minimum match of 0 is zstd's "the level's own").
    private func configure(level: CompressionLevel, minimumMatch: Int32?) throws {
        for (parameter, value) in [(ZSTD_c_compressionLevel, level.rawValue), (ZSTD_c_minMatch, minimumMatch ?? 0)] {
            let result = ZSTD_CCtx_setParameter(context, parameter, value)
            if ZSTD_isError(result) != 0 {
                throw CKStoreError(.compression, "zstd: cannot set parameter \(parameter.rawValue) to \(value): \(String(cString: ZSTD_getErrorName(result)))")
            }
        }
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
