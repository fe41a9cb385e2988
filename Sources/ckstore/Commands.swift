import ArgumentParser
import CKStore
import Foundation

struct Init: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create an empty store.")

    @OptionGroup var store: StoreOptions
    @OptionGroup var settings: SettingsOptions

    func validate() throws { try settings.validate() }

    func run() async throws {
        let path = store.path
        let opened = try CheckpointStore.open(at: path, create: true)
        try settings.apply(to: opened)
        let current = try opened.settings()
        print("store ready at \(path) (zstd level \(current.compressionLevel), delta chains of at most \(current.maxDeltaDepth)\(current.predictWeights ? ", weights predicted from the optimizer" : ""))")
    }
}

/// `--level` and `--max-delta-depth`, as `init` and `settings` take them.
struct SettingsOptions: ParsableArguments {
    @Option(parsing: .unconditional, help: "The store's zstd level for new chunks (1-19; default 1).") var level: Int?
    @Option(help: "The longest chain of delta frames a put may write before storing a chunk in full (0-32; 0 turns deltas off; default 3).")
    var maxDeltaDepth: Int?
    @Option(help: ArgumentHelp("Whether puts predict fp32 weights from the parent's weights and Adam's moments: fewer stored bytes, slower restores (on or off; default off).", valueName: "on|off"))
    var predictWeights: String?

    func validate() throws {
        if let predictWeights, !["on", "off"].contains(predictWeights) {
            throw ValidationError("--predict-weights takes on or off, not \(predictWeights)")
        }
        if let level, CompressionLevel(level) == nil {
            throw ValidationError("--level takes a zstd level from 1 to 19, not \(level)")
        }
        if let maxDeltaDepth, !(0...StoreSettings.maxDeltaDepthLimit).contains(maxDeltaDepth) {
            throw ValidationError("--max-delta-depth takes 0 to \(StoreSettings.maxDeltaDepthLimit), not \(maxDeltaDepth)")
        }
    }

    var isEmpty: Bool { level == nil && maxDeltaDepth == nil && predictWeights == nil }

    func apply(to store: CheckpointStore) throws {
        guard !isEmpty else { return }
        var settings = try store.settings()
        if let level, let compression = CompressionLevel(level) { settings.compressionLevel = compression }
        if let maxDeltaDepth { settings.maxDeltaDepth = maxDeltaDepth }
        if let predictWeights { settings.predictWeights = predictWeights == "on" }
        try store.updateSettings(settings)
    }
}

struct Settings: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show or change the store's settings.",
        discussion: "New chunks use them; chunks already stored keep their encoding. A put's own --level or --max-delta-depth overrides them."
    )

    @OptionGroup var store: StoreOptions
    @OptionGroup var settings: SettingsOptions
    @Flag(help: "Print JSON.") var json = false

    func validate() throws { try settings.validate() }

    func run() async throws {
        let opened = try store.open(create: false)
        try settings.apply(to: opened)
        let current = try opened.settings()
        if json {
            struct Shown: Encodable {
                var compression_level: Int
                var max_delta_depth: Int
                var predict_weights: Bool
            }
            try JSONOutput.print(Shown(compression_level: Int(current.compressionLevel.rawValue), max_delta_depth: current.maxDeltaDepth, predict_weights: current.predictWeights))
        } else {
            print("compression level  \(current.compressionLevel)")
            print("max delta depth    \(current.maxDeltaDepth)")
            print("predict weights    \(current.predictWeights ? "on" : "off")")
        }
    }
}

