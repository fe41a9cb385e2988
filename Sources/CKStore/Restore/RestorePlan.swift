#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What one read of a checkpoint produces: outputs (whole files, safetensors files of a tensor subset,
/// or single tensors), each a run of the checkpoint's chunks behind an optional prefix, and the symbolic
/// links to create. Decided from the manifest and the catalogue's dropped parts before anything is read.
struct RestorePlan: Sendable {
    /// One run of bytes to produce: where it goes, and from which chunks (with the bytes to put first,
    /// for a tensor subset's new header).
    struct Output: Sendable {
        var path: String
        var mode: UInt32
        var prefix: [UInt8]
        var chunks: [ChunkRef]
        var size: Int64
        /// The tensor each chunk belongs to, for error messages.
        var tensorOfChunk: [Int: String] = [:]

        /// "chunk 3 (tensor layers.0.attn.weight)", to name what damage breaks.
        func describe(_ index: Int) -> String {
            tensorOfChunk[index].map { "chunk \(index), tensor \($0)" } ?? "chunk \(index)"
        }
    }

    var id: CheckpointID
    var manifest: Manifest
    var outputs: [Output]
    var links: [FileEntry]

    /// The paths the plan writes, outputs first.
    var paths: [String] { outputs.map(\.path) + links.map(\.path) }
}

extension RestorePlan {
    /// The files (or safetensors files of the tensors matching `tensors`) of a checkpoint that `get`
    /// restores; files a part rule dropped are left out, and files that lost tensors come back as valid
    /// safetensors files without them.
    ///
    /// - Throws: `notFound` for a file that is not there or was dropped, and for a tensor pattern that
    ///   matches nothing.
    static func files(of manifest: Manifest, id: CheckpointID, dropped: DroppedParts, files: [String], tensors: [String], reader: ChunkReader) throws -> RestorePlan {
        for path in files {
            if let part = dropped.files[RelativePath.normalize(path) ?? path] {
                throw CKStoreError(.notFound, "checkpoint \(id.short) (\(manifest.run)@\(manifest.step)) no longer has \(path): retention dropped its \(part) part")
            }
        }
        var selected = manifest.files.filter { dropped.files[$0.path] == nil }
        if !files.isEmpty {
            var byPath = [String: FileEntry]()
            for file in manifest.files { byPath[file.path] = file }
            selected = []
            for path in files {
                let normalized = RelativePath.normalize(path) ?? path
                guard let file = byPath[normalized] else {
                    throw CKStoreError(.notFound, "checkpoint \(id.short) (\(manifest.run)@\(manifest.step)) has no file \(path); its files: \(manifest.files.map(\.path).joined(separator: ", "))")
                }
                selected.append(file)
            }
        }
        var outputs = [Output]()
        if tensors.isEmpty {
            for file in selected where file.format != .symlink {
                if let gone = dropped.tensors[file.path] {
                    outputs.append(try subset(of: file, tensors: (file.tensors ?? []).filter { !gone.contains($0.name) }, id: id, reader: reader))
                    continue
                }
                var output = Output(path: file.path, mode: file.mode, prefix: [], chunks: file.chunks, size: file.size)
                for tensor in file.tensors ?? [] {
                    for index in tensor.firstChunk..<(tensor.firstChunk + tensor.chunkCount) { output.tensorOfChunk[index] = tensor.name }
                }
                outputs.append(output)
            }
            return RestorePlan(id: id, manifest: manifest, outputs: outputs, links: selected.filter { $0.format == .symlink })
        }
        var matchedPatterns = Set<String>()
        for file in selected where file.format == .safetensors || file.format == .torchZip || file.format == .torchDCP {
            let chosen = (file.tensors ?? []).filter { tensor in
                guard dropped.tensors[file.path]?.contains(tensor.name) != true, tensor.dtype != nil, tensor.shape != nil else { return false }
                let hits = tensors.filter { fnmatch($0, tensor.name, 0) == 0 }
                matchedPatterns.formUnion(hits)
                return !hits.isEmpty
            }
            guard !chosen.isEmpty else { continue }
            outputs.append(try subset(of: file, tensors: chosen, id: id, reader: reader))
        }
        let unmatched = tensors.filter { !matchedPatterns.contains($0) }
        guard unmatched.isEmpty else {
            throw CKStoreError(.notFound, "checkpoint \(id.short) (\(manifest.run)@\(manifest.step)) has no tensor matching \(unmatched.joined(separator: ", ")) (in its safetensors files, or among the torch.save storages whose dtype and shape the pickle gives)")
        }
        return RestorePlan(id: id, manifest: manifest, outputs: outputs, links: [])
    }

    /// How tensors are chosen by name.
    enum TensorSelection: Sendable {
        /// Names matching one of these globs; every tensor when empty.
        case matching([String])
        /// Exactly this name.
        case named(String)
    }

