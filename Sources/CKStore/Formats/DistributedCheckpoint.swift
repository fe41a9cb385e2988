/// PyTorch Distributed Checkpoint (DCP) files, as `torch.distributed.checkpoint.save` writes them with its
/// file system writer: each rank writes `__<rank>_<n>.distcp` files, each a sequence of items, one
/// after another; an item is a whole `torch.save` archive (a tensor, or a `BytesIO` of any other
/// object, itself `torch.save`d). The coordinator writes `.metadata`, a pickle of DCP's `Metadata`
/// whose `storage_data` says for each item (its fully qualified name, and for a shard of a tensor its
/// offsets) which file and byte range holds it.
///
/// A `.distcp` file is chunked item by item: each item's storages as tensors (aligned chunks, so an
/// unchanged shard of a tensor dedups and a changed one finds its delta base at the same place of the
/// previous checkpoint), its zip headers and pickle by content. Storages are named by their item's name
/// from the `.metadata` beside the file when the same put holds it, else by the item's offset in the file
/// (`@12345`), which `show` and `audit` name from the checkpoint's `.metadata` (``itemNames(metadata:)``).
/// Nothing is executed: both the items' pickles and `.metadata` are read as data (``PickleReader``).
enum DistributedCheckpoint {
    /// Whether `path` is a DCP data file.
    static func isDataFile(_ path: String) -> Bool { path.lowercased().hasSuffix(".distcp") }

