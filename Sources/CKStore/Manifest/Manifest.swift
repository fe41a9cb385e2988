public import Foundation

/// A checkpoint's full description: every file and, inside tensor-aware files, every tensor, each as an
/// ordered list of chunks; plus run, step, metrics and the rest of the metadata.
///
/// Stored as canonical JSON (sorted keys, no insignificant whitespace) in a manifest frame; the
/// checkpoint's id is the SHA-256 of those bytes.
public struct Manifest: Codable, Sendable, Equatable {
    /// The manifest format this ckstore writes.
    public static let currentFormat = 1

    /// How ckstore understood the file.
    public var format: Int
    /// The run.
    public var run: String
    /// The training step.
    public var step: Int64
    /// The epoch, when known.
    public var epoch: Double?
    /// Seconds since 1970, UTC.
    public var createdAt: Double
    /// Metrics such as `loss`.
    public var metrics: [String: Double]
    /// Tags given at put.
    public var tags: [String]
    /// Free-form metadata given at put.
    public var metadata: [String: String]
    /// The run's previous checkpoint at put time.
    public var parent: CheckpointID?
    /// The model's configuration (`config.json`), when the checkpoint has one.
    public var modelConfig: JSONValue?
    /// The trainer's state (`trainer_state.json`), when the checkpoint has one.
    public var trainerState: JSONValue?
    /// Every file, in path order.
    public var files: [FileEntry]
    /// On a shard manifest (a put with `--shard I/N`): which shard of its checkpoint it holds. A shard
    /// manifest is never a checkpoint itself; see ``combining(_:)``.
    public var shard: ShardSpec?
    /// On a checkpoint combined from shards: every shard's content, by index.
    public var shards: [ShardContent]?
    /// On a shard manifest whose files include a DCP `.metadata`: the names that file gives the items of
    /// data files other shards hold (path → `@<offset>` → item name), which combining applies to them.
    public var itemNames: [String: [String: String]]?

    enum CodingKeys: String, CodingKey {
        case format, run, step, epoch, metrics, tags, metadata, parent, files, shard, shards
        case itemNames = "item_names"
        case createdAt = "created_at"
        case modelConfig = "model_config"
        case trainerState = "trainer_state"
    }

    /// The time the checkpoint was created.
    public var createdDate: Date { Date(timeIntervalSince1970: createdAt) }

    /// The sum of the files' sizes.
    public var logicalBytes: Int64 { files.reduce(0) { $0 + $1.size } }

    /// Every chunk reference, in file order, repeats included.
    public var chunkCount: Int { files.reduce(0) { $0 + $1.chunks.count } }

    /// Tensors and torch storages over all files.
    public var tensorCount: Int { files.reduce(0) { $0 + ($1.tensors?.count ?? 0) } }

    /// The canonical bytes: JSON with sorted keys and no extra whitespace.
    public func canonicalJSON() throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.nonConformingFloatEncodingStrategy = NonFiniteJSON.encoding
        do {
            return Array(try encoder.encode(self))
        } catch {
            throw CKStoreError(.invalidArgument, "cannot encode the manifest of \(run)@\(step): \(error)")
        }
    }

    /// Parses manifest bytes.
    public static func decode(_ bytes: [UInt8], id: CheckpointID) throws -> Manifest {
        do {
            let decoder = JSONDecoder()
            decoder.nonConformingFloatDecodingStrategy = NonFiniteJSON.decoding
            let manifest = try decoder.decode(Manifest.self, from: Data(bytes))
            guard manifest.format <= currentFormat else {
                throw CKStoreError(.unsupportedSchema, "checkpoint \(id.short): manifest format \(manifest.format) is newer than this ckstore understands (\(currentFormat))")
            }
            if let problem = manifest.problem() {
                throw CKStoreError(.damaged, "checkpoint \(id.short): manifest is invalid: \(problem)")
            }
            return manifest
        } catch let error as CKStoreError {
            throw error
        } catch {
            throw CKStoreError(.damaged, "checkpoint \(id.short): manifest cannot be parsed: \(error)")
        }
    }

    /// The digest that identifies the content regardless of when it was put: the canonical JSON without
    /// the creation time and parent. Two puts of the same folder under the same run and step share it.
    public func contentDigest() throws -> ChunkDigest {
        var copy = self
        copy.createdAt = 0
        copy.parent = nil
        return SHA256Hasher.digest(try copy.canonicalJSON())
    }
}