struct Put: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Store a checkpoint folder; prints the new checkpoint's id.",
        discussion: """
            Step, epoch and metrics default to what trainer_state.json (Hugging Face Trainer) says, and the
            step to N for a folder named checkpoint-N. Putting the same content again under the same run and
            step stores nothing and prints the same id.
            """
    )

    @OptionGroup var store: StoreOptions
    @Argument(help: "The checkpoint folder.") var directory: String?
    @Option(help: ArgumentHelp("Store the files a JSON layout describes, as ranges of one source file (- reads it from standard input), instead of a folder: what the Python package's saves hand over without writing the files first.", valueName: "FILE")) var layout: String?
    @Option(help: "The run this checkpoint belongs to.") var run: String
    @Option(parsing: .unconditional, help: "The training step.") var step: Int64?
    @Option(parsing: .unconditional, help: "The epoch.") var epoch: Double?
    @Option(name: .customLong("metric"), help: "A metric, KEY=VALUE (repeatable).") var metrics: [String] = []
    @Option(name: .customLong("tag"), help: "A tag (repeatable).") var tags: [String] = []
    @Option(name: .customLong("meta"), help: "Free-form metadata, KEY=VALUE (repeatable).") var meta: [String] = []
    @Option(parsing: .unconditional, help: "zstd compression level (1-19) for this put; default: the store's.") var level: Int?
    @Option(parsing: .unconditional, help: "The longest delta chain this put may extend (0-32, 0: no deltas); default: the store's.") var maxDeltaDepth: Int?
    @Flag(help: "Store symbolic links that point outside the folder as the files they point to.") var followSymlinks = false
    @Flag(help: "Print a JSON object instead of the id.") var json = false
    @Option(help: "Push the checkpoint to this remote once it is committed (default: the store's push-on-commit remote, if any).") var push: String?
    @Option(help: "S3 endpoint for a --push URL (default: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, else AWS).") var endpoint: String?
    @Option(help: ArgumentHelp("Store the folder as shard I of N of the checkpoint (rank I of a world of N, from 0): it is listed, resolved and retained only once all N shards are committed, here or on the remote pushed to.", valueName: "I/N")) var shard: String?
    @OptionGroup var progress: ProgressOptions

    func validate() throws {
        if (directory == nil) == (layout == nil) {
            throw ValidationError(directory == nil ? "give the checkpoint folder, or --layout FILE" : "give the checkpoint folder or --layout, not both")
        }
        if let epoch, !epoch.isFinite { throw ValidationError("--epoch takes a finite number, not \(epoch)") }
        if let step, step < 0 { throw ValidationError("--step takes a step of 0 or more, not \(step)") }
        if endpoint != nil && push == nil { throw ValidationError("--endpoint is the S3 endpoint of a --push URL; give --push too") }
        for pair in metrics {
            guard let (_, value) = Self.split(pair), Double(value) != nil else {
                throw ValidationError("--metric takes KEY=NUMBER, not \(pair)")
            }
        }
        for pair in meta where Self.split(pair) == nil {
            throw ValidationError("--meta takes KEY=VALUE, not \(pair)")
        }
        if let level, CompressionLevel(level) == nil {
            throw ValidationError("--level takes a zstd level from 1 to 19, not \(level)")
        }
        if let maxDeltaDepth, !(0...StoreSettings.maxDeltaDepthLimit).contains(maxDeltaDepth) {
            throw ValidationError("--max-delta-depth takes 0 to \(StoreSettings.maxDeltaDepthLimit), not \(maxDeltaDepth)")
        }
        if let shard {
            do throws(CKStoreError) { _ = try ShardSpec(parsing: shard) } catch { throw ValidationError("--shard: \(error.message)") }
        }
    }

    /// Where a shard's checkpoint stands in one place.
    static func shardLine(shard: ShardSpec, run: String, step: Int64, checkpoint: CheckpointID?, missing: [Int], place: String) -> String {
        if let checkpoint { return "\(run)@\(step): shard \(shard) committed; all \(shard.count) shards are in \(place), checkpoint \(checkpoint.short)" }
        return "\(run)@\(step): shard \(shard) committed; pending in \(place) until shards \(missing.map(String.init).joined(separator: ", ")) arrive"
    }

    static func split(_ pair: String) -> (String, String)? {
        guard let equals = pair.firstIndex(of: "="), equals != pair.startIndex else { return nil }
        return (String(pair[..<equals]), String(pair[pair.index(after: equals)...]))
    }

    func run() async throws {
        let checkpointStore = try store.open(create: true)
        var options = PutOptions(run: run, step: step, epoch: epoch)
        for pair in metrics { if let (key, value) = Self.split(pair) { options.metrics[key] = Double(value) } }
        for pair in meta { if let (key, value) = Self.split(pair) { options.metadata[key] = value } }
        options.tags = tags
        options.followSymlinks = followSymlinks
        if let level, let compression = CompressionLevel(level) { options.compressionLevel = compression }
        options.maxDeltaDepth = maxDeltaDepth
        options.shard = try shard.map { try ShardSpec(parsing: $0) }
        let renderer = progress.renderer()
        options.progress = renderer?.handler
        let result: PutResult
        if let layout {
            let json: [UInt8]
            do {
                json = layout == "-" ? Array(FileHandle.standardInput.readDataToEndOfFile()) : Array(try Data(contentsOf: URL(fileURLWithPath: layout)))
            } catch {
                throw CKStoreError(.invalidArgument, "cannot read the layout \(layout): \(error.localizedDescription)")
            }
            result = try await checkpointStore.put(layout: try PutLayout.decode(json), options: options)
        } else {
            result = try await checkpointStore.put(directory: directory ?? ".", options: options)
        }
        renderer?.finish()
        for warning in result.warnings { Terminal.warning(warning) }
        // Committed locally first; then uploaded, when a remote is named or set to receive every commit.
        var pushed: PushReport?
        let pushOnCommit = try checkpointStore.remotes().pushOnCommit
        if let name = push ?? pushOnCommit {
            let remote = try RemoteOption.connect(checkpointStore, remote: name, endpoint: push == nil ? nil : endpoint)
            if let shard = result.shard {
                pushed = try await checkpointStore.pushShard(result.id, run: run, step: result.step, shard: shard, to: remote)
            } else {
                pushed = try await checkpointStore.push([result.id], to: remote)
            }
        }
        if json {
            try JSONOutput.print(PutOutput(result: result, push: pushed))
            return
        }
        if let pushed { Terminal.standardError("pushed to \(pushed.remote): \(ByteCount(pushed.bytesUploaded)) in \(pushed.objectsUploaded) objects") }
        if let shard = result.shard {
            Terminal.standardError(Self.shardLine(shard: shard, run: run, step: result.step, checkpoint: result.checkpoint, missing: result.missingShards ?? [], place: "this store"))
            if let pushed, let missing = pushed.missingShards {
                Terminal.standardError(Self.shardLine(shard: shard, run: run, step: result.step, checkpoint: pushed.checkpoint, missing: missing, place: "remote \(pushed.remote)"))
            }
        }
        print(result.id.hex)
        let summary = result.alreadyStored
            ? "\(run)@\(result.step): already stored, nothing written"
            : "\(run)@\(result.step): \(ByteCount(result.logicalBytes)) in, \(ByteCount(result.storedBytesAdded)) added, \(result.chunksNew) of \(result.chunksTotal) chunks new, \(String(format: "%.2f", result.seconds)) s"
        Terminal.standardError(summary)
    }
}