    /// The `.metadata` that describes the data files in `path`'s folder.
    static func metadataPath(besides path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return ".metadata" }
        return String(path[...slash]) + ".metadata"
    }

    /// A data file's path relative to its folder, as `.metadata` records it.
    static func relativeName(_ path: String) -> String {
        String(path[(path.lastIndex(of: "/").map(path.index(after:)) ?? path.startIndex)...])
    }

    /// The name of the item at byte `offset` of a data file when `.metadata` does not name it.
    static func offsetName(_ offset: Int64) -> String { "@\(offset)" }

    /// The items `.metadata` describes: data file name (relative to its folder) → item offset → item name
    /// (`model.layers.0.weight`; a shard of a tensor gets its offsets, `model.embed.weight[128,0]`). Nil
    /// when the bytes are not a DCP metadata pickle this reader understands.
    static func itemNames(metadata bytes: [UInt8]) -> [String: [Int64: String]]? {
        var reader = PickleReader()
        guard let root = reader.read(bytes), case .object(_, _, let state?, _, _) = root,
              case .dict(let items)? = state["storage_data"] else { return nil }
        var out = [String: [Int64: String]]()
        for item in items {
            guard case .object(_, _, let key?, _, _) = item.key, case .string(let fqn)? = key["fqn"],
                  case .object(_, _, let value?, _, _) = item.value, case .string(let path)? = value["relative_path"],
                  case .int(let offset)? = value["offset"] else { continue }
            var name = fqn
            if let offsets = Self.integers(key["offset"]), offsets.contains(where: { $0 != 0 }) {
                name += "[" + offsets.map(String.init).joined(separator: ",") + "]"
            }
            out[path, default: [:]][offset] = name
        }
        return out
    }

    /// The integers of a `torch.Size` (a call of `torch.Size` on a tuple) or a tuple or list.
    private static func integers(_ value: PickleValue?) -> [Int64]? {
        switch value {
        case .tuple(let elements)?, .list(let elements)?:
            var out = [Int64]()
            for element in elements {
                guard case .int(let number) = element else { return nil }
                out.append(number)
            }
            return out
        case .object(_, let arguments, _, _, _)? where arguments.count == 1:
            return integers(arguments[0])
        default:
            return nil
        }
    }

    private static let localHeader: UInt32 = 0x0403_4b50
    private static let centralHeader: UInt32 = 0x0201_4b50
    private static let zip64Record: UInt32 = 0x0606_4b50
    private static let zip64Locator: UInt32 = 0x0706_4b50
    private static let endRecord: UInt32 = 0x0605_4b50

    /// Where the zip archive that ends exactly at `end` starts. `torch.save` into a stream writes its
    /// entries with data descriptors, so an archive cannot be walked forward by its local headers; its
    /// end record can be found backward: the record (and the zip64 record and locator before it, when
    /// present) gives the central directory's size and its offset from the archive's start, and the
    /// directory ends where those records begin. The start must hold a local header, and the directory
    /// a central header.
    static func archiveStart(_ file: some ByteSource, endingAt end: Int64, name: String) throws -> Int64 {
        func malformed(_ what: String) -> CKStoreError { CKStoreError(.malformedFile, "\(name): the item ending at \(end) \(what)") }
        // torch.save writes no archive comment: try the last 22 bytes first, then any comment length.
        for window in [22, 22 + 65_535] {
            let length = Int(min(end, Int64(window)))
            guard length >= 22 else { break }
            let tail = try file.read(count: length, at: end - Int64(length))
            for index in stride(from: length - 22, through: 0, by: -1) where tail.loadLittleEndian(UInt32.self, at: index) == endRecord {
                guard index + 22 + Int(tail.loadLittleEndian(UInt16.self, at: index + 20)) == length else { continue }
                let record = end - Int64(length - index)
                if let start = try start(ofArchiveWithEndRecordAt: record, tail: Array(tail[index..<(index + 22)]), file: file) { return start }
            }
        }
        throw malformed("is not a zip archive (no end record that ends there)")
    }

    private static func start(ofArchiveWithEndRecordAt record: Int64, tail: [UInt8], file: some ByteSource) throws -> Int64? {
        var directorySize = Int64(tail.loadLittleEndian(UInt32.self, at: 12))
        var directoryOffset = Int64(tail.loadLittleEndian(UInt32.self, at: 16))
        var directoryEnd = record
        if record >= 76 {
            let zip64 = try file.read(count: 76, at: record - 76)
            if zip64.loadLittleEndian(UInt32.self, at: 0) == zip64Record, zip64.loadLittleEndian(UInt64.self, at: 4) == 44,
               zip64.loadLittleEndian(UInt32.self, at: 56) == zip64Locator {
                directorySize = Int64(bitPattern: zip64.loadLittleEndian(UInt64.self, at: 40))
                directoryOffset = Int64(bitPattern: zip64.loadLittleEndian(UInt64.self, at: 48))
                directoryEnd = record - 76
            }
        }
        // Sizes come from the file: compared before subtracting, so that no hostile value overflows.
        guard directorySize >= 0, directoryOffset >= 0, directorySize <= directoryEnd, directoryOffset <= directoryEnd - directorySize else { return nil }
        let start = directoryEnd - directorySize - directoryOffset
        guard try file.read(count: 4, at: start).loadLittleEndian(UInt32.self, at: 0) == localHeader else { return nil }
        if directorySize >= 4, try file.read(count: 4, at: directoryEnd - directorySize).loadLittleEndian(UInt32.self, at: 0) != centralHeader { return nil }
        return start
    }

    /// The layout of a `.distcp` file: its items' storages as tensors, named by `names` (item offset →
    /// name) or by offset. Items are found from the end of the file back; an item that is not a zip
    /// archive ends the walk, and what is before it is opaque, so that every byte is still stored exactly
    /// (I-3). A file with no item found is not a DCP data file.
    static func layout(of file: some ByteSource, size: Int64, path: String, names: [Int64: String]?) throws -> FileLayout {
        var tensors = [FileLayout.Region]()
        var widths = [String: Int]()
        var used = Set<String>()
        // The items, from the last back to the first: each ends where the next starts.
        var items = [(start: Int64, end: Int64)]()
        var end = size
        while end > 0 {
            do {
                let start = try archiveStart(file, endingAt: end, name: path)
                items.append((start, end))
                end = start
            } catch {
                // What is before the items found stays opaque (every byte is stored either way).
                guard !items.isEmpty else { throw error }
                break
            }
        }
        for (start, end) in items.reversed() {
            let inner: FileLayout
            do {
                let window = WindowByteSource(base: file, start: start, size: end - start)
                inner = try TorchZipFile.parse(window, size: end - start, name: path).layout(reading: window)
            } catch {
                continue
            }
            let storages = inner.regions.filter { if case .tensor = $0.kind { true } else { false } }
            let item = names?[start] ?? offsetName(start)
            for region in storages {
                guard case .tensor(let storageName, let dtype, let shape) = region.kind else { continue }
                var name = storages.count == 1 ? item : item + "/" + storageName
                if !used.insert(name).inserted { name = offsetName(start) + "/" + storageName }
                used.insert(name)
                widths[name] = inner.storageElementWidths[storageName]
                tensors.append(FileLayout.Region(kind: .tensor(name: name, dtype: dtype, shape: shape), begin: region.begin + start, end: region.end + start))
            }
        }
        var layout = FileLayout.covering(format: .torchDCP, size: size, tensors: tensors)
        layout.storageElementWidths = widths
        return layout
    }
}
