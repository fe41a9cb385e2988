import Dispatch
import Synchronization

/// Where new frames go: packs under `tmp/`, opened on the first frame and sealed (fsynced and renamed into
/// `packs/`) once they reach the target size or the caller is done.
///
/// Many tasks may append at once (a put's workers append the frames they encode): each append reserves
/// its frame's place under a lock and writes it outside the lock, so that copying frames into the page
/// cache runs on every core instead of one. The kernel serializes writes to one file (its inode lock),
/// so a sink may keep several packs open and spread appends over them. A pack that is full is sealed by
/// whichever append finishes its last write; ``seal()`` seals the rest once every append has returned.
final class PackSink: @unchecked Sendable {
    // Everything mutable is in `state`, behind its mutex; a PackWriter's reservations happen under it, its
    // writes (to disjoint ranges of its file) outside it.
    private struct OpenPack {
        let writer: PackWriter
        /// Appends that reserved a frame in this pack and have not finished writing it.
        var writing = 0
        /// No more frames go in; sealed when `writing` is back to 0.
        var full = false
    }

    private struct State {
        var open = [PackID: OpenPack]()
        /// The pack each slot appends to; appends take the slots in turn.
        var current: [PackID?]
        var nextSlot = 0
        var sealed = [SealedPack]()
    }

    private let layout: StoreLayout
    private let targetSize: Int64
    private let state: Mutex<State>

    /// A sink writing packs of about `targetSize` bytes, with up to `writers` packs open at once (one
    /// keeps the frames of a pack in the order they were appended).
    init(layout: StoreLayout, targetSize: Int64 = PackFormat.targetSize, writers: Int = 1) {
        self.layout = layout
        self.targetSize = targetSize
        self.state = Mutex(State(current: Array(repeating: nil, count: max(1, writers))))
    }

    /// Appends one frame; returns where it is (valid once its pack is sealed). Safe to call from several
    /// tasks at once.
    @discardableResult
    func append(_ chunk: EncodedChunk, kind: FrameKind) throws -> ChunkLocation {
        // The header's checksum covers the payload: computed before taking the lock.
        let header = FrameHeader(kind: kind, chunk: chunk)
        let (writer, frame) = try state.withLock { (state) throws -> (PackWriter, PackWriter.WrittenFrame) in
            let slot = state.nextSlot
            state.nextSlot = (slot + 1) % state.current.count
            let writer: PackWriter
            if let id = state.current[slot], let open = state.open[id] {
                writer = open.writer
            } else {
                writer = try PackWriter(layout: layout)
                state.open[writer.id] = OpenPack(writer: writer)
                state.current[slot] = writer.id
            }
            let frame = writer.reserve(header)
            state.open[writer.id]?.writing += 1
            if writer.size >= targetSize {
                state.open[writer.id]?.full = true
                state.current[slot] = nil
            }
            return (writer, frame)
        }
        var failure: (any Error)?
        do {
            try writer.write(frame, payload: chunk.payload)
        } catch {
            failure = error
        }
        let failed = failure != nil
        let finished = state.withLock { (state) -> PackWriter? in
            guard var open = state.open[writer.id] else { return nil }
            open.writing -= 1
            state.open[writer.id] = open
            guard !failed, open.full, open.writing == 0 else { return nil }
            return state.open.removeValue(forKey: writer.id)?.writer
        }
        if let failure { throw failure }
        if let finished {
            let sealed = try finished.seal()
            state.withLock { $0.sealed.append(sealed) }
        }
        return ChunkLocation(frame.header, pack: writer.id, offset: frame.offset)
    }

    /// Gives up: the open packs are dropped (their temporary files removed) and the packs sealed since the
    /// last call are returned, for the caller to remove once it knows nothing records them. Call it once no
    /// append is running.
    func abandon() -> [SealedPack] {
        state.withLock { state in
            defer {
                state.open.removeAll()
                state.current = state.current.map { _ in nil }
                state.sealed.removeAll()
            }
            return state.sealed
        }
    }

    /// Seals the open packs, if any, and returns every pack sealed since the last call. Call it once no
    /// append is running.
    func seal() throws -> [SealedPack] {
        let open = state.withLock { (state) -> [PackWriter] in
            defer {
                state.open.removeAll()
                state.current = state.current.map { _ in nil }
            }
            return state.open.values.map(\.writer).sorted { $0.id.description < $1.id.description }
        }
        // Sealed side by side: each waits for its fsync, and the disk can take both flushes at once. The
        // packs that sealed are kept for the next call even when another failed, as the append path keeps
        // them: a caller that goes on after the error still learns of every pack in `packs/`.
        let failures = Mutex([any Error]())
        DispatchQueue.concurrentPerform(iterations: open.count) { index in
            do {
                let sealed = try open[index].seal()
                state.withLock { $0.sealed.append(sealed) }
            } catch {
                failures.withLock { $0.append(error) }
            }
        }
        if let failure = failures.withLock({ $0.first }) { throw failure }
        return state.withLock { state in
            defer { state.sealed.removeAll() }
            return state.sealed
        }
    }
}
