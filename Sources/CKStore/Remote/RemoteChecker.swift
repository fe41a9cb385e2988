import Foundation

/// What `verify --remote` found.
public struct RemoteVerifyReport: Codable, Sendable, Equatable {
    /// One damaged or missing object and the checkpoints that need it.
    public struct Problem: Codable, Sendable, Equatable {
        /// The object's key below the remote's prefix.
        public var object: String
        public var problem: String
        public var checkpoints: [CheckpointID]
    }

    public var remote: String
    /// `quick`, `full` or `sample`.
    public var mode: String
    public var checkpoints: Int
    /// Objects read whole and hashed, and their bytes.
    public var objectsHashed: Int = 0
    public var bytesHashed: Int64 = 0
    /// Pack objects the checkpoints need.
    public var packs: Int = 0
    public var problems: [Problem] = []
    public var seconds: Double = 0
    /// No problem found.
    public var ok = true
    /// Checkpoints with shard objects on the remote but no commit object whose oldest shard is older than
    /// the pending age: a rank never pushed its shard. Not damage; the next `gc --remote` removes them.
    public var stalePending: [PendingCheckpoint] = []

    init(remote: String, mode: String, checkpoints: Int) {
        self.remote = remote
        self.mode = mode
        self.checkpoints = checkpoints
    }
}

/// Checks a remote from the remote itself, not from this store's cache: every commit object's index
/// objects are read and hashed (their names are their SHA-256), every pack they list must exist with the
/// size the index gives; `full` (or `sample` of a share of the packs) reads packs whole and checks each
/// against the SHA-256 that names it, then every frame's checksum.
struct RemoteChecker {
    let catalogue: any RemoteCacheQueries
    let remote: Remote
    var depth: VerifyDepth = .quick
    var jobs = 4
    var pendingAge = PendingCheckpoint.defaultMaximumAge

    private var objects: any ObjectStore { remote.objects }

