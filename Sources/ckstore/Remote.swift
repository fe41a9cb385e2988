import ArgumentParser
import CKStore
import CKStoreS3
import Foundation

/// `--remote NAME|URL`: a remote the store knows by name, or a URL (`s3://…`, `file:///…`) used as is,
/// which a fresh machine with an empty store needs.
struct RemoteOption: ParsableArguments {
    @Option(name: .customLong("remote"), help: "A remote's name (see `ckstore remote ls`), or an s3:// or file:// URL.")
    var remote: String?

    @Option(help: "With a URL for --remote: the S3 endpoint (default: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, else AWS).")
    var endpoint: String?

    @Option(help: "With a URL for --remote: the S3 region (default: $AWS_REGION, $AWS_DEFAULT_REGION, else us-east-1).")
    var region: String?

    @Flag(help: "With a URL for --remote: address the bucket in the path (the default for endpoints other than AWS).")
    var pathStyle = false

    @Flag(help: "With a URL for --remote: address the bucket in the host name (the default on AWS).")
    var virtualHosted = false

    @Flag(help: "With a URL for --remote: push even if the server ignores conditional writes (If-None-Match), so that two machines pushing one run and step could both win.")
    var unsafeUnconditionalCommits = false

    func validate() throws {
        if pathStyle && virtualHosted { throw ValidationError("give --path-style or --virtual-hosted, not both") }
    }

    /// The remote, connected; `fallback` picks one when --remote is not given.
    func connect(_ store: CheckpointStore, fallback: Bool = true) throws -> Remote {
        try Self.connect(store, remote: remote, endpoint: endpoint, region: region, pathStyle: pathStyle, virtualHosted: virtualHosted,
                         unsafeUnconditionalCommits: unsafeUnconditionalCommits, fallback: fallback)
    }

    /// The remote `remote` (a name or a URL) connected, without an option group (for `put --push NAME`).
    static func connect(_ store: CheckpointStore, remote: String?, endpoint: String? = nil, region: String? = nil,
                        pathStyle: Bool = false, virtualHosted: Bool = false, unsafeUnconditionalCommits: Bool = false,
                        fallback: Bool = false) throws -> Remote {
        let registry = try store.remotes()
        let definition: RemoteDefinition
        if let remote {
            if remote.contains("://") {
                definition = RemoteDefinition(name: remote, url: remote, endpoint: endpoint, region: region, pathStyle: pathStyle,
                                              virtualHosted: virtualHosted, unsafeUnconditionalCommits: unsafeUnconditionalCommits)
            } else {
                guard let named = registry.definition(named: remote) else {
                    throw CKStoreError(.notFound, "no remote named \(remote)\(registry.remotes.isEmpty ? "" : " (this store has: \(registry.remotes.map(\.name).joined(separator: ", ")))"); add it with `ckstore remote add \(remote) URL`")
                }
                definition = named
            }
        } else if fallback, let only = registry.remotes.count == 1 ? registry.remotes.first : registry.pushOnCommit.flatMap(registry.definition(named:)) {
            definition = only
        } else {
            throw CKStoreError(.invalidArgument, registry.remotes.isEmpty
                ? "this store has no remote; add one with `ckstore remote add NAME URL`, or give --remote URL"
                : "give --remote NAME (this store has: \(registry.remotes.map(\.name).joined(separator: ", ")))")
        }
        return try Self.connect(definition, store: store)
    }

    /// Connects a definition; an S3 remote starts from the bucket region this store learned before, and
    /// records one it learns.
    static func connect(_ definition: RemoteDefinition, store: CheckpointStore) throws -> Remote {
        switch try definition.location() {
        case .file: return try Remote.folder(definition)
        case .s3:
            let url = definition.url
            let objects = try S3ObjectStore(definition, knownRegion: try? store.remoteFact(url, "region"),
                                            learnedRegion: { region in try? store.setRemoteFact(url, "region", region) })
            return Remote(name: definition.name, url: url, objects: objects, unsafeUnconditionalCommits: definition.unsafeUnconditionalCommits)
        }
    }

    /// Where an S3 remote's credentials would come from, without fetching them; nil for a folder.
    static func credentialSource(_ definition: RemoteDefinition) -> String? {
        guard case .s3? = try? definition.location() else { return nil }
        do {
            return try AWSCredentialChain(environment: ProcessInfo.processInfo.environment, remote: definition.name).sourceName()
        } catch {
            return "none (\(error))"
        }
    }
}

