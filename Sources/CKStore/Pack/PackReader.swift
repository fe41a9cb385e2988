/// Reads frames from a sealed pack through a read-only mapping; safe to share between tasks.
final class PackReader: Sendable {
    let id: PackID
    private let file: MappedFile

    init(id: PackID, path: String) throws {
        self.id = id
        do {
            self.file = try MappedFile(path: path)
        } catch let error as CKStoreError where error.code == .notFound {
            throw CKStoreError(.damaged, "pack \(id) is missing (\(path))", cause: error)
        }
    }

    func size() throws -> Int64 { Int64(file.size) }

    /// Reads the frame at `offset`, checks its header and checksum, and returns header and payload.
    ///
    /// - Parameters:
    ///   - expected: the digest the catalogue says is there; a different one is damage.
    ///   - checkChecksum: verify the frame checksum. Only a caller that verifies a SHA-256 covering the
    ///     decoded bytes anyway may skip it.
    func readFrame(at offset: Int64, storedLength: Int, expected: ChunkDigest, checkChecksum: Bool = true) throws -> (FrameHeader, ChunkBytes) {
        let headerSize = PackFormat.frameHeaderSize
        guard offset >= 0, storedLength >= 0, offset + Int64(headerSize + storedLength) <= Int64(file.size) else {
            throw CKStoreError(.damaged, "pack \(id): chunk \(expected) at offset \(offset) runs past the end of the pack (\(file.size) bytes; truncated?)")
        }
        let start = Int(offset)
        let payloadRange = (start + headerSize)..<(start + headerSize + storedLength)
        if let base = file.slice(start..<payloadRange.upperBound).baseAddress {
            system_madvise_populate(base, headerSize + storedLength)
        }
        let header = try FrameHeader(parsing: file.slice(start..<(start + headerSize)), pack: id.hex, offset: offset)
        guard header.digest == expected, header.storedLength == storedLength else {
            throw CKStoreError(.damaged, "pack \(id): frame at offset \(offset) holds \(header.digest), not chunk \(expected)")
        }
        if checkChecksum {
            let checksum = FrameHeader.checksum(prefix: header.serializedPrefix(), payload: file.slice(payloadRange))
            guard checksum == header.checksum else {
                throw CKStoreError(.damaged, "pack \(id): chunk \(expected) at offset \(offset) fails its checksum (stored bytes are damaged)")
            }
        }
        return (header, ChunkBytes(file, payloadRange))
    }

    /// Reads and checks the trailer: every frame's offset and header.
    func readTrailer() throws -> [PackWriter.WrittenFrame] {
        let size = Int64(file.size)
        func damaged(_ what: String) -> CKStoreError { CKStoreError(.damaged, "pack \(id): \(what)") }
        guard size >= Int64(PackFormat.headerSize + PackFormat.footerSize) else { throw damaged("too short to be a pack (\(size) bytes)") }
        guard Array(file.slice(0..<8)) == PackFormat.headerMagic else { throw damaged("no pack magic at the start") }
        let footer = Array(file.slice((file.size - PackFormat.footerSize)..<file.size))
        guard Array(footer[32..<40]) == PackFormat.footerMagic else { throw damaged("no trailer magic at the end (truncated?)") }
        let trailerOffset = footer.loadLittleEndian(UInt64.self, at: 0)
        let count = footer.loadLittleEndian(UInt64.self, at: 8)
        let checksum = footer.loadLittleEndian(UInt64.self, at: 16)
        let (trailerLength, overflow) = count.multipliedReportingOverflow(by: UInt64(PackFormat.trailerEntrySize))
        guard !overflow, trailerOffset >= UInt64(PackFormat.headerSize),
              trailerOffset + trailerLength == UInt64(size) - UInt64(PackFormat.footerSize) else {
            throw damaged("trailer position and frame count disagree with the file size")
        }
        let trailer = Array(file.slice(Int(trailerOffset)..<(Int(trailerOffset) + Int(trailerLength))))
        guard XXH64.hash(trailer) == checksum else { throw damaged("trailer fails its checksum") }
        var frames = [PackWriter.WrittenFrame]()
        frames.reserveCapacity(Int(count))
        try trailer.withUnsafeBytes { (raw) throws in
            for index in 0..<Int(count) {
                let base = index * PackFormat.trailerEntrySize
                let offset = Int64(raw.loadLittleEndian(UInt64.self, at: base))
                let slice = UnsafeRawBufferPointer(rebasing: raw[(base + 8)..<(base + PackFormat.trailerEntrySize)])
                let frameHeader = try FrameHeader(parsing: slice, pack: id.hex, offset: offset)
                guard offset >= Int64(PackFormat.headerSize),
                      offset + Int64(PackFormat.frameHeaderSize + frameHeader.storedLength) <= Int64(trailerOffset) else {
                    throw damaged("trailer lists a frame at \(offset) outside the frame area")
                }
                frames.append(.init(offset: offset, header: frameHeader))
            }
        }
        return frames
    }
}
