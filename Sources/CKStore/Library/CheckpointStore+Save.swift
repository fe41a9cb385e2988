extension CheckpointStore {
    /// Stores a checkpoint from memory and returns once it is committed (durable and visible).
    ///
    /// The contents become the files of ``CheckpointContents`` and go through the same chunking, dedup and
    /// commit protocol as ``put(directory:options:)``; saving the same contents again at the same run and
    /// step is a no-op that returns the same id.
    ///
    /// ```swift
    /// var contents = CheckpointContents(run: "mnist-mlp", step: 1200)
    /// contents.tensors = [try TensorValue(name: "fc1.weight", shape: [128, 784], floats: weights)]
    /// let result = try await store.save(contents)
    /// ```
    ///
    /// - Parameters:
    ///   - contents: the tensors, state and metadata.
    ///   - level: the zstd level; nil for the store's.
    /// - Returns: the checkpoint's id and what storing it cost.
    /// - Throws: ``CKStoreError``: `invalidArgument` for malformed tensors or names, `conflict` when the
    ///   run already has different contents at this step.
    public func save(_ contents: CheckpointContents, level: CompressionLevel? = nil) async throws(CKStoreError) -> PutResult {
        var options = PutOptions(run: contents.run, step: contents.step)
        options.epoch = contents.epoch
        options.metrics = contents.metrics
        options.tags = contents.tags
        options.metadata = contents.metadata
        options.compressionLevel = level
        let what = "\(contents.run)@\(contents.step)"
        return try await CKStoreError.wrapping("save of \(what)") {
            try await put(try contents.inputs(), options: options, describing: what, defaultStep: contents.step)
        }
    }
}