/// `--jobs`: transfers to or from a remote at once.
struct TransferOptions: ParsableArguments {
    @Option(help: "Transfers to or from the remote at once (1-64).") var jobs = 4

    func validate() throws {
        guard (1...64).contains(jobs) else { throw ValidationError("--jobs takes 1 to 64, not \(jobs)") }
    }
}

struct RemoteCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remote",
        abstract: "Manage the remotes checkpoints are pushed to (S3 buckets and shared folders).",
        discussion: """
            A remote is a self-sufficient store in a bucket (s3://BUCKET/PREFIX) or a folder
            (file:///PATH): a fresh machine with only its URL and credentials can list, verify and restore.
            Credentials are never stored: they come from the AWS SDKs' chain, in its order: the
            environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN); a profile's role
            (role_arn with source_profile or credential_source); web identity (AWS_WEB_IDENTITY_TOKEN_FILE,
            AWS_ROLE_ARN); the profile (AWS_PROFILE) in ~/.aws/credentials; its credential_process; its keys
            in ~/.aws/config; the container endpoint (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or _FULL_URI);
            the EC2 instance's role (IMDSv2). Temporary credentials are refreshed before they expire.
            The region: --region, AWS_REGION, AWS_DEFAULT_REGION, the profile's, the instance's; a bucket
            in another region is found from the server's answer and remembered. The endpoint:
            AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL unless given. AWS_CA_BUNDLE names a private CA.
            """,
        subcommands: [RemoteAdd.self, RemoteList.self, RemoteRemove.self, RemoteSet.self]
    )
}

struct RemoteAdd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add",
        abstract: "Add a remote, after checking that it can be written and that conditional writes work."
    )

    @OptionGroup var store: StoreOptions
    @Argument(help: "The remote's name.") var name: String
    @Argument(help: "s3://BUCKET/PREFIX or file:///PATH.") var url: String
    @Option(help: "The S3 endpoint, e.g. http://127.0.0.1:8333 (default: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, else AWS).") var endpoint: String?
    @Option(help: "The S3 region (default: $AWS_REGION, $AWS_DEFAULT_REGION, else us-east-1).") var region: String?
    @Flag(help: "Address the bucket in the path (http://host/bucket/key); the default for endpoints other than AWS.") var pathStyle = false
    @Flag(help: "Address the bucket in the host name (https://bucket.host/key); the default on AWS.") var virtualHosted = false
    @Flag(help: "Accept a server that ignores conditional writes (If-None-Match): two machines pushing one run and step could then both win.") var unsafeUnconditionalCommits = false
    @Flag(help: "Push every checkpoint committed to this store to this remote (put, and library saves).") var pushOnCommit = false
    @Flag(help: "Print JSON.") var json = false

    func validate() throws {
        if pathStyle && virtualHosted { throw ValidationError("give --path-style or --virtual-hosted, not both") }
    }

    func run() async throws {
        let checkpointStore = try store.open(create: true)
        let definition = RemoteDefinition(name: name, url: url, endpoint: endpoint, region: region, pathStyle: pathStyle,
                                          virtualHosted: virtualHosted, unsafeUnconditionalCommits: unsafeUnconditionalCommits)
        if try checkpointStore.remotes().definition(named: name) != nil {
            throw CKStoreError(.alreadyExists, "this store already has a remote named \(name); remove it first with `ckstore remote rm \(name)`")
        }
        let remote = try RemoteOption.connect(definition, store: checkpointStore)
        var check = try await checkpointStore.checkRemote(remote)
        if let objects = remote.objects as? S3ObjectStore { check.credentials = objects.credentials.source }
        try checkpointStore.updateRemotes { registry in
            registry.remotes.append(definition)
            if pushOnCommit { registry.pushOnCommit = name }
        }
        if json {
            try JSONOutput.print(check)
        } else {
            let conditional = check.conditionalWrites ? "writes and conditional writes work" : "writes work; the server IGNORES conditional writes (--unsafe-unconditional-commits)"
            Terminal.standardError("remote \(name) (\(url)): \(check.createdMarker ? "new, empty" : "\(check.checkpoints) checkpoints"); \(conditional)\(check.credentials.map { "; credentials from " + $0 } ?? "")")
        }
    }
}