/// One file of a checkpoint.
public struct FileEntry: Codable, Sendable, Equatable {
    /// The path relative to the checkpoint folder, `/`-separated.
    public var path: String
    /// Permission bits.
    public var mode: UInt32
    /// The file's size in bytes.
    public var size: Int64
    /// The SHA-256 of the whole file, when it was known without a second pass over the file: for files
    /// of at most one chunk (whose chunk digest it is), and for every file of manifests written before
    /// ckstore 0.7. `ckstore show --sha256sum` computes it for any file from the stored chunks.
    public var sha256: ChunkDigest?
    /// The file's digest over its chunks, ``chunkListDigest(_:)``: what identifies its content in
    /// manifests written by ckstore 0.7 and later (nil in earlier ones).
    public var digest: ChunkDigest?
    /// How ckstore understood the file.
    public var format: FileFormat
    /// For a symbolic link: its target, relative to the link's folder.
    public var linkTarget: String?
    /// The file's bytes, in order.
    public var chunks: [ChunkRef]
    /// Tensors (safetensors) or storages (torch zip), each a byte range aligned to its chunks.
    public var tensors: [TensorEntry]?
    /// For a torch zip holding an optimizer's state dict: its parameter groups and hyperparameters.
    public var optimizer: OptimizerSummary?
    /// In a checkpoint combined from shards: the shards that hold this file (several when ranks wrote the
    /// same bytes under the same path, such as a config every rank saves).
    public var shards: [Int]?

    enum CodingKeys: String, CodingKey {
        case path, mode, size, sha256, digest, format, chunks, tensors, optimizer, shards
        case linkTarget = "link_target"
    }

    /// An entry as manifests before ckstore 0.7 wrote it, with the whole file's SHA-256.
    public init(path: String, mode: UInt32, size: Int64, sha256: ChunkDigest, format: FileFormat, linkTarget: String?,
                chunks: [ChunkRef], tensors: [TensorEntry]?, optimizer: OptimizerSummary? = nil) {
        self.init(path: path, mode: mode, size: size, chunks: chunks, format: format, tensors: tensors, optimizer: optimizer)
        self.sha256 = sha256
        self.digest = nil
        self.linkTarget = linkTarget
    }

    /// A regular file's entry as a put writes it: its digest over `chunks`, and its SHA-256 when that is
    /// the digest of its one chunk (or of no bytes).
    init(path: String, mode: UInt32, size: Int64, chunks: [ChunkRef], format: FileFormat, tensors: [TensorEntry]?, optimizer: OptimizerSummary?) {
        self.path = path
        self.mode = mode
        self.size = size
        self.digest = Self.chunkListDigest(chunks)
        self.sha256 = chunks.count <= 1 ? (chunks.first?.digest ?? SHA256Hasher.digest([UInt8]())) : nil
        self.format = format
        self.chunks = chunks
        self.tensors = tensors
        self.optimizer = optimizer
    }

    /// A symbolic link's entry.
    init(link path: String, mode: UInt32, target: String) {
        self.init(path: path, mode: mode, size: 0, chunks: [], format: .symlink, tensors: nil, optimizer: nil)
        self.linkTarget = target
    }

    /// The digest of a file made of `chunks`: the SHA-256 of, for each chunk in order, its 32-byte SHA-256
    /// followed by its length as 8 bytes little-endian. It commits to every byte of the file as firmly
    /// as the file's own SHA-256 would, and costs nothing at put: each chunk is hashed anyway.
    ///
    /// To check a file without ckstore, cut it by the manifest's chunk lengths and compare each piece's
    /// `sha256sum` with the chunk's digest; or compare the whole file's `sha256sum` with what
    /// `ckstore show --sha256sum` prints.
    public static func chunkListDigest(_ chunks: [ChunkRef]) -> ChunkDigest {
        var hasher = SHA256Hasher()
        var bytes = [UInt8]()
        bytes.reserveCapacity(chunks.count * 40)
        for chunk in chunks {
            bytes += chunk.digest.bytes
            bytes.appendLittleEndian(UInt64(chunk.length))
        }
        hasher.update(bytes)
        return hasher.finalize()
    }
}

/// How ckstore understood a file.
public enum FileFormat: String, Codable, Sendable {
    case safetensors
    case torchZip = "torch-zip"
    /// A `torch.distributed.checkpoint` data file (`.distcp`): `torch.save` archives one after another.
    case torchDCP = "torch-dcp"
    case opaque
    case symlink
}

/// One chunk of a file.
public struct ChunkRef: Codable, Sendable, Equatable {
    /// The chunk's SHA-256.
    public var digest: ChunkDigest
    /// The chunk's length in bytes.
    public var length: Int

    enum CodingKeys: String, CodingKey {
        case digest = "d"
        case length = "n"
    }
}

/// A tensor (or a torch storage) inside a file.
public struct TensorEntry: Codable, Sendable, Equatable {
    /// The tensor's name. A torch storage is named by where its tensor sits in the saved object
    /// (`state.12.exp_avg`), or by its zip entry (`optimizer/data/17`) when the pickle does not say.
    public var name: String
    /// The safetensors dtype; for a torch storage, the one its storage type gives, when its shape is known.
    public var dtype: DType?
    /// The shape; for a torch storage, its tensor's when one tensor covers the whole storage, else its
    /// element count; nil when the pickle does not say.
    public var shape: [Int]?
    /// The tensor's bytes within the file: `[begin, end)`.
    public var begin: Int64
    /// One past the tensor's last byte in the file.
    public var end: Int64
    /// The tensor's chunks are `chunks[firstChunk ..< firstChunk + chunkCount]` of its file.
    public var firstChunk: Int
    /// How many chunks the tensor spans.
    public var chunkCount: Int

