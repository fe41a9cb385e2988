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
    ///   - level: the zstd level.
    /// - Returns: the checkpoint's id and what storing it cost.
    /// - Throws: ``CKStoreError``: `invalidArgument` for malformed tensors or names, `conflict` when the
    ///   run already has different contents at this step.
    public func save(_ contents: CheckpointContents, level: CompressionLevel = .default) async throws -> PutResult {
        var options = PutOptions(run: contents.run, step: contents.step)
        options.epoch = contents.epoch
        options.metrics = contents.metrics
        options.tags = contents.tags
        options.metadata = contents.metadata
        options.compressionLevel = level
        let what = "\(contents.run)@\(contents.step)"
        do {
            return try await put(try contents.inputs(), options: options, describing: what, defaultStep: contents.step)
        } catch let error as CKStoreError {
            throw error
        } catch is CancellationError {
            throw CKStoreError(.ioFailure, "save of \(what) was cancelled; nothing was committed")
        } catch {
            throw CKStoreError(.ioFailure, "save of \(what) failed: \(error)")
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

        /// Waits for the commit.
        ///
        /// - Throws: what the save threw (``CKStoreError``).
        public func committed() async throws -> PutResult {
            try await task.value
        }
    }

    /// The store saved to.
    public nonisolated let store: CheckpointStore
    /// Saves running at once, at least 1.
    public nonisolated let maxInFlight: Int
    private let level: CompressionLevel
    private var running = 0
    private var waiting = [CheckedContinuation<Void, Never>]()
    private var handles = [Handle]()

    /// A saver for `store` running at most `maxInFlight` saves at once, at zstd `level`.
    public init(store: CheckpointStore, maxInFlight: Int = 1, level: CompressionLevel = .default) {
        self.store = store
        self.maxInFlight = max(1, maxInFlight)
        self.level = level
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
        let task = Task<PutResult, any Error> {
            defer { Task { await self.finished() } }
            return try await store.save(contents, level: level)
        }
        let handle = Handle(run: contents.run, step: contents.step, task: task)
        handles.append(handle)
        return handle
    }

    private func finished() {
        running -= 1
        if !waiting.isEmpty { waiting.removeFirst().resume() }
    }

    /// Saves not yet committed or failed.
    public var inFlight: Int { running }

    /// Waits for every save started so far; returns their results in the order they were started.
    ///
    /// - Throws: the first error a save threw (the others still ran to completion).
    @discardableResult
    public func finish() async throws -> [PutResult] {
        let pending = handles
        handles.removeAll()
        var results = [PutResult]()
        var firstError: (any Error)?
        for handle in pending {
            do {
                results.append(try await handle.committed())
            } catch {
                if firstError == nil { firstError = error }
            }
        }
        if let firstError { throw firstError }
        return results
    }
}