struct RemoteList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ls", abstract: "List the remotes this store knows.")

    @OptionGroup var store: StoreOptions
    @Flag(help: "Print JSON.") var json = false

    struct Row: Encodable {
        var name: String
        var url: String
        var endpoint: String?
        var region: String?
        var pathStyle: Bool
        var virtualHosted: Bool
        var pushOnCommit: Bool
        var unsafeUnconditionalCommits: Bool
        /// Where the credentials would come from now (never the secret); nil for a folder.
        var credentials: String?
        /// The bucket region this store learned from the server, if it learned one.
        var learnedRegion: String?
    }

    func run() async throws {
        let checkpointStore = try store.open()
        let registry = try checkpointStore.remotes()
        let rows = registry.remotes.map {
            Row(name: $0.name, url: $0.url, endpoint: $0.endpoint, region: $0.region, pathStyle: $0.pathStyle, virtualHosted: $0.virtualHosted,
                pushOnCommit: registry.pushOnCommit == $0.name, unsafeUnconditionalCommits: $0.unsafeUnconditionalCommits,
                credentials: RemoteOption.credentialSource($0), learnedRegion: try? checkpointStore.remoteFact($0.url, "region"))
        }
        if json {
            try JSONOutput.print(rows)
            return
        }
        if rows.isEmpty {
            Terminal.standardError("no remotes; add one with `ckstore remote add NAME URL`")
            return
        }
        print(Format.table(["NAME", "URL", "ENDPOINT", "CREDENTIALS", "NOTES"], rows.map {
            [$0.name, $0.url, $0.endpoint ?? "", $0.credentials ?? "",
             (($0.pushOnCommit ? ["push on commit"] : []) + ($0.unsafeUnconditionalCommits ? ["unconditional commits"] : [])).joined(separator: ", ")]
        }))
    }
}

struct RemoteRemove: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rm", abstract: "Forget a remote (its objects stay where they are).")

    @OptionGroup var store: StoreOptions
    @Argument(help: "The remote's name.") var name: String

    func run() async throws {
        try store.open().updateRemotes { registry in
            guard registry.definition(named: name) != nil else { throw CKStoreError(.notFound, "no remote named \(name)") }
            registry.remotes.removeAll { $0.name == name }
            if registry.pushOnCommit == name { registry.pushOnCommit = nil }
        }
    }
}

struct RemoteSet: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set",
        abstract: "Change a remote: its endpoint, region, addressing, or whether every commit is pushed to it."
    )

    @OptionGroup var store: StoreOptions
    @Argument(help: "The remote's name.") var name: String
    @Option(help: "The S3 endpoint (an empty string: from the environment).") var endpoint: String?
    @Option(help: "The S3 region (an empty string: from the environment).") var region: String?
    @Flag(inversion: .prefixedNo, help: "Address the bucket in the path.") var pathStyle: Bool?
    @Flag(inversion: .prefixedNo, help: "Address the bucket in the host name.") var virtualHosted: Bool?
    @Flag(inversion: .prefixedNo, help: "Push every checkpoint committed to this store to this remote (one remote at most).") var pushOnCommit: Bool?

    func run() async throws {
        try store.open().updateRemotes { registry in
            guard let index = registry.remotes.firstIndex(where: { $0.name == name }) else { throw CKStoreError(.notFound, "no remote named \(name)") }
            if let endpoint { registry.remotes[index].endpoint = endpoint.isEmpty ? nil : endpoint }
            if let region { registry.remotes[index].region = region.isEmpty ? nil : region }
            if let pathStyle { registry.remotes[index].pathStyle = pathStyle }
            if let virtualHosted { registry.remotes[index].virtualHosted = virtualHosted }
            if registry.remotes[index].pathStyle && registry.remotes[index].virtualHosted {
                throw CKStoreError(.invalidArgument, "remote \(name) cannot be both path-style and virtual-hosted")
            }
            if let pushOnCommit {
                if pushOnCommit { registry.pushOnCommit = name } else if registry.pushOnCommit == name { registry.pushOnCommit = nil }
            }
        }
    }
}

