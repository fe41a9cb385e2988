import Foundation

/// What `repair` did (or, with `dryRun`, would do).
public struct RepairReport: Sendable, Codable, Equatable {
    /// Whether nothing was changed.
    public var dryRun: Bool
    /// Whether the catalogue was rebuilt from the packs (it was missing or damaged).
    public var catalogueRebuilt: Bool
    /// Why the catalogue was rebuilt.
    public var catalogueProblem: String?
    /// Where the damaged catalogue was moved, when it was.
    public var damagedCatalogueMovedTo: String?
    /// Packs read.
    public var packsScanned: Int
    /// Frames whose stored bytes and digest checked out.
    public var framesIntact: Int
    /// Checkpoints listed in the catalogue afterwards (rebuilds: recovered from manifest frames).
    public var checkpoints: Int
    /// Chunks dropped from the catalogue because their frames are gone or damaged, so that the next put
    /// of that content writes it again.
    public var droppedChunks: [ChunkDigest]
    /// Intact frames copied out of damaged packs into new packs.
    public var salvagedFrames: Int
    /// Damaged packs moved into `quarantine/`.
    public var quarantinedPacks: [String]
    /// Checkpoints that need a chunk the store no longer has.
    public var incompleteCheckpoints: [CheckpointID]
    /// Manifests found in packs but not recorded, with the reason (never committed, or another checkpoint
    /// holds the same run and step).
    public var skippedManifests: [String]
    /// Committed checkpoints the catalogue had lost and that were brought back from their manifests.
    public var importedCheckpoints: [CheckpointID] = []
}

extension CheckpointStore {
    /// Repairs a store: rebuilds a missing or damaged catalogue from the packs (I-2), drops catalogue
    /// entries for chunks whose frames are gone or damaged, copies the intact frames of damaged packs into
    /// new packs and moves the damaged packs to `quarantine/`, and reports the checkpoints left incomplete.
    ///
    /// Holds the store's lock exclusively: no put or get runs meanwhile.
    ///
    /// - Parameters:
    ///   - path: the store's folder.
    ///   - dryRun: report what would be done, change nothing.
    ///   - progress: told how many bytes of packs have been read and checked.
    public static func repair(at path: String, dryRun: Bool = false, progress: ProgressHandler? = nil) async throws(CKStoreError) -> RepairReport {
        try CKStoreError.wrapping("repair of \(path)") { try Repairer(layout: StoreLayout(root: path), progress: progress).repair(dryRun: dryRun) }
    }
}

/// Repairs a store (`repair`) from its folder alone: it does not need, or trust, the catalogue.
///
/// Its seam is the store's layout; it reads the packs through ``PackDirectory`` and a ``ChunkReader``
/// over the frames it finds, copies intact frames with a ``FrameCopier``, and opens the catalogue itself.
struct Repairer {
    let layout: StoreLayout
    /// Told how many bytes of packs have been read and checked.
    var progress: ProgressHandler? = nil

