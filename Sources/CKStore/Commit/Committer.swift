import Foundation

/// The one owner of the commit protocol (DESIGN.md, "Writing a checkpoint"; I-5, I-6, I-9): every path
/// that makes a checkpoint or a shard visible (put, shard put, shard combine, pull, repair's import) hands
/// it its sealed packs and what to record, and it does the rest.
///
/// A commit is, in order:
/// 1. one `BEGIN IMMEDIATE` transaction that inserts the packs' frames, re-checks the chunks the entry
///    reuses from the store and the bases its new frames need, asks the caller's decision (the conflict
///    check, run inside the transaction) and inserts the entry's rows;
/// 2. the entry's commit record (``CommitLog``), the commit point a rebuild from the packs sees;
/// 3. when that record cannot be written, the undo: the entry's rows and the frames nothing else uses
///    leave the catalogue again, so that nothing is listed that a rebuild would not bring back.
///
/// Steps 1 and 2 run under the store's commit lock (`lock.commit`), as do the withdrawals of records that
/// `rm` and gc make and ``unlistedRecords()``: a check that every committed checkpoint is listed reads the
/// catalogue and the records in one order with every commit, and never sees a record whose row it missed.
///
/// Its seams: the catalogue connection (for its transactions alone) and the store's layout (the records
/// and the lock). No other type writes or removes commit records.
struct Committer {
    let catalogue: LockedCatalogue
    let layout: StoreLayout

    /// What a commit makes visible.
    enum Entry: Sendable {
        /// A checkpoint, with the parts its source had dropped (a pull of a slimmed checkpoint).
        case checkpoint(Catalogue.NewCheckpoint, drops: [PartDrop] = [])
        /// One shard of a checkpoint whose other shards may not be here yet.
        case shard(PendingShard, chunkUses: [ChunkDigest: Int])
        /// A checkpoint combined from its pending shards, which it retires once its own record is durable.
        case combined(Catalogue.NewCheckpoint, shards: [CheckpointID])

        /// The commit record that makes the entry a commit point.
        var record: CommitLog.Record {
            switch self {
            case .checkpoint(let new, _), .combined(let new, _):
                CommitLog.Record(id: new.id, run: new.manifest.run, step: new.manifest.step, content: new.contentDigest, createdAt: new.manifest.createdAt)
            case .shard(let shard, _):
                CommitLog.Record(id: shard.id, run: shard.run, step: shard.step, content: shard.content, createdAt: shard.createdAt, shard: shard.shard)
            }
        }
    }

    /// A part of a checkpoint that its source no longer holds (files, or tensors of safetensors files).
    struct PartDrop: Sendable {
        var paths: [String]
        var tensors: [String: [String]] = [:]
        var part: CheckpointPart
    }

    /// What the caller's decision, made inside the transaction, says to do.
    enum Decision<T: Sendable>: Sendable {
        /// Insert `entry` and record it: nothing at its run and step stands in its way.
        case commit(Entry, T)
        /// The store holds the entry already (or needs no entry): add the packs, write `record` again
        /// when given (a crash may have kept it from being written), and insert nothing.
        case keep(T, record: CommitLog.Record? = nil)
    }

    /// How a commit ended.
    enum Outcome<T: Sendable>: Sendable {
        case done(T)
        /// Chunks the entry reuses were removed by a concurrent gc: nothing was committed. The caller
        /// writes them again into new packs and commits once more.
        case missing(Set<ChunkDigest>)
    }

    /// What the store's frames must still hold when the transaction runs.
    struct Needs: Sendable {
        /// Chunks the entry reuses from the store: their loss is reported as ``Outcome/missing(_:)``.
        var reused: [ChunkDigest] = []
        /// Bases and inputs of the new frames: their loss fails the commit (the frames are written).
        var bases: [ChunkDigest] = []
    }

