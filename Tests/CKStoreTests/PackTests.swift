@testable import CKStore
import CKStoreTestSupport
import Foundation
import Testing

/// A store layout at `root` with the folders packs are written to and sealed into.
private func packFolders(_ root: String) throws -> StoreLayout {
    let layout = StoreLayout(root: root)
    try FileSystem.createDirectory(layout.temporaryRoot)
    try FileSystem.createDirectory(layout.packsRoot)
    return layout
}

@Suite struct PackTests {
    @Test func writesSealsAndReadsBackFrames() async throws {
        try await withTemporaryDirectory { root in
            let layout = try packFolders(root)
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
            let layout = try packFolders(root)
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

@Suite struct PackSinkTests {
    @Test func concurrentAppendsOverSeveralOpenPacksAreAllReadableAndEveryTrailerIsExact() async throws {
        try await withTemporaryDirectory { root in
            let layout = try packFolders(root)
            let codec = FrameCodec(level: .default)
            // Small packs (64 KiB) so that packs fill and are sealed by appends while others still write,
            // three open at once, 300 frames of 1 to 4 KiB appended by concurrent tasks.
            let sink = PackSink(layout: layout, targetSize: 64 << 10, writers: 3)
            let payloads = (0..<300).map { index -> [UInt8] in
                var random = SeededRandom(seed: UInt64(index))
                return random.bytes(count: 1024 + index * 10)
            }
            let locations = try await withThrowingTaskGroup(of: (Int, ChunkLocation).self) { group in
                for (index, bytes) in payloads.enumerated() {
                    group.addTask { (index, try sink.append(try codec.encode(bytes, digest: SHA256Hasher.digest(bytes)), kind: .chunk)) }
                }
                var found = [Int: ChunkLocation]()
                for try await (index, location) in group { found[index] = location }
                return found
            }
            let sealed = try sink.seal()
            #expect(try sink.seal().isEmpty, "everything was returned once")
            // Every pack is sealed (none left in tmp/), none over its target by more than one frame.
            #expect(try FileManager.default.contentsOfDirectory(atPath: layout.temporaryRoot).isEmpty)
            #expect(sealed.count >= 300 * 1024 / (64 << 10))
            #expect(Set(sealed.map(\.id)).count == sealed.count)
            // Each pack's trailer lists exactly the frames appended to it, in offset order, and each frame
            // reads back as the bytes appended.
            var byPack = [PackID: [ChunkLocation]]()
            for location in locations.values { byPack[location.pack, default: []].append(location) }
            #expect(Set(byPack.keys) == Set(sealed.map(\.id)))
            for pack in sealed {
                let reader = try PackReader(id: pack.id, path: layout.packPath(pack.id))
                let trailer = try reader.readTrailer()
                let expected = (byPack[pack.id] ?? []).sorted { $0.offset < $1.offset }
                #expect(trailer.map(\.offset) == expected.map(\.offset))
                #expect(trailer.map(\.header.digest) == expected.map(\.digest))
                #expect(pack.size == (try reader.size()))
            }
            for (index, location) in locations {
                let reader = try PackReader(id: location.pack, path: layout.packPath(location.pack))
                let (header, payload) = try reader.readFrame(at: location.offset, storedLength: location.storedLength, expected: location.digest)
                #expect(try codec.decode(payload, encoding: header.encoding, rawLength: header.rawLength).array == payloads[index])
            }
        }
    }

    @Test func aPutSpreadsItsFramesOverPacksOnlyWhenLarge() {
        #expect(Archiver.packWriters(forBytes: 10 << 20) == 1)
        #expect(Archiver.packWriters(forBytes: 300 << 20) == 2)
        #expect(Archiver.packWriters(forBytes: 10 << 30) == 4)
    }
}
