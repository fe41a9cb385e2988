/// A file cut into regions that are chunked differently: tensor bytes in aligned fixed-size chunks,
/// everything else by content.
struct FileLayout: Sendable {
    /// A byte range of the file and how to chunk it.
    struct Region: Sendable {
        enum Kind: Sendable {
            /// Format bookkeeping (a safetensors header, zip headers, a pickle): content-defined chunks.
            case opaque
            /// A tensor or torch storage: fixed-size chunks aligned to its start.
            case tensor(name: String, dtype: DType?, shape: [Int]?)
        }

        var kind: Kind
        var begin: Int64
        var end: Int64
        var length: Int64 { end - begin }
    }

    var format: FileFormat
    var regions: [Region]
    /// Tensors with no bytes (a dimension of 0): no region, but they belong in the manifest.
    var emptyTensors: [Region] = []
    /// For torch zip files: the element width of each storage entry, from the pickle's storage records
    /// (entries missing here are taken as 4-byte elements).
    var storageElementWidths: [String: Int] = [:]
    /// For an optimizer's `torch.save`d state dict: its parameter groups.
    var optimizer: OptimizerSummary?

    /// One opaque region covering the whole file.
    static func opaque(size: Int64) -> FileLayout {
        FileLayout(format: .opaque, regions: size > 0 ? [Region(kind: .opaque, begin: 0, end: size)] : [])
    }

    /// Fills the gaps between `tensors` (sorted, non-overlapping, inside `0..<size`) with opaque regions.
    static func covering(format: FileFormat, size: Int64, tensors: [Region]) -> FileLayout {
        var regions = [Region]()
        var position: Int64 = 0
        for tensor in tensors {
            if tensor.begin > position {
                regions.append(Region(kind: .opaque, begin: position, end: tensor.begin))
            }
            regions.append(tensor)
            position = tensor.end
        }
        if position < size {
            regions.append(Region(kind: .opaque, begin: position, end: size))
        }
        return FileLayout(format: format, regions: regions)
    }
}

/// Reads a file's layout by its kind; a file that does not parse is opaque (invariant I-3).
enum FormatDetector {
    /// The layout of `file`, and a warning when a tensor-aware file had to be stored as opaque.
    /// `dcpNames` names the items of a `.distcp` file by offset, from the `.metadata` beside it.
    static func layout(of file: some ByteSource, path: String, size: Int64, dcpNames: [Int64: String]? = nil) -> (FileLayout, warning: String?) {
        let lowered = path.lowercased()
        if DistributedCheckpoint.isDataFile(path) {
            do {
                return (try DistributedCheckpoint.layout(of: file, size: size, path: path, names: dcpNames), nil)
            } catch {
                return (.opaque(size: size), "\(path): not a torch.distributed.checkpoint data file of torch.save items, stored as opaque: \(CKStoreError.wrap(error).message)")
            }
        }
        if lowered.hasSuffix(".safetensors") {
            do {
                let parsed = try SafetensorsFile.parse(file, size: size, name: path)
                return (parsed.layout, nil)
            } catch {
                return (.opaque(size: size), "\(path): not a valid safetensors file, stored as opaque: \(CKStoreError.wrap(error).message)")
            }
        }
        if [".pt", ".bin", ".pth", ".ckpt"].contains(where: { lowered.hasSuffix($0) }) {
            guard size >= 4, let magic = try? file.read(count: 4, at: 0), magic == [0x50, 0x4b, 0x03, 0x04] else {
                // torch.save's legacy format (a bare pickle stream) and other non-zip files: opaque by design.
                return (.opaque(size: size), nil)
            }
            do {
                let archive = try TorchZipFile.parse(file, size: size, name: path)
                return (archive.layout(reading: file), nil)
            } catch {
                return (.opaque(size: size), "\(path): not a valid torch.save zip archive, stored as opaque: \(CKStoreError.wrap(error).message)")
            }
        }
        return (.opaque(size: size), nil)
    }
}
