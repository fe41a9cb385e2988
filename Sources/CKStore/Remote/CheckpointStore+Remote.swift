import Foundation

extension CheckpointStore {
    /// Uploads checkpoints to a remote: exactly the frames it lacks, as stored, then each checkpoint's
    /// commit object (the remote's commit point, written last, by a conditional create).
    ///
    /// An interrupted push leaves nothing visible on the remote; run again, it uploads only what is still
    /// missing from what the remote is known to hold.
    ///
    /// - Throws: `conflict` when the remote has a different checkpoint at one's run and step; `remote`
    ///   when the remote refuses a request.
    public func push(_ ids: [CheckpointID], to remote: Remote, jobs: Int = 4, progress: ProgressHandler? = nil) async throws(CKStoreError) -> PushReport {
        try await CKStoreError.wrapping("push to remote \(remote.name)") {
            var pusher = Pusher(catalogue: catalogue, layout: layout, packs: PackReaderCache(layout: layout), remote: remote)
            pusher.jobs = max(1, jobs)
            pusher.progress = progress
            let report = try await pusher.push(ids)
            // Each pushed checkpoint's share of the push, for `advise`.
            let now = Date().timeIntervalSince1970
            recordCosts(report.pushed.map {
                CheckpointCost(checkpoint: $0, kind: .push, seconds: report.seconds / Double(report.pushed.count),
                               bytes: report.bytesUploaded / Int64(report.pushed.count), recordedAt: now)
            })
            return report
        }
    }

    /// The checkpoints a remote holds (its commit objects), ordered by run and step.
    public func remoteCheckpoints(_ remote: Remote, run: String? = nil) async throws(CKStoreError) -> [RemoteCommit] {
        try await CKStoreError.wrapping("listing remote \(remote.name)") {
            let session = RemoteSession(catalogue: catalogue, remote: remote)
            try await session.ensureMarker(create: false)
            return try await session.sync().map(\.commit)
                .filter { run == nil || $0.run == run }
                .sorted { ($0.run, $0.step) < ($1.run, $1.step) }
        }
    }

    /// Resolves a reference among a remote's checkpoints. `RUN@latest-valid` is the newest of the run
    /// whose closure is present (every index object and pack it needs exists); ``pull(_:from:jobs:progress:)``
    /// then checks every byte.
    public func resolve(_ reference: CheckpointReference, on remote: Remote) async throws(CKStoreError) -> RemoteCommit {
        let commits = try await remoteCheckpoints(remote)
        return try await CKStoreError.wrapping("resolving \(reference) on remote \(remote.name)") {
            switch reference {
            case .idPrefix(let prefix):
                let matches = commits.filter { $0.id.hex.hasPrefix(prefix.lowercased()) }
                guard let first = matches.first else { throw CKStoreError(.notFound, "remote \(remote.name) has no checkpoint \(prefix)") }
                guard Set(matches.map(\.id)).count == 1 else {
                    throw CKStoreError(.ambiguousReference, "\(prefix) matches \(Set(matches.map(\.id)).count) checkpoints on remote \(remote.name); give more of the id")
                }
                return first
            case .step(let run, let step):
                guard let commit = commits.first(where: { $0.run == run && $0.step == step }) else {
                    throw CKStoreError(.notFound, "remote \(remote.name) has no checkpoint \(run)@\(step)")
                }
                return commit
            case .latest(let run):
                guard let commit = commits.last(where: { $0.run == run }) else {
                    throw CKStoreError(.notFound, "remote \(remote.name) has no checkpoint of run \(run)")
                }
                return commit
            case .latestValid(let run):
                let candidates = commits.filter { $0.run == run }.reversed()
                guard !candidates.isEmpty else { throw CKStoreError(.notFound, "remote \(remote.name) has no checkpoint of run \(run)") }
                for commit in candidates where try await closureIsPresent(commit, remote: remote) { return commit }
                throw CKStoreError(.damaged, "remote \(remote.name) has no checkpoint of run \(run) whose objects are all present")
            }
        }
    }

    /// Whether every object a remote checkpoint needs exists.
    func closureIsPresent(_ commit: RemoteCommit, remote: Remote) async throws -> Bool {
        let session = RemoteSession(catalogue: catalogue, remote: remote)
        do {
            try await session.loadIndexes(commit.indexes)
        } catch let error as CKStoreError where error.code == .damaged {
            return false
        }
        let packs = try withCatalogue { try $0.remotePacks(remote.url, indexes: commit.indexes) }
        for pack in packs where try await remote.objects.head(RemoteLayout.pack(pack)) == nil { return false }
        return true
    }