    /// The tensors of one safetensors file that `selection` chooses, each its own output named by the
    /// tensor: what the library's tensor loads read.
    ///
    /// - Throws: `notFound` when the file is missing or dropped, or no tensor is chosen.
    static func tensors(of manifest: Manifest, id: CheckpointID, dropped: DroppedParts, in path: String, _ selection: TensorSelection) throws -> (RestorePlan, [TensorEntry]) {
        let file = try regularFile(path, of: manifest, id: id, dropped: dropped)
        let gone = dropped.tensors[path] ?? []
        let chosen = (file.tensors ?? []).filter { tensor in
            guard tensor.dtype != nil, !gone.contains(tensor.name) else { return false }
            switch selection {
            case .matching(let patterns): return patterns.isEmpty || patterns.contains { fnmatch($0, tensor.name, 0) == 0 }
            case .named(let name): return tensor.name == name
            }
        }
        guard !chosen.isEmpty else {
            switch selection {
            case .named(let name) where gone.contains(name):
                throw CKStoreError(.notFound, "checkpoint \(id.short): tensor \(name) of \(path) was dropped by a retention rule")
            case .named(let name):
                throw CKStoreError(.notFound, "checkpoint \(id.short): \(path) has no tensor \(name)")
            case .matching(let patterns):
                throw CKStoreError(.notFound, "checkpoint \(id.short): no tensor of \(path) matches \(patterns.joined(separator: ", "))")
            }
        }
        let outputs = chosen.map { tensor in
            Output(path: tensor.name, mode: file.mode, prefix: [], chunks: Array(file.chunks[tensor.firstChunk..<(tensor.firstChunk + tensor.chunkCount)]),
                   size: tensor.byteCount, tensorOfChunk: Dictionary(uniqueKeysWithValues: (0..<tensor.chunkCount).map { ($0, tensor.name) }))
        }
        return (RestorePlan(id: id, manifest: manifest, outputs: outputs, links: []), chosen)
    }

    /// The regular file `path` of a checkpoint, whole: what loading one file into memory reads.
    static func wholeFile(_ path: String, of manifest: Manifest, id: CheckpointID, dropped: DroppedParts) throws -> RestorePlan {
        let file = try regularFile(path, of: manifest, id: id, dropped: dropped)
        if dropped.tensors[path] != nil {
            throw CKStoreError(.notFound, "checkpoint \(id.short): tensors of \(path) were dropped by a retention rule; load the remaining ones with loadTensors")
        }
        return RestorePlan(id: id, manifest: manifest, outputs: [Output(path: file.path, mode: file.mode, prefix: [], chunks: file.chunks, size: file.size)], links: [])
    }

    private static func regularFile(_ path: String, of manifest: Manifest, id: CheckpointID, dropped: DroppedParts) throws -> FileEntry {
        guard let file = manifest.files.first(where: { $0.path == path }), file.format != .symlink else {
            throw CKStoreError(.notFound, "checkpoint \(id.short) has no file \(path)")
        }
        if let part = dropped.files[path] {
            throw CKStoreError(.notFound, "checkpoint \(id.short): \(path) was dropped by the retention rule for part \(part)")
        }
        return file
    }

    /// A valid safetensors file holding `tensors` of `file`, in their order, with the file's metadata.
    /// From a torch.save archive (`optimizer.pt`) it is `optimizer.pt.safetensors`, its tensors named as
    /// the pickle names them (`state.12.exp_avg`).
    private static func subset(of file: FileEntry, tensors: [TensorEntry], id: CheckpointID, reader: ChunkReader) throws -> Output {
        let fromTorch = file.format == .torchZip || file.format == .torchDCP
        let metadata = fromTorch ? ["format": "pt", "source": file.path] : try originalMetadata(of: file, id: id, reader: reader)
        var described = [(name: String, dtype: DType, shape: [Int], length: Int64)]()
        var chunks = [ChunkRef]()
        var tensorOfChunk = [Int: String]()
        for tensor in tensors {
            guard let dtype = tensor.dtype, let shape = tensor.shape else { continue }
            described.append((tensor.name, dtype, shape, tensor.byteCount))
            for offset in 0..<tensor.chunkCount { tensorOfChunk[chunks.count + offset] = tensor.name }
            chunks += file.chunks[tensor.firstChunk..<(tensor.firstChunk + tensor.chunkCount)]
        }
        let header = SafetensorsFile.header(tensors: described, metadata: metadata)
        let size = Int64(header.count) + described.reduce(0) { $0 + $1.length }
        return Output(path: fromTorch ? file.path + ".safetensors" : file.path, mode: file.mode, prefix: header, chunks: chunks, size: size, tensorOfChunk: tensorOfChunk)
    }

    /// The `__metadata__` of a stored safetensors file, read from its header chunk(s).
    private static func originalMetadata(of file: FileEntry, id: CheckpointID, reader: ChunkReader) throws -> [String: String]? {
        let headerEnd = file.tensors?.map(\.begin).min() ?? file.size
        var header = [UInt8]()
        for chunk in file.chunks where Int64(header.count) < headerEnd {
            header += try reader.read(chunk.digest, what: "\(file.path) in checkpoint \(id.short)").array
        }
        guard header.count >= 8 else { return nil }
        let length = Int(header.loadLittleEndian(UInt64.self, at: 0))
        guard 8 + length <= header.count else { return nil }
        return try? SafetensorsFile.parse(header: Array(header[8..<(8 + length)]), size: file.size, name: file.path).metadata
    }
}

/// What part rules took from a checkpoint: whole files (path → part) and tensors (path → names).
struct DroppedParts: Sendable {
    var files: [String: String]
    var tensors: [String: Set<String>]
}
