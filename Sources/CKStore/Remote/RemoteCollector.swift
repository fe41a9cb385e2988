import Foundation

/// What `gc --remote` did (or, with `--dry-run`, would do). The retention fields have the names and
/// shapes of local gc's report (``GCReport``): `dry_run`, `kept` (with the rules that keep each),
/// `deleted`, `deleted_checkpoints`, `bytes_freed`.
public struct RemoteGCReport: Codable, Sendable, Equatable {
    public var remote: String
    public var dryRun: Bool
    /// Kept checkpoints with their reasons.
    public var kept: [GCReport.Kept] = []
    /// Checkpoints whose commit objects retention deleted.
    public var deleted: [CheckpointID] = []
    public var deletedCheckpoints: [GCReport.Deleted] = []
    /// Objects condemned by this run (deleted by a gc at least the grace period later, if still unused).
    public var condemnedObjects: Int = 0
    public var condemnedBytes: Int64 = 0
    /// Objects condemned earlier and deleted now, and their bytes.
    public var deletedObjects: Int = 0
    public var bytesFreed: Int64 = 0
    /// Condemned objects a commit made since needs again.
    public var rescuedObjects: Int = 0
    public var graceSeconds: Double
    public var seconds: Double = 0
    /// Pending checkpoints (shard objects, no commit object) older than the pending age, whose shard
    /// objects were deleted; what only they needed is condemned like any unreferenced object.
    public var pendingRemoved: [PendingCheckpoint] = []
    /// Shard objects of checkpoints whose commit object exists (it names everything they did), deleted.
    public var shardObjectsRetired: Int = 0
    /// Incomplete multipart uploads under the remote's prefix older than the grace period (a killed
    /// push's), aborted (with `--dry-run`: that would be).
    public var multipartAborted: Int = 0
    /// Younger incomplete multipart uploads, left to the pushes that may still be sending them.
    public var multipartInProgress: Int = 0
}

/// Remote garbage collection, in two phases with a grace period and no lock that pushes wait for.
///
/// Each run: applies the store's retention policies (and pins) to the remote's runs by deleting commit
/// objects; deletes the objects an earlier run condemned at least `grace` ago that no commit object names
/// now (index objects before their packs); then condemns, in `gc/pending`, the index objects and packs that
/// no commit names and that are older than `grace`. A push checks `gc/pending` and the objects it relies
/// on just before it commits and commits within half the grace period, so an object a new commit needs is
/// either seen as condemned by that push (which uploads its frames again) or named by a commit that the
/// deleting gc sees (rule 5). Only one gc runs at a time per remote (`gc/lease`, a conditional create that
/// expires); pushes never wait for it.
struct RemoteCollector {
    let catalogue: any RemoteRetentionQueries
    let remote: Remote
    var grace: Double = 3600
    var dryRun = false
    /// Pending checkpoints whose oldest shard object is older than this are removed.
    var pendingAge = PendingCheckpoint.defaultMaximumAge
    /// The shortest grace period a gc may use: a push commits within half of it after its check, and
    /// a busy machine or a slow server must be able to. Only tests go lower.
    static let minimumGrace: Double = 60
    /// A lease older than this is taken to be left by a gc that died.
    var leaseTimeout: Double = 3600

    private var objects: any ObjectStore { remote.objects }

    struct Lease: Codable {
        var holder: String
        var acquiredAt: Double
    }

    func collect() async throws -> RemoteGCReport {
        let started = ContinuousClock.now
        let session = RemoteSession(catalogue: catalogue, remote: remote)
        try await session.ensureMarker(create: false)
        // The lease is a conditional create: on a server that ignores them two gcs could both hold it.
        if !dryRun { try await session.ensureConditionalWrites() }
        if !dryRun { try await acquireLease() }
        do {
            var report = try await run(session)
            if !dryRun { try await objects.delete(RemoteLayout.lease) }
            report.seconds = (ContinuousClock.now - started) / .seconds(1)
            return report
        } catch {
            if !dryRun { try? await objects.delete(RemoteLayout.lease) }
            throw error
        }
    }

    private func acquireLease() async throws {
        let me = Lease(holder: "\(ProcessInfo.processInfo.hostName):\(getpid())", acquiredAt: Date().timeIntervalSince1970)
        for _ in 0..<2 {
            if try await objects.put(RemoteLayout.lease, try RemoteJSON.encode(me), ifAbsent: true) { return }
            guard let bytes = try await objects.getIfPresent(RemoteLayout.lease) else { continue }
            let other = try RemoteJSON.decode(Lease.self, bytes, what: "\(remote.name): \(RemoteLayout.lease)")
            // A retried create whose first answer was lost finds its own lease.
            if other.holder == me.holder, other.acquiredAt == me.acquiredAt { return }
            guard Date().timeIntervalSince1970 - other.acquiredAt > leaseTimeout else {
                throw CKStoreError(.locked, "another gc is running on remote \(remote.name) (\(other.holder), since \(Date(timeIntervalSince1970: other.acquiredAt))); try again later")
            }
            try await objects.delete(RemoteLayout.lease)
        }
        throw CKStoreError(.locked, "could not take the gc lease of remote \(remote.name)")
    }