    /// Repairs the store, or with `dryRun` reports what a repair would do.
    func repair(dryRun: Bool) throws -> RepairReport {
        let path = layout.root
        guard FileSystem.isDirectory(layout.packsRoot) else {
            throw CKStoreError(.notFound, "no ckstore store at \(path) (no packs folder)")
        }
        let lock = try StoreLock(path: layout.lockPath, mode: .exclusive)
        defer { withExtendedLifetime(lock) {} }
        var report = RepairReport(dryRun: dryRun, catalogueRebuilt: false, packsScanned: 0, framesIntact: 0, checkpoints: 0,
                                  droppedChunks: [], salvagedFrames: 0, quarantinedPacks: [], incompleteCheckpoints: [], skippedManifests: [])

        // 1. Is the catalogue usable?
        var catalogue: Catalogue?
        if !FileSystem.exists(layout.cataloguePath) {
            report.catalogueProblem = "ckstore.db is missing"
        } else {
            do {
                let opened = try Catalogue(path: layout.cataloguePath)
                let problems = try opened.integrityProblems()
                if problems.isEmpty {
                    _ = try opened.packRows()
                    catalogue = opened
                } else {
                    report.catalogueProblem = "SQLite finds damage: " + problems.prefix(3).joined(separator: "; ")
                }
            } catch let error as CKStoreError where error.code == .unsupportedSchema {
                // A newer ckstore's catalogue is not damage: rebuilding it at this version would lose what
                // that version recorded.
                throw error
            } catch {
                report.catalogueProblem = CKStoreError.wrap(error).message
            }
        }
        report.catalogueRebuilt = catalogue == nil

        // 2. Every pack on disk, every frame checked (checksum, decode, SHA-256).
        let scan = try scanPacks()
        report.packsScanned = scan.count
        report.framesIntact = scan.reduce(0) { $0 + $1.intact.count }

        // 3. Salvage intact frames of damaged packs into a new pack; quarantine the damaged ones.
        var moved = [ChunkDigest: (pack: PackID, offset: Int64)]()
        var newPacks = [SealedPack]()
        let damagedPacks = scan.filter { !$0.isIntact }
        if !damagedPacks.isEmpty && !dryRun {
            let copier = FrameCopier(packs: PackReaderCache(layout: layout), sink: PackSink(layout: layout))
            for pack in damagedPacks {
                for frame in pack.intact {
                    let copy = try copier.copy(ChunkLocation(frame.header, pack: pack.id, offset: frame.offset))
                    moved[frame.header.digest] = (copy.pack, copy.offset)
                }
            }
            newPacks = try copier.sink.seal()
            try FileSystem.createDirectory(layout.quarantineRoot)
            for pack in damagedPacks {
                try FileSystem.rename(layout.packPath(pack.id), layout.quarantineRoot + "/" + pack.id.hex + ".pack")
            }
            try FileSystem.syncDirectory(layout.quarantineRoot)
        }
        report.salvagedFrames = damagedPacks.reduce(0) { $0 + $1.intact.count }
        report.quarantinedPacks = damagedPacks.map(\.id.hex)

        // Where each intact frame lives after salvage.
        var intact = [ChunkDigest: (pack: PackID, offset: Int64, header: FrameHeader)]()
        for pack in scan {
            for frame in pack.intact where intact[frame.header.digest] == nil {
                let location = pack.isIntact ? (pack.id, frame.offset) : (moved[frame.header.digest] ?? (pack.id, frame.offset))
                intact[frame.header.digest] = (location.0, location.1, frame.header)
            }
        }

        // 4. Record it.
        if let catalogue {
            try repairCatalogue(catalogue, scan: scan, intact: intact, newPacks: newPacks, dryRun: dryRun, report: &report)
        } else {
            try rebuildCatalogue(scan: scan, intact: intact, newPacks: newPacks, dryRun: dryRun, report: &report)
        }
        return report
    }

    /// One pack on disk and what a full check of it found.
    private struct ScannedPack {
        var id: PackID
        var reader: PackReader
        var size: Int64
        var intact: [PackWriter.WrittenFrame]
        var damage: [String]
        var trailerIntact: Bool
        var isIntact: Bool { trailerIntact && damage.isEmpty }
    }

    private func scanPacks() throws -> [ScannedPack] {
        var found = [(id: PackID, reader: PackReader, frames: [PackWriter.WrittenFrame], damage: [String], trailerIntact: Bool)]()
        let packs = PackReaderCache(layout: layout)
        for entry in try PackDirectory(layout: layout).entries() {
            guard let id = entry.id else { continue }
            let reader = try packs.reader(for: id)
            var frames: [PackWriter.WrittenFrame]
            var damage = [String]()
            var trailerIntact = true
            do {
                frames = try reader.readTrailer()
            } catch {
                trailerIntact = false
                damage.append(CKStoreError.wrap(error).message)
                let walk = try reader.walkFrames()
                frames = walk.frames
                damage += walk.damage.map { "offset \($0.offset): \($0.reason)" }
            }
            found.append((id, reader, frames, damage, trailerIntact))
        }
        // Every frame is decoded and its SHA-256 checked; a delta frame decodes through its base, found
        // in whichever pack holds it.
        var framesByDigest = [ChunkDigest: ChunkLocation]()
        for pack in found {
            for frame in pack.frames { framesByDigest[frame.header.digest] = ChunkLocation(frame.header, pack: pack.id, offset: frame.offset) }
        }
        let reader = ChunkReader(index: ScannedFrames(locations: framesByDigest), packs: packs)
        func decode(_ pack: PackID, _ frame: PackWriter.WrittenFrame) throws {
            let location = ChunkLocation(frame.header, pack: pack, offset: frame.offset)
            _ = try reader.read(at: location, what: "pack \(pack): chunk \(frame.header.digest) at offset \(frame.offset)")
        }
        var out = [ScannedPack]()
        let meter = ProgressMeter("repair", total: try found.reduce(0) { $0 + (try $1.reader.size()) }, handler: progress)
        for pack in found {
            defer { meter.add((try? pack.reader.size()) ?? 0) }
            var intact = [PackWriter.WrittenFrame]()
            var damage = pack.damage
            for frame in pack.frames {
                do {
                    try decode(pack.id, frame)
                    intact.append(frame)
                } catch {
                    damage.append(CKStoreError.wrap(error).message)
                }
            }
            out.append(ScannedPack(id: pack.id, reader: pack.reader, size: try pack.reader.size(), intact: intact, damage: damage, trailerIntact: pack.trailerIntact))
        }
        return out
    }

