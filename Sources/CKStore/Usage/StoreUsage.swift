import Foundation

/// Who needs which stored frame: the catalogue read once into arrays, behind audits and `gc --budget`.
///
/// Chunks, checkpoints, runs, packs and labels are numbered by their position here; references between
/// them are those numbers. A store of 1,000 checkpoints × 2,000 chunks is two million references, so the
/// model is plain arrays and one dictionary by digest, built by one scan of each table.
struct StoreUsage {
    struct Checkpoint {
        var summary: CheckpointSummary
        var run: Int
        /// What `get` writes for it now: its pieces, less what part rules dropped.
        var logicalBytes: Int64
        /// Chunk numbers it references, its manifest frame included.
        var chunks: [Int32]
    }

    struct Label {
        var run: String
        var path: String
        var tensor: String
    }

    struct Pack {
        var id: PackID
        var size: Int64
        var frames: Int
    }

    var runs: [String] = []
    var checkpoints: [Checkpoint] = []
    var labels: [Label] = []
    var packs: [Pack] = []
    /// Logical bytes per label, summed over the checkpoints that have the piece.
    var labelLogicalBytes: [Int64] = []

    // Per chunk, by number.
    var digests: [ChunkDigest] = []
    /// Frame bytes: the stored payload and its header.
    var frameBytes: [Int64] = []
    var rawBytes: [Int64] = []
    var kinds: [FrameKind] = []
    /// The chunk's delta base, or -1.
    var bases: [Int32] = []
    /// The inputs of predicted frames (the few chunks that have any), by chunk number.
    var inputs: [Int32: [Int32]] = [:]
    /// The label of the piece that first stored it, or -1.
    var chunkLabels: [Int32] = []
    /// The pack of each chunk, when loaded with `packs`.
    var chunkPacks: [Int32] = []
    private var digestIndex = DigestIndex([])
    /// References to digests the catalogue has no chunk row for (damage `verify` reports).
    var missingReferences = 0
    /// Chunks the pending shards need (of checkpoints not complete yet), delta bases included: gc keeps
    /// them, so they are not dead.
    var pendingChunks = Set<Int32>()
    /// The catalogue's files (database and write-ahead log) in bytes.
    var catalogueBytes: Int64 = 0

    /// Calls `body` with the chunks decoding `chunk` reads directly: its base, then its inputs.
    @inline(__always)
    func forEachPrerequisite(of chunk: Int, _ body: (Int) -> Void) {
        let base = Int(bases[chunk])
        if base >= 0 { body(base) }
        if !inputs.isEmpty, let more = inputs[Int32(chunk)] { for input in more { body(Int(input)) } }
    }

    /// The number of a chunk, or nil when the catalogue has no such chunk.
    func number(of digest: ChunkDigest) -> Int32? { digestIndex.number(of: digest) }

    static let none: Int32 = -1
    static let shared: Int32 = -2

    /// Reads the whole catalogue; with `packs`, also which pack holds each chunk (``chunkPacks``).
    static func load(_ catalogue: Catalogue, layout: StoreLayout, packs withPacks: Bool = false) throws -> StoreUsage {
        var usage = StoreUsage()
        // One pass over every table gains nothing from the 256 MiB page cache gc's sweep wants; keep the
        // audit's memory to its arrays.
        try catalogue.withPageCache(kibibytes: 16_384) {
            try read(catalogue, into: &usage, packs: withPacks)
        }
        usage.catalogueBytes = ["", "-wal"].reduce(Int64(0)) { total, suffix in
            total + FileSystem.size(of: layout.cataloguePath + suffix)
        }
        return usage
    }

