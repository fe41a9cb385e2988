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
        let parser = PackParser(bytes: file.bytes, name: id.hex)
        let (header, range) = try parser.frame(at: offset, storedLength: storedLength, expected: expected, checkChecksum: checkChecksum, prepare: true)
        return (header, ChunkBytes(file, range))
    }

    /// Starts reading a frame (header and payload) into the page cache in the background.
    func prefetch(offset: Int64, storedLength: Int) {
        let start = Int(offset), end = start + PackFormat.frameHeaderSize + storedLength
        guard start >= 0, end <= file.bytes.count, let base = file.bytes.baseAddress else { return }
        system_madvise_willneed(base + start, end - start)
    }

    /// Reads and checks the trailer: every frame's offset and header.
    func readTrailer() throws -> [PackWriter.WrittenFrame] {
        try PackParser(bytes: file.bytes, name: id.hex).trailer()
    }

    /// Walks the frames from the start of the pack without trusting the trailer, checking each.
    func walkFrames() throws -> PackParser.Walk {
        try PackParser(bytes: file.bytes, name: id.hex).walkFrames()
    }

    /// The stored bytes of a frame (header and payload), for copying it into another pack.
    func frameBytes(_ range: Range<Int>) -> ChunkBytes { ChunkBytes(file, range) }
}

/// Parses pack bytes in memory (a mapping of a pack file, or any buffer when fuzzing). Every offset and
/// length read from the bytes is checked before use: damaged input throws, it never traps.
struct PackParser {
    let bytes: UnsafeRawBufferPointer
    let name: String

    private func damaged(_ what: String) -> CKStoreError { CKStoreError(.damaged, "pack \(name): \(what)") }

    /// The frame at `offset`: header checked against `expected`, payload against its checksum.
    func frame(at offset: Int64, storedLength: Int, expected: ChunkDigest, checkChecksum: Bool, prepare: Bool = false) throws -> (FrameHeader, Range<Int>) {
        let headerSize = PackFormat.frameHeaderSize
        guard offset >= 0, storedLength >= 0, offset + Int64(headerSize) + Int64(storedLength) <= Int64(bytes.count) else {
            throw damaged("chunk \(expected) at offset \(offset) runs past the end of the pack (\(bytes.count) bytes; truncated?)")
        }
        let start = Int(offset)
        let payload = (start + headerSize)..<(start + headerSize + storedLength)
        if prepare, let base = UnsafeRawBufferPointer(rebasing: bytes[start..<payload.upperBound]).baseAddress {
            system_madvise_populate(base, headerSize + storedLength)
        }
        var header = try FrameHeader(parsing: UnsafeRawBufferPointer(rebasing: bytes[start..<(start + headerSize)]), pack: name, offset: offset)
        guard header.digest == expected, header.storedLength == storedLength else {
            throw damaged("frame at offset \(offset) holds \(header.digest), not chunk \(expected)")
        }
        if checkChecksum {
            // Over the header bytes as stored, so that no bit of the frame escapes the checksum.
            let checksum = FrameHeader.checksum(prefix: Array(bytes[start..<(start + 88)]), payload: UnsafeRawBufferPointer(rebasing: bytes[payload]))
            guard checksum == header.checksum else {
                throw damaged("chunk \(expected) at offset \(offset) fails its checksum (stored bytes are damaged)")
            }
        }
        try header.attachInputs(payload: UnsafeRawBufferPointer(rebasing: bytes[payload]), pack: name, offset: offset)
        return (header, payload)
    }