    /// The manifest of a remote checkpoint, read from the remote (one ranged GET) and checked against its id.
    public func manifest(of commit: RemoteCommit, on remote: Remote) async throws(CKStoreError) -> Manifest {
        try await CKStoreError.wrapping("reading the manifest of \(commit.run)@\(commit.step) from remote \(remote.name)") {
            var report = PullReport(remote: remote.name, id: commit.id, run: commit.run, step: commit.step, pulled: false)
            return try await Puller(catalogue: catalogue, layout: layout, remote: remote).manifest(of: commit, report: &report).0
        }
    }

    /// Brings a remote checkpoint and every frame it needs into this store, checking each against its
    /// SHA-256; for `RUN@latest-valid`, the newest that arrives whole.
    public func pull(_ reference: CheckpointReference, from remote: Remote, jobs: Int = 4, progress: ProgressHandler? = nil) async throws(CKStoreError) -> PullReport {
        try await pull(reference, from: remote, jobs: jobs, progress: progress, restoringTo: nil).report
    }

    /// Brings a remote checkpoint into this store and restores it into `destination` (`get --remote`):
    /// the restore runs over the frames just fetched, and is the check they need, before the checkpoint is
    /// recorded (``Puller``), so every chain is decoded once. When the store held the checkpoint already,
    /// or `options` choose some files or tensors, it is restored from the store after the pull.
    ///
    /// - Throws: as ``pull(_:from:jobs:progress:)`` and ``restore(_:to:options:)``.
    public func pull(_ reference: CheckpointReference, from remote: Remote, restoringTo destination: String, options: RestoreOptions = RestoreOptions(),
                     jobs: Int = 4, progress: ProgressHandler? = nil) async throws(CKStoreError) -> (report: PullReport, restored: RestoreResult) {
        // A destination the restore would refuse is refused before anything is downloaded.
        try CKStoreError.wrapping("restore into \(destination)") {
            try RestoreDestination(destination, force: options.force, keepSpecialModeBits: options.keepSpecialModeBits).checkUsable()
        }
        let (report, restored) = try await pull(reference, from: remote, jobs: jobs, progress: progress, restoringTo: (destination, options))
        if let restored { return (report, restored) }
        return (report, try await restore(report.id, to: destination, options: options))
    }

    private func pull(_ reference: CheckpointReference, from remote: Remote, jobs: Int, progress: ProgressHandler?,
                      restoringTo restore: (destination: String, options: RestoreOptions)?) async throws(CKStoreError) -> (report: PullReport, restored: RestoreResult?) {
        var candidates: [RemoteCommit]
        if case .latestValid(let run) = reference {
            candidates = try await remoteCheckpoints(remote, run: run).reversed()
            guard !candidates.isEmpty else { throw CKStoreError(.notFound, "remote \(remote.name) has no checkpoint of run \(run)") }
        } else {
            candidates = [try await resolve(reference, on: remote)]
        }
        var failures = [String]()
        for commit in candidates {
            do {
                return try await CKStoreError.wrapping("pull of \(commit.run)@\(commit.step) from remote \(remote.name)") {
                    var puller = Puller(catalogue: catalogue, layout: layout, remote: remote)
                    puller.jobs = max(1, jobs)
                    puller.progress = progress
                    return try await puller.pull(commit, restoringTo: restore)
                }
            } catch where error.code == .damaged && candidates.count > 1 {
                // latest-valid: a damaged checkpoint is passed over for the one before it.
                failures.append("\(commit.run)@\(commit.step): \(error.message)")
            }
        }
        throw CKStoreError(.damaged, "remote \(remote.name) has no checkpoint of \(reference) that arrives whole: " + failures.joined(separator: "; "))
    }
}