    /// Commits: inserts `packs`, runs `decide` inside the same transaction, records its entry durably,
    /// and takes the entry back out of the catalogue if its record cannot be written.
    ///
    /// - Parameters:
    ///   - packs: the sealed packs that hold the entry's new frames (and its manifest frame).
    ///   - needs: the chunks that must still be in the store.
    ///   - decide: the conflict check, given the catalogue and the bytes of new frames the packs added.
    /// - Returns: the decision's value, or the chunks that vanished.
    /// - Throws: what `decide` throws; `conflict` when a base vanished or another writer's record holds the
    ///   entry's run and step with other content; I/O errors of the transaction or the record.
    func commit<T: Sendable>(packs: [SealedPack], needs: Needs, _ decide: (Catalogue, _ bytesAdded: Int64) throws -> Decision<T>) throws -> Outcome<T> {
        let lock = try CommitLock(layout: layout, mode: .exclusive)
        defer { withExtendedLifetime(lock) {} }
        let transacted = try catalogue.with { catalogue in
            try catalogue.transaction(.immediate) { () throws -> TransactionCompletion<Transacted<T>> in
                let missing = try Set(needs.reused.filter { try !catalogue.containsChunk($0) })
                if !missing.isEmpty { return .rollback(.missing(missing)) }
                var added: Int64 = 0
                let now = Date().timeIntervalSince1970
                for pack in packs { added += try catalogue.insert(pack: pack, now: now) }
                // A new delta frame needs its base and inputs (I-4): this commit's own frames or the
                // parent's, which a concurrent gc could have taken. The frames are written already, so the
                // commit cannot go on (the rollback takes the inserts back).
                for base in needs.bases where try !catalogue.containsChunk(base) {
                    throw CKStoreError(.conflict, "chunk \(base), which new delta frames are based on, was removed by a concurrent garbage collection; nothing was committed, try again")
                }
                let decision = try decide(catalogue, added)
                if case .commit(let entry, _) = decision { try insert(entry, into: catalogue, now: now) }
                return .commit(.decided(decision))
            }
        }
        switch transacted {
        case .missing(let missing):
            return .missing(missing)
        case .decided(.keep(let value, let record)):
            if let record { try write(record, undo: nil) }
            return .done(value)
        case .decided(.commit(let entry, let value)):
            try write(entry.record, undo: (entry, packs.map(\.id)))
            if case .combined(let new, let shards) = entry { retire(shards, of: new) }
            return .done(value)
        }
    }

    /// Commits what reuses no chunk of the store (a pull, a combine, repair's import): as
    /// ``commit(packs:needs:_:)``, which then cannot report missing chunks.
    func commit<T: Sendable>(packs: [SealedPack], _ decide: (Catalogue, _ bytesAdded: Int64) throws -> Decision<T>) throws -> T {
        switch try commit(packs: packs, needs: Needs(), decide) {
        case .done(let value): return value
        case .missing: throw CKStoreError(.internalInvariant, "a commit that reuses no chunk found chunks missing")
        }
    }

    /// Writes `record`; if that fails, takes `undo`'s entry back out of the catalogue before rethrowing.
    /// Throws `conflict` when the run and step hold another record with other content.
    private func write(_ record: CommitLog.Record, undo: (entry: Entry, packs: [PackID])?) throws {
        let log = record.shard == nil ? CommitLog(layout: layout) : CommitLog.shards(layout: layout)
        let written: CommitLog.Record
        do {
            written = try log.commit(record)
        } catch {
            if let undo {
                // Best effort: the error that matters is the record's. A failed undo leaves a listed entry
                // without a record, which `repair` records again.
                try? catalogue.with { catalogue in
                    try catalogue.transaction(.immediate) { () throws -> TransactionCompletion<Void> in
                        switch undo.entry {
                        case .checkpoint(let new, _), .combined(let new, _): try catalogue.deleteCheckpoint(new.id)
                        case .shard(let shard, _): try catalogue.deletePendingShards([shard.id])
                        }
                        try catalogue.forgetUnusedFrames(inPacks: undo.packs)
                        return .commit(())
                    }
                }
            }
            throw error
        }
        guard written.content == record.content else {
            let what = record.shard.map { "\(record.run)@\(record.step) shard \($0)" } ?? "run \(record.run) at step \(record.step)"
            throw CKStoreError(.conflict, "\(what) already has a different committed \(record.shard == nil ? "checkpoint" : "shard") (\(written.id.short)); run `ckstore repair` if `ls` does not list it")
        }
    }

    private func insert(_ entry: Entry, into catalogue: Catalogue, now: Double) throws {
        switch entry {
        case .checkpoint(let new, let drops):
            try catalogue.insert(new, now: now)
            for drop in drops {
                try catalogue.drop(drop.paths, tensors: drop.tensors, part: drop.part, from: new.id, manifest: new.manifest)
            }
        case .combined(let new, _):
            // The shards stay pending until the checkpoint's record is durable (``retire(_:of:)``).
            try catalogue.insert(new, now: now)
        case .shard(let shard, let chunkUses):
            try catalogue.insertPendingShard(shard, chunkUses: chunkUses, now: now)
        }
    }

