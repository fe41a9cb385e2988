@testable import CKStore
import CKStoreTestSupport
import Foundation
import Testing

@Suite struct PackTests {
    @Test func writesSealsAndReadsBackFrames() async throws {
        try await withTemporaryDirectory { root in
            let layout = StoreLayout(root: root)
            try FileSystem.createDirectory(layout.temporaryRoot)
            try FileSystem.createDirectory(layout.packsRoot)
            let codec = FrameCodec(level: .default)
            var random = SeededRandom(seed: 1)
            let payloads = [random.bytes(count: 1000), [UInt8](repeating: 7, count: 50_000), []]
            let writer = try PackWriter(layout: layout)
            var written = [(ChunkDigest, PackWriter.WrittenFrame)]()
            for bytes in payloads {
                let digest = SHA256Hasher.digest(bytes)
                written.append((digest, try writer.append(try codec.encode(bytes, digest: digest))))
            }
            let sealed = try writer.seal()
            #expect(!FileSystem.exists(layout.temporaryPackPath(sealed.id)))
            let reader = try PackReader(id: sealed.id, path: layout.packPath(sealed.id))
            #expect(try reader.size() == sealed.size)
            let trailer = try reader.readTrailer()
            #expect(trailer.map(\.offset) == written.map(\.1.offset))
            #expect(trailer.map(\.header) == written.map(\.1.header))
            for ((digest, frame), bytes) in zip(written, payloads) {
                let (header, payload) = try reader.readFrame(at: frame.offset, storedLength: frame.header.storedLength, expected: digest)
                #expect(try codec.decode(payload, encoding: header.encoding, rawLength: header.rawLength).array == bytes)
            }
            // Incompressible bytes are stored raw, repetitive ones compressed.
            #expect(written[0].1.header.encoding == .raw)
            #expect(written[1].1.header.encoding == .zstd && written[1].1.header.storedLength < 1000)
        }
    }

    @Test func detectsAFlippedBitAndATruncation() async throws {
        try await withTemporaryDirectory { root in
            let layout = StoreLayout(root: root)
            try FileSystem.createDirectory(layout.temporaryRoot)
            try FileSystem.createDirectory(layout.packsRoot)
            let bytes = SeededRandom(seed: 2).bytesOf(4096)
            let digest = SHA256Hasher.digest(bytes)
            let writer = try PackWriter(layout: layout)
            let frame = try writer.append(try FrameCodec(level: .default).encode(bytes, digest: digest))
            let sealed = try writer.seal()
            let path = layout.packPath(sealed.id)
            var packBytes = try Files.read(path)
            packBytes[Int(frame.offset) + PackFormat.frameHeaderSize + 100] ^= 0x10
            try Files.write(packBytes, to: path)
            let reader = try PackReader(id: sealed.id, path: path)
            let error = #expect(throws: CKStoreError.self) {
                try reader.readFrame(at: frame.offset, storedLength: frame.header.storedLength, expected: digest)
            }
            #expect(error?.code == .damaged && error?.message.contains("checksum") == true)
            try Files.write(Array(packBytes.dropLast(7)), to: path)
            #expect(throws: CKStoreError.self) { try PackReader(id: sealed.id, path: path).readTrailer() }
        }
    }
}

extension SeededRandom {
    func bytesOf(_ count: Int) -> [UInt8] {
        var copy = self
        return copy.bytes(count: count)
    }
}
