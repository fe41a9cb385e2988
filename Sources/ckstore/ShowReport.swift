import CKStore

/// What `ckstore show` prints: the manifest summarized (no chunk lists).
struct ShowReport: Encodable {
    struct Tensor: Encodable {
        var name: String
        var dtype: String?
        var shape: [Int]?
        var bytes: Int64
        var chunks: Int
    }

    struct File: Encodable {
        var path: String
        var format: String
        var size: Int64
        var mode: String
        /// The whole file's SHA-256, when the manifest records it or `--sha256sum` computed it.
        var sha256: String?
        /// The file's digest over its chunks (manifests of ckstore 0.7 and later).
        var digest: String?
        var chunks: Int
        var linkTarget: String?
        var tensors: [Tensor]?
        var optimizer: OptimizerSummary?
        /// In a checkpoint put as shards: the shards (ranks) that wrote this file.
        var shards: [Int]?
    }

    var id: String
    var run: String
    var step: Int64
    var epoch: Double?
    var createdAt: String
    var parent: String?
    var metrics: [String: Double]
    var tags: [String]
    var metadata: [String: String]
    var logicalBytes: Int64
    var storedBytesAdded: Int64
    var chunkCount: Int
    var files: [File]
    var modelConfig: JSONValue?
    var pinned: Bool
    var droppedFiles: [String]
    /// In a checkpoint put as shards: how many.
    var shardCount: Int?

    init(id: CheckpointID, manifest: Manifest, summary: CheckpointSummary, dropped: [String: String]) {
        pinned = summary.pinned
        droppedFiles = dropped.keys.sorted()
        self.id = id.hex
        run = manifest.run
        step = manifest.step
        epoch = manifest.epoch
        createdAt = Format.isoDate(manifest.createdAt)
        parent = manifest.parent?.hex
        metrics = summary.metrics
        tags = summary.tags
        metadata = manifest.metadata
        logicalBytes = manifest.logicalBytes
        storedBytesAdded = summary.storedBytesAdded
        chunkCount = manifest.chunkCount
        modelConfig = manifest.modelConfig
        shardCount = manifest.shards?.count
        files = manifest.files.map { file in
            File(
                path: file.path, format: file.format.rawValue, size: file.size, mode: String(file.mode, radix: 8),
                sha256: file.sha256?.hex, digest: file.digest?.hex, chunks: file.chunks.count, linkTarget: file.linkTarget,
                tensors: file.tensors?.map { Tensor(name: $0.name, dtype: $0.dtype?.name, shape: $0.shape, bytes: $0.byteCount, chunks: $0.chunkCount) },
                optimizer: file.optimizer, shards: file.shards
            )
        }
    }

    /// Fills in each regular file's SHA-256 from `digests` (by path).
    mutating func setSHA256(_ digests: [String: ChunkDigest]) {
        for index in files.indices {
            if let digest = digests[files[index].path] { files[index].sha256 = digest.hex }
        }
    }

    /// `sha256sum`'s format: a line per regular file, `<hex>  <path>`, for `sha256sum -c` in a folder
    /// the checkpoint was restored into.
    var sha256sumLines: String {
        files.filter { $0.format != "symlink" }.compactMap { file in file.sha256.map { "\($0)  \(file.path)" } }.joined(separator: "\n")
    }

    /// The human-readable report; with `tensors`, each file's tensors too.
    func text(tensors showTensors: Bool = false) -> String {
        var lines = [
            "checkpoint \(id)",
            "run        \(run)",
            "step       \(step)" + (epoch.map { "   epoch \(Format.metric($0))" } ?? ""),
            "created    \(createdAt)",
            "parent     \(parent.map { String($0.prefix(12)) } ?? "none")",
        ]
        if !metrics.isEmpty { lines.append("metrics    \(Format.metrics(metrics))") }
        if !tags.isEmpty { lines.append("tags       \(tags.joined(separator: ", "))") }
        for (key, value) in metadata.sorted(by: { $0.key < $1.key }) { lines.append("meta       \(key)=\(value)") }
        if modelConfig != nil { lines.append("model      config.json recorded") }
        if pinned { lines.append("pinned     yes") }
        if !droppedFiles.isEmpty { lines.append("dropped    \(droppedFiles.joined(separator: ", ")) (by a retention part rule; not restorable)") }
        lines.append("size       \(ByteCount(logicalBytes)) in \(files.count) files, \(chunkCount) chunks; this put added \(ByteCount(storedBytesAdded))")
        if let shardCount { lines.append("shards     \(shardCount): put by \(shardCount) ranks; `get --shard I/\(shardCount)` restores rank I's files") }
        lines.append("")
        let rows = files.map { file in
            [file.path, file.format, ByteCount(file.size).description, file.tensors.map { "\($0.count)" } ?? "-", String(file.chunks)]
                + (shardCount == nil ? [] : [file.shards?.map(String.init).joined(separator: ",") ?? "-"])
        }
        lines.append(Format.table(["FILE", "FORMAT", "SIZE", "TENSORS", "CHUNKS"] + (shardCount == nil ? [] : ["SHARD"]), rows))
        for file in files {
            for (index, group) in (file.optimizer?.groups ?? []).enumerated() {
                lines.append("")
                lines.append("optimizer  \(file.path) group \(index): \(Self.describe(group))")
            }
        }
        if showTensors {
            for file in files {
                guard let tensors = file.tensors, !tensors.isEmpty else { continue }
                lines.append("")
                lines.append(file.path)
                lines.append(Format.table(["TENSOR", "DTYPE", "SHAPE", "SIZE", "CHUNKS"], tensors.map { tensor in
                    [tensor.name, tensor.dtype ?? "-", tensor.shape.map { "[" + $0.map(String.init).joined(separator: ", ") + "]" } ?? "-",
                     ByteCount(tensor.bytes).description, String(tensor.chunks)]
                }))
            }
        }
        return lines.joined(separator: "\n")
    }

    /// `7 params, lr 0.0064, betas (0.9, 0.999), eps 1e-08, weight_decay 0.01, step 4`.
    static func describe(_ group: OptimizerSummary.Group) -> String {
        var parts = ["\(group.params.count) params"]
        if let lr = group.lr { parts.append("lr \(Format.metric(lr))") }
        if let betas = group.betas { parts.append("betas (\(betas.map(Format.metric).joined(separator: ", ")))") }
        if let eps = group.eps { parts.append("eps \(Format.metric(eps))") }
        if let decay = group.weightDecay { parts.append("weight_decay \(Format.metric(decay))") }
        if let step = group.step { parts.append("step \(Format.metric(step))") }
        return parts.joined(separator: ", ")
    }
}