    /// Forgets the pending shards a combined checkpoint replaced, and then their records. Best effort: the
    /// checkpoint is committed; shards left behind are retired by the next combine or gc.
    private func retire(_ shards: [CheckpointID], of new: Catalogue.NewCheckpoint) {
        do {
            try catalogue.with { catalogue in try catalogue.write { try catalogue.deletePendingShards(shards) } }
            try CommitLog.shards(layout: layout).removeShards(run: new.manifest.run, step: new.manifest.step)
        } catch {}
    }

    // MARK: Records outside a commit

    /// Writes the record of every listed checkpoint that has none (a crash kept its commit from writing it,
    /// or an undo failed): what `repair` does once the catalogue is whole.
    func recordListed(_ listed: [CommitLog.Record]) throws {
        let lock = try CommitLock(layout: layout, mode: .exclusive)
        defer { withExtendedLifetime(lock) {} }
        let log = CommitLog(layout: layout)
        for record in listed { _ = try log.commit(record) }
    }

    /// Writes the records of a store made before records existed, all at once: filled beside `commits/`
    /// and renamed into place, so that an interrupted backfill leaves no partial set (a rebuild would keep
    /// only the checkpoints they name). Returns false, changing nothing, when the store cannot be written.
    @discardableResult
    func backfill(_ listed: [CommitLog.Record]) -> Bool {
        let filling = CommitLog(layout: layout, root: layout.commitsRoot + ".new")
        do {
            let lock = try CommitLock(layout: layout, mode: .exclusive)
            defer { withExtendedLifetime(lock) {} }
            FileSystem.removeTree(filling.root)
            try FileSystem.createDirectory(filling.root)
            for record in listed { _ = try filling.commit(record) }
            try FileSystem.rename(filling.root, layout.commitsRoot)
            try FileSystem.syncDirectory(layout.root)
            return true
        } catch {
            FileSystem.removeTree(filling.root)
            return false
        }
    }

    /// Removes the records of checkpoints being deleted (`rm`, gc, repair's removals), then runs `delete`,
    /// which takes them out of the catalogue, under the commit lock. A crash in between leaves a listed
    /// checkpoint without a record, which `repair` records again, never a record of a checkpoint the
    /// catalogue no longer has. A record of a later checkpoint at the same run and step stays.
    func withdraw<T>(_ checkpoints: [(id: CheckpointID, run: String, step: Int64)], pendingSteps: [(run: String, step: Int64)] = [],
                     then delete: () throws -> T) throws -> T {
        let lock = try CommitLock(layout: layout, mode: .exclusive)
        defer { withExtendedLifetime(lock) {} }
        let log = CommitLog(layout: layout)
        for checkpoint in checkpoints { try log.remove(checkpoint.id, run: checkpoint.run, step: checkpoint.step) }
        let shards = CommitLog.shards(layout: layout)
        for pending in pendingSteps { try shards.removeShards(run: pending.run, step: pending.step) }
        return try delete()
    }

    /// Removes the shard records of `run` at `step` once the checkpoint's own record exists and no shard
    /// of that step is pending any more.
    func retireShardRecords(run: String, step: Int64) throws {
        let lock = try CommitLock(layout: layout, mode: .exclusive)
        defer { withExtendedLifetime(lock) {} }
        guard try CommitLog(layout: layout).record(run: run, step: step) != nil,
              try catalogue.with({ try $0.pendingShards(run: run, step: step) }).isEmpty else { return }
        try CommitLog.shards(layout: layout).removeShards(run: run, step: step)
    }

    /// Removes shard records whose checkpoint is committed (a combine that stopped before retiring them).
    func retireCombinedShardRecords() throws {
        let lock = try CommitLock(layout: layout, mode: .exclusive)
        defer { withExtendedLifetime(lock) {} }
        let committed = Set(try CommitLog(layout: layout).records().map { "\($0.run)@\($0.step)" })
        let pending = Set(try catalogue.with { try $0.pendingShards() }.map { "\($0.run)@\($0.step)" })
        let shards = CommitLog.shards(layout: layout)
        for record in try shards.records() where committed.contains("\(record.run)@\(record.step)") && !pending.contains("\(record.run)@\(record.step)") {
            try shards.removeShards(run: record.run, step: record.step)
        }
    }

    // MARK: Reading

    /// The commit record of `run` at `step`, if there is one.
    func record(run: String, step: Int64) throws -> CommitLog.Record? {
        try CommitLog(layout: layout).record(run: run, step: step)
    }

    // MARK: The check

