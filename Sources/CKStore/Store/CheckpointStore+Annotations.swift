import Foundation

extension CheckpointStore {
    /// Deletes checkpoints explicitly; pinned ones only with `force`. Their chunks stay until `gc`.
    public func remove(_ ids: [CheckpointID], force: Bool = false) throws {
        try checkRemovable(ids, force: force)
        let removed = try ids.map { try summary(of: $0) }.map { (id: $0.id, run: $0.run, step: $0.step) }
        try Committer(catalogue: catalogue, layout: layout).withdraw(removed) {
            try annotations.commit(ids.map { .remove($0) }) { catalogue in
                for id in ids { try catalogue.deleteCheckpoint(id) }
            }
        }
    }

    /// Throws `notFound` for an id that is not a checkpoint, `invalidArgument` for a pinned one unless `force`.
    func checkRemovable(_ ids: [CheckpointID], force: Bool) throws {
        try withCatalogue { catalogue in
            for id in ids {
                guard try catalogue.summary(of: id) != nil else { throw CKStoreError(.notFound, "no checkpoint \(id.short)") }
                if try catalogue.isPinned(id) && !force {
                    throw CKStoreError(.invalidArgument, "checkpoint \(id.short) is pinned; unpin it or pass --force to remove it")
                }
            }
        }
    }

    /// Pins or unpins a checkpoint.
    public func setPinned(_ id: CheckpointID, _ pinned: Bool) throws {
        try annotations.commit([.pin(id, pinned: pinned)]) { try $0.setPinned(id, pinned) }
    }

    /// Adds or removes a tag.
    public func setTag(_ id: CheckpointID, _ tag: String, present: Bool) throws {
        guard !tag.isEmpty else { throw CKStoreError(.invalidArgument, "a tag may not be empty") }
        try annotations.commit([.tag(id, tag: tag, present: present)]) { try $0.setTag(id, tag, present) }
    }

    /// Stores the policy of `run`, or the store default when `run` is nil.
    public func setPolicy(_ policy: RetentionPolicy, run: String?) throws {
        if let run { try Self.validateRunName(run) }
        try annotations.commit([.policy(scope: run ?? "*", policy: policy)]) { try $0.setPolicy(policy, scope: run ?? "*") }
    }

    /// Removes the policy of `run` (or the default); returns whether there was one.
    public func clearPolicy(run: String?) throws -> Bool {
        guard try withCatalogue({ try $0.policy(scope: run ?? "*") }) != nil else { return false }
        return try annotations.commit([.policy(scope: run ?? "*", policy: nil)]) { try $0.clearPolicy(scope: run ?? "*") }
    }

    /// The policy that applies to `run` and where it comes from; the store default when `run` is nil.
    public func policy(run: String?) throws -> (RetentionPolicy, source: PolicySource) {
        try withCatalogue { catalogue in
            if let run { return try catalogue.effectivePolicy(run: run) }
            return (try catalogue.policy(scope: "*") ?? RetentionPolicy(), .default)
        }
    }

    /// Runs that have a policy of their own.
    public func runsWithPolicies() throws -> [String] {
        try withCatalogue { try $0.policyScopes().filter { $0 != "*" } }
    }

    /// Files a part rule dropped from a checkpoint (path → part).
    public func droppedFiles(of id: CheckpointID) throws -> [String: String] {
        try withCatalogue { try $0.droppedFiles(of: id) }
    }

    /// Whether a checkpoint is pinned.
    public func isPinned(_ id: CheckpointID) throws -> Bool {
        try withCatalogue { try $0.isPinned(id) }
    }
}