    /// The catalogue is sound: make it agree with the packs.
    private func repairCatalogue(
        _ catalogue: Catalogue, scan: [ScannedPack], intact: [ChunkDigest: (pack: PackID, offset: Int64, header: FrameHeader)],
        newPacks: [SealedPack], dryRun: Bool, report: inout RepairReport
    ) throws {
        let locations = try catalogue.chunkLocations()
        let packsOnDisk = Set(scan.map(\.id))
        let quarantined = Set(scan.filter { !$0.isIntact }.map(\.id))
        var drop = [ChunkDigest]()
        var relocate = [(ChunkDigest, PackID, Int64)]()
        for location in locations {
            guard let frame = intact[location.digest], packsOnDisk.contains(location.pack) else {
                drop.append(location.digest)
                continue
            }
            if quarantined.contains(location.pack) || frame.pack != location.pack || frame.offset != location.offset {
                relocate.append((location.digest, frame.pack, frame.offset))
            }
        }
        report.droppedChunks = drop.sorted()
        let stalePacks = try catalogue.packRows().map(\.id).filter { !packsOnDisk.contains($0) || quarantined.contains($0) }
        if !dryRun {
            try catalogue.write {
                let now = Date().timeIntervalSince1970
                for pack in newPacks { _ = try catalogue.insert(pack: pack, now: now) }
                for digest in drop { try catalogue.deleteChunk(digest) }
                for (digest, pack, offset) in relocate { try catalogue.relocateChunk(digest, to: pack, offset: offset) }
                for pack in stalePacks { try catalogue.deletePackRow(pack) }
            }
        }
        // Committed checkpoints the catalogue does not list (its write-ahead log was lost): brought back
        // from their manifest frames, with the packs and frames the catalogue did not know.
        let records = try CommitLog(layout: layout).records()
        let readers = PackReaderCache(layout: layout)
        let removed = try removedCheckpoints(scan)
        let listed = Set(try catalogue.allCheckpointIDs())
        var lost = [CheckpointID]()
        var imports = [(CheckpointID, Manifest)]()
        for record in records where !listed.contains(record.id) && !removed.contains(record.id) {
            if let manifest = try manifestFrame(record.id, intact: intact, readers: readers) {
                imports.append((record.id, manifest))
            } else {
                lost.append(record.id)
            }
        }
        report.importedCheckpoints = imports.map(\.0).sorted()
        if !dryRun {
            if !imports.isEmpty {
                try catalogue.write {
                    let now = Date().timeIntervalSince1970
                    let catalogued = Set(try catalogue.packRows().map(\.id))
                    for pack in scan where pack.isIntact && !catalogued.contains(pack.id) {
                        try catalogue.insertPackRow(pack.id, size: pack.size, frameCount: pack.intact.count, now: now)
                        for frame in pack.intact { try catalogue.insertChunk(frame.header, pack: pack.id, offset: frame.offset) }
                    }
                }
            }
            // Each lost checkpoint is committed again, as a pull commits one: its frames are catalogued now.
            let committer = Committer(catalogue: LockedCatalogue(catalogue), layout: layout)
            for (id, manifest) in imports.sorted(by: { $0.1.createdAt < $1.1.createdAt }) {
                let new = Catalogue.NewCheckpoint(id: id, manifest: manifest, contentDigest: try manifest.contentDigest(), storedBytesAdded: 0, chunkUses: manifest.chunkUses(id: id))
                try committer.commit(packs: []) { (catalogue, _) throws -> Committer.Decision<Void> in
                    if try catalogue.checkpoint(run: manifest.run, step: manifest.step) != nil { return .keep(()) }
                    return .commit(.checkpoint(new), ())
                }
            }
            // Every listed checkpoint gets its commit record (one a crash kept a put from writing), and
            // records of removed checkpoints go.
            var listed = [CommitLog.Record]()
            for summary in try catalogue.summaries() {
                guard let content = try catalogue.checkpoint(run: summary.run, step: summary.step)?.content else { continue }
                listed.append(CommitLog.Record(id: summary.id, run: summary.run, step: summary.step, content: content, createdAt: summary.createdAt))
            }
            try committer.recordListed(listed)
            let withdrawn = records.filter { removed.contains($0.id) }.map { (id: $0.id, run: $0.run, step: $0.step) }
            try committer.withdraw(withdrawn) {}
        }

        // Incomplete: every listed checkpoint that needs a chunk with no intact frame, whether this repair
        // dropped it or an earlier one did.
        let rows = Set(try catalogue.chunkLocations().map(\.digest)).subtracting(dryRun ? drop : [])
        let ids = try catalogue.allCheckpointIDs()
        report.checkpoints = ids.count + (dryRun ? imports.count : 0)
        report.incompleteCheckpoints = (try ids.filter { id in
            try catalogue.referencedDigests(of: [id]).contains { !rows.contains($0) || intact[$0] == nil }
        } + lost).sorted()
    }

