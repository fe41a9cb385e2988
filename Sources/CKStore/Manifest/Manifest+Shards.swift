extension Manifest {
    /// The checkpoint that all the shards of a checkpoint make together, once every one is committed.
    ///
    /// Its files are the union of the shards' files, in path order, each naming the shards that hold it; a
    /// path that several shards hold must hold the same bytes in each (a config every rank writes), or the
    /// shards conflict. Its metadata comes from the shards, the lowest index first: epoch, model config and
    /// trainer state from the first shard that has them; metrics and metadata merged, a lower index winning
    /// a key; tags united; the parent the first shard's that has one; the time the newest shard's. Every
    /// field is a function of the shards alone, so whichever process combines them writes the same
    /// checkpoint, up to its parent (which each rank's store knows for itself).
    ///
    /// - Throws: ``CKStoreError/Code/invalidArgument`` when `shards` are not exactly the shards `0 ..< N` of
    ///   one run and step; ``CKStoreError/Code/conflict`` when two shards hold different files at one path.
    static func combining(_ shards: [Manifest]) throws -> Manifest {
        guard let first = shards.first, let count = first.shard?.count else {
            throw CKStoreError(.internalInvariant, "combining manifests that are not shards")
        }
        let ordered = shards.sorted { ($0.shard?.index ?? -1) < ($1.shard?.index ?? -1) }
        guard ordered.map({ $0.shard?.index ?? -1 }) == Array(0..<count),
              ordered.allSatisfy({ $0.shard?.count == count && $0.run == first.run && $0.step == first.step }) else {
            throw CKStoreError(.internalInvariant, "combining \(shards.count) manifests that are not the \(count) shards of \(first.run)@\(first.step)")
        }
        var files = [String: FileEntry]()
        for manifest in ordered {
            let index = manifest.shard?.index ?? 0
            for file in manifest.files {
                guard var existing = files[file.path] else {
                    var entry = file
                    entry.shards = [index]
                    files[file.path] = entry
                    continue
                }
                var plain = existing
                plain.shards = nil
                guard plain == file else {
                    throw CKStoreError(.conflict, "shards \(existing.shards?.first ?? 0) and \(index) of \(first.run)@\(first.step) both hold \(file.path) with different content; each rank must write its own files, or the same bytes")
                }
                existing.shards?.append(index)
                files[file.path] = existing
            }
        }
        // Items of DCP data files named by the `.metadata` another shard holds (the lowest index wins).
        for manifest in ordered.reversed() {
            for (path, names) in manifest.itemNames ?? [:] {
                guard var file = files[path], file.format == .torchDCP else { continue }
                file.tensors = file.tensors?.map { tensor in
                    var tensor = tensor
                    let head = String(tensor.name.prefix { $0 != "/" })
                    if let name = names[head] { tensor.name = name + tensor.name.dropFirst(head.count) }
                    return tensor
                }
                files[path] = file
            }
        }
        // One shard's file cannot be another's folder: the union could not be restored.
        let folders = Set(files.keys.flatMap { path in
            let parts = path.split(separator: "/")
            return (1..<max(1, parts.count)).map { parts.prefix($0).joined(separator: "/") }
        })
        if let clash = files.keys.sorted().first(where: folders.contains) {
            throw CKStoreError(.conflict, "\(first.run)@\(first.step): shard \(files[clash]?.shards?.first ?? 0) holds a file \(clash) where another shard has a folder")
        }
        var metrics = [String: Double](), metadata = [String: String](), tags = Set<String>()
        for manifest in ordered.reversed() {
            metrics.merge(manifest.metrics) { _, lower in lower }
            metadata.merge(manifest.metadata) { _, lower in lower }
            tags.formUnion(manifest.tags)
        }
        var combined = Manifest(
            format: Manifest.currentFormat, run: first.run, step: first.step,
            epoch: ordered.lazy.compactMap(\.epoch).first,
            createdAt: ordered.map(\.createdAt).max() ?? first.createdAt, metrics: metrics, tags: tags.sorted(),
            metadata: metadata, parent: ordered.lazy.compactMap(\.parent).first,
            modelConfig: ordered.lazy.compactMap(\.modelConfig).first, trainerState: ordered.lazy.compactMap(\.trainerState).first,
            files: files.values.sorted { $0.path.utf8.lexicographicallyPrecedes($1.path.utf8) }
        )
        combined.shards = try ordered.enumerated().map { ShardContent(index: $0.offset, content: try $0.element.contentDigest()) }
        return combined
    }

    /// The files shard `index` of this combined checkpoint holds.
    func files(ofShard index: Int) -> [FileEntry] {
        files.filter { $0.shards?.contains(index) == true }
    }
}