struct Get: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Restore a checkpoint into a folder, verifying every byte.",
        discussion: "REF is an id (or a unique prefix of at least 8 hex characters), RUN@STEP, RUN@latest or RUN@latest-valid."
    )

    @OptionGroup var store: StoreOptions
    @Argument(help: "The checkpoint.") var reference: String
    @Argument(help: "The folder to restore into (created; must be empty unless --force).") var destination: String
    @Option(name: .customLong("file"), help: "Restore only this file (repeatable).") var files: [String] = []
    @Option(name: .customLong("tensor"), help: "Write a safetensors file with only the tensors matching this glob (repeatable).") var tensors: [String] = []
    @Flag(help: "Restore into a non-empty folder, replacing files with the same names.") var force = false
    @Flag(help: "Restore setuid, setgid and sticky bits as stored (by default only permission bits are).") var keepSpecialBits = false
    @Option(help: ArgumentHelp("Of a checkpoint put as shards, restore only what shard I of N (rank I) wrote.", valueName: "I/N")) var shard: String?
    @Flag(help: "Print a JSON object describing what was written.") var json = false
    @OptionGroup var remote: RemoteOption
    @OptionGroup var transfers: TransferOptions
    @OptionGroup var progress: ProgressOptions

    func validate() throws {
        if let shard {
            do throws(CKStoreError) { _ = try ShardSpec(parsing: shard) } catch { throw ValidationError("--shard: \(error.message)") }
        }
    }

    func run() async throws {
        let checkpointStore: CheckpointStore, id: CheckpointID
        var options = RestoreOptions(files: files, tensors: tensors, force: force)
        options.keepSpecialModeBits = keepSpecialBits
        options.shard = try shard.map { try ShardSpec(parsing: $0) }
        if remote.remote != nil, options.isWhole {
            // The whole checkpoint: pulled and restored in one pass over what arrives.
            checkpointStore = try store.open(create: true)
            let source = try remote.connect(checkpointStore)
            let renderer = progress.renderer()
            options.progress = renderer?.handler
            let result = try await checkpointStore.pull(try CheckpointReference(parsing: reference), from: source, restoringTo: destination, options: options,
                                                        jobs: transfers.jobs, progress: renderer?.handler).restored
            renderer?.finish()
            return try report(result, id: result.id)
        }
        if remote.remote != nil {
            // From a remote, through this store as its cache (created when it does not exist yet).
            checkpointStore = try store.open(create: true)
            let source = try remote.connect(checkpointStore)
            let pullRenderer = progress.renderer()
            let shardSpec = try shard.map { try ShardSpec(parsing: $0) }
            if (shardSpec != nil || !files.isEmpty) && tensors.isEmpty {
                // Some files only (a rank's shard): fetch what they need, not the whole checkpoint.
                id = try await checkpointStore.pullFiles(try CheckpointReference(parsing: reference), from: source, shard: shardSpec, files: files,
                                                         jobs: transfers.jobs, progress: pullRenderer?.handler).id
            } else {
                id = try await checkpointStore.pull(try CheckpointReference(parsing: reference), from: source, jobs: transfers.jobs, progress: pullRenderer?.handler).id
            }
            pullRenderer?.finish()
        } else {
            (checkpointStore, id) = try await store.resolve(reference)
        }
        let renderer = progress.renderer()
        options.progress = renderer?.handler
        let result = try await checkpointStore.restore(id, to: destination, options: options)
        renderer?.finish()
        try report(result, id: id)
    }

    private func report(_ result: RestoreResult, id: CheckpointID) throws {
        if json {
            try JSONOutput.print(result)
        } else {
            Terminal.standardError("restored \(id.short): \(result.files.count) files, \(ByteCount(result.bytes)) into \(destination)")
        }
    }
}

struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ls", abstract: "List checkpoints.")

    @OptionGroup var store: StoreOptions
    @Option(help: "Only this run.") var run: String?
    @Flag(help: "List pending checkpoints instead: some of their shards committed, not all (they are never resolved or retained).") var pending = false
    @Flag(help: "Print JSON.") var json = false
    @OptionGroup var remote: RemoteOption

    func run() async throws {
        if pending {
            let checkpointStore = try store.open(create: remote.remote != nil)
            let list = remote.remote != nil
                ? try await checkpointStore.remotePendingCheckpoints(try remote.connect(checkpointStore), run: run)
                : try checkpointStore.pendingCheckpoints(run: run)
            try show(list, what: "pending checkpoints", ["RUN", "STEP", "SHARDS", "MISSING", "FIRST SHARD", "SIZE"]) {
                [$0.run, String($0.step), "\($0.shards.count)/\($0.shardCount)", $0.missing.map(String.init).joined(separator: ","),
                 Format.date($0.createdAt), ByteCount($0.logicalBytes).description]
            }
            return
        }
        let checkpoints: [CheckpointSummary]
        if remote.remote != nil {
            let checkpointStore = try store.open(create: true)
            checkpoints = try await checkpointStore.remoteCheckpoints(try remote.connect(checkpointStore), run: run).map(\.summary)
        } else {
            checkpoints = try store.open().list(run: run)
        }
        try show(checkpoints, what: "checkpoints", ["ID", "RUN", "STEP", "CREATED", "SIZE", "METRICS", "TAGS", "NOTES"]) {
            let notes = ($0.pinned ? ["pinned"] : []) + $0.droppedParts.map { "\($0) dropped" }
            return [$0.id.short, $0.run, String($0.step), Format.date($0.createdAt), ByteCount($0.logicalBytes).description,
                    Format.metrics($0.metrics), $0.tags.joined(separator: ","), notes.joined(separator: ", ")]
        }
    }

    /// Prints `items` as JSON or as a table, or says on stderr that there are none.
    private func show<Item: Encodable>(_ items: [Item], what: String, _ header: [String], row: (Item) -> [String]) throws {
        if json {
            try JSONOutput.print(items)
        } else if items.isEmpty {
            Terminal.standardError(run.map { "no \(what) in run \($0)" } ?? "no \(what)")
        } else {
            print(Format.table(header, items.map(row)))
        }
    }
}