extension CheckpointStore {
    /// Brings some files of a remote checkpoint into this store: those of shard `shard` (what one rank
    /// wrote), narrowed to `files` when given. Only their chunks and delta bases are fetched (each checked
    /// against its SHA-256), and held from gc for an hour; the checkpoint itself is not recorded, since this
    /// store does not have all of it. ``restore(_:to:options:)`` with the same shard and files then writes
    /// them: `get --remote --shard I/N` on each rank of a resuming job fetches that rank's part, not the
    /// whole checkpoint. A checkpoint this store holds already is not fetched again.
    ///
    /// - Throws: `invalidArgument` when the checkpoint was not put as that many shards, `notFound` for a
    ///   file it does not have.
    public func pullFiles(_ reference: CheckpointReference, from remote: Remote, shard: ShardSpec? = nil, files: [String] = [],
                          jobs: Int = 4, progress: ProgressHandler? = nil) async throws(CKStoreError) -> PullReport {
        let commit = try await resolve(reference, on: remote)
        return try await CKStoreError.wrapping("pull of some files of \(commit.run)@\(commit.step) from remote \(remote.name)") {
            var puller = Puller(catalogue: catalogue, layout: layout, remote: remote)
            puller.jobs = max(1, jobs)
            puller.progress = progress
            return try await puller.pull(commit) { manifest in
                var chosen = manifest.files
                if let shard {
                    guard let count = manifest.shards?.count, count == shard.count else {
                        throw CKStoreError(.invalidArgument, "checkpoint \(commit.id.short) (\(commit.run)@\(commit.step)) was not put as \(shard.count) shards")
                    }
                    chosen = manifest.files(ofShard: shard.index)
                }
                guard !files.isEmpty else { return chosen.map(\.path) }
                let available = Set(chosen.map(\.path))
                return try files.map { (path) throws -> String in
                    let normalized = RelativePath.normalize(path) ?? path
                    guard available.contains(normalized) else {
                        throw CKStoreError(.notFound, "checkpoint \(commit.id.short) (\(commit.run)@\(commit.step)) has no file \(path)\(shard.map { " in shard \($0)" } ?? "")")
                    }
                    return normalized
                }
            }
        }
    }
}

/// What `remote add` found when it checked a remote.
public struct RemoteCheck: Codable, Sendable, Equatable {
    public var remote: String
    public var url: String
    /// The remote was empty and is now a ckstore remote.
    public var createdMarker: Bool
    /// Checkpoints it holds.
    public var checkpoints: Int
    /// A second conditional create of the same key was refused, as it must be (false only for a remote
    /// added with `--unsafe-unconditional-commits`).
    public var conditionalWrites: Bool
    /// Where the credentials came from (`environment`, `instance-metadata (role R)`, …; never the
    /// secret); nil for a folder.
    public var credentials: String?
}

extension CheckpointStore {
    /// What this store learned of a remote's server: `conditional_writes` (`honoured`, `ignored`), and
    /// for S3 the bucket's `region`. A cache kept in the catalogue, forgotten with the remote.
    public func remoteFact(_ remote: String, _ name: String) throws(CKStoreError) -> String? {
        try CKStoreError.wrapping("reading what the store knows of \(remote)") { try catalogue.remoteFact(remote, name) }
    }

    public func setRemoteFact(_ remote: String, _ name: String, _ value: String) throws(CKStoreError) {
        try CKStoreError.wrapping("recording what the store knows of \(remote)") { try catalogue.setRemoteFact(remote, name, value) }
    }

    /// Checks that a remote can be read and written, and that it refuses a second conditional create of
    /// one key (without that, two machines committing the same run and step could both win); makes an
    /// empty location a ckstore remote.
    ///
    /// - Throws: `remote` naming the request and HTTP status that failed; `unsupportedSchema` for a
    ///   location that holds something else.
    public func checkRemote(_ remote: Remote) async throws(CKStoreError) -> RemoteCheck {
        try await CKStoreError.wrapping("checking remote \(remote.name)") {
            let objects = remote.objects
            let existed = try await objects.getIfPresent(RemoteLayout.marker) != nil
            let session = RemoteSession(catalogue: catalogue, remote: remote)
            // A remote being added is checked again even when this store once found it honest.
            try catalogue.setRemoteFact(remote.url, "conditional_writes", "unchecked")
            try await session.ensureMarker(create: true)
            let commits = try await objects.list(prefix: RemoteLayout.commitsPrefix)
            let honoured = try catalogue.remoteFact(remote.url, "conditional_writes") == "honoured"
            return RemoteCheck(remote: remote.name, url: remote.url, createdMarker: !existed, checkpoints: commits.count, conditionalWrites: honoured)
        }
    }
}
