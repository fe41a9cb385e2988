import Foundation

/// What the remote operations ask of the catalogue's cache of a remote (schema 005; issue 32): when it was
/// last listed, the commit objects and index objects it holds, and where their frames are. Each method
/// is one read or one write transaction.
protocol RemoteCacheQueries: Sendable {
    func remoteSyncTime(_ remote: String) throws -> Double?
    /// What this store learned of the remote's server (`conditional_writes`, `region`).
    func remoteFact(_ remote: String, _ name: String) throws -> String?
    func setRemoteFact(_ remote: String, _ name: String, _ value: String) throws
    /// The cached commit objects' keys and bodies.
    func remoteCommitBodies(_ remote: String) throws -> [(key: String, body: String)]
    /// Records a listing: the commit objects read now, the keys gone since, and the time.
    func recordSync(_ remote: String, fresh: [(key: String, id: CheckpointID, body: String)], gone: Set<String>, at time: Double) throws
    func forgetRemoteCommits(_ remote: String, keys: Set<String>) throws
    func knownRemoteIndexes(_ remote: String) throws -> Set<String>
    func insertRemoteIndex(_ remote: String, name: String, packs: [(name: String, frames: [PackedFrame])]) throws
    func forgetRemoteIndexes(_ remote: String, names: [String]) throws
    /// The packs the index objects `indexes` list.
    func remotePacks(_ remote: String, indexes: [String]) throws -> Set<String>
}

/// What remote gc asks besides the cache: each run's policy and which of its checkpoints are pinned here.
protocol RemoteRetentionQueries: RemoteCacheQueries {
    func retention(run: String, pinnedAmong ids: [CheckpointID]) throws -> (policy: RetentionPolicy, pinned: Set<CheckpointID>)
}

extension LockedCatalogue: RemoteRetentionQueries {
    func remoteSyncTime(_ remote: String) throws -> Double? {
        try with { try $0.remoteSyncTime(remote) }
    }

    func remoteFact(_ remote: String, _ name: String) throws -> String? {
        try with { try $0.remoteFact(remote, name) }
    }

    func setRemoteFact(_ remote: String, _ name: String, _ value: String) throws {
        try with { catalogue in try catalogue.write { try catalogue.setRemoteFact(remote, name, value) } }
    }

    func remoteCommitBodies(_ remote: String) throws -> [(key: String, body: String)] {
        try with { try $0.remoteCommitBodies(remote) }
    }

    func recordSync(_ remote: String, fresh: [(key: String, id: CheckpointID, body: String)], gone: Set<String>, at time: Double) throws {
        try with { catalogue in
            try catalogue.write {
                for (key, id, body) in fresh { try catalogue.setRemoteCommit(remote, key: key, id: id, body: body) }
                for key in gone { try catalogue.forgetRemoteCommit(remote, key: key) }
                try catalogue.setRemoteSyncTime(remote, time)
            }
        }
    }

    func forgetRemoteCommits(_ remote: String, keys: Set<String>) throws {
        try with { catalogue in try catalogue.write { for key in keys { try catalogue.forgetRemoteCommit(remote, key: key) } } }
    }

    func knownRemoteIndexes(_ remote: String) throws -> Set<String> {
        try with { try $0.knownRemoteIndexes(remote) }
    }

    func insertRemoteIndex(_ remote: String, name: String, packs: [(name: String, frames: [PackedFrame])]) throws {
        try with { catalogue in try catalogue.write { try catalogue.insertRemoteIndex(remote, name: name, packs: packs) } }
    }

    func forgetRemoteIndexes(_ remote: String, names: [String]) throws {
        try with { catalogue in try catalogue.write { try catalogue.forgetRemoteIndexes(remote, names) } }
    }

    func remotePacks(_ remote: String, indexes: [String]) throws -> Set<String> {
        try with { try $0.remotePacks(remote, indexes: indexes) }
    }

    func retention(run: String, pinnedAmong ids: [CheckpointID]) throws -> (policy: RetentionPolicy, pinned: Set<CheckpointID>) {
        try with { catalogue in (try catalogue.effectivePolicy(run: run).0, try Set(ids.filter { try catalogue.isPinned($0) })) }
    }
}