    /// Fills `usage` from the catalogue's tables, one pass each.
    private static func read(_ catalogue: Catalogue, into usage: inout StoreUsage, packs withPacks: Bool) throws {
        let summaries = try catalogue.summaries()
        var runIndex = [String: Int]()
        var checkpointIndex = [CheckpointID: Int]()
        for summary in summaries {
            let run: Int
            if let known = runIndex[summary.run] {
                run = known
            } else {
                run = usage.runs.count
                runIndex[summary.run] = run
                usage.runs.append(summary.run)
            }
            checkpointIndex[summary.id] = usage.checkpoints.count
            usage.checkpoints.append(Checkpoint(summary: summary, run: run, logicalBytes: summary.logicalBytes, chunks: []))
        }
        for (id, bytes) in try catalogue.logicalBytesByCheckpoint() {
            if let index = checkpointIndex[id] { usage.checkpoints[index].logicalBytes = bytes }
        }

        // Label ids are small row ids: an array maps them to positions.
        var labelIndex = [Int32]()
        func position(ofLabel id: Int64) -> Int32 { id >= 0 && id < labelIndex.count ? labelIndex[Int(id)] : none }
        for row in try catalogue.labelRows() where row.id >= 0 && row.id < 1 << 31 {
            let id = row.id, label = Label(run: row.run, path: row.path, tensor: row.tensor)
            if labelIndex.count <= Int(id) { labelIndex += Array(repeating: none, count: Int(id) + 1 - labelIndex.count) }
            labelIndex[Int(id)] = Int32(usage.labels.count)
            usage.labels.append(label)
        }
        usage.labelLogicalBytes = Array(repeating: 0, count: usage.labels.count)
        for (label, bytes) in try catalogue.logicalBytesByLabel() {
            let index = position(ofLabel: label)
            if index >= 0 { usage.labelLogicalBytes[Int(index)] += bytes }
        }

        var packIndex = [String: Int32]()
        for row in try catalogue.packRows() {
            packIndex[row.id.hex] = Int32(usage.packs.count)
            usage.packs.append(Pack(id: row.id, size: row.size, frames: row.frameCount))
        }

        var baseDigests = [(Int32, ChunkDigest)]()
        // Which pack holds a chunk costs a string per row; only budget planning needs it.
        try catalogue.forEachChunkRow(withPacks: withPacks) { row in
            let index = Int32(usage.digests.count)
            usage.digests.append(row.digest)
            usage.frameBytes.append(row.storedLength + Int64(PackFormat.frameHeaderSize))
            usage.rawBytes.append(row.rawLength)
            usage.kinds.append(row.kind)
            if let base = row.base { baseDigests.append((index, base)) }
            usage.chunkLabels.append(row.label.map { position(ofLabel: $0) } ?? none)
            if withPacks { usage.chunkPacks.append(packIndex[row.pack] ?? none) }
        }
        usage.digestIndex = DigestIndex(usage.digests)
        usage.bases = Array(repeating: none, count: usage.digests.count)
        for (index, base) in baseDigests { usage.bases[Int(index)] = usage.number(of: base) ?? none }
        try catalogue.forEachInput { digest, input in
            if let chunk = usage.number(of: digest), let input = usage.number(of: input) { usage.inputs[chunk, default: []].append(input) }
        }
        var pending = try catalogue.pendingShardDigests().compactMap { usage.number(of: $0) }
        while let chunk = pending.popLast() {
            guard usage.pendingChunks.insert(chunk).inserted else { continue }
            usage.forEachPrerequisite(of: Int(chunk)) { pending.append(Int32($0)) }
        }

        // References come in primary-key order, so one checkpoint's rows are consecutive.
        var current: (id: CheckpointID, index: Int?)?
        var list = [Int32]()
        func flush() {
            if let index = current?.index { usage.checkpoints[index].chunks = list }
            list.removeAll(keepingCapacity: true)
        }
        try catalogue.forEachReference { id, digest in
            if current?.id != id {
                flush()
                current = (id, checkpointIndex[id])
            }
            if let chunk = usage.number(of: digest) {
                list.append(chunk)
            } else {
                usage.missingReferences += 1
            }
        }
        flush()

    }

    /// For every chunk, the one checkpoint that needs it, ``shared`` or ``none``; likewise by run. A
    /// delta base is needed by whoever needs a chunk encoded against it (I-4). Checkpoints in `ignoring`
    /// count as deleted.
    func owners(ignoring: Set<Int> = []) -> (checkpoint: [Int32], run: [Int32]) {
        var byCheckpoint = Array(repeating: Self.none, count: digests.count)
        var byRun = Array(repeating: Self.none, count: digests.count)
        for (index, checkpoint) in checkpoints.enumerated() where !ignoring.contains(index) {
            for chunk in checkpoint.chunks.map(Int.init) {
                byCheckpoint[chunk] = Self.merge(byCheckpoint[chunk], Int32(index))
                byRun[chunk] = Self.merge(byRun[chunk], Int32(checkpoint.run))
            }
        }
        // Bases and inputs inherit their dependents' owners; chains are short, so a few passes settle it.
        let dependents = bases.indices.filter { bases[$0] != Self.none || inputs[Int32($0)] != nil }
        var changed = !dependents.isEmpty
        while changed {
            changed = false
            for chunk in dependents where byCheckpoint[chunk] != Self.none {
                forEachPrerequisite(of: chunk) { base in
                    let owners = (Self.merge(byCheckpoint[base], byCheckpoint[chunk]), Self.merge(byRun[base], byRun[chunk]))
                    if owners != (byCheckpoint[base], byRun[base]) {
                        (byCheckpoint[base], byRun[base]) = owners
                        changed = true
                    }
                }
            }
        }
        return (byCheckpoint, byRun)
    }

    /// The checkpoints of each run, by run number.
    func checkpointsByRun() -> [[Checkpoint]] {
        var out = Array(repeating: [Checkpoint](), count: runs.count)
        for checkpoint in checkpoints { out[checkpoint.run].append(checkpoint) }
        return out
    }

