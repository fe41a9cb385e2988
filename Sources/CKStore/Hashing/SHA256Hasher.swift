import Crypto

/// SHA-256 through swift-crypto (BoringSSL's SHA-NI/AVX2 code on Linux); see docs/dependencies.md.
struct SHA256Hasher {
    private var state = SHA256()

    mutating func update(_ buffer: UnsafeRawBufferPointer) {
        state.update(bufferPointer: buffer)
    }

    mutating func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { state.update(bufferPointer: $0) }
    }

    consuming func finalize() -> ChunkDigest {
        let digest = state.finalize()
        return digest.withUnsafeBytes { ChunkDigest(loading: $0) }
    }

    /// The SHA-256 of `buffer`.
    static func digest(_ buffer: UnsafeRawBufferPointer) -> ChunkDigest {
        var hasher = SHA256Hasher()
        hasher.update(buffer)
        return hasher.finalize()
    }

    static func digest(_ bytes: [UInt8]) -> ChunkDigest {
        bytes.withUnsafeBytes { digest($0) }
    }
}

extension ChunkDigest {
    /// The SHA-256 of `bytes`: what ckstore names those bytes by.
    public init(hashing bytes: [UInt8]) {
        self = SHA256Hasher.digest(bytes)
    }
}
