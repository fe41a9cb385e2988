import Foundation

/// Checks a store's integrity (`verify`): the catalogue, the packs against it, the frames (all, a sample,
/// or those some checkpoints need), the manifests, and which checkpoints, files and tensors any damage
/// breaks. Reads only: it holds the store's lock shared.
///
/// Its seams: the catalogue's ``VerifyQueries`` (on one snapshot), the store's ``Committer`` (whose check
/// that every commit is listed reads the live catalogue under the commit lock: a snapshot taken before a
/// put committed would take its record for a lost checkpoint), the store's layout (packs) and a
/// ``ChunkReader``.
struct Checker {
    let catalogue: any VerifyQueries
    let committer: Committer
    let layout: StoreLayout
    let reader: ChunkReader

    /// Checks what `options` asks for and reports what any damage breaks. The caller holds the store's lock
    /// shared (gc then deletes no pack this check reads) and gives it a catalogue snapshot.
    func check(_ options: VerifyOptions) async throws -> VerifyReport {
        let started = ContinuousClock.now
        let byCheckpoint = !options.checkpoints.isEmpty
        var problems = [String]()
        var damaged = [ChunkDigest: String]()
        var missing = [ChunkDigest: String]()

        let catalogueProblems = byCheckpoint ? [] : try catalogue.integrityProblems()
        let needed = try catalogue.referencedDigests(of: byCheckpoint ? options.checkpoints : nil)
        var locations = [ChunkDigest: ChunkLocation]()
        for location in try catalogue.chunkLocations() where !byCheckpoint || needed.contains(location.digest) {
            locations[location.digest] = location
        }
        let packs = try catalogue.packRows()
        problems += catalogueProblems.map { "catalogue: \($0)" }
        let pendingShards = byCheckpoint ? [] : try catalogue.pendingShards()
        if !byCheckpoint {
            let unlisted = try committer.unlisted()
            for record in unlisted.checkpoints {
                problems.append("committed checkpoint \(record.run)@\(record.step) (\(record.id.short)) is not in the catalogue; run `ckstore repair`")
            }
            for record in unlisted.shards {
                problems.append("committed shard \(record.shard?.description ?? "?") of \(record.run)@\(record.step) (\(record.id.short)) is not in the catalogue; run `ckstore repair`")
            }
        }
        for digest in needed where locations[digest] == nil {
            missing[digest] = "chunk \(digest) is needed but not in the catalogue"
        }

        // Packs: present, of the recorded size, with a trailer that lists every catalogued frame as catalogued.
        let packsInUse = Set(locations.values.map(\.pack))
        let packsToCheck = byCheckpoint ? packs.filter { packsInUse.contains($0.id) } : packs
        var byPack = [PackID: [ChunkLocation]]()
        for location in locations.values { byPack[location.pack, default: []].append(location) }
        let readers = reader.packs
        var unreadablePacks = Set<PackID>()
        for pack in packsToCheck {
            let rows = byPack[pack.id] ?? []
            let reader: PackReader
            do {
                reader = try readers.reader(for: pack.id)
            } catch {
                problems.append("pack \(pack.id) is missing or unreadable: \(CKStoreError.wrap(error).message)")
                unreadablePacks.insert(pack.id)
                for row in rows { missing[row.digest] = "its pack \(pack.id) is missing" }
                continue
            }
            let size = try reader.size()
            if size != pack.size {
                problems.append("pack \(pack.id) is \(size) bytes on disk, the catalogue says \(pack.size)")
            }
            var listed = [Int64: FrameHeader]()
            do {
                for frame in try reader.readTrailer() { listed[frame.offset] = frame.header }
            } catch {
                problems.append(CKStoreError.wrap(error).message)
            }
            for row in rows {
                if let header = listed[row.offset] {
                    if header.digest != row.digest || header.storedLength != row.storedLength || header.encoding != row.encoding {
                        damaged[row.digest] = "pack \(pack.id): the trailer disagrees with the catalogue about the frame at offset \(row.offset)"
                    }
                } else if row.offset + Int64(PackFormat.frameHeaderSize + row.storedLength) > size {
                    damaged[row.digest] = "pack \(pack.id): frame at offset \(row.offset) lies past the end of the pack (truncated?)"
                } else if listed.isEmpty {
                    // No usable trailer: check the frame header in place.
                    let parser = try reader.frameHeader(at: row.offset)
                    if parser?.digest != row.digest { damaged[row.digest] = "pack \(pack.id): no intact frame for this chunk at offset \(row.offset)" }
                } else {
                    damaged[row.digest] = "pack \(pack.id): the trailer lists no frame at offset \(row.offset)"
                }
            }
        }

        // Full checks: every frame of the chosen packs read, checksummed, decoded and re-hashed.
        var fullRows = [ChunkLocation]()
        var mode = VerifyMode.quick
        switch (byCheckpoint, options.depth) {
        case (true, _):
            mode = .checkpoints
            fullRows = Array(locations.values)
        case (false, .full):
            mode = .full
            fullRows = Array(locations.values)
        case (false, .sample(let percent)):
            mode = .sample
            let count = max(1, Int((Double(packs.count) * percent / 100).rounded(.up)))
            let chosen = Set(packs.map(\.id).shuffled().prefix(count))
            fullRows = locations.values.filter { chosen.contains($0.pack) }
        case (false, .quick):
            break
        }
        fullRows = fullRows.filter { damaged[$0.digest] == nil && missing[$0.digest] == nil && !unreadablePacks.contains($0.pack) }
        fullRows.sort { ($0.pack.hex, $0.offset) < ($1.pack.hex, $1.offset) }
        let window = max(1, options.maxBytesInFlight)
        let meter = ProgressMeter("verify", total: fullRows.reduce(0) { $0 + Int64($1.storedLength) }, handler: options.progress)
        var checked = 0
        var storedBytes: Int64 = 0
        var logicalBytes: Int64 = 0
        try await withThrowingTaskGroup(of: (ChunkLocation, String?).self) { group in
            var next = 0
            var inFlight = 0
            var bytesInFlight = 0
            while next < fullRows.count || inFlight > 0 {
                while next < fullRows.count && (inFlight == 0 || bytesInFlight < window) {
                    let location = fullRows[next]
                    next += 1
                    inFlight += 1
                    bytesInFlight += location.rawLength
                    group.addTask {
                        do {
                            let bytes = try reader.decode(at: location, checks: .all)
                            bytes.releaseMapping()
                            return (location, nil)
                        } catch {
                            return (location, CKStoreError.wrap(error).message)
                        }
                    }
                }
                guard let (location, failure) = try await group.next() else { break }
                inFlight -= 1
                bytesInFlight -= location.rawLength
                checked += 1
                meter.add(Int64(location.storedLength))
                storedBytes += Int64(location.storedLength)
                logicalBytes += Int64(location.rawLength)
                if let failure { damaged[location.digest] = failure }
            }
        }

        // Manifests: every checkpoint's must read and parse (when its frame is not already known damaged).
        let checkpoints = byCheckpoint ? options.checkpoints : try catalogue.allCheckpointIDs()
        var manifests = [CheckpointID: Manifest]()
        for id in checkpoints where damaged[id.digest] == nil && missing[id.digest] == nil {
            do {
                let manifest = try reader.manifest(of: id)
                manifests[id] = manifest
                // Judged as `get` judges it: a manifest it would refuse is damage, not a sound checkpoint.
                try manifest.checkRestorable(id: id)
            } catch {
                damaged[id.digest] = CKStoreError.wrap(error).message
            }
        }

        // What the damage breaks.
        var damage = [VerifyReport.Damage]()
        var affected = Set<CheckpointID>()
        let broken = damaged.map { ($0.key, false, $0.value) } + missing.filter { damaged[$0.key] == nil }.map { ($0.key, true, $0.value) }
        let usersByDigest = try catalogue.checkpoints(using: Set(broken.map(\.0)))
        for (digest, isMissing, problem) in broken.sorted(by: { $0.0 < $1.0 }) {
            let users = usersByDigest[digest] ?? []
            var affects = [VerifyReport.Affected]()
            for id in users {
                affected.insert(id)
                guard let manifest = manifests[id] ?? (try? reader.manifest(of: id)) else {
                    // The manifest is what is lost: the catalogue still says which run and step it was.
                    let summary = try catalogue.summary(of: id)
                    affects.append(.init(checkpoint: id, run: summary?.run ?? "?", step: summary?.step ?? -1, file: nil, tensor: "manifest"))
                    continue
                }
                if id.digest == digest {
                    affects.append(.init(checkpoint: id, run: manifest.run, step: manifest.step, file: nil, tensor: "manifest"))
                }
                for file in manifest.files {
                    for (index, chunk) in file.chunks.enumerated() where chunk.digest == digest {
                        let tensor = file.tensors?.first { index >= $0.firstChunk && index < $0.firstChunk + $0.chunkCount }
                        affects.append(.init(checkpoint: id, run: manifest.run, step: manifest.step, file: file.path, tensor: tensor?.name))
                    }
                }
            }
            damage.append(.init(chunk: digest, missing: isMissing, problem: problem, affects: affects))
            if users.isEmpty && !needed.contains(digest) {
                // A damaged frame no checkpoint needs: worth reporting, but nothing is broken by it.
                problems.append("unreferenced chunk \(digest) is damaged (\(problem))")
            }
        }
        let damagedChunks = damaged.keys.sorted()
        let missingChunks = missing.keys.filter { damaged[$0] == nil }.sorted()
        let now = Date().timeIntervalSince1970
        let stale = PendingCheckpoint.grouping(pendingShards).filter { now - $0.createdAt >= options.pendingAge }
        return VerifyReport(
            ok: problems.isEmpty && damagedChunks.isEmpty && missingChunks.isEmpty,
            mode: mode, packsChecked: packsToCheck.count - unreadablePacks.count, chunksChecked: checked,
            storedBytesChecked: storedBytes, logicalBytesChecked: logicalBytes,
            damagedChunks: damagedChunks, missingChunks: missingChunks, affectedCheckpoints: affected.sorted(),
            problems: problems, damage: damage, seconds: (ContinuousClock.now - started) / .seconds(1), stalePending: stale
        )
    }
}