    enum CodingKeys: String, CodingKey {
        case name, dtype, shape, begin, end
        case firstChunk = "first_chunk"
        case chunkCount = "chunk_count"
    }

    /// The tensor's size in bytes.
    public var byteCount: Int64 { end - begin }
}

extension Manifest {
    /// The chunks checkpoint `id` (this manifest's) needs, with their number of uses, its manifest frame
    /// included; without `droppedPaths` and the tensors in `droppedTensors` (path → names) when a part
    /// rule took them.
    func chunkUses(id: CheckpointID, droppedPaths: Set<String> = [], droppedTensors: [String: Set<String>] = [:]) -> [ChunkDigest: Int] {
        var uses = [ChunkDigest: Int]()
        for file in files where !droppedPaths.contains(file.path) {
            var skipped = Set<Int>()
            for tensor in file.tensors ?? [] where droppedTensors[file.path]?.contains(tensor.name) == true {
                skipped.formUnion(tensor.firstChunk..<(tensor.firstChunk + tensor.chunkCount))
            }
            for (index, chunk) in file.chunks.enumerated() where !skipped.contains(index) { uses[chunk.digest, default: 0] += 1 }
        }
        uses[id.digest, default: 0] += 1
        return uses
    }
}

extension Manifest {
    /// The largest chunk any put writes is far below this; a larger length is damage, not data.
    static let maximumChunkLength = 1 << 30

    /// What makes this manifest one no put writes, or nil when it is sound: every count, range and size is
    /// checked against the chunks, so that nothing that reads a manifest can index out of range (a hostile
    /// or damaged manifest is reported as damage, never a crash).
    func problem() -> String? {
        guard format >= 1 else { return "format \(format)" }
        guard !run.isEmpty else { return "empty run name" }
        guard step >= 0 else { return "negative step \(step)" }
        if shard != nil, shards != nil { return "both a shard and a combined checkpoint" }
        if let shards {
            guard !shards.isEmpty, shards.count <= ShardSpec.maximumCount, shards.map(\.index) == Array(0..<shards.count) else {
                return "its shards are not numbered 0 to \(shards.count - 1)"
            }
        }
        var paths = Set<String>()
        for file in files {
            let name = file.path.debugDescription
            if let held = file.shards {
                guard let count = shards?.count, !held.isEmpty, held == held.sorted(), Set(held).count == held.count,
                      held.allSatisfy({ (0..<count).contains($0) }) else {
                    return "file \(name) names shards \(held) that the checkpoint does not have"
                }
            }
            guard !file.path.isEmpty, paths.insert(file.path).inserted else { return "file \(name) is empty or listed twice" }
            guard file.mode <= 0o7777 else { return "file \(name) has mode \(String(file.mode, radix: 8)), beyond 7777" }
            guard file.size >= 0 else { return "file \(name) has negative size \(file.size)" }
            if file.format == .symlink {
                guard file.linkTarget != nil, file.chunks.isEmpty, file.tensors == nil || file.tensors?.isEmpty == true else {
                    return "symbolic link \(name) has no target or has content"
                }
                continue
            }
            var total: Int64 = 0
            var ends = [Int64]()
            for chunk in file.chunks {
                guard chunk.length > 0, chunk.length <= Self.maximumChunkLength else { return "file \(name) has a chunk of \(chunk.length) bytes" }
                total += Int64(chunk.length)
                ends.append(total)
            }
            guard total == file.size else { return "file \(name): its chunks add up to \(total) bytes, its size says \(file.size)" }
            if let digest = file.digest, digest != FileEntry.chunkListDigest(file.chunks) {
                return "file \(name): its digest is not the digest of its chunk list"
            }
            for tensor in file.tensors ?? [] {
                let what = "file \(name), tensor \(tensor.name.debugDescription)"
                guard tensor.firstChunk >= 0, tensor.chunkCount >= 0, tensor.firstChunk <= file.chunks.count,
                      tensor.chunkCount <= file.chunks.count - tensor.firstChunk else {
                    return "\(what): chunks \(tensor.firstChunk) + \(tensor.chunkCount) are not among the file's \(file.chunks.count)"
                }
                guard tensor.begin >= 0, tensor.begin <= tensor.end, tensor.end <= file.size else {
                    return "\(what): byte range \(tensor.begin)..<\(tensor.end) is not inside the file's \(file.size) bytes"
                }
                if let shape = tensor.shape, shape.contains(where: { $0 < 0 }) { return "\(what): negative dimension in \(shape)" }
                guard tensor.chunkCount > 0 else { continue }
                let start = tensor.firstChunk == 0 ? 0 : ends[tensor.firstChunk - 1]
                guard start == tensor.begin, ends[tensor.firstChunk + tensor.chunkCount - 1] == tensor.end else {
                    return "\(what): its chunks do not cover exactly bytes \(tensor.begin)..<\(tensor.end)"
                }
            }
        }
        return nil
    }
}
