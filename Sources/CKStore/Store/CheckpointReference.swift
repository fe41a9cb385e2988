/// How a user names a checkpoint: `<id-prefix>`, `RUN@STEP`, `RUN@latest` or `RUN@latest-valid`.
public enum CheckpointReference: Sendable, Equatable, CustomStringConvertible {
    /// A full id or a prefix of at least ``minimumPrefixLength`` hex characters.
    case idPrefix(String)
    case step(run: String, step: Int64)
    case latest(run: String)
    /// The newest checkpoint of the run that passes a full verification of what it needs.
    case latestValid(run: String)

    /// The shortest id prefix accepted, so that a prefix stays unique in large stores.
    public static let minimumPrefixLength = 8

    /// Parses a reference as the CLI accepts it.
    ///
    /// - Throws: ``CKStoreError/Code/invalidArgument`` for anything else, saying what is accepted.
    public init(parsing text: String) throws {
        if let at = text.lastIndex(of: "@") {
            let run = String(text[..<at])
            let selector = String(text[text.index(after: at)...])
            guard !run.isEmpty else { throw CKStoreError(.invalidArgument, "reference \(text): the run name before @ is empty") }
            if selector == "latest" {
                self = .latest(run: run)
            } else if selector == "latest-valid" {
                self = .latestValid(run: run)
            } else if let step = Int64(selector), step >= 0 {
                self = .step(run: run, step: step)
            } else {
                throw CKStoreError(.invalidArgument, "reference \(text): after @ comes a step number, `latest` or `latest-valid`, not \(selector)")
            }
            return
        }
        let isHex = !text.isEmpty && text.allSatisfy { $0.isHexDigit }
        guard isHex, text.count >= Self.minimumPrefixLength, text.count <= 64 else {
            throw CKStoreError(
                .invalidArgument,
                "reference \(text) is neither a checkpoint id (at least \(Self.minimumPrefixLength) hex characters) nor RUN@STEP nor RUN@latest"
            )
        }
        self = .idPrefix(text.lowercased())
    }

    public var description: String {
        switch self {
        case .idPrefix(let prefix): prefix
        case .step(let run, let step): "\(run)@\(step)"
        case .latest(let run): "\(run)@latest"
        case .latestValid(let run): "\(run)@latest-valid"
        }
    }
}

extension Catalogue {
    /// Resolves a reference to exactly one checkpoint.
    func resolve(_ reference: CheckpointReference) throws -> CheckpointID {
        switch reference {
        case .idPrefix(let prefix):
            let matches = try checkpoints(withPrefix: prefix)
            if matches.isEmpty { throw CKStoreError(.notFound, "no checkpoint has an id starting with \(prefix)") }
            if matches.count > 1 {
                throw CKStoreError(
                    .ambiguousReference,
                    "id prefix \(prefix) matches \(matches.count == 10 ? "10 or more" : String(matches.count)) checkpoints (\(matches.map(\.short).joined(separator: ", "))); give more characters"
                )
            }
            return matches[0]
        case .step(let run, let step):
            guard try runID(named: run) != nil else { throw CKStoreError(.notFound, "no run named \(run)") }
            guard let found = try checkpoint(run: run, step: step) else {
                let pending = try pendingShards(run: run, step: step)
                if let count = pending.first?.shard.count {
                    throw CKStoreError(.notFound, "run \(run) has no checkpoint at step \(step): it is pending, with \(pending.count) of its \(count) shards committed (`ckstore ls --pending`)")
                }
                throw CKStoreError(.notFound, "run \(run) has no checkpoint at step \(step)")
            }
            return found.id
        case .latest(let run):
            guard let id = try latest(run: run) else { throw CKStoreError(.notFound, "no run named \(run) (or it has no checkpoints)") }
            return id
        case .latestValid(let run):
            throw CKStoreError(.invalidArgument, "\(run)@latest-valid needs the packs verified; use CheckpointStore.checkpoint(for:)")
        }
    }
}
