import Foundation

/// A remote as `ckstore remote add` records it: a name, a URL and how to reach an S3 server. Credentials
/// are never recorded: they come from the environment or `~/.aws/credentials`, as for the AWS tools.
public struct RemoteDefinition: Codable, Sendable, Equatable {
    /// What commands call it (`--remote NAME`).
    public var name: String
    /// `s3://BUCKET/PREFIX` or `file:///PATH`.
    public var url: String
    /// The S3 endpoint (`http://127.0.0.1:8333`); nil for AWS, or `AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL`.
    public var endpoint: String?
    /// The signing region; nil for `AWS_REGION`/`AWS_DEFAULT_REGION`, else us-east-1.
    public var region: String?
    /// Address the bucket in the path (`http://host/bucket/key`) instead of the host name; what most
    /// S3-compatible servers need.
    @DefaultWhenMissing public var pathStyle: Bool
    /// Address the bucket in the host name (`https://bucket.host/key`) on a custom endpoint too.
    @OmittedWhenEmpty public var virtualHosted: Bool
    /// The remote's server ignores conditional creates and its pushes go ahead anyway
    /// (`--unsafe-unconditional-commits`): two machines pushing one run and step could both win.
    @OmittedWhenEmpty public var unsafeUnconditionalCommits: Bool

    public init(name: String, url: String, endpoint: String? = nil, region: String? = nil, pathStyle: Bool = false,
                virtualHosted: Bool = false, unsafeUnconditionalCommits: Bool = false) {
        self.name = name
        self.url = url
        self.endpoint = endpoint
        self.region = region
        self.pathStyle = pathStyle
        self.virtualHosted = virtualHosted
        self.unsafeUnconditionalCommits = unsafeUnconditionalCommits
    }

    /// How a request names the bucket.
    public enum Addressing: Sendable {
        /// Virtual-hosted on AWS, in the path on other servers.
        case automatic
        case path
        case virtualHosted
    }

    public var addressing: Addressing { pathStyle ? .path : virtualHosted ? .virtualHosted : .automatic }

    /// What the URL names.
    public enum Location: Sendable, Equatable {
        case s3(bucket: String, prefix: String)
        case file(path: String)
    }

    /// Parses the URL.
    ///
    /// - Throws: `invalidArgument` for anything but `s3://BUCKET[/PREFIX]` and `file:///ABSOLUTE/PATH`.
    public func location() throws -> Location {
        if url.hasPrefix("s3://") {
            let rest = url.dropFirst(5)
            let parts = rest.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
            let bucket = String(parts.first ?? "")
            guard Self.isBucketName(bucket) else {
                throw CKStoreError(.invalidArgument, "remote URL \(url): \"\(bucket)\" is not a bucket name (3-63 lowercase letters, digits, dots and hyphens)")
            }
            var prefix = parts.count > 1 ? String(parts[1]) : ""
            while prefix.hasSuffix("/") { prefix.removeLast() }
            guard !prefix.split(separator: "/", omittingEmptySubsequences: false).contains(where: { $0 == ".." || $0 == "." || ($0.isEmpty && !prefix.isEmpty) }) else {
                throw CKStoreError(.invalidArgument, "remote URL \(url): the prefix has an empty, . or .. segment")
            }
            return .s3(bucket: bucket, prefix: prefix)
        }
        if url.hasPrefix("file://") {
            let path = String(url.dropFirst(7))
            guard path.hasPrefix("/") else {
                throw CKStoreError(.invalidArgument, "remote URL \(url): a file URL needs an absolute path (file:///path)")
            }
            return .file(path: path)
        }
        throw CKStoreError(.invalidArgument, "remote URL \(url) is neither s3://BUCKET/PREFIX nor file:///PATH")
    }

    static func isBucketName(_ name: String) -> Bool {
        (3...63).contains(name.count) && name.allSatisfy { $0.isLowercase || $0.isNumber || $0 == "." || $0 == "-" }
            && name.first!.isLetterOrNumber && name.last!.isLetterOrNumber
    }

    /// Checks a remote's name: what may follow `--remote`.
    static func validateName(_ name: String) throws {
        guard !name.isEmpty, name.count <= 64, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }),
              !name.hasPrefix(".") else {
            throw CKStoreError(.invalidArgument, "remote name \"\(name)\" must be 1-64 letters, digits, '-', '_' or '.'")
        }
    }
}

