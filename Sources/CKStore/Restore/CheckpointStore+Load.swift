#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A checkpoint read into memory.
public struct LoadedCheckpoint: Sendable {
    /// The checkpoint read.
    public var id: CheckpointID
    /// Its manifest: run, step, metrics, files and tensors.
    public var manifest: Manifest
    /// Every regular file by path (files a part rule dropped are absent).
    public var files: [String: [UInt8]]

    /// The tensors of one safetensors file of the checkpoint (`model.safetensors` by default).
    ///
    /// - Throws: ``CKStoreError`` (`notFound`) when there is no such file.
    public func tensors(in path: String = "model.safetensors") throws -> [TensorValue] {
        guard let bytes = files[path], let entry = manifest.files.first(where: { $0.path == path }) else {
            throw CKStoreError(.notFound, "checkpoint \(id.short) has no file \(path)")
        }
        return try (entry.tensors ?? []).compactMap { tensor in
            guard let dtype = tensor.dtype else { return nil }
            return try TensorValue(name: tensor.name, dtype: dtype, shape: tensor.shape ?? [], bytes: Array(bytes[Int(tensor.begin)..<Int(tensor.end)]))
        }
    }
}

extension CheckpointStore {
    /// The newest checkpoint of `run` by step, or nil when the run has none.
    public func latest(run: String) throws -> CheckpointID? {
        try withCatalogue { try $0.latest(run: run) }
    }

    /// Reads a whole checkpoint into memory, every chunk and file checked against its SHA-256.
    ///
    /// ```swift
    /// if let id = try? await store.latestValid(run: "mnist-mlp") {
    ///     let checkpoint = try await store.load(id)
    ///     let weights = try checkpoint.tensors()
    /// }
    /// ```
    public func load(_ id: CheckpointID) async throws -> LoadedCheckpoint {
        let manifest = try manifest(of: id)
        let dropped = try withCatalogue { try $0.droppedFiles(of: id) }
        var files = [String: [UInt8]]()
        for file in manifest.files where file.format != .symlink && dropped[file.path] == nil {
            files[file.path] = try await loadFile(id, path: file.path, manifest: manifest)
        }
        return LoadedCheckpoint(id: id, manifest: manifest, files: files)
    }

    /// Reads one file of a checkpoint into memory, checked against its SHA-256.
    ///
    /// - Throws: ``CKStoreError``: `notFound` when the checkpoint has no such file or a part rule dropped
    ///   it, `damaged` naming the chunk when stored bytes fail their check.
    public func loadFile(_ id: CheckpointID, path: String) async throws -> [UInt8] {
        try await loadFile(id, path: path, manifest: manifest(of: id))
    }

    private func loadFile(_ id: CheckpointID, path: String, manifest: Manifest) async throws -> [UInt8] {
        let file = try fileEntry(path, of: id, manifest: manifest)
        if let part = try withCatalogue({ try $0.droppedFiles(of: id) })[path] {
            throw CKStoreError(.notFound, "checkpoint \(id.short): \(path) was dropped by the retention rule for part \(part)")
        }
        if try withCatalogue({ try $0.droppedTensors(of: id) })[path] != nil {
            throw CKStoreError(.notFound, "checkpoint \(id.short): tensors of \(path) were dropped by a retention rule; load the remaining ones with loadTensors")
        }
        var bytes = [UInt8]()
        bytes.reserveCapacity(Int(file.size))
        let reader = chunkReader()
        for (index, chunk) in file.chunks.enumerated() {
            bytes += try reader.read(chunk.digest, what: "checkpoint \(id.short), \(path), chunk \(index)").array
        }
        guard bytes.count == file.size, SHA256Hasher.digest(bytes) == file.sha256 else {
            throw CKStoreError(.damaged, "checkpoint \(id.short): \(path) does not match its SHA-256 once read")
        }
        return bytes
    }