    /// The checkpoints removal annotations in the packs delete.
    private func removedCheckpoints(_ scan: [ScannedPack]) throws -> Set<CheckpointID> {
        Set(try annotations(scan).compactMap { record -> CheckpointID? in
            if case .remove(let id) = record.change { return id }
            return nil
        })
    }

    /// The decoded bytes of an intact, non-delta frame (an annotation or a manifest) at `offset` of `pack`,
    /// read from whichever pack holds it now (a salvaged frame lives in a pack the scan did not see).
    private func decodedFrame(_ header: FrameHeader, pack: PackID, offset: Int64, readers: PackReaderCache) throws -> [UInt8] {
        let (stored, payload) = try readers.reader(for: pack).readFrame(at: offset, storedLength: header.storedLength, expected: header.digest)
        return try FrameCodec(level: .default).decode(payload, encoding: stored.encoding, rawLength: stored.rawLength).array
    }

    /// Annotations (changes made after puts), from the intact annotation frames, in the order made.
    private func annotations(_ scan: [ScannedPack]) throws -> [AnnotationRecord] {
        let readers = PackReaderCache(layout: layout)
        var annotations = [AnnotationRecord]()
        for pack in scan {
            for frame in pack.intact where frame.header.kind == .annotation {
                let bytes = try decodedFrame(frame.header, pack: pack.id, offset: frame.offset, readers: readers)
                if let record = try? JSONDecoder().decode(AnnotationRecord.self, from: Data(bytes)) { annotations.append(record) }
            }
        }
        return annotations.sorted { ($0.time, $0.sequence) < ($1.time, $1.sequence) }
    }

    /// The manifest whose frame has digest `id`, if an intact frame holds it.
    private func manifestFrame(_ id: CheckpointID, intact: [ChunkDigest: (pack: PackID, offset: Int64, header: FrameHeader)], readers: PackReaderCache) throws -> Manifest? {
        guard let frame = intact[id.digest], frame.header.kind == .manifest else { return nil }
        return try? Manifest.decode(try decodedFrame(frame.header, pack: frame.pack, offset: frame.offset, readers: readers), id: id)
    }