private extension Character {
    var isLetterOrNumber: Bool { isLetter || isNumber }
}

/// The remotes a store knows, in `remotes.json` beside the catalogue (so that `repair` keeps them), and
/// which of them every committed checkpoint is pushed to.
public struct RemoteRegistry: Codable, Sendable, Equatable {
    public var remotes: [RemoteDefinition] = []
    /// The remote every `put` (and library save) pushes its checkpoint to once it is committed.
    public var pushOnCommit: String?

    public init() {}

    static func path(_ layout: StoreLayout) -> String { layout.root + "/remotes.json" }

    static func load(_ layout: StoreLayout) throws -> RemoteRegistry {
        let path = path(layout)
        guard FileSystem.exists(path) else { return RemoteRegistry() }
        return try RemoteJSON.decode(RemoteRegistry.self, try CheckpointStore.readSmallFile(path), what: path)
    }

    /// Writes the registry: to a temporary file, fsynced, renamed into place.
    func save(_ layout: StoreLayout) throws {
        let bytes = Array(try StoredJSON.encoder(pretty: true).encode(self)) + [0x0A]
        let temporary = layout.temporaryRoot + "/remotes-" + PackID.random().hex
        let file = try SystemFile.createNew(temporary)
        do {
            try file.write(bytes, at: 0)
            try file.sync()
            try FileSystem.rename(temporary, Self.path(layout))
            try FileSystem.syncDirectory(layout.root)
        } catch {
            try? FileSystem.removeFile(temporary)
            throw error
        }
    }

    public func definition(named name: String) -> RemoteDefinition? { remotes.first { $0.name == name } }
}

/// A remote to push to or pull from: its transport and the key its cache is kept under.
public struct Remote: Sendable {
    /// The name it was given, or its URL when it has none.
    public var name: String
    /// The URL; the store's cache of the remote is keyed by it.
    public var url: String
    /// The transport.
    public var objects: any ObjectStore
    /// Push even when the server ignores conditional creates (`--unsafe-unconditional-commits`).
    public var unsafeUnconditionalCommits = false

    public init(name: String, url: String, objects: any ObjectStore, unsafeUnconditionalCommits: Bool = false) {
        self.name = name
        self.url = url
        self.objects = objects
        self.unsafeUnconditionalCommits = unsafeUnconditionalCommits
    }

    /// A remote over a folder (`file:///…`).
    public static func folder(_ definition: RemoteDefinition) throws -> Remote {
        guard case .file(let path) = try definition.location() else {
            throw CKStoreError(.invalidArgument, "remote \(definition.name) (\(definition.url)) is not a file:// remote")
        }
        return Remote(name: definition.name, url: definition.url, objects: FileObjectStore(root: path),
                      unsafeUnconditionalCommits: definition.unsafeUnconditionalCommits)
    }
}

extension CheckpointStore {
    /// The remotes this store knows.
    public func remotes() throws -> RemoteRegistry { try RemoteRegistry.load(layout) }

    /// Changes the remotes this store knows (`remote add`, `remote rm`, the push-on-commit setting).
    public func updateRemotes(_ change: (inout RemoteRegistry) throws -> Void) throws {
        try CKStoreError.wrapping("updating \(RemoteRegistry.path(layout))") { () throws in
            let lock = try StoreLock(path: layout.lockPath, mode: .shared)
            defer { withExtendedLifetime(lock) {} }
            var registry = try RemoteRegistry.load(layout)
            let before = registry
            try change(&registry)
            for definition in registry.remotes { try RemoteDefinition.validateName(definition.name); _ = try definition.location() }
            if let push = registry.pushOnCommit, registry.definition(named: push) == nil {
                throw CKStoreError(.notFound, "no remote named \(push)")
            }
            // A removed or re-pointed remote's cache goes with it.
            for old in before.remotes where registry.definition(named: old.name)?.url != old.url {
                try withCatalogue { catalogue in try catalogue.write { try catalogue.forgetRemote(old.url) } }
            }
            try registry.save(layout)
        }
    }
}
