import Synchronization

/// What a restore knows about the chunks it reads, shared by its tasks: which it re-hashed already, and
/// one read shared by every use of a chunk that occurs more than once (a zero-filled chunk used a hundred
/// times is decoded once), its bytes kept until the last use, up to `budget` bytes at a time.
final class RestoreChunks: Sendable {
    private struct State {
        var verified = Set<ChunkDigest>()
        /// Uses still to come of chunks used more than once.
        var remainingUses: [ChunkDigest: Int]
        var shared = [ChunkDigest: (read: Task<ChunkBytes, any Error>, length: Int)]()
        var sharedBytes = 0
    }

    private let state: Mutex<State>
    private let budget: Int

    init(_ outputs: [RestorePlan.Output], budget: Int = 32 << 20) {
        var uses = [ChunkDigest: Int]()
        for output in outputs {
            for chunk in output.chunks { uses[chunk.digest, default: 0] += 1 }
        }
        state = Mutex(State(remainingUses: uses.filter { $0.value > 1 }))
        self.budget = budget
    }

    /// The bytes of the chunk at `location`, from `read` (told what to check) or from another use's read.
    ///
    /// The first read of a chunk re-hashes its decoded bytes; a later one (a raw frame, which is read in
    /// place and not worth keeping, or a chunk over the budget) checks its frames' checksums, which proves
    /// the stored bytes are the ones that hashed right and so decode the same way.
    func bytes(at location: ChunkLocation, read: @escaping @Sendable (ChunkChecks) throws -> ChunkBytes) async throws -> ChunkBytes {
        enum Plan {
            case shared(Task<ChunkBytes, any Error>)
            case alone(ChunkChecks)
        }
        let digest = location.digest
        let plan = state.withLock { state -> Plan in
            defer { countUse(of: digest, in: &state) }
            if let shared = state.shared[digest] { return .shared(shared.read) }
            if (state.remainingUses[digest] ?? 0) > 1, location.encoding != .raw, state.sharedBytes + location.rawLength <= budget {
                let task = Task { try read(.digest) }
                state.shared[digest] = (task, location.rawLength)
                state.sharedBytes += location.rawLength
                return .shared(task)
            }
            return .alone(state.verified.contains(digest) ? .checksums : .digest)
        }
        switch plan {
        case .shared(let task):
            return try await task.value
        case .alone(let checks):
            let bytes = try read(checks)
            if checks.contains(.digest) { _ = state.withLock { $0.verified.insert(digest) } }
            return bytes
        }
    }

    private func countUse(of digest: ChunkDigest, in state: inout State) {
        guard let remaining = state.remainingUses[digest] else { return }
        if remaining > 1 {
            state.remainingUses[digest] = remaining - 1
            return
        }
        state.remainingUses[digest] = nil
        if let shared = state.shared.removeValue(forKey: digest) { state.sharedBytes -= shared.length }
    }
}