    /// Reads the tensors whose names match `patterns` (globs; all when empty) from one safetensors file of
    /// a checkpoint, reading only their chunks, each checked against its SHA-256.
    ///
    /// - Parameters:
    ///   - file: the safetensors file (`model.safetensors` by default).
    /// - Throws: ``CKStoreError`` (`notFound`) when no tensor matches.
    public func loadTensors(_ id: CheckpointID, matching patterns: [String] = [], in file: String = "model.safetensors") async throws -> [TensorValue] {
        let manifest = try manifest(of: id)
        let entry = try fileEntry(file, of: id, manifest: manifest)
        let dropped = try withCatalogue { try $0.droppedTensors(of: id) }[file] ?? []
        let chosen = (entry.tensors ?? []).filter { tensor in
            tensor.dtype != nil && !dropped.contains(tensor.name) && (patterns.isEmpty || patterns.contains { fnmatch($0, tensor.name, 0) == 0 })
        }
        guard !chosen.isEmpty else {
            throw CKStoreError(.notFound, "checkpoint \(id.short): no tensor of \(file) matches \(patterns.joined(separator: ", "))")
        }
        let reader = chunkReader()
        return try chosen.map { tensor in
            var bytes = [UInt8](repeating: 0, count: Int(tensor.byteCount))
            try bytes.withUnsafeMutableBytes { try copyTensor(tensor, of: entry, id: id, into: $0, reader: reader) }
            return try TensorValue(name: tensor.name, dtype: tensor.dtype ?? .f32, shape: tensor.shape ?? [], bytes: bytes)
        }
    }

    /// Reads one tensor's bytes straight into `buffer`, which must be exactly the tensor's size; only the
    /// tensor's chunks are read, each checked against its SHA-256.
    ///
    /// ```swift
    /// var weights = [Float](repeating: 0, count: 128 * 784)
    /// try await weights.withUnsafeMutableBytes { try await store.readTensor(id, name: "fc1.weight", into: $0) }
    /// ```
    public func readTensor(_ id: CheckpointID, name: String, in file: String = "model.safetensors", into buffer: UnsafeMutableRawBufferPointer) throws {
        let manifest = try manifest(of: id)
        let entry = try fileEntry(file, of: id, manifest: manifest)
        guard let tensor = entry.tensors?.first(where: { $0.name == name }) else {
            throw CKStoreError(.notFound, "checkpoint \(id.short): \(file) has no tensor \(name)")
        }
        if try withCatalogue({ try $0.droppedTensors(of: id) })[file]?.contains(name) == true {
            throw CKStoreError(.notFound, "checkpoint \(id.short): tensor \(name) of \(file) was dropped by a retention rule")
        }
        guard buffer.count == tensor.byteCount else {
            throw CKStoreError(.invalidArgument, "tensor \(name) has \(tensor.byteCount) bytes; the buffer has \(buffer.count)")
        }
        try copyTensor(tensor, of: entry, id: id, into: buffer, reader: chunkReader())
    }

    private func fileEntry(_ path: String, of id: CheckpointID, manifest: Manifest) throws -> FileEntry {
        guard let file = manifest.files.first(where: { $0.path == path }), file.format != .symlink else {
            throw CKStoreError(.notFound, "checkpoint \(id.short) has no file \(path)")
        }
        return file
    }

    /// Copies a tensor's chunks into `buffer`: tensors are cut into chunks aligned to their start, so the
    /// tensor is its chunks back to back.
    private func copyTensor(_ tensor: TensorEntry, of file: FileEntry, id: CheckpointID, into buffer: UnsafeMutableRawBufferPointer, reader: ChunkReader) throws {
        var written = 0
        for index in tensor.firstChunk..<(tensor.firstChunk + tensor.chunkCount) {
            let chunk = try reader.read(file.chunks[index].digest, what: "checkpoint \(id.short), \(file.path), tensor \(tensor.name)")
            let count = min(chunk.count, buffer.count - written)
            chunk.withUnsafeBytes { source in
                UnsafeMutableRawBufferPointer(rebasing: buffer[written..<(written + count)]).copyMemory(from: UnsafeRawBufferPointer(rebasing: source[0..<count]))
            }
            written += count
        }
        guard written == buffer.count else {
            throw CKStoreError(.damaged, "checkpoint \(id.short): tensor \(tensor.name) of \(file.path) has \(written) bytes in its chunks, \(buffer.count) expected")
        }
    }
}