    private func run(_ session: RemoteSession) async throws -> RemoteGCReport {
        var report = RemoteGCReport(remote: remote.name, dryRun: dryRun, graceSeconds: grace)
        let now = Date().timeIntervalSince1970

        // Retention: the store's policy for each run, its pins, newest always kept.
        var commits = try await session.sync()
        var doomed = Set<String>()
        for (run, entries) in Dictionary(grouping: commits, by: \.commit.run) {
            let (policy, pins) = try catalogue.retention(run: run, pinnedAmong: entries.map(\.commit.id))
            let candidates = entries.map { entry in
                RetentionPlanner.Candidate(id: entry.commit.id, step: entry.commit.step, createdAt: entry.commit.createdAt,
                                           metrics: entry.commit.metrics, tags: entry.commit.tags, pinned: pins.contains(entry.commit.id))
            }
            let plan = RetentionPlanner.plan(policy, candidates)
            for entry in entries {
                if plan.deleted.contains(entry.commit.id) {
                    doomed.insert(entry.key)
                    report.deletedCheckpoints.append(GCReport.Deleted(id: entry.commit.id, run: run, step: entry.commit.step))
                } else {
                    let reasons = (plan.kept[entry.commit.id] ?? []).map(\.description)
                    report.kept.append(GCReport.Kept(id: entry.commit.id, run: run, step: entry.commit.step, reasons: reasons, dropped: []))
                }
            }
        }
        report.kept.sort { ($0.run, $0.step) < ($1.run, $1.step) }
        report.deletedCheckpoints.sort { ($0.run, $0.step) < ($1.run, $1.step) }
        report.deleted = report.deletedCheckpoints.map(\.id)
        commits.removeAll { doomed.contains($0.key) }
        if !dryRun {
            for key in doomed.sorted() { try await objects.delete(key) }
            try catalogue.forgetRemoteCommits(remote.url, keys: doomed)
        }

        // What the remaining commits need. Re-listed after the deletions, so commits made meanwhile count.
        if !dryRun { commits = try await session.sync() }
        // Shard objects name what their shards need, as commit objects do, until their checkpoint is
        // committed (its commit object names the same) or they are too old to complete.
        let committedSteps = Set(commits.map { "\($0.commit.run)@\($0.commit.step)" })
        var shards = [(key: String, shard: RemoteShard)]()
        var retire = [String]()
        for entry in try await session.shardObjects() {
            if committedSteps.contains("\(entry.shard.run)@\(entry.shard.step)") { retire.append(entry.key) } else { shards.append(entry) }
        }
        let stale = PendingCheckpoint.grouping(shards.map(\.shard.pending)).filter { now - $0.createdAt >= pendingAge }
        let staleIDs = Set(stale.flatMap(\.shardIDs))
        report.pendingRemoved = stale
        report.shardObjectsRetired = retire.count
        retire += shards.filter { staleIDs.contains($0.shard.id) }.map(\.key)
        shards.removeAll { staleIDs.contains($0.shard.id) }
        if !dryRun { for key in retire.sorted() { try await objects.delete(key) } }
        let referencedIndexes = Set(commits.flatMap(\.commit.indexes) + shards.flatMap(\.shard.indexes))
        try await session.loadIndexes(referencedIndexes.sorted())
        let referencedPacks = try catalogue.remotePacks(remote.url, indexes: referencedIndexes.sorted())
        func referenced(_ key: String) -> Bool {
            let name = RemoteLayout.name(ofKey: key)
            return key.hasPrefix(RemoteLayout.indexPrefix) ? referencedIndexes.contains(name) : referencedPacks.contains(name)
        }
        let listed = try await objects.list(prefix: RemoteLayout.indexPrefix) + objects.list(prefix: RemoteLayout.packsPrefix)
        let sizes = Dictionary(listed.map { ($0.key, $0) }, uniquingKeysWith: { a, _ in a })
        // An index object keeps every pack it names until the index itself is deleted: a push checks that
        // the index objects it reuses exist and takes their packs as there, and an index can be
        // younger than its packs (a push slowed or killed between uploading its packs and its index). So a
        // pack that an existing index names, referenced or not, is neither condemned nor deleted; once the
        // index is deleted (condemned first, a grace period before), a later run judges its packs.
        let existingIndexes = listed.map(\.key).filter { $0.hasPrefix(RemoteLayout.indexPrefix) }.map(RemoteLayout.name(ofKey:))
        try await session.loadIndexes(existingIndexes.filter { !referencedIndexes.contains($0) }, skippingUnreadable: true)
        let packsOfExistingIndexes = try catalogue.remotePacks(remote.url, indexes: existingIndexes.sorted())
        func kept(_ key: String) -> Bool {
            referenced(key) || (key.hasPrefix(RemoteLayout.packsPrefix) && packsOfExistingIndexes.contains(RemoteLayout.name(ofKey: key)))
        }
        var pending = try await RemoteSession.pending(objects)
        pending.grace = grace
        // Condemnations a gc wrote and died before stamping: this run stamps those still unused.
        pending.unstamped.removeAll { key in
            guard sizes[key] == nil || kept(key) else { return false }
            if sizes[key] != nil { report.rescuedObjects += 1 }
            return true
        }

        // Phase two: condemned (and stamped) at least a grace period ago and still needed by no commit:
        // deleted.
        var delete = [String]()
        for (key, condemnedAt) in pending.condemned {
            if sizes[key] == nil || kept(key) {
                if sizes[key] != nil { report.rescuedObjects += 1 }
                pending.condemned[key] = nil
            } else if now - condemnedAt >= grace {
                delete.append(key)
            }
        }
        // Index objects first: an index that exists always has its packs.
        delete.sort { ($0.hasPrefix(RemoteLayout.indexPrefix) ? 0 : 1, $0) < ($1.hasPrefix(RemoteLayout.indexPrefix) ? 0 : 1, $1) }
        report.deletedObjects = delete.count
        report.bytesFreed = delete.reduce(0) { $0 + (sizes[$1]?.size ?? 0) }

        // Phase one: unreferenced and older than the grace period (a push in progress is younger).
        var condemn = [String]()
        for object in listed where !kept(object.key) && !pending.isCondemned(object.key) && now - object.lastModified >= grace {
            condemn.append(object.key)
        }
        report.condemnedObjects = condemn.count
        report.condemnedBytes = condemn.reduce(0) { $0 + (sizes[$1]?.size ?? 0) }

        // Parts of uploads a failed or killed push never completed nor aborted: they are listed nowhere
        // else and are billed until aborted. Younger ones may belong to a push still running.
        var abandoned = [IncompleteUpload]()
        if let multipart = objects as? any MultipartObjectStore {
            let uploads = try await multipart.incompleteUploads(prefix: "")
            abandoned = uploads.filter { now - $0.initiated >= grace }
            report.multipartAborted = abandoned.count
            report.multipartInProgress = uploads.count - abandoned.count
        }
        guard !dryRun else { return report }
        if let multipart = objects as? any MultipartObjectStore {
            for upload in abandoned { try await multipart.abortUpload(upload) }
        }

        for key in delete {
            try await objects.delete(key)
            pending.condemned[key] = nil
        }
        let deletedIndexes = delete.filter { $0.hasPrefix(RemoteLayout.indexPrefix) }.map(RemoteLayout.name(ofKey:))
        try catalogue.forgetRemoteIndexes(remote.url, names: Array(deletedIndexes))
        // Condemned in two writes: unstamped first, then stamped with a time taken after that write
        // returned, so that a push that read `gc/pending` without seeing a condemnation read it before
        // the stamp (the invariant in docs/design.md).
        pending.unstamped = (pending.unstamped + condemn).sorted()
        _ = try await objects.put(RemoteLayout.pending, try RemoteJSON.encode(pending), ifAbsent: false)
        guard !pending.unstamped.isEmpty else { return report }
        let stamp = Date().timeIntervalSince1970
        for key in pending.unstamped { pending.condemned[key] = stamp }
        pending.unstamped = []
        _ = try await objects.put(RemoteLayout.pending, try RemoteJSON.encode(pending), ifAbsent: false)
        return report
    }
}

