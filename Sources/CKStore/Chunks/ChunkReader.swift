import Dispatch
import Synchronization

/// Reads chunks: finds a frame, reads it with a positioned read, decodes its delta chain and checks what
/// it is told to. The one decoder of delta chains: restores, loads, verify, the put's delta bases, gc's
/// re-encoding and repair's scan all read through it.
///
/// Takes only a way to find frames (``ChunkLocating``) and the packs to read them from, so it serves a
/// store with a catalogue and a store being rebuilt from its packs alike.
final class ChunkReader: Sendable {
    /// A delta chain longer than this is damage (a cycle, or frames no put writes): puts keep chains to
    /// the store's maximum delta depth, which is far below.
    static let hardChainLimit = 64

    private let index: any ChunkLocating
    let packs: PackReaderCache
    private let contexts: ZstdContextPool
    private let counter: FrameCounter?
    /// Predicted frames decoding at once. Each holds its base, its four inputs and what their chains
    /// decode (about a dozen chunks at depth 3), so their number, not the number of cores, must bound a
    /// restore's memory: 16 of them hold about 200 MiB. On 16 cores a limit of 6 halved the speed of a
    /// restore and did not lower its peak resident size, which pages of the mapped packs make up.
    private let predictedDecodes = DispatchSemaphore(value: ChunkReader.maxPredictedDecodes)
    static let maxPredictedDecodes = 16

    /// A reader over `packs` that finds frames through `index`; every frame read is counted on `counter`.
    init(index: any ChunkLocating, packs: PackReaderCache, contexts: ZstdContextPool = ZstdContextPool(), counter: FrameCounter? = nil) {
        self.index = index
        self.packs = packs
        self.contexts = contexts
        self.counter = counter
    }

    /// Reads one chunk: locate it, read its frame, decode it and check it; damage is reported as `what: …`.
    func read(_ digest: ChunkDigest, checks: ChunkChecks = .all, what: @autoclosure () -> String) throws -> ChunkBytes {
        guard let location = try index.location(of: digest) else {
            throw CKStoreError(.damaged, "\(what()): chunk \(digest) is not in the store")
        }
        return try read(at: location, checks: checks, what: what())
    }

    /// Reads one chunk from `location`; damage is reported as `what: …`.
    func read(at location: ChunkLocation, checks: ChunkChecks = .all, what: @autoclosure () -> String) throws -> ChunkBytes {
        do {
            return try decode(at: location, checks: checks)
        } catch {
            throw Self.failure(error, what: what())
        }
    }

    /// A read's error as reported: failing I/O stays what it is (the data may be fine); everything else
    /// is damage; both name `what` was read.
    private static func failure(_ error: any Error, what: String) -> CKStoreError {
        let wrapped = CKStoreError.wrap(error)
        let code: CKStoreError.Code = [.ioFailure, .noSpace, .cancelled].contains(wrapped.code) ? wrapped.code : .damaged
        return CKStoreError(code, "\(what): \(wrapped.message)", cause: wrapped)
    }

    /// Reads, checks and decodes one chunk, decoding its delta base first when it has one.
    ///
    /// Bases are checked with `checks` less `.digest`: when the decoded chunk is re-hashed, that covers
    /// every bit of its bases too (a wrong base bit is a wrong output bit), so they need no check of their
    /// own; with `.checksums`, every frame of the chain is checked.
    func decode(at location: ChunkLocation, checks: ChunkChecks = .all, hops: Int = 0) throws -> ChunkBytes {
        try decode(at: location, checks: checks, hops: hops, memo: nil)
    }

    /// The frames a predicted frame's tree of bases and inputs decodes, each once: the tree of a predicted
    /// chunk at depth 3 names its parents' moments several times over.
    private final class DecodeMemo {
        var bytes: [ChunkDigest: ChunkBytes]

        init(_ bytes: [ChunkDigest: ChunkBytes] = [:]) { self.bytes = bytes }
    }

    /// Checks a set of frames that were just written (a pull's), each decoded once and hashed against its
    /// digest, every frame's checksum with it.
    ///
    /// The frames form trees: `roots` are those whose base is outside the set (or that have none), and
    /// `builtOn` gives for each frame the frames of the set whose base it is. Each tree is walked depth
    /// first, a frame's decoded bytes kept while the frames built on it are checked and dropped after, so a
    /// delta chain costs one decode per frame and memory holds one chain per worker. A predicted frame's
    /// inputs are read like any other base. Trees are checked `workers` at once.
    ///
    /// - Returns: how many frames were checked; a frame that no root reaches (a cycle of bases) is not.
    func check(roots: [ChunkLocation], builtOn: [ChunkDigest: [ChunkLocation]], workers: Int, what: @escaping @Sendable (ChunkDigest) -> String) async throws -> Int {
        @Sendable func walk(_ location: ChunkLocation, memo: DecodeMemo?, depth: Int) throws -> Int {
            guard depth < Self.hardChainLimit else {
                throw CKStoreError(.damaged, "\(what(location.digest)): its chain of bases is longer than \(Self.hardChainLimit) frames (a cycle?)")
            }
            let bytes: ChunkBytes
            do {
                // Decoded from its own frame and hashed, even when a sibling read it as an input.
                memo?.bytes[location.digest] = nil
                bytes = try decode(at: location, checks: .all, hops: 0, memo: memo)
            } catch {
                throw Self.failure(error, what: what(location.digest))
            }
            // A raw frame's bytes are its pack's mapped pages: let them go once used, as a restore does.
            defer { bytes.releaseMapping() }
            guard let children = builtOn[location.digest], !children.isEmpty else { return 1 }
            // The frames built on this one find its bytes here; what their inputs decode stays for their
            // siblings (the same moments) and goes with this level.
            let level = DecodeMemo([location.digest: bytes])
            var count = 1
            for child in children { count += try walk(child, memo: level, depth: depth + 1) }
            return count
        }
        return try await roots.concurrentMap(limit: workers) { try walk($0, memo: nil, depth: 0) }.reduce(0, +)
    }

