import Foundation

extension Archiver {
    /// Puts the files `inputs` as one checkpoint: the core of ``CheckpointStore/put(directory:options:)``
    /// and of saves from memory. `what` names the checkpoint in errors.
    ///
    /// The steps, each a method below: check the run name and the disk's reserve, take the shared lock,
    /// read the trainer's state and config, choose the parent and the delta bases, store every file
    /// through one archiver, build the manifest, and commit it (as a checkpoint, or as one shard).
    static func put(
        _ inputs: [CheckpointStore.PutInput], options: PutOptions, describing what: String, defaultStep: Int64?, seams: PutSeams
    ) async throws -> PutResult {
        let catalogue = seams.catalogue, layout = seams.layout
        let started = ContinuousClock.now
        let trace = Trace("put")
        try prepare(run: options.run, layout: layout)
        let lock = try StoreLock(path: layout.lockPath, mode: .shared)
        defer { withExtendedLifetime(lock) {} }

        let trainer = try TrainerFiles(inputs)
        guard let step = options.step ?? trainer.state?.globalStep ?? defaultStep else {
            throw CKStoreError(.invalidArgument, "no step for \(what): give --step N (there is no trainer_state.json with global_step, and the folder is not named checkpoint-N)")
        }
        guard step >= 0 else { throw CKStoreError(.invalidArgument, "step \(step) is negative") }
        let (parent, base) = try bases(run: options.run, step: step, shard: options.shard, catalogue: catalogue)
        let parentManifest = try baseManifest(base, reader: seams.reader)

        // Each file's size, read once (a stat per file on disk).
        let sizes = inputs.map(\.size)
        let totalBytes = sizes.reduce(0, +)
        let session = try Archiver(seams: seams, sink: PackSink(layout: layout, writers: packWriters(forBytes: totalBytes)),
                                   options: options, settings: try catalogue.settings(), parent: parentManifest)
        session.progress = ProgressMeter("put", total: totalBytes, handler: options.progress)
        try session.readItemNames(of: inputs)
        trace.mark("parent read, \(inputs.count) files to store")
        let (files, warnings) = try await session.storeAll(inputs, sizes: sizes, parent: parentManifest, trace: trace)

        var manifest = manifest(of: files, options: options, step: step, trainer: trainer, parent: parent)
        if let shard = options.shard {
            manifest.shard = shard
            manifest.itemNames = session.itemNamesHeldElsewhere(than: inputs)
            return try commitShard(manifest, shard: shard, session: session, warnings: warnings, started: started, seams: seams)
        }
        let result = try commitCheckpoint(manifest, session: session, seams: seams, started: started)
        trace.mark("packs sealed, catalogue committed and commit recorded")
        return PutResult(id: result.id, run: options.run, step: step, logicalBytes: manifest.logicalBytes, storedBytesAdded: session.bytesAdded,
                         chunksTotal: manifest.chunkCount, chunksNew: session.newChunkCount, seconds: (ContinuousClock.now - started) / .seconds(1),
                         alreadyStored: result.alreadyStored, warnings: warnings)
    }

    /// Checks the run name, and that the store's reserve for `rm` and `gc` can be kept: a put on a full
    /// disk fails with `noSpace` rather than eat it.
    private static func prepare(run: String, layout: StoreLayout) throws {
        try CheckpointStore.validateRunName(run)
        do {
            try CheckpointStore.makeReserve(layout)
        } catch let error as CKStoreError where error.code == .noSpace {
            throw CKStoreError(.noSpace, "the disk holding \(layout.root) is full (the store's reserve for `rm` and `gc` is in use); free some space, or run `ckstore gc` or `ckstore rm`, then put again", cause: error)
        }
    }

    /// What the trainer wrote beside the tensors: `trainer_state.json` (step, epoch, metrics) and the
    /// model's `config.json`.
    struct TrainerFiles {
        var state: TrainerState?
        var modelConfig: JSONValue?

        init(_ inputs: [CheckpointStore.PutInput]) throws {
            state = try inputs.first { $0.path == "trainer_state.json" }?.smallContents().flatMap { TrainerState(bytes: $0) }
            modelConfig = try inputs.first { $0.path == "config.json" }?.smallContents()
                .flatMap { try? JSONDecoder().decode(JSONValue.self, from: Data($0)) }
        }
    }

    /// The parent (the run's checkpoint before `step`) and the checkpoint whose tensors give delta bases:
    /// the parent, or for a shard its own previous shard when that is newer (a rank that keeps its own
    /// store never holds the combined checkpoints).
    private static func bases(run: String, step: Int64, shard: ShardSpec?, catalogue: some PutQueries) throws -> (parent: CheckpointID?, base: CheckpointID?) {
        let parent = try catalogue.parent(run: run, before: step)
        guard let shard, let previous = try catalogue.previousShard(run: run, before: step, shard: shard) else {
            return (parent, parent)
        }
        guard let parent, let parentStep = try catalogue.summary(of: parent)?.step, parentStep >= previous.step else {
            return (parent, previous.id)
        }
        return (parent, parent)
    }