extension CheckpointStore {
    /// Garbage collection of a remote: this store's retention policies and pins applied to the remote's
    /// runs, then the two phases that delete what no commit needs (see ``RemoteCollector``).
    ///
    /// - Throws: `invalidArgument` for a grace period under ``RemoteCollector/minimumGrace`` (60 s).
    public func collectGarbage(on remote: Remote, grace: Double = 3600, dryRun: Bool = false, pendingAge: Double = PendingCheckpoint.defaultMaximumAge) async throws(CKStoreError) -> RemoteGCReport {
        try await collectGarbage(on: remote, grace: grace, dryRun: dryRun, pendingAge: pendingAge, minimumGrace: RemoteCollector.minimumGrace)
    }

    /// As the public call, with the floor of the grace period lowered: for tests, which cannot wait a
    /// minute per phase. Nothing else in the tree passes a floor (a test checks that).
    func collectGarbage(on remote: Remote, grace: Double, dryRun: Bool = false, pendingAge: Double = PendingCheckpoint.defaultMaximumAge, minimumGrace: Double) async throws(CKStoreError) -> RemoteGCReport {
        try await CKStoreError.wrapping("gc of remote \(remote.name)") {
            guard grace >= minimumGrace, grace.isFinite else {
                throw CKStoreError(.invalidArgument, "a remote gc's grace period must be at least \(Int(minimumGrace)) s: pushes have half of it from their last check to their commit, and a commit that takes longer is given up")
            }
            var collector = RemoteCollector(catalogue: catalogue, remote: remote)
            collector.grace = grace
            collector.dryRun = dryRun
            collector.pendingAge = pendingAge
            return try await collector.collect()
        }
    }
}