    /// Decodes one frame on its own, its bases and inputs taken as zeros: for fuzzing the codec on frames
    /// of no store. Damage throws; what it decodes to means nothing.
    static func decodeDetached(_ header: FrameHeader, payload: ChunkBytes) throws {
        let zeros = ChunkBytes([UInt8](repeating: 0, count: header.rawLength))
        _ = try FrameCodec(level: .default).decode(payload, encoding: header.encoding, rawLength: header.rawLength) { zeros } input: { _ in zeros }
    }

    private func decode(at location: ChunkLocation, checks: ChunkChecks, hops: Int, memo known: DecodeMemo?) throws -> ChunkBytes {
        if let known, let bytes = known.bytes[location.digest] { return bytes }
        let reader = try packs.reader(for: location.pack)
        counter?.add()
        let (header, payload) = try reader.readFrame(at: location.offset, storedLength: location.storedLength, expected: location.digest, checkChecksum: checks.contains(.checksums))
        let codec = FrameCodec(level: .default, contexts: contexts)
        let memo = known ?? (header.encoding.hasInputs ? DecodeMemo() : nil)
        // Only the outermost predicted frame of a tree waits for a turn (the frames inside it are its work).
        let gated = known == nil && memo != nil
        if gated { predictedDecodes.wait() }
        defer { if gated { predictedDecodes.signal() } }
        let bytes = try codec.decode(payload, encoding: header.encoding, rawLength: header.rawLength) {
            guard let base = header.base else { throw CKStoreError(.damaged, "chunk \(location.digest) is a delta frame without a base") }
            guard hops < Self.hardChainLimit else {
                throw CKStoreError(.damaged, "chunk \(location.digest): its delta chain is longer than \(Self.hardChainLimit) frames (a cycle?)")
            }
            guard let baseLocation = try index.location(of: base) else {
                throw CKStoreError(.damaged, "chunk \(location.digest) is a delta against chunk \(base), which is not in the store")
            }
            return try decode(at: baseLocation, checks: checks.subtracting(.digest), hops: hops + 1, memo: memo)
        } input: { input in
            // An input, like a base, needs no digest check of its own when the output's is checked.
            guard hops < Self.hardChainLimit else {
                throw CKStoreError(.damaged, "chunk \(location.digest): its chain of bases and inputs is longer than \(Self.hardChainLimit) frames (a cycle?)")
            }
            guard let inputLocation = try index.location(of: input) else {
                throw CKStoreError(.damaged, "chunk \(location.digest) is predicted from chunk \(input), which is not in the store")
            }
            return try decode(at: inputLocation, checks: checks.subtracting(.digest), hops: hops + 1, memo: memo)
        }
        if header.encoding != .raw { payload.releaseMapping() }
        guard !checks.contains(.digest) || bytes.withUnsafeBytes({ SHA256Hasher.digest($0) }) == location.digest else {
            throw CKStoreError(.damaged, "chunk \(location.digest) in pack \(location.pack) decodes to bytes with a different SHA-256")
        }
        if hops > 0 { memo?.bytes[location.digest] = bytes }
        return bytes
    }
}

/// Counts frames read (tests check that partial reads stay partial).
final class FrameCounter: Sendable {
    private let count = Atomic<Int>(0)

    func add() { count.add(1, ordering: .relaxed) }

    /// Frames read so far.
    var value: Int { count.load(ordering: .relaxed) }
}

/// Opens each pack once per operation and shares the reader between tasks. A pack that failed to open
/// stays failed for the operation: a later use gets the same error instead of quietly retrying (a
/// prefetch that hit a failing disk must not hide it from the read that follows).
final class PackReaderCache: Sendable {
    private let layout: StoreLayout
    // Open readers and failed opens by pack, protected by this mutex.
    private let readers = Mutex<[PackID: Result<PackReader, CKStoreError>]>([:])

    init(layout: StoreLayout) { self.layout = layout }

    func reader(for id: PackID) throws -> PackReader {
        if let known = readers.withLock({ $0[id] }) { return try known.get() }
        let opened: Result<PackReader, CKStoreError>
        do {
            opened = .success(try PackReader(id: id, path: layout.packPath(id)))
        } catch {
            opened = .failure(CKStoreError.wrap(error))
        }
        readers.withLock { $0[id] = opened }
        return try opened.get()
    }
}

extension ChunkReader {
    /// Reads, checks and parses a checkpoint's manifest (its frame's SHA-256 is the checkpoint id).
    func manifest(of id: CheckpointID) throws -> Manifest {
        let bytes = try read(id.digest, what: "manifest of checkpoint \(id.short)")
        return try Manifest.decode(bytes.array, id: id)
    }
}
