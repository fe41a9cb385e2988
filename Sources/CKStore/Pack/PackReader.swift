/// Reads frames from a sealed pack with positioned reads; safe to share between tasks.
final class PackReader: Sendable {
    let id: PackID
    private let file: SharedFile

    init(id: PackID, path: String) throws {
        self.id = id
        do {
            self.file = try SharedFile(path: path)
        } catch let error as CKStoreError where error.code == .notFound {
            throw CKStoreError(.damaged, "pack \(id) is missing (\(path))", cause: error)
        }
    }

    func size() throws -> Int64 { try file.size() }

    /// Reads the frame at `offset`, checks its header and checksum, and returns header and payload.
    ///
    /// - Parameter expected: the digest the catalogue says is there; a different one is damage.
    func readFrame(at offset: Int64, storedLength: Int, expected: ChunkDigest) throws -> (FrameHeader, [UInt8]) {
        // Header and payload in two reads, so the payload lands in its own array with no copy.
        let headerBytes: [UInt8]
        let payload: [UInt8]
        do {
            headerBytes = try file.read(count: PackFormat.frameHeaderSize, at: offset)
            payload = try file.read(count: storedLength, at: offset + Int64(PackFormat.frameHeaderSize))
        } catch {
            throw CKStoreError(.damaged, "pack \(id): chunk \(expected) at offset \(offset) cannot be read: \(CKStoreError.wrap(error).message)", cause: CKStoreError.wrap(error))
        }
        let header = try headerBytes.withUnsafeBytes { (raw) throws in
            try FrameHeader(parsing: raw, pack: id.hex, offset: offset)
        }
        guard header.digest == expected, header.storedLength == storedLength else {
            throw CKStoreError(.damaged, "pack \(id): frame at offset \(offset) holds \(header.digest), not chunk \(expected)")
        }
        let checksum = payload.withUnsafeBytes { FrameHeader.checksum(prefix: header.serializedPrefix(), payload: $0) }
        guard checksum == header.checksum else {
            throw CKStoreError(.damaged, "pack \(id): chunk \(expected) at offset \(offset) fails its checksum (stored bytes are damaged)")
        }
        return (header, payload)
    }

    /// Reads and checks the trailer: every frame's offset and header.
    func readTrailer() throws -> [PackWriter.WrittenFrame] {
        let size = try file.size()
        func damaged(_ what: String) -> CKStoreError { CKStoreError(.damaged, "pack \(id): \(what)") }
        guard size >= Int64(PackFormat.headerSize + PackFormat.footerSize) else { throw damaged("too short to be a pack (\(size) bytes)") }
        let header = try file.read(count: PackFormat.headerSize, at: 0)
        guard Array(header[0..<8]) == PackFormat.headerMagic else { throw damaged("no pack magic at the start") }
        let footer = try file.read(count: PackFormat.footerSize, at: size - Int64(PackFormat.footerSize))
        guard Array(footer[32..<40]) == PackFormat.footerMagic else { throw damaged("no trailer magic at the end (truncated?)") }
        let trailerOffset = footer.loadLittleEndian(UInt64.self, at: 0)
        let count = footer.loadLittleEndian(UInt64.self, at: 8)
        let checksum = footer.loadLittleEndian(UInt64.self, at: 16)
        let (trailerLength, overflow) = count.multipliedReportingOverflow(by: UInt64(PackFormat.trailerEntrySize))
        guard !overflow, trailerOffset >= UInt64(PackFormat.headerSize),
              trailerOffset + trailerLength == UInt64(size) - UInt64(PackFormat.footerSize) else {
            throw damaged("trailer position and frame count disagree with the file size")
        }
        let trailer = try file.read(count: Int(trailerLength), at: Int64(trailerOffset))
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