struct Show: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Describe one checkpoint: its metadata, files and tensors.")

    @OptionGroup var store: StoreOptions
    @Argument(help: "The checkpoint (id prefix, RUN@STEP or RUN@latest).") var reference: String
    @Flag(help: "Print JSON.") var json = false
    @Flag(help: "List each file's tensors (torch.save storages by their names in the saved object, such as state.12.exp_avg).") var tensors = false
    @Flag(help: ArgumentHelp("Compute each file's SHA-256 from the stored chunks and print it as sha256sum does, for `sha256sum -c` in a folder the checkpoint was restored into; with --json, fill in every file's sha256.", discussion: "Manifests written by ckstore 0.7 and later record each file's digest over its chunks, not its whole-file SHA-256 (which needed a second, serial pass over every file at put)."))
    var sha256sum = false
    @OptionGroup var remote: RemoteOption

    func validate() throws {
        if sha256sum && remote.remote != nil {
            throw ValidationError("--sha256sum reads the stored chunks: pull the checkpoint first (`ckstore pull`), then run show --sha256sum without --remote")
        }
    }

    func run() async throws {
        var report: ShowReport
        if remote.remote != nil {
            let checkpointStore = try store.open(create: true)
            let source = try remote.connect(checkpointStore)
            let commit = try await checkpointStore.resolve(try CheckpointReference(parsing: reference), on: source)
            let manifest = try await checkpointStore.manifest(of: commit, on: source)
            report = ShowReport(id: commit.id, manifest: manifest, summary: commit.summary, dropped: commit.droppedFiles)
        } else {
            let (checkpointStore, id) = try await store.resolve(reference)
            let manifest = try checkpointStore.manifest(of: id)
            let summary = try checkpointStore.summary(of: id)
            report = ShowReport(id: id, manifest: manifest, summary: summary, dropped: try checkpointStore.droppedFiles(of: id))
            if sha256sum { report.setSHA256(try await checkpointStore.sha256(of: id)) }
        }
        if sha256sum && !json {
            print(report.sha256sumLines)
            return
        }
        if json {
            try JSONOutput.print(report)
        } else {
            print(report.text(tensors: tensors))
        }
    }
}