    /// Frame bytes of the distinct chunks (delta bases included) each run needs.
    func neededBytesByRun() -> [Int64] {
        var needed = Array(repeating: Int64(0), count: runs.count)
        var stamp = Array(repeating: Int32(-1), count: digests.count)
        for checkpoint in checkpoints {
            let run = Int32(checkpoint.run)
            var stack = [Int]()
            for first in checkpoint.chunks {
                stack.append(Int(first))
                while let chunk = stack.popLast() {
                    guard stamp[chunk] != run else { continue }
                    stamp[chunk] = run
                    needed[checkpoint.run] += frameBytes[chunk]
                    forEachPrerequisite(of: chunk) { stack.append($0) }
                }
            }
        }
        return needed
    }

    private static func merge(_ owner: Int32, _ claimant: Int32) -> Int32 {
        owner == none || owner == claimant ? claimant : shared
    }

    /// Frame bytes of checkpoint data: file chunks and manifests (annotations are counted apart).
    var storedBytes: Int64 {
        zip(frameBytes, kinds).reduce(0) { $0 + ($1.1 == .annotation ? 0 : $1.0) }
    }

    var packBytes: Int64 { packs.reduce(0) { $0 + $1.size } }
}

/// Deletes checkpoints one by one from a ``StoreUsage`` and follows what the store would take on disk
/// after a sweep that rewrites every pack with a dead frame: what `gc --budget` plans with.
struct UsageSimulation {
    private let usage: StoreUsage
    private var references: [Int32]
    private var liveDependents: [Int32]
    private var alive: [Bool]
    private var packLive: [(frames: Int, bytes: Int64)]
    private var packAllLive: [Bool]
    /// Bytes of the packs as they would be after the sweep.
    private(set) var packBytes: Int64 = 0
    private(set) var deleted = Set<Int>()

    /// Starts from the store with `deleted` checkpoints gone and `remaining` references for checkpoints
    /// a part rule slims.
    init(_ usage: StoreUsage, deleted: Set<Int>, remaining: [Int: [Int32]]) {
        precondition(usage.chunkPacks.count == usage.digests.count, "a simulation needs the usage loaded with packs")
        self.usage = usage
        let count = usage.digests.count
        references = Array(repeating: 0, count: count)
        liveDependents = Array(repeating: 0, count: count)
        alive = Array(repeating: false, count: count)
        packLive = Array(repeating: (0, 0), count: usage.packs.count)
        packAllLive = Array(repeating: true, count: usage.packs.count)
        self.deleted = deleted
        var chunkLists = usage.checkpoints.map(\.chunks)
        for (index, list) in remaining { chunkLists[index] = list }
        for (index, list) in chunkLists.enumerated() where !deleted.contains(index) {
            for chunk in list { references[Int(chunk)] += 1 }
        }
        // Live: referenced, an annotation, or (transitively) the base of a live chunk.
        var stack = (0..<count).filter { references[$0] > 0 || usage.kinds[$0] == .annotation }
        for chunk in stack { alive[chunk] = true }
        while let chunk = stack.popLast() {
            usage.forEachPrerequisite(of: chunk) { base in
                liveDependents[base] += 1
                if !alive[base] {
                    alive[base] = true
                    stack.append(base)
                }
            }
        }
        for chunk in 0..<count {
            let pack = Int(usage.chunkPacks[chunk])
            guard pack >= 0 else { continue }
            if alive[chunk] {
                packLive[pack].frames += 1
                packLive[pack].bytes += usage.frameBytes[chunk]
            } else {
                packAllLive[pack] = false
            }
        }
        packBytes = usage.packs.indices.reduce(0) { $0 + size(ofPack: $1) }
    }

    private func size(ofPack pack: Int) -> Int64 {
        if packLive[pack].frames == 0 { return 0 }
        if packAllLive[pack] { return usage.packs[pack].size }
        return PackFormat.packSize(frames: packLive[pack].frames, frameBytes: packLive[pack].bytes)
    }

    /// Deletes one more checkpoint.
    mutating func delete(_ checkpoint: Int) {
        guard deleted.insert(checkpoint).inserted else { return }
        for chunk in usage.checkpoints[checkpoint].chunks {
            references[Int(chunk)] -= 1
            release(Int(chunk))
        }
    }

    private mutating func release(_ start: Int) {
        var pending = [start]
        while let chunk = pending.popLast() {
            guard alive[chunk], references[chunk] == 0, liveDependents[chunk] == 0, usage.kinds[chunk] != .annotation else { continue }
            alive[chunk] = false
            let pack = Int(usage.chunkPacks[chunk])
            if pack >= 0 {
                packBytes -= size(ofPack: pack)
                packLive[pack].frames -= 1
                packLive[pack].bytes -= usage.frameBytes[chunk]
                packAllLive[pack] = false
                packBytes += size(ofPack: pack)
            }
            usage.forEachPrerequisite(of: chunk) { base in
                liveDependents[base] -= 1
                pending.append(base)
            }
        }
    }
}