/// Saves checkpoints while training goes on: at most ``maxInFlight`` saves run at once, and asking for
/// one more waits until one finishes (back-pressure, so memory stays bounded however fast the loop
/// asks).
///
/// ```swift
/// let saver = BackgroundSaver(store: store, maxInFlight: 1)
/// for step in 1...steps {
///     trainStep()
///     if step % 500 == 0 {
///         _ = await saver.save(contentsOfModel(step: step))   // returns as soon as a slot is free
///     }
/// }
/// try await saver.finish()                                   // every save committed, or the first error
/// ```
///
/// A save holds the tensors' arrays until it commits. The caller may keep training on its own arrays at
/// once: the first write to an array a save still holds copies it (copy-on-write), so the save stores
/// the values of the moment ``save(_:)`` was called.
public actor BackgroundSaver {
    /// A save running in the background.
    public struct Handle: Sendable {
        /// The run of the checkpoint being saved.
        public let run: String
        /// Its step.
        public let step: Int64
        let task: Task<PutResult, any Error>
        let upload: Task<PushReport, any Error>?

        /// Waits for the commit to the local store.
        ///
        /// - Throws: what the save threw (``CKStoreError``).
        public func committed() async throws -> PutResult {
            try await task.value
        }

        /// Waits for the upload to the saver's remote, which starts once the checkpoint is committed
        /// locally; nil when the saver has no remote.
        ///
        /// - Throws: what the save or the push threw.
        public func uploaded() async throws -> PushReport? {
            try await upload?.value
        }
    }

    /// The store saved to.
    public nonisolated let store: CheckpointStore
    /// Saves running at once, at least 1.
    public nonisolated let maxInFlight: Int
    private let level: CompressionLevel?
    private var running = 0
    private var waiting = [CheckedContinuation<Void, Never>]()
    private var handles = [Handle]()
    /// Snapshot buffers of committed saves, by size, for ``snapshot(name:dtype:shape:copying:)``.
    private var spare = [Int: [[UInt8]]]()

    /// The remote every committed checkpoint is pushed to, if any.
    public nonisolated let remote: Remote?
    /// The newest upload, which the next one waits for: pushes run one at a time, in order.
    private var lastUpload: Task<PushReport, any Error>?

    /// A saver for `store` running at most `maxInFlight` saves at once, at zstd `level` (nil: the store's),
    /// pushing each checkpoint to `push` once it is committed locally.
    ///
    /// Uploads run one after another, behind the commits: a save's slot is free again once it is
    /// committed locally, so training never waits for the network. ``Handle/committed()`` and
    /// ``Handle/uploaded()`` report the two separately.
    public init(store: CheckpointStore, maxInFlight: Int = 1, level: CompressionLevel? = nil, push: Remote? = nil) {
        self.store = store
        self.maxInFlight = max(1, maxInFlight)
        self.level = level
        self.remote = push
    }

    /// Starts saving `contents`, first waiting while ``maxInFlight`` saves are running.
    ///
    /// Returns once the save has started; the caller's arrays are not needed after that (see the type's
    /// note on copy-on-write). Await ``Handle/committed()`` for the result.
    public func save(_ contents: CheckpointContents) async -> Handle {
        while running >= maxInFlight {
            await withCheckedContinuation { waiting.append($0) }
        }
        running += 1
        let store = self.store, level = self.level
        let box = ContentsBox(contents)
        let task = Task<PutResult, any Error> {
            // Held here only, so that once the save returns the snapshot buffers have no other owner.
            var held = box.take()
            do {
                guard let contents = held else { throw CKStoreError(.invalidArgument, "save of \(box.name) was started twice") }
                let result = try await store.save(contents, level: level)
                self.finished(recycling: held.take())
                return result
            } catch {
                self.finished(recycling: held.take())
                throw error
            }
        }
        var upload: Task<PushReport, any Error>?
        if let remote {
            let previous = lastUpload
            upload = Task {
                let committed = try await task.value
                // In order, one at a time; an earlier failed upload does not stop this one.
                _ = try? await previous?.value
                return try await store.push([committed.id], to: remote)
            }
            lastUpload = upload
        }
        let handle = Handle(run: contents.run, step: contents.step, task: task, upload: upload)
        handles.append(handle)
        return handle
    }

    private func finished(recycling contents: CheckpointContents?) {
        running -= 1
        // Keep the snapshot buffers of up to `maxInFlight` saves for the next snapshots.
        if let contents {
            let tensors = contents.tensors + contents.optimizerState
            var perSize = [Int: Int]()
            for tensor in tensors { perSize[tensor.bytes.count, default: 0] += 1 }
            for tensor in tensors where spare[tensor.bytes.count, default: []].count < maxInFlight * (perSize[tensor.bytes.count] ?? 1) {
                spare[tensor.bytes.count, default: []].append(tensor.bytes)
            }
        }
        if !waiting.isEmpty { waiting.removeFirst().resume() }
    }

    /// A tensor holding a copy of `bytes`, made in a buffer a committed save of this saver no longer
    /// needs when there is one of that size.
    ///
    /// A loop that snapshots the same tensors for every checkpoint then copies into the same memory each
    /// time instead of asking the system for fresh pages, which must be zeroed (and in a virtual machine
    /// often first backed by the host) before they are written: for a 1 GiB state that is seconds per
    /// checkpoint, in the loop's own time.
    public func snapshot(name: String, dtype: DType, shape: [Int], copying bytes: UnsafeRawBufferPointer) throws -> TensorValue {
        var buffer = spare[bytes.count]?.popLast() ?? [UInt8](repeating: 0, count: 0)
        if buffer.count == bytes.count {
            // Unique unless the caller still holds the tensor of that old save: then this write copies it.
            buffer.withUnsafeMutableBytes { $0.copyMemory(from: bytes) }
        } else {
            buffer = [UInt8](copying: bytes)
        }
        return try TensorValue(name: name, dtype: dtype, shape: shape, bytes: buffer)
    }

    /// An `F32` tensor holding a copy of `floats`, in a reused buffer (see ``snapshot(name:dtype:shape:copying:)``).
    public func snapshot(name: String, shape: [Int], floats: [Float]) throws -> TensorValue {
        try floats.withUnsafeBytes { try snapshot(name: name, dtype: .f32, shape: shape, copying: $0) }
    }

    /// Saves not yet committed or failed.
    public var inFlight: Int { running }

    /// Waits for every save started so far, and for its upload when the saver pushes; returns their
    /// results in the order they were started.
    ///
    /// - Throws: the first error a save or an upload threw (the others still ran to completion).
    @discardableResult
    public func finish() async throws -> [PutResult] {
        let pending = handles
        handles.removeAll()
        var results = [PutResult]()
        var firstError: (any Error)?
        for handle in pending {
            do {
                results.append(try await handle.committed())
                _ = try await handle.uploaded()
            } catch {
                if firstError == nil { firstError = error }
            }
        }
        if let firstError { throw firstError }
        return results
    }
}

/// Hands a save's contents to its task without the task's closure capturing them: the task takes them
/// out, and once the save returns, its snapshot buffers go back to the saver with no other reference,
/// ready to be written in place.
private final class ContentsBox: @unchecked Sendable {
    // Taken once, by the save's task, which is the only user.
    private var value: CheckpointContents?
    /// `RUN@STEP`, for messages.
    let name: String

    init(_ contents: CheckpointContents) {
        value = contents
        name = "\(contents.run)@\(contents.step)"
    }

    func take() -> CheckpointContents? {
        defer { value = nil }
        return value
    }
}
