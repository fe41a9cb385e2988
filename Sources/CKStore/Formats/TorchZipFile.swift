/// A `torch.save` file: an uncompressed zip archive whose `<archive>/data/<n>` entries are raw tensor
/// storages. Parsed from the central directory; the pickle is read as data, never executed
/// (``PickleReader``, ``TorchObjects``).
struct TorchZipFile: Sendable {
    struct Entry: Sendable, Equatable {
        var name: String
        var method: UInt16
        var compressedSize: Int64
        var uncompressedSize: Int64
        var localHeaderOffset: Int64
        /// Where the entry's bytes start (after the local header, its name and extra field).
        var dataOffset: Int64
    }

    var entries: [Entry]
    var size: Int64

    /// True for `archive/data/123`: a tensor storage.
    static func isStorage(_ name: String) -> Bool {
        let parts = name.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count >= 3, parts[parts.count - 2] == "data", let last = parts.last, !last.isEmpty else { return false }
        return last.allSatisfy(\.isASCII) && last.allSatisfy(\.isNumber)
    }

    /// The archive's layout from its zip entries alone: each storage a tensor region named by its entry.
    var layout: FileLayout {
        let storages = entries
            .filter { Self.isStorage($0.name) && $0.method == 0 && $0.compressedSize > 0 }
            .map { FileLayout.Region(kind: .tensor(name: $0.name, dtype: nil, shape: nil), begin: $0.dataOffset, end: $0.dataOffset + $0.compressedSize) }
            .sorted { $0.begin < $1.begin }
        return .covering(format: .torchZip, size: size, tensors: storages)
    }