    /// The commit records of checkpoints the catalogue does not list (its write-ahead log was lost, or it
    /// was rebuilt from a partial copy), and the shard records of shards it lists neither as pending nor
    /// as part of a committed checkpoint. Read under the commit lock: a commit or withdrawal running beside
    /// it is seen whole or not at all, never as a record without its row.
    func unlisted() throws -> (checkpoints: [CommitLog.Record], shards: [CommitLog.Record]) {
        let lock = try CommitLock(layout: layout, mode: .shared)
        defer { withExtendedLifetime(lock) {} }
        let (listed, pending) = try catalogue.with { catalogue in
            (Set(try catalogue.allCheckpointIDs()), Set(try catalogue.pendingShards().map(\.id)))
        }
        let records = try CommitLog(layout: layout).records()
        let committed = Set(records.map { "\($0.run)@\($0.step)" })
        let shards = try CommitLog.shards(layout: layout).records().filter {
            !pending.contains($0.id) && !committed.contains("\($0.run)@\($0.step)")
        }
        return (records.filter { !listed.contains($0.id) }, shards)
    }

    /// The commit records of checkpoints the catalogue does not list (``unlisted()``).
    func unlistedRecords() throws -> [CommitLog.Record] {
        try unlisted().checkpoints
    }

    /// Refuses when ``unlistedRecords()`` finds any: gc must never delete what a committed checkpoint
    /// needs (I-9), and `repair` brings such checkpoints back.
    func requireEveryCommitListed(doing what: String) throws {
        let missing = try unlistedRecords()
        guard missing.isEmpty else {
            let names = missing.prefix(5).map { "\($0.run)@\($0.step) (\($0.id.short))" }.joined(separator: ", ")
            throw CKStoreError(.damaged, "the catalogue does not list \(missing.count) committed checkpoint(s): \(names); \(what). Run `ckstore repair` to bring them back, then try again")
        }
    }
}

/// What a commit's transaction ended with.
private enum Transacted<T: Sendable>: Sendable {
    case decided(Committer.Decision<T>)
    case missing(Set<ChunkDigest>)
}

/// The store's commit lock: an advisory `flock` on `lock.commit`, exclusive for commits and withdrawals,
/// shared for the check that reads the catalogue and the records together. Held for milliseconds, always
/// after the store lock and before any catalogue transaction, so it orders no wait the other way.
final class CommitLock {
    private let lock: StoreLock?

    init(layout: StoreLayout, mode: StoreLock.Mode) throws {
        if mode == .shared, !FileSystem.exists(layout.commitLockPath), FileSystem.isReadOnlyMount(layout.root) {
            // A store on a read-only mount that never committed under this lock: nothing can commit.
            lock = nil
            return
        }
        lock = try StoreLock(path: layout.commitLockPath, mode: mode)
    }
}

/// The writes of commit records: `fileprivate`, so that the compiler holds what the design says, that no
/// type but ``Committer`` writes or removes a record.
extension CommitLog {
    /// Writes `record` unless `run` already has one at that step; returns the record that is there now
    /// (`record` itself when this call wrote it). The record is durable when this returns.
    fileprivate func commit(_ record: Record) throws -> Record {
        let final = path(run: record.run, step: record.step, shard: record.shard)
        let folder = String(final[..<(final.lastIndex(of: "/") ?? final.endIndex)])
        if let existing = try read(final) { return existing }
        try FileSystem.createDirectory(folder)
        let temporary = layout.temporaryRoot + "/commit-" + PackID.random().hex
        let file = try SystemFile.createNew(temporary)
        defer { try? FileSystem.removeFile(temporary) }
        try file.write(Array(try StoredJSON.encoder().encode(record)), at: 0)
        try file.sync()
        guard try FileSystem.linkExclusively(temporary, final) else {
            return try read(final) ?? record
        }
        do {
            try FileSystem.syncDirectory(folder)
        } catch {
            // Not durable, so not a commit point: the put fails and takes the record back with it.
            try? FileSystem.removeFile(final)
            throw error
        }
        return record
    }

    /// Forgets the record of a checkpoint being deleted (`rm`, gc), before the catalogue deletes it: a
    /// crash in between leaves a listed checkpoint without a record, which `repair` records again, never
    /// a record of a checkpoint the catalogue no longer has. Only if it names `id`: a record of a later
    /// checkpoint at the same run and step stays.
    fileprivate func remove(_ id: CheckpointID, run: String, step: Int64) throws {
        let file = path(run: run, step: step)
        guard let existing = try read(file), existing.id == id else { return }
        try FileSystem.removeFile(file)
    }

    /// Forgets the shard records of `run` at `step` once its checkpoint is committed (or its pending
    /// shards were removed).
    fileprivate func removeShards(run: String, step: Int64) throws {
        let folder = path(run: run, step: step)
        guard FileSystem.isDirectory(folder) else { return }
        FileSystem.removeTree(folder)
    }
}