    /// The manifest of the checkpoint that gives delta bases. A damaged one only means no deltas (`verify`
    /// reports the damage); failing I/O fails.
    private static func baseManifest(_ base: CheckpointID?, reader: ChunkReader) throws -> Manifest? {
        do {
            return try base.map { try reader.manifest(of: $0) }
        } catch let error as CKStoreError where error.code == .damaged {
            return nil
        }
    }

    /// The manifest of the stored `files`, with what the options and the trainer's files say.
    private static func manifest(of files: [FileEntry], options: PutOptions, step: Int64, trainer: TrainerFiles, parent: CheckpointID?) -> Manifest {
        var metrics = trainer.state?.metrics ?? [:]
        metrics.merge(options.metrics) { _, new in new }
        return Manifest(
            format: Manifest.currentFormat, run: options.run, step: step, epoch: options.epoch ?? trainer.state?.epoch,
            createdAt: Date().timeIntervalSince1970, metrics: metrics, tags: Array(Set(options.tags)).sorted(),
            metadata: options.metadata, parent: parent, modelConfig: trainer.modelConfig, trainerState: trainer.state?.json, files: files
        )
    }

    /// Learns the items of the DCP data files from the `.metadata` files beside them.
    private func readItemNames(of inputs: [CheckpointStore.PutInput]) throws {
        guard inputs.contains(where: { DistributedCheckpoint.isDataFile($0.path) }) else { return }
        for input in inputs where DistributedCheckpoint.relativeName(input.path) == ".metadata" {
            guard let bytes = try input.smallContents(), let names = DistributedCheckpoint.itemNames(metadata: bytes) else { continue }
            let folder = String(input.path.dropLast(".metadata".count))
            for (file, items) in names { dcpItemNames[folder + file] = items }
        }
    }

    /// The items of data files that the `.metadata` a shard holds names but other ranks hold: kept in the
    /// shard's manifest so that the combined checkpoint names every item.
    private func itemNamesHeldElsewhere(than inputs: [CheckpointStore.PutInput]) -> [String: [String: String]]? {
        let held = Set(inputs.map(\.path))
        var elsewhere = [String: [String: String]]()
        for (path, items) in dcpItemNames where !held.contains(path) {
            elsewhere[path] = Dictionary(uniqueKeysWithValues: items.map { (DistributedCheckpoint.offsetName($0.key), $0.value) })
        }
        return elsewhere.isEmpty ? nil : elsewhere
    }

    /// Stores every input: links as entries, regular files through ``store(_:path:mode:bytesInFlight:layout:)``,
    /// two at once and largest first (so that small files and the tail of a large one do not leave cores
    /// idle), each with half the bytes in flight. With a parent to predict from, the optimizer's files go
    /// first: the weights are predicted from the moments they store (``PredictionSources``).
    /// - Returns: the files' manifest entries in the inputs' order, and the warnings of files stored opaque.
    private func storeAll(_ inputs: [CheckpointStore.PutInput], sizes: [Int64], parent: Manifest?, trace: Trace) async throws -> (files: [FileEntry], warnings: [String]) {
        var entries = [FileEntry?](repeating: nil, count: inputs.count)
        var storedFiles = [Int: StoredFile]()
        let regular = inputs.indices.filter { index in
            guard case .symlink(let target) = inputs[index].content else { return true }
            entries[index] = FileEntry(link: inputs[index].path, mode: inputs[index].mode, target: target)
            return false
        }
        let order = regular.sorted { (sizes[$0], $1) > (sizes[$1], $0) }
        let perFile = max(1, maxBytesInFlight / 2)
        func source(_ index: Int) throws -> any PutSource {
            switch inputs[index].content {
            case .file(let path): return try SharedFile(path: path)
            case .memory(let file): return file
            case .symlink: throw CKStoreError(.internalInvariant, "a link reached the file pipeline")
            }
        }
        // The optimizer's files, with their layouts read here, once.
        var sources = [Int: any PutSource]()
        var layouts = [Int: (FileLayout, warning: String?)]()
        var optimizerFirst = [Int]()
        if predictsWeights, parent?.files.contains(where: { $0.optimizer != nil }) == true {
            for index in order where [".pt", ".bin"].contains(where: inputs[index].path.lowercased().hasSuffix) {
                let source = try source(index)
                let layout = FormatDetector.layout(of: source, path: inputs[index].path, size: sizes[index], dcpNames: dcpItemNames[inputs[index].path])
                layouts[index] = layout
                if layout.0.optimizer != nil {
                    optimizerFirst.append(index)
                    sources[index] = source
                }
            }
        }
        func storeFiles(_ order: [Int]) async throws {
            try await withThrowingTaskGroup(of: (Int, StoredFile).self) { group in
                var next = 0
                func start() {
                    let index = order[next], input = inputs[index], layout = layouts[index], opened = sources[index]
                    next += 1
                    group.addTask {
                        (index, try await self.store(try opened ?? source(index), path: input.path, mode: input.mode, bytesInFlight: perFile, layout: layout))
                    }
                }
                while next < order.count && next < 2 { start() }
                while let (index, file) = try await group.next() {
                    storedFiles[index] = file
                    record(file)
                    trace.mark("chunks of \(file.entry.path) stored")
                    if next < order.count { start() }
                }
            }
        }
        if optimizerFirst.isEmpty {
            try await storeFiles(order)
        } else {
            try await storeFiles(optimizerFirst)
            let stored = optimizerFirst.compactMap { storedFiles[$0]?.entry }
            var byPath = [String: any PutSource]()
            for index in optimizerFirst { byPath[inputs[index].path] = sources[index] }
            predictWeights(from: PredictionSources(stored: stored, sources: byPath, parent: parent))
            try await storeFiles(order.filter { !optimizerFirst.contains($0) })
        }
        var warnings = [String]()
        for index in regular {
            guard let file = storedFiles[index] else { continue }
            if let warning = file.warning { warnings.append(warning) }
            entries[index] = file.entry
        }
        return (entries.compactMap { $0 }, warnings)
    }