    /// The archive's layout with what its `data.pkl` says (read as data, never executed): each storage
    /// named by where its tensor sits in the saved object (`state.12.exp_avg`), with its dtype and shape,
    /// and an optimizer state dict's parameter groups. Storages the pickle does not describe keep their
    /// entry names; a pickle that cannot be read leaves them all so.
    func layout(reading file: some ByteSource) -> FileLayout {
        var layout = self.layout
        guard let pickle = entries.first(where: { $0.name.hasSuffix("/data.pkl") && $0.method == 0 && $0.compressedSize <= 64 << 20 }),
              let bytes = try? file.read(count: Int(pickle.compressedSize), at: pickle.dataOffset) else { return layout }
        let folder = String(pickle.name.dropLast("data.pkl".count) + "data/")
        let byName = Dictionary(entries.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        let objects = TorchObjects(pickle: bytes) { storage in
            guard let entry = byName[folder + storage.key], entry.method == 0 else { return nil }
            return Self.scalar(of: storage.type, from: try? file.read(count: Int(min(entry.compressedSize, 8)), at: entry.dataOffset))
        }
        var used = Set<String>()
        for (index, region) in layout.regions.enumerated() {
            guard case .tensor(let entryName, _, _) = region.kind, entryName.hasPrefix(folder) else { continue }
            let key = String(entryName.dropFirst(folder.count))
            guard let storage = objects.storages[key] else { continue }
            layout.storageElementWidths[entryName] = storage.elementWidth
            var name = storage.name ?? entryName
            if used.contains(name) { name = entryName }
            used.insert(name)
            // The shape must account for the storage's bytes exactly, or it is not given.
            let shape = storage.shape.flatMap { shape in
                storage.dtype?.byteCount(elements: shape.reduce(1, *)) == Int(region.length) ? shape : nil
            }
            layout.regions[index].kind = .tensor(name: name, dtype: shape == nil ? nil : storage.dtype, shape: shape)
            if name != entryName { layout.storageElementWidths[name] = storage.elementWidth }
        }
        layout.optimizer = objects.optimizer
        return layout
    }

    /// The value of a one-element storage of type `type` from its bytes (little-endian).
    static func scalar(of type: String, from bytes: [UInt8]?) -> Double? {
        guard let bytes else { return nil }
        func load<T: FixedWidthInteger>(_: T.Type) -> T? {
            guard bytes.count >= MemoryLayout<T>.size else { return nil }
            return bytes.prefix(MemoryLayout<T>.size).reversed().reduce(T(0)) { $0 << 8 | T($1) }
        }
        switch type {
        case "FloatStorage": return load(UInt32.self).map { Double(Float(bitPattern: $0)) }
        case "DoubleStorage": return load(UInt64.self).map { Double(bitPattern: $0) }
        case "LongStorage": return load(UInt64.self).map { Double(Int64(bitPattern: $0)) }
        case "IntStorage": return load(UInt32.self).map { Double(Int32(bitPattern: $0)) }
        default: return nil
        }
    }

    private static let endOfCentralDirectory: UInt32 = 0x0605_4b50
    private static let zip64Locator: UInt32 = 0x0706_4b50
    private static let zip64EndOfCentralDirectory: UInt32 = 0x0606_4b50
    private static let centralHeader: UInt32 = 0x0201_4b50
    private static let localHeader: UInt32 = 0x0403_4b50

    static func parse(_ file: some ByteSource, size: Int64, name: String) throws -> TorchZipFile {
        func malformed(_ what: String) -> CKStoreError { CKStoreError(.malformedFile, "\(name): \(what)") }
        guard size >= 22 else { throw malformed("too short to be a zip archive (\(size) bytes)") }

        // The end-of-central-directory record is in the last 22 + 65535 bytes (its comment is at most 64 KiB).
        let tailLength = Int(min(size, 22 + 65_535))
        let tailStart = size - Int64(tailLength)
        let tail = try file.read(count: tailLength, at: tailStart)
        guard let eocdIndex = stride(from: tailLength - 22, through: 0, by: -1).first(where: {
            tail.loadLittleEndian(UInt32.self, at: $0) == endOfCentralDirectory
        }) else {
            throw malformed("no zip end-of-central-directory record")
        }
        var entryCount = Int64(tail.loadLittleEndian(UInt16.self, at: eocdIndex + 10))
        var directorySize = Int64(tail.loadLittleEndian(UInt32.self, at: eocdIndex + 12))
        var directoryOffset = Int64(tail.loadLittleEndian(UInt32.self, at: eocdIndex + 16))

        let eocdOffset = tailStart + Int64(eocdIndex)
        if entryCount == 0xffff || directorySize == 0xffff_ffff || directoryOffset == 0xffff_ffff {
            // zip64: a locator sits right before the classic record and points at the zip64 record.
            guard eocdOffset >= 20 else { throw malformed("zip64 archive without a zip64 locator") }
            let locator = try file.read(count: 20, at: eocdOffset - 20)
            guard locator.loadLittleEndian(UInt32.self, at: 0) == zip64Locator else { throw malformed("zip64 archive without a zip64 locator") }
            let recordOffset = Int64(bitPattern: locator.loadLittleEndian(UInt64.self, at: 8))
            guard recordOffset >= 0, recordOffset <= size - 56 else { throw malformed("zip64 record offset \(recordOffset) is past the end of the file") }
            let record = try file.read(count: 56, at: recordOffset)
            guard record.loadLittleEndian(UInt32.self, at: 0) == zip64EndOfCentralDirectory else { throw malformed("no zip64 end-of-central-directory record at \(recordOffset)") }
            entryCount = Int64(bitPattern: record.loadLittleEndian(UInt64.self, at: 32))
            directorySize = Int64(bitPattern: record.loadLittleEndian(UInt64.self, at: 40))
            directoryOffset = Int64(bitPattern: record.loadLittleEndian(UInt64.self, at: 48))
        }
        // Compared by subtraction: zip64 fields are 64-bit, and a crafted pair would overflow a sum.
        guard directoryOffset >= 0, directorySize >= 0, directoryOffset <= size, directorySize <= size - directoryOffset,
              entryCount >= 0, entryCount <= directorySize / 46 + 1 else {
            throw malformed("central directory (offset \(directoryOffset), size \(directorySize), \(entryCount) entries) does not fit in the file (\(size) bytes)")
        }
        let directory = try file.read(count: Int(directorySize), at: directoryOffset)

        var entries = [Entry]()
        var cursor = 0
        for _ in 0..<entryCount {
            guard cursor + 46 <= directory.count, directory.loadLittleEndian(UInt32.self, at: cursor) == centralHeader else {
                throw malformed("central directory entry \(entries.count) is damaged")
            }
            let method = directory.loadLittleEndian(UInt16.self, at: cursor + 10)
            var compressed = Int64(directory.loadLittleEndian(UInt32.self, at: cursor + 20))
            var uncompressed = Int64(directory.loadLittleEndian(UInt32.self, at: cursor + 24))
            let nameLength = Int(directory.loadLittleEndian(UInt16.self, at: cursor + 28))
            let extraLength = Int(directory.loadLittleEndian(UInt16.self, at: cursor + 30))
            let commentLength = Int(directory.loadLittleEndian(UInt16.self, at: cursor + 32))
            var localOffset = Int64(directory.loadLittleEndian(UInt32.self, at: cursor + 42))
            let nameStart = cursor + 46
            guard nameStart + nameLength + extraLength + commentLength <= directory.count else {
                throw malformed("central directory entry \(entries.count) runs past the directory")
            }
            let entryName = String(decoding: directory[nameStart..<(nameStart + nameLength)], as: UTF8.self)
            // The zip64 extra field carries, in order, whichever of the sizes and offset were 0xffffffff.
            var extra = nameStart + nameLength
            let extraEnd = extra + extraLength
            while extra + 4 <= extraEnd {
                let tag = directory.loadLittleEndian(UInt16.self, at: extra)
                let length = Int(directory.loadLittleEndian(UInt16.self, at: extra + 2))
                if tag == 0x0001 {
                    var field = extra + 4
                    func next() -> Int64? {
                        guard field + 8 <= extra + 4 + length else { return nil }
                        defer { field += 8 }
                        return Int64(bitPattern: directory.loadLittleEndian(UInt64.self, at: field))
                    }
                    if uncompressed == 0xffff_ffff { uncompressed = next() ?? -1 }
                    if compressed == 0xffff_ffff { compressed = next() ?? -1 }
                    if localOffset == 0xffff_ffff { localOffset = next() ?? -1 }
                }
                extra += 4 + length
            }
            guard compressed >= 0, uncompressed >= 0, localOffset >= 0 else {
                throw malformed("zip entry \(entryName) has a damaged zip64 extra field")
            }
            guard localOffset <= size - 30 else {
                throw malformed("zip entry \(entryName) starts past the end of the file (offset \(localOffset), size \(compressed))")
            }
            let local = try file.read(count: 30, at: localOffset)
            guard local.loadLittleEndian(UInt32.self, at: 0) == localHeader else {
                throw malformed("zip entry \(entryName) has no local header at offset \(localOffset)")
            }
            let dataOffset = localOffset + 30 + Int64(local.loadLittleEndian(UInt16.self, at: 26)) + Int64(local.loadLittleEndian(UInt16.self, at: 28))
            guard compressed <= size - dataOffset else {
                throw malformed("zip entry \(entryName) ends past the end of the file (offset \(dataOffset), size \(compressed))")
            }
            guard compressed <= directoryOffset - dataOffset else {
                throw malformed("zip entry \(entryName) runs into the central directory (offset \(dataOffset), size \(compressed))")
            }
            entries.append(Entry(name: entryName, method: method, compressedSize: compressed, uncompressedSize: uncompressed, localHeaderOffset: localOffset, dataOffset: dataOffset))
            cursor = nameStart + nameLength + extraLength + commentLength
        }

        // Entries must not overlap one another (a crafted archive could alias the same bytes twice).
        let sorted = entries.sorted { $0.localHeaderOffset < $1.localHeaderOffset }
        for (earlier, later) in zip(sorted, sorted.dropFirst()) where earlier.dataOffset + earlier.compressedSize > later.localHeaderOffset {
            throw malformed("zip entries \(earlier.name) and \(later.name) overlap")
        }
        return TorchZipFile(entries: entries, size: size)
    }
}
