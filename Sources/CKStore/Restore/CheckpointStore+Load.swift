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

    /// Reads a whole checkpoint into memory, every chunk checked against its SHA-256.
    ///
    /// ```swift
    /// if let id = try? await store.latestValid(run: "mnist-mlp") {
    ///     let checkpoint = try await store.load(id)
    ///     let weights = try checkpoint.tensors()
    /// }
    /// ```
    ///
    /// - Throws: ``CKStoreError``: `notFound` when a file lost tensors to a part rule (load those with
    ///   ``loadTensors(_:matching:in:)``), `damaged` naming the chunk when stored bytes fail their check.
    public func load(_ id: CheckpointID) async throws(CKStoreError) -> LoadedCheckpoint {
        try await CKStoreError.wrapping("load of \(id.short)") {
            let restorer = restorer()
            return try await restorer.locked {
                let manifest = try restorer.manifest(of: id)
                let dropped = try restorer.dropped(of: id)
                let plans = try manifest.files.filter { $0.format != .symlink && dropped.files[$0.path] == nil }.map { file in
                    try RestorePlan.wholeFile(file.path, of: manifest, id: id, dropped: dropped)
                }
                let plan = RestorePlan(id: id, manifest: manifest, outputs: plans.flatMap(\.outputs), links: [])
                return LoadedCheckpoint(id: id, manifest: manifest, files: try await Self.read(plan, with: restorer))
            }
        }
    }

    /// Reads one file of a checkpoint into memory, every chunk checked against its SHA-256.
    ///
    /// - Throws: ``CKStoreError``: `notFound` when the checkpoint has no such file or a part rule dropped
    ///   it, `damaged` naming the chunk when stored bytes fail their check.
    public func loadFile(_ id: CheckpointID, path: String) async throws(CKStoreError) -> [UInt8] {
        try await CKStoreError.wrapping("load of \(path) from \(id.short)") {
            let restorer = restorer()
            return try await restorer.locked {
                let plan = try RestorePlan.wholeFile(path, of: try restorer.manifest(of: id), id: id, dropped: try restorer.dropped(of: id))
                return try await Self.read(plan, with: restorer)[path] ?? []
            }
        }
    }

    /// Reads the tensors whose names match `patterns` (globs; all when empty) from one safetensors file of
    /// a checkpoint, reading only their chunks, each checked against its SHA-256.
    ///
    /// - Parameters:
    ///   - file: the safetensors file (`model.safetensors` by default).
    /// - Throws: ``CKStoreError`` (`notFound`) when no tensor matches.
    public func loadTensors(_ id: CheckpointID, matching patterns: [String] = [], in file: String = "model.safetensors") async throws(CKStoreError) -> [TensorValue] {
        try await CKStoreError.wrapping("load of tensors of \(file) from \(id.short)") {
            let restorer = restorer()
            return try await restorer.locked {
                let (plan, tensors) = try RestorePlan.tensors(of: try restorer.manifest(of: id), id: id, dropped: try restorer.dropped(of: id), in: file, .matching(patterns))
                let bytes = try await Self.read(plan, with: restorer)
                return try tensors.map { tensor in
                    try TensorValue(name: tensor.name, dtype: tensor.dtype ?? .f32, shape: tensor.shape ?? [], bytes: bytes[tensor.name] ?? [])
                }
            }
        }
    }

    /// Reads one tensor's bytes straight into `buffer`, which must be exactly the tensor's size; only the
    /// tensor's chunks are read, each checked against its SHA-256.
    ///
    /// ```swift
    /// let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 128 * 784 * 4, alignment: 64)
    /// defer { buffer.deallocate() }
    /// try await store.readTensor(id, name: "fc1.weight", into: buffer)
    /// ```
    ///
    /// - Throws: ``CKStoreError``: `notFound` when there is no such tensor (or a part rule dropped it),
    ///   `invalidArgument` when `buffer` is not the tensor's size.
    public func readTensor(_ id: CheckpointID, name: String, in file: String = "model.safetensors", into buffer: UnsafeMutableRawBufferPointer) async throws(CKStoreError) {
        try await CKStoreError.wrapping("read of tensor \(name) from \(id.short)") {
            let restorer = restorer()
            try await restorer.locked {
                let (plan, tensors) = try RestorePlan.tensors(of: try restorer.manifest(of: id), id: id, dropped: try restorer.dropped(of: id), in: file, .named(name))
                guard let tensor = tensors.first, buffer.count == tensor.byteCount else {
                    throw CKStoreError(.invalidArgument, "tensor \(name) has \(tensors.first?.byteCount ?? 0) bytes; the buffer has \(buffer.count)")
                }
                let target = MemoryTarget(borrowing: buffer)
                _ = try await restorer.fill(plan) { _ in target }
            }
        }
    }

    /// Reads every output of `plan` into memory, by output path.
    private static func read(_ plan: RestorePlan, with restorer: Restorer) async throws -> [String: [UInt8]] {
        let targets = Dictionary(plan.outputs.map { ($0.path, MemoryTarget(count: Int($0.size))) }, uniquingKeysWith: { first, _ in first })
        _ = try await restorer.fill(plan) { output in
            guard let target = targets[output.path] else { throw CKStoreError(.internalInvariant, "no buffer for \(output.path)") }
            return target
        }
        return Dictionary(uniqueKeysWithValues: plan.outputs.compactMap { output in targets[output.path].map { (output.path, $0.bytes(count: Int(output.size))) } })
    }
}