    func check() async throws -> RemoteVerifyReport {
        let started = ContinuousClock.now
        let session = RemoteSession(catalogue: catalogue, remote: remote)
        try await session.ensureMarker(create: false)
        let commits = try await session.sync().map(\.commit)
        let mode: String
        switch depth {
        case .quick: mode = "quick"
        case .full: mode = "full"
        case .sample: mode = "sample"
        }
        var report = RemoteVerifyReport(remote: remote.name, mode: mode, checkpoints: commits.count)
        var problems = [String: String]()
        var needers = [String: Set<CheckpointID>]()
        var packSizes = [String: Int64]()
        var indexes = [String: RemoteIndex]()
        // Shard objects of pending checkpoints need their objects as commit objects do.
        let committed = Set(commits.map { "\($0.run)@\($0.step)" })
        let pendingShards = try await session.shardObjects().map(\.shard).filter { !committed.contains("\($0.run)@\($0.step)") }
        let owners = commits.map { (id: $0.id, indexes: $0.indexes) } + pendingShards.map { (id: $0.id, indexes: $0.indexes) }
        for commit in owners {
            for name in commit.indexes {
                let key = RemoteLayout.index(name)
                needers[key, default: []].insert(commit.id)
                if indexes[name] != nil || problems[key] != nil { continue }
                guard let bytes = try await objects.getIfPresent(key) else {
                    problems[key] = "missing"
                    continue
                }
                report.objectsHashed += 1
                report.bytesHashed += Int64(bytes.count)
                guard SHA256Hasher.digest(bytes).hex == name else {
                    problems[key] = "fails its SHA-256 (the object was altered or damaged)"
                    continue
                }
                guard let index = try? RemoteJSON.decode(RemoteIndex.self, bytes, what: key) else {
                    problems[key] = "is not a valid index object"
                    continue
                }
                indexes[name] = index
                for pack in index.packs { packSizes[pack.name] = pack.size }
            }
            for name in commit.indexes {
                for pack in indexes[name]?.packs ?? [] { needers[RemoteLayout.pack(pack.name), default: []].insert(commit.id) }
            }
        }
        report.packs = packSizes.count
        let listed = Dictionary(try await objects.list(prefix: RemoteLayout.packsPrefix).map { ($0.key, $0.size) }, uniquingKeysWith: { a, _ in a })
        var toHash = [String]()
        for (name, size) in packSizes.sorted(by: { $0.key < $1.key }) {
            let key = RemoteLayout.pack(name)
            guard let actual = listed[key] else {
                problems[key] = "missing"
                continue
            }
            guard actual == size else {
                problems[key] = "is \(actual) bytes; its index object says \(size)"
                continue
            }
            toHash.append(key)
        }
        switch depth {
        case .quick: toHash = []
        case .full: break
        case .sample(let percent):
            var generator = SystemRandomNumberGenerator()
            let count = toHash.isEmpty ? 0 : max(1, Int((Double(toHash.count) * percent / 100).rounded(.up)))
            toHash = Array(toHash.shuffled(using: &generator).prefix(count)).sorted()
        }
        // Whole packs, at most `jobs` at once, each against the SHA-256 that names it and its frames'
        // checksums.
        let objects = self.objects
        try await withThrowingTaskGroup(of: (String, String?, Int64).self) { group in
            var iterator = toHash.makeIterator()
            func add(_ key: String) {
                group.addTask {
                    var bytes = try await objects.get(key)
                    if SHA256Hasher.digest(bytes).hex != RemoteLayout.name(ofKey: key) {
                        // Read again before calling it damage: a body cut short on the way (by a proxy that
                        // fixed up its length) is not the object's fault; damage reads the same twice.
                        bytes = try await objects.get(key)
                    }
                    guard SHA256Hasher.digest(bytes).hex == RemoteLayout.name(ofKey: key) else {
                        return (key, "fails its SHA-256 (the object was altered or damaged; read twice)", Int64(bytes.count))
                    }
                    let problem: String? = bytes.withUnsafeBytes { buffer in
                        let parser = PackParser(bytes: buffer, name: key)
                        do {
                            for frame in try parser.trailer() {
                                _ = try parser.frame(at: frame.offset, storedLength: frame.header.storedLength, expected: frame.header.digest, checkChecksum: true)
                            }
                            return nil
                        } catch {
                            return "\(error)"
                        }
                    }
                    return (key, problem, Int64(bytes.count))
                }
            }
            for _ in 0..<max(1, jobs) {
                guard let key = iterator.next() else { break }
                add(key)
            }
            while let (key, problem, bytes) = try await group.next() {
                report.objectsHashed += 1
                report.bytesHashed += bytes
                if let problem { problems[key] = problem }
                if let next = iterator.next() { add(next) }
            }
        }
        report.problems = problems.sorted { $0.key < $1.key }.map {
            RemoteVerifyReport.Problem(object: $0.key, problem: $0.value, checkpoints: (needers[$0.key] ?? []).sorted())
        }
        report.ok = report.problems.isEmpty
        let now = Date().timeIntervalSince1970
        report.stalePending = PendingCheckpoint.grouping(pendingShards.map(\.pending)).filter { now - $0.createdAt >= pendingAge }
        report.seconds = (ContinuousClock.now - started) / .seconds(1)
        return report
    }
}

extension CheckpointStore {
    /// Checks a remote's objects (see ``RemoteChecker``).
    public func verify(remote: Remote, depth: VerifyDepth = .quick, jobs: Int = 4, pendingAge: Double = PendingCheckpoint.defaultMaximumAge) async throws(CKStoreError) -> RemoteVerifyReport {
        try await CKStoreError.wrapping("verify of remote \(remote.name)") {
            var checker = RemoteChecker(catalogue: catalogue, remote: remote)
            checker.depth = depth
            checker.pendingAge = pendingAge
            checker.jobs = max(1, jobs)
            return try await checker.check()
        }
    }
}
