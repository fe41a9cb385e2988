/// Builds files shaped like `torch.save` output: an uncompressed ("stored") zip archive named after the
/// file, with `data.pkl`, `.format_version`, `byteorder`, `data/<n>` storages aligned to 64 bytes through
/// the local header's extra field, and `version`, followed by the central directory.
public struct TorchZipBuilder: Sendable {
    public var archiveName: String
    /// The pickle bytes; never interpreted by ckstore, so any bytes do.
    public var pickle: [UInt8]
    public var storages: [[UInt8]] = []
    /// Use zip64 records even for small archives, as torch does for files over 4 GiB.
    public var forceZip64 = false

    public init(archiveName: String, pickle: [UInt8] = Array("\u{80}\u{02}}q\u{00}.".utf8)) {
        self.archiveName = archiveName
        self.pickle = pickle
    }

    public mutating func addStorage(_ bytes: [UInt8]) { storages.append(bytes) }

    public func build() -> [UInt8] {
        var entries: [(String, [UInt8])] = [
            ("\(archiveName)/data.pkl", pickle),
            ("\(archiveName)/.format_version", Array("1".utf8)),
            ("\(archiveName)/byteorder", Array("little".utf8)),
        ]
        for (index, storage) in storages.enumerated() {
            entries.append(("\(archiveName)/data/\(index)", storage))
        }
        entries.append(("\(archiveName)/version", Array("3\n".utf8)))

        var out = [UInt8]()
        var central = [UInt8]()
        for (name, data) in entries {
            let offset = out.count
            let nameBytes = Array(name.utf8)
            let crc = CRC32.checksum(data)
            // Pad with an extra field so the data starts on a 64-byte boundary, as torch does.
            let unpadded = offset + 30 + nameBytes.count + 4
            let padding = (64 - unpadded % 64) % 64
            var extra: [UInt8] = [0x46, 0x42]
            extra.appendLE(UInt16(padding))
            extra += [UInt8](repeating: UInt8(ascii: "Z"), count: padding)
            out.appendLE(UInt32(0x0403_4b50))
            out.appendLE(UInt16(20)); out.appendLE(UInt16(0)); out.appendLE(UInt16(0))
            out.appendLE(UInt16(0)); out.appendLE(UInt16(0x21))
            out.appendLE(crc); out.appendLE(UInt32(data.count)); out.appendLE(UInt32(data.count))
            out.appendLE(UInt16(nameBytes.count)); out.appendLE(UInt16(extra.count))
            out += nameBytes + extra + data

            central.appendLE(UInt32(0x0201_4b50))
            central.appendLE(UInt16(20)); central.appendLE(UInt16(20)); central.appendLE(UInt16(0)); central.appendLE(UInt16(0))
            central.appendLE(UInt16(0)); central.appendLE(UInt16(0x21))
            central.appendLE(crc); central.appendLE(UInt32(data.count)); central.appendLE(UInt32(data.count))
            central.appendLE(UInt16(nameBytes.count)); central.appendLE(UInt16(0)); central.appendLE(UInt16(0))
            central.appendLE(UInt16(0)); central.appendLE(UInt16(0)); central.appendLE(UInt32(0))
            central.appendLE(UInt32(offset))
            central += nameBytes
        }
        let directoryOffset = out.count
        out += central
        if forceZip64 {
            let recordOffset = out.count
            out.appendLE(UInt32(0x0606_4b50)); out.appendLE(UInt64(44))
            out.appendLE(UInt16(45)); out.appendLE(UInt16(45)); out.appendLE(UInt32(0)); out.appendLE(UInt32(0))
            out.appendLE(UInt64(entries.count)); out.appendLE(UInt64(entries.count))
            out.appendLE(UInt64(central.count)); out.appendLE(UInt64(directoryOffset))
            out.appendLE(UInt32(0x0706_4b50)); out.appendLE(UInt32(0)); out.appendLE(UInt64(recordOffset)); out.appendLE(UInt32(1))
        }
        out.appendLE(UInt32(0x0605_4b50))
        out.appendLE(UInt16(0)); out.appendLE(UInt16(0))
        out.appendLE(UInt16(forceZip64 ? 0xffff : entries.count)); out.appendLE(UInt16(forceZip64 ? 0xffff : entries.count))
        out.appendLE(UInt32(forceZip64 ? 0xffff_ffff : central.count)); out.appendLE(UInt32(forceZip64 ? 0xffff_ffff : directoryOffset))
        out.appendLE(UInt16(0))
        return out
    }
}

/// CRC-32 (IEEE), as zip archives record it.
enum CRC32 {
    static let table: [UInt32] = (0..<256).map { index in
        var value = UInt32(index)
        for _ in 0..<8 { value = value & 1 == 1 ? 0xEDB8_8320 ^ (value >> 1) : value >> 1 }
        return value
    }

    static func checksum(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xffff_ffff
        for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xff)] ^ (crc >> 8) }
        return crc ^ 0xffff_ffff
    }
}

extension Array where Element == UInt8 {
    mutating func appendLE<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }
}