    /// The catalogue is missing or damaged: move it aside and rebuild it from pack frames and manifests.
    private func rebuildCatalogue(
        scan: [ScannedPack], intact: [ChunkDigest: (pack: PackID, offset: Int64, header: FrameHeader)],
        newPacks: [SealedPack], dryRun: Bool, report: inout RepairReport
    ) throws {
        let annotations = try self.annotations(scan)

        // Manifests, from the intact manifest frames (one per digest, wherever it was found first).
        let readers = PackReaderCache(layout: layout)
        var manifests = [(CheckpointID, Manifest)]()
        var seenManifests = Set<CheckpointID>()
        for pack in scan {
            for frame in pack.intact where frame.header.kind == .manifest {
                let id = CheckpointID(frame.header.digest)
                guard seenManifests.insert(id).inserted else { continue }
                if let manifest = try? Manifest.decode(try decodedFrame(frame.header, pack: pack.id, offset: frame.offset, readers: readers), id: id) {
                    manifests.append((id, manifest))
                }
            }
        }
        var kept = [(CheckpointID, Manifest)]()
        let commits = CommitLog(layout: layout)
        if commits.isKept {
            // Exactly the committed checkpoints (I-9): a manifest no commit record names was never reported
            // as saved (a killed put, a put refused as a conflict, a race's loser, a pack copied in).
            var committed = [String: CheckpointID]()
            for record in try commits.records() { committed["\(record.run)@\(record.step)"] = record.id }
            var found = Set<CheckpointID>()
            for (id, manifest) in manifests {
                if committed["\(manifest.run)@\(manifest.step)"] == id {
                    kept.append((id, manifest))
                    found.insert(id)
                } else {
                    report.skippedManifests.append("\(id.short) (\(manifest.run)@\(manifest.step)): never committed")
                }
            }
            let removed = try removedCheckpoints(scan)
            report.incompleteCheckpoints += committed.values.filter { !found.contains($0) && !removed.contains($0) }
        } else {
            // A store from before commit records: one checkpoint per run and step, the newest manifest wins.
            manifests.sort { ($0.1.createdAt, $0.0) > ($1.1.createdAt, $1.0) }
            var seen = Set<String>()
            for (id, manifest) in manifests {
                if seen.insert("\(manifest.run)@\(manifest.step)").inserted {
                    kept.append((id, manifest))
                } else {
                    report.skippedManifests.append("\(id.short) (\(manifest.run)@\(manifest.step)): a newer manifest holds the same run and step")
                }
            }
        }
        kept.sort { ($0.1.createdAt, $0.0) < ($1.1.createdAt, $1.0) }
        let removed = Set(annotations.compactMap { record -> CheckpointID? in
            if case .remove(let id) = record.change { return id }
            return nil
        })
        kept.removeAll { removed.contains($0.0) }
        report.checkpoints = kept.count
        // Pending shards: exactly the shard manifests that shard records name, at steps no kept checkpoint holds.
        let committedSteps = Set(kept.map { "\($0.1.run)@\($0.1.step)" })
        var shardRecords = [CheckpointID: CommitLog.Record]()
        for record in try CommitLog.shards(layout: layout).records() where !committedSteps.contains("\(record.run)@\(record.step)") {
            shardRecords[record.id] = record
        }
        let pendingShards = manifests.filter { id, manifest in
            guard let record = shardRecords[id] else { return false }
            return manifest.shard == record.shard && manifest.run == record.run && manifest.step == record.step
        }

        var droppedPaths = [CheckpointID: Set<String>]()
        for record in annotations {
            if case .drop(let id, let paths, _, _) = record.change { droppedPaths[id, default: []].formUnion(paths) }
        }
        var incomplete = [CheckpointID]()
        for (id, manifest) in kept {
            let files = manifest.files.filter { !(droppedPaths[id]?.contains($0.path) ?? false) }
            let needed = Set(files.flatMap { $0.chunks.map(\.digest) } + [id.digest])
            if needed.contains(where: { intact[$0] == nil }) { incomplete.append(id) }
        }
        report.incompleteCheckpoints = (report.incompleteCheckpoints + incomplete).sorted()
        guard !dryRun else { return }

        // Built beside and renamed into place: a repair killed half-way leaves no catalogue (every command
        // then says to run repair), never a partial one that looks sound.
        let building = layout.cataloguePath + ".rebuilding"
        for suffix in ["", "-wal", "-shm"] { try FileSystem.removeFile(building + suffix) }
        try fillCatalogue(at: building, kept: kept, pendingShards: pendingShards, annotations: annotations, intact: intact, scan: scan, newPacks: newPacks)
        if FileSystem.exists(layout.cataloguePath) {
            let aside = layout.cataloguePath + ".damaged-" + String(Int(Date().timeIntervalSince1970))
            try FileSystem.rename(layout.cataloguePath, aside)
            for suffix in ["-wal", "-shm"] where FileSystem.exists(layout.cataloguePath + suffix) {
                try FileSystem.rename(layout.cataloguePath + suffix, aside + suffix)
            }
            report.damagedCatalogueMovedTo = aside
        }
        try FileSystem.rename(building, layout.cataloguePath)
        try FileSystem.syncDirectory(layout.root)
    }