    /// Commits `manifest` as a checkpoint through the ``Committer``; a checkpoint with the same content at
    /// its run and step makes the put a no-op (which writes again what that checkpoint lost: chunks
    /// `repair` dropped, its manifest frame, its commit record).
    ///
    /// - Throws: `conflict` when the run has other content at that step, or pending shards there;
    ///   `damaged` when a commit record names a checkpoint there that the catalogue lost.
    private static func commitCheckpoint(_ manifest: Manifest, session: Archiver, seams: PutSeams, started: ContinuousClock.Instant) throws -> (id: CheckpointID, alreadyStored: Bool) {
        let run = manifest.run, step = manifest.step
        let contentDigest = try manifest.contentDigest()
        let committer = session.committer
        func existing(in catalogue: some PutQueries) throws -> CheckpointID? {
            if let shard = try catalogue.pendingShards(run: run, step: step).first {
                throw CKStoreError(.conflict, "run \(run) has step \(step) pending as \(shard.shard.count) shards; put each rank's files with --shard I/\(shard.shard.count), or remove the pending shards with `ckstore rm \(run)@\(step) --pending`")
            }
            guard let found = try catalogue.checkpoint(run: run, step: step) else {
                // A commit record the catalogue does not know: the catalogue lost committed checkpoints
                // (its write-ahead log was deleted, or it was rebuilt from a partial copy).
                if let record = try committer.record(run: run, step: step) {
                    throw CKStoreError(.damaged, "run \(run) has a committed checkpoint at step \(step) (\(record.id.short)) that the catalogue does not list; run `ckstore repair` to bring it back before putting more")
                }
                return nil
            }
            guard found.content == contentDigest else {
                throw CKStoreError(.conflict, "run \(run) already has a different checkpoint at step \(step) (\(found.id.short)); put under another step or remove that checkpoint first")
            }
            return found.id
        }
        func rerecord(_ id: CheckpointID) -> CommitLog.Record {
            CommitLog.Record(id: id, run: run, step: step, content: contentDigest, createdAt: manifest.createdAt)
        }
        if let id = try existing(in: seams.catalogue) {
            // Already stored. Chunks the store lacked (dropped by `repair` after damage) were written
            // again; so is the manifest frame if it was lost: the stored checkpoint's manifest is this one
            // with the catalogue's creation time and parent, and its SHA-256 says whether it is.
            if try !seams.index.contains(id.digest), let summary = try seams.catalogue.summary(of: id) {
                var original = manifest
                original.createdAt = summary.createdAt
                original.parent = summary.parent
                let bytes = try original.canonicalJSON()
                if SHA256Hasher.digest(bytes) == id.digest { try session.appendManifest(bytes, digest: id.digest) }
            }
            // Its record too, if a crash kept the first put from writing it.
            try session.commit { _, _ in .keep((), record: rerecord(id)) }
            return (id, true)
        }

        let manifestBytes = try manifest.canonicalJSON()
        let id = CheckpointID(SHA256Hasher.digest(manifestBytes))
        let uses = manifest.chunkUses(id: id)
        try session.appendManifest(manifestBytes, digest: id.digest)
        return try session.commit { (catalogue, added) throws -> Committer.Decision<(id: CheckpointID, alreadyStored: Bool)> in
            if let id = try existing(in: catalogue) { return .keep((id: id, alreadyStored: true), record: rerecord(id)) }
            // What this put took, for `advise`: recorded in its own transaction, not in one more.
            let new = Catalogue.NewCheckpoint(id: id, manifest: manifest, contentDigest: contentDigest, storedBytesAdded: added, chunkUses: uses,
                                              putSeconds: (ContinuousClock.now - started) / .seconds(1))
            return .commit(.checkpoint(new), (id: id, alreadyStored: false))
        }
    }
}
