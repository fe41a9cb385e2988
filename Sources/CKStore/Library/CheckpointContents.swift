public import Foundation

/// Everything a training loop hands to ``CheckpointStore/save(_:)``: tensors, state and metadata.
///
/// In the store it becomes the checkpoint folder a trainer would have written: `model.safetensors` (the
/// ``tensors``), `optimizer.safetensors` (the ``optimizerState``), `config.json` (the
/// ``modelConfig``), `training_config.json` (the ``trainingConfig``) and the extra ``files``. A put of
/// such a folder stores exactly the same chunks and manifest.
///
/// ```swift
/// var contents = CheckpointContents(run: "mnist-mlp", step: 1200)
/// contents.tensors = [try TensorValue(name: "fc1.weight", shape: [128, 784], floats: weights)]
/// contents.metrics["loss"] = 0.31
/// try contents.setModelConfig(["hidden": 128, "layers": 2])
/// ```
public struct CheckpointContents: Sendable {
    /// The run the checkpoint belongs to.
    public var run: String
    /// The training step; unique in the run.
    public var step: Int64
    /// The epoch, if the loop counts them.
    public var epoch: Double?
    /// Metrics such as `loss`, for `ls`, audits and keep-best rules.
    public var metrics: [String: Double] = [:]
    /// Tags, for `ls` and keep-tag rules.
    public var tags: [String] = []
    /// Free-form metadata kept in the manifest.
    public var metadata: [String: String] = [:]
    /// Model weights, written as `model.safetensors` in this order.
    public var tensors: [TensorValue] = []
    /// Optimizer state (moments, step counts), written as `optimizer.safetensors`: the optimizer part
    /// retention rules can drop.
    public var optimizerState: [TensorValue] = []
    /// The model's configuration, written as `config.json` (and kept in the manifest).
    public var modelConfig: JSONValue?
    /// The training configuration, written as `training_config.json`.
    public var trainingConfig: JSONValue?
    /// More files by relative path (scheduler state, RNG state, a tokenizer…).
    public var files: [String: Data] = [:]
    /// String metadata stored in the `__metadata__` of `model.safetensors`.
    public var safetensorsMetadata: [String: String] = ["format": "pt"]

    /// Empty contents for `run` at `step`.
    public init(run: String, step: Int64) {
        self.run = run
        self.step = step
    }

    /// Sets ``modelConfig`` from any JSON-encodable value.
    public mutating func setModelConfig(_ value: some Encodable) throws {
        modelConfig = try JSONValue(encoding: value)
    }

    /// Sets ``trainingConfig`` from any JSON-encodable value.
    public mutating func setTrainingConfig(_ value: some Encodable) throws {
        trainingConfig = try JSONValue(encoding: value)
    }

    /// The files this checkpoint is made of, by path, in path order.
    func inputs() throws -> [CheckpointStore.PutInput] {
        var out = [String: MemoryFile]()
        if !tensors.isEmpty { out["model.safetensors"] = try SafetensorsEncoder.file(tensors, metadata: safetensorsMetadata, what: "model.safetensors") }
        if !optimizerState.isEmpty { out["optimizer.safetensors"] = try SafetensorsEncoder.file(optimizerState, metadata: [:], what: "optimizer.safetensors") }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        if let modelConfig { out["config.json"] = MemoryFile(pieces: [Array(try encoder.encode(modelConfig))]) }
        if let trainingConfig { out["training_config.json"] = MemoryFile(pieces: [Array(try encoder.encode(trainingConfig))]) }
        for (path, data) in files {
            guard RelativePath.isSafe(path) else {
                throw CKStoreError(.unsafePath, "file name \(path) is not a plain relative path inside the checkpoint")
            }
            guard out[path] == nil else {
                throw CKStoreError(.invalidArgument, "file \(path) is given twice (tensors, optimizer state and configurations have fixed file names)")
            }
            out[path] = MemoryFile(pieces: [data.withUnsafeBytes { [UInt8](copying: $0) }])
        }
        return out.sorted { $0.key < $1.key }.map { CheckpointStore.PutInput(path: $0.key, mode: 0o644, content: .memory($0.value)) }
    }
}

extension JSONValue {
    /// The JSON form of any encodable value.
    public init(encoding value: some Encodable) throws {
        do {
            self = try JSONDecoder().decode(JSONValue.self, from: JSONEncoder().encode(value))
        } catch {
            throw CKStoreError(.invalidArgument, "cannot encode \(type(of: value)) as JSON: \(error)")
        }
    }
}

/// Lays out tensors as a safetensors file, as the format's reference writer does: an 8-byte
/// little-endian header length, a JSON header (`__metadata__` first, then each tensor with its dtype,
/// shape and `data_offsets`) padded with spaces to a multiple of 8 bytes, then the tensors' bytes back to
/// back in the given order.
enum SafetensorsEncoder {
    static func header(_ tensors: [TensorValue], metadata: [String: String]) throws -> [UInt8] {
        var json = "{"
        var first = true
        func field(_ key: String, _ value: String) {
            json += (first ? "" : ",") + jsonString(key) + ":" + value
            first = false
        }
        if !metadata.isEmpty {
            field("__metadata__", "{" + metadata.sorted { $0.key < $1.key }.map { jsonString($0.key) + ":" + jsonString($0.value) }.joined(separator: ",") + "}")
        }
        var offset = 0
        var names = Set<String>()
        for tensor in tensors {
            guard names.insert(tensor.name).inserted, tensor.name != "__metadata__" else {
                throw CKStoreError(.invalidArgument, "tensor name \(tensor.name) is used twice or reserved")
            }
            let shape = "[" + tensor.shape.map(String.init).joined(separator: ",") + "]"
            field(tensor.name, "{\"dtype\":\"\(tensor.dtype.name)\",\"shape\":\(shape),\"data_offsets\":[\(offset),\(offset + tensor.bytes.count)]}")
            offset += tensor.bytes.count
        }
        json += "}"
        var header = Array(json.utf8)
        while header.count % 8 != 0 { header.append(0x20) }
        var length = UInt64(header.count).littleEndian
        return withUnsafeBytes(of: &length) { Array($0) } + header
    }

    static func file(_ tensors: [TensorValue], metadata: [String: String], what: String) throws -> MemoryFile {
        do {
            return MemoryFile(pieces: [try header(tensors, metadata: metadata)] + tensors.map(\.bytes))
        } catch let error as CKStoreError {
            throw CKStoreError(error.code, "\(what): \(error.message)")
        }
    }

    /// A JSON string literal.
    static func jsonString(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