    /// The frames the trailer lists, after checking the header magic, the footer and the trailer checksum.
    func trailer() throws -> [PackWriter.WrittenFrame] {
        let size = bytes.count
        guard size >= PackFormat.headerSize + PackFormat.footerSize else { throw damaged("too short to be a pack (\(size) bytes)") }
        guard Array(bytes[0..<8]) == PackFormat.headerMagic else { throw damaged("no pack magic at the start") }
        let footerStart = size - PackFormat.footerSize
        guard Array(bytes[(footerStart + 32)..<size]) == PackFormat.footerMagic else { throw damaged("no trailer magic at the end (truncated?)") }
        let trailerOffset = bytes.loadLittleEndian(UInt64.self, at: footerStart)
        let count = bytes.loadLittleEndian(UInt64.self, at: footerStart + 8)
        let checksum = bytes.loadLittleEndian(UInt64.self, at: footerStart + 16)
        let (trailerLength, overflow) = count.multipliedReportingOverflow(by: UInt64(PackFormat.trailerEntrySize))
        guard !overflow, trailerOffset >= UInt64(PackFormat.headerSize), trailerOffset <= UInt64(footerStart),
              trailerLength == UInt64(footerStart) - trailerOffset else {
            throw damaged("trailer position and frame count disagree with the file size")
        }
        let trailer = UnsafeRawBufferPointer(rebasing: bytes[Int(trailerOffset)..<footerStart])
        guard XXH64.hash(trailer) == checksum else { throw damaged("trailer fails its checksum") }
        var frames = [PackWriter.WrittenFrame]()
        frames.reserveCapacity(Int(count))
        for index in 0..<Int(count) {
            let base = index * PackFormat.trailerEntrySize
            let offset = Int64(trailer.loadLittleEndian(UInt64.self, at: base))
            var header = try FrameHeader(parsing: UnsafeRawBufferPointer(rebasing: trailer[(base + 8)..<(base + PackFormat.trailerEntrySize)]), pack: name, offset: offset)
            guard offset >= Int64(PackFormat.headerSize), offset <= Int64(trailerOffset),
                  Int64(trailerOffset) - offset >= Int64(PackFormat.frameHeaderSize + header.storedLength) else {
                throw damaged("trailer lists a frame at \(offset) outside the frame area")
            }
            let payloadStart = Int(offset) + PackFormat.frameHeaderSize
            try header.attachInputs(payload: UnsafeRawBufferPointer(rebasing: bytes[payloadStart..<(payloadStart + header.storedLength)]), pack: name, offset: offset)
            frames.append(.init(offset: offset, header: header))
        }
        return frames
    }

    /// What a walk over the frames found.
    struct Walk: Sendable {
        /// Frames whose header and checksum are intact.
        var frames: [PackWriter.WrittenFrame] = []
        /// Offsets where a frame was damaged (or unreadable bytes began), with what was wrong.
        var damage: [(offset: Int64, reason: String)] = []
    }

    /// Walks the frames from the pack header on, checking each frame's checksum; after a damaged frame it
    /// resynchronises on the next frame magic. Stops at the trailer when the footer is intact, else at
    /// the end of the bytes. Used to salvage what a damaged pack still holds.
    func walkFrames() throws -> Walk {
        var walk = Walk()
        guard bytes.count >= PackFormat.headerSize, Array(bytes[0..<8]) == PackFormat.headerMagic else {
            walk.damage.append((0, "no pack header"))
            return walk
        }
        var end = bytes.count
        if let frames = try? trailer(), let last = frames.last {
            end = Int(last.offset) + PackFormat.frameHeaderSize + last.header.storedLength
        } else if (try? trailer()) != nil {
            end = PackFormat.headerSize
        }
        var offset = PackFormat.headerSize
        let magic = PackFormat.frameMagic
        while offset + PackFormat.frameHeaderSize <= end {
            var failure: String?
            if var header = try? FrameHeader(parsing: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + PackFormat.frameHeaderSize)]), pack: name, offset: Int64(offset)) {
                let payloadEnd = offset + PackFormat.frameHeaderSize + header.storedLength
                if payloadEnd <= end {
                    let payload = UnsafeRawBufferPointer(rebasing: bytes[(offset + PackFormat.frameHeaderSize)..<payloadEnd])
                    let checksum = FrameHeader.checksum(prefix: Array(bytes[offset..<(offset + 88)]), payload: payload)
                    if checksum == header.checksum, (try? header.attachInputs(payload: payload, pack: name, offset: Int64(offset))) != nil {
                        walk.frames.append(.init(offset: Int64(offset), header: header))
                        offset = payloadEnd
                        continue
                    }
                    failure = "chunk \(header.digest) fails its checksum"
                } else {
                    failure = "frame runs past the end of the frame area"
                }
            } else {
                failure = "damaged frame header"
            }
            walk.damage.append((Int64(offset), failure ?? "damaged"))
            // Resynchronise on the next frame magic.
            var next = offset + 1
            while next + PackFormat.frameHeaderSize <= end && !(bytes[next] == magic[0] && bytes[next + 1] == magic[1] && bytes[next + 2] == magic[2] && bytes[next + 3] == magic[3]) {
                next += 1
            }
            offset = next
        }
        return walk
    }
}
