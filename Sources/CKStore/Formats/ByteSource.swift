/// Something the format parsers read bytes from by position: a file, or bytes in memory (tests and fuzzing).
protocol ByteSource {
    func read(count: Int, at offset: Int64) throws -> [UInt8]
}

extension SharedFile: ByteSource {}

/// Bytes in memory as a ``ByteSource``; reads past the end fail as a truncated file would.
struct MemoryByteSource: ByteSource {
    let bytes: [UInt8]

    func read(count: Int, at offset: Int64) throws -> [UInt8] {
        guard offset >= 0, count >= 0, offset + Int64(count) <= Int64(bytes.count) else {
            throw CKStoreError(.damaged, "read of \(count) bytes at \(offset) runs past the end (\(bytes.count) bytes)")
        }
        return Array(bytes[Int(offset)..<(Int(offset) + count)])
    }
}

/// A byte range of another source, read as a whole: an item of a `.distcp` file as its own archive.
struct WindowByteSource<Base: ByteSource>: ByteSource {
    let base: Base
    let start: Int64
    let size: Int64

    func read(count: Int, at offset: Int64) throws -> [UInt8] {
        guard offset >= 0, count >= 0, offset + Int64(count) <= size else {
            throw CKStoreError(.malformedFile, "read of \(count) bytes at \(offset) runs past the item's \(size) bytes")
        }
        return try base.read(count: count, at: start + offset)
    }
}

/// Entry points that run ckstore's parsers on bytes in memory, for fuzzing and for tools that want to
/// check a file without storing it. Each returns normally for valid input and throws ``CKStoreError``
/// for anything else; none may crash, whatever the bytes.
public enum FormatValidation {
    /// Parses `bytes` as a safetensors file; returns the number of tensors.
    public static func safetensors(_ bytes: [UInt8]) throws -> Int {
        try SafetensorsFile.parse(MemoryByteSource(bytes: bytes), size: Int64(bytes.count), name: "input").tensors.count
    }

    /// Parses `bytes` as a torch.save zip archive; returns the number of entries.
    public static func torchZip(_ bytes: [UInt8]) throws -> Int {
        let parsed = try TorchZipFile.parse(MemoryByteSource(bytes: bytes), size: Int64(bytes.count), name: "input")
        _ = parsed.layout
        return parsed.entries.count
    }

    /// Parses `bytes` as a torch.distributed.checkpoint data file (`.distcp`); returns the number of
    /// tensor regions found.
    public static func distcp(_ bytes: [UInt8]) throws -> Int {
        let layout = try DistributedCheckpoint.layout(of: MemoryByteSource(bytes: bytes), size: Int64(bytes.count), path: "input", names: nil)
        return layout.regions.filter { if case .tensor = $0.kind { true } else { false } }.count
    }

    /// Parses `bytes` as a pickle of DCP's `Metadata`; returns the number of items it names, or nil when it
    /// is not one.
    public static func dcpMetadata(_ bytes: [UInt8]) -> Int? {
        DistributedCheckpoint.itemNames(metadata: bytes).map { $0.values.reduce(0) { $0 + $1.count } }
    }

    /// Parses `bytes` as a pack: its trailer, then every frame it lists with checksums; returns the frame count.
    public static func pack(_ bytes: [UInt8]) throws -> Int {
        try bytes.withUnsafeBytes { buffer in
            let parser = PackParser(bytes: buffer, name: "input")
            let frames = try parser.trailer()
            for frame in frames {
                let (header, payload) = try parser.frame(at: frame.offset, storedLength: frame.header.storedLength, expected: frame.header.digest, checkChecksum: true)
                // Every frame small enough decodes or throws; bases and inputs are zeros of its length.
                guard header.rawLength <= 16 << 20 else { continue }
                try? ChunkReader.decodeDetached(header, payload: ChunkBytes(Array(buffer[payload])))
            }
            _ = try parser.walkFrames()
            return frames.count
        }
    }
}