extension CheckpointStore {
    /// Checks the store's integrity and reports what any damage breaks.
    ///
    /// ```swift
    /// let report = try await store.verify(VerifyOptions(depth: .full))
    /// for damage in report.damage { print(damage.chunk, damage.affects.map(\.file)) }
    /// ```
    ///
    /// - Returns: a report whose `ok` is false when any chunk a checkpoint needs is damaged or missing,
    ///   a pack disagrees with the catalogue, a manifest does not parse, or SQLite finds a problem.
    public func verify(_ options: VerifyOptions = VerifyOptions()) async throws(CKStoreError) -> VerifyReport {
        try await CKStoreError.wrapping("verify") {
            // One consistent view: a connection of its own whose read transaction stays open for the whole
            // check, so a gc that commits meanwhile cannot make a chunk look missing; the shared store lock
            // keeps gc from deleting the packs that view names until the check is done.
            let lock = try StoreLock(path: layout.lockPath, mode: .shared)
            defer { withExtendedLifetime(lock) {} }
            let snapshot = try Catalogue(path: layout.cataloguePath, readOnly: FileSystem.isReadOnlyMount(layout.cataloguePath))
            try snapshot.beginSnapshot()
            defer { snapshot.endSnapshot() }
            let view = LockedCatalogue(snapshot)
            let reader = ChunkReader(index: ChunkIndex(catalogue: view), packs: PackReaderCache(layout: layout), contexts: contexts, counter: framesRead)
            return try await Checker(catalogue: view, committer: Committer(catalogue: catalogue, layout: layout), layout: layout, reader: reader).check(options)
        }
    }

    /// The newest checkpoint of `run` whose every needed chunk verifies fully: where a resuming trainer
    /// should start.
    public func latestValid(run: String) async throws -> CheckpointID {
        let candidates = try withCatalogue { try $0.checkpointsNewestFirst(run: run) }
        guard !candidates.isEmpty else { throw CKStoreError(.notFound, "no run named \(run) (or it has no checkpoints)") }
        for id in candidates {
            if try await verify(VerifyOptions(checkpoints: [id])).ok { return id }
        }
        throw CKStoreError(.damaged, "no checkpoint of run \(run) verifies; run `ckstore verify --full` to see the damage")
    }
}

extension PackReader {
    /// The frame header at `offset` if one parses there, without checking the payload.
    func frameHeader(at offset: Int64) throws -> FrameHeader? {
        let size = try self.size()
        guard offset >= 0, offset + Int64(PackFormat.frameHeaderSize) <= size else { return nil }
        return try? frameBytes(Int(offset)..<(Int(offset) + PackFormat.frameHeaderSize)).withUnsafeBytes {
            try FrameHeader(parsing: $0, pack: id.hex, offset: offset)
        }
    }
}