    /// Writes a new catalogue at `path` holding the `kept` checkpoints, the intact frames and the changes
    /// the annotations record; closed, with its log folded in, when this returns.
    private func fillCatalogue(
        at path: String, kept: [(CheckpointID, Manifest)], pendingShards: [(CheckpointID, Manifest)], annotations: [AnnotationRecord],
        intact: [ChunkDigest: (pack: PackID, offset: Int64, header: FrameHeader)], scan: [ScannedPack], newPacks: [SealedPack]
    ) throws {
        let catalogue = try Catalogue(path: path)
        defer { try? catalogue.truncateLog() }
        try catalogue.write {
            let now = Date().timeIntervalSince1970
            var packRows = [PackID: SealedPack]()
            for pack in scan where pack.isIntact {
                packRows[pack.id] = SealedPack(id: pack.id, size: pack.size, frames: [])
            }
            for pack in newPacks { packRows[pack.id] = SealedPack(id: pack.id, size: pack.size, frames: []) }
            for (id, pack) in packRows {
                let frames = intact.values.filter { $0.pack == id }.count
                try catalogue.insertPackRow(id, size: pack.size, frameCount: frames, now: now)
            }
            for (_, frame) in intact where packRows[frame.pack] != nil {
                try catalogue.insertChunk(frame.header, pack: frame.pack, offset: frame.offset)
            }
            // Bytes each checkpoint added: the frames it was the first (oldest) to need.
            var attributed = Set<ChunkDigest>()
            for (id, manifest) in kept {
                let uses = manifest.chunkUses(id: id)
                var added: Int64 = 0
                for digest in uses.keys where attributed.insert(digest).inserted {
                    if let frame = intact[digest] { added += Int64(PackFormat.frameHeaderSize + frame.header.storedLength) }
                }
                try catalogue.insert(
                    Catalogue.NewCheckpoint(id: id, manifest: manifest, contentDigest: try manifest.contentDigest(), storedBytesAdded: added, chunkUses: uses),
                    now: manifest.createdAt
                )
            }
            for (id, manifest) in pendingShards {
                guard let shard = manifest.shard else { continue }
                try catalogue.insertPendingShard(
                    PendingShard(id: id, run: manifest.run, step: manifest.step, shard: shard, content: try manifest.contentDigest(),
                                 createdAt: manifest.createdAt, logicalBytes: manifest.logicalBytes, storedBytesAdded: 0),
                    chunkUses: manifest.chunkUses(id: id), now: manifest.createdAt)
            }
            // Replay what happened after the puts: policies, pins, tags, deletions, dropped parts.
            let byID = Dictionary(kept.map { ($0.0, $0.1) }, uniquingKeysWith: { first, _ in first })
            for record in annotations {
                switch record.change {
                case .policy(let scope, let policy?): try catalogue.setPolicy(policy, scope: scope)
                case .policy(let scope, nil): _ = try catalogue.clearPolicy(scope: scope)
                case .pin(let id, let pinned) where try catalogue.summary(of: id) != nil: try catalogue.setPinned(id, pinned)
                case .tag(let id, let tag, let present) where try catalogue.summary(of: id) != nil: try catalogue.setTag(id, tag, present)
                case .remove(let id): try catalogue.deleteCheckpoint(id)
                case .drop(let id, let paths, let part, let tensors) where try catalogue.summary(of: id) != nil:
                    if let manifest = byID[id] { try catalogue.drop(paths, tensors: tensors ?? [:], part: CheckpointPart(rawValue: part), from: id, manifest: manifest) }
                default: continue
                }
            }
        }
    }
}