struct Push: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Upload checkpoints to a remote: exactly what it lacks, frames as stored (with --run or --all, pending shards too).",
        discussion: """
            REF is an id prefix, RUN@STEP, RUN@latest or RUN@latest-valid; --run pushes every checkpoint of
            a run, --all every checkpoint; with none of them, the newest checkpoint of every run. A
            checkpoint becomes visible on the remote only when everything it needs is uploaded (its commit
            object is written last, by a conditional create). An interrupted push, run again, uploads only
            what is still missing.
            """
    )

    @OptionGroup var store: StoreOptions
    @Argument(help: "Checkpoints to push.") var references: [String] = []
    @Option(help: "Push every checkpoint of this run.") var run: String?
    @Flag(help: "Push every checkpoint.") var all = false
    @OptionGroup var remote: RemoteOption
    @OptionGroup var transfers: TransferOptions
    @Flag(help: "Print JSON.") var json = false
    @OptionGroup var progress: ProgressOptions

    func run() async throws {
        let checkpointStore = try store.open()
        let target = try remote.connect(checkpointStore)
        var ids = [CheckpointID]()
        for reference in references { ids.append(try await checkpointStore.checkpoint(for: CheckpointReference(parsing: reference))) }
        if let run { ids += try checkpointStore.list(run: run).map(\.id) }
        if all { ids += try checkpointStore.list().map(\.id) }
        if references.isEmpty && run == nil && !all {
            ids = Dictionary(grouping: try checkpointStore.list(), by: \.run).values.compactMap { $0.max { $0.step < $1.step }?.id }
        }
        var seen = Set<CheckpointID>()
        ids = ids.filter { seen.insert($0).inserted }
        let renderer = progress.renderer()
        var report = try await checkpointStore.push(ids, to: target, jobs: transfers.jobs, progress: renderer?.handler)
        // With --run or --all, the run's pending shards go too: a shard whose push failed after its put
        // (the remote was down) reaches the remote, and completes the checkpoint there if it was the last.
        if run != nil || all {
            for pending in try checkpointStore.pendingCheckpoints(run: run) {
                for shard in pending.shards {
                    let pushed = try await checkpointStore.pushShard(shard.id, run: shard.run, step: shard.step, shard: shard.shard, to: target, jobs: transfers.jobs)
                    report.merge(pushed)
                }
            }
        }
        renderer?.finish()
        if json {
            try JSONOutput.print(report)
        } else {
            Terminal.standardError("pushed \(report.pushed.count) checkpoints and shards to \(target.name) (\(report.alreadyPresent.count) there already): \(ByteCount(report.bytesUploaded)) in \(report.objectsUploaded) objects, \(String(format: "%.2f", report.seconds)) s")
        }
    }
}

struct Pull: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Bring a checkpoint from a remote into this store, checking every byte.",
        discussion: "REF is an id prefix, RUN@STEP, RUN@latest or RUN@latest-valid (the newest that arrives whole)."
    )

    @OptionGroup var store: StoreOptions
    @Argument(help: "The checkpoint.") var reference: String
    @OptionGroup var remote: RemoteOption
    @OptionGroup var transfers: TransferOptions
    @Flag(help: "Print JSON.") var json = false
    @OptionGroup var progress: ProgressOptions

    func run() async throws {
        let checkpointStore = try store.open(create: true)
        let source = try remote.connect(checkpointStore)
        let renderer = progress.renderer()
        let report = try await checkpointStore.pull(try CheckpointReference(parsing: reference), from: source, jobs: transfers.jobs, progress: renderer?.handler)
        renderer?.finish()
        if json {
            try JSONOutput.print(report)
        } else {
            print(report.id.hex)
            Terminal.standardError(report.pulled
                ? "pulled \(report.run)@\(report.step) from \(source.name): \(ByteCount(report.bytesDownloaded)) in \(report.requests) requests, \(String(format: "%.2f", report.seconds)) s"
                : "\(report.run)@\(report.step) is in this store already")
        }
    }
}

/// `put --json`: the put's fields, and `push` when the checkpoint was pushed.
struct PutOutput: Encodable {
    var result: PutResult
    var push: PushReport?

    enum CodingKeys: String, CodingKey { case push }

    func encode(to encoder: any Encoder) throws {
        try result.encode(to: encoder)
        if let push {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(push, forKey: .push)
        }
    }
}
