/// A shard committed to a store while the other shards of its checkpoint are not all there yet.
public struct PendingShard: Codable, Sendable, Equatable {
    /// The shard manifest's id (the SHA-256 of its bytes).
    public var id: CheckpointID
    public var run: String
    public var step: Int64
    public var shard: ShardSpec
    /// The shard manifest's content digest, without its time and parent.
    public var content: ChunkDigest
    /// Seconds since 1970, UTC.
    public var createdAt: Double
    public var logicalBytes: Int64
    /// Frame bytes the shard's put added to the store.
    public var storedBytesAdded: Int64
}

/// A checkpoint some of whose shards are committed: `ls --pending` lists these. It is never listed,
/// resolved or retained as a checkpoint until every shard is there.
public struct PendingCheckpoint: Codable, Sendable, Equatable {
    public var run: String
    public var step: Int64
    /// How many shards the checkpoint has.
    public var shardCount: Int
    /// The shards committed so far, by index.
    public var shards: [PendingShard]
    /// The shard indexes still missing.
    public var missing: [Int]
    /// When its oldest shard was committed: what `verify` and `gc` measure its age by.
    public var createdAt: Double
    public var logicalBytes: Int64

    /// How old a pending checkpoint may get before `verify` reports it and `gc` removes it: 24 hours.
    public static let defaultMaximumAge: Double = 24 * 3600

    /// Every shard's manifest id.
    var shardIDs: [CheckpointID] { shards.map(\.id) }

    /// Groups shards by run, step and shard count (two counts at one step are two pending checkpoints,
    /// of which at most one can ever complete).
    static func grouping(_ shards: [PendingShard]) -> [PendingCheckpoint] {
        Dictionary(grouping: shards) { "\($0.run)\u{0}\($0.step)\u{0}\($0.shard.count)" }.values.map { group in
            let sorted = group.sorted { $0.shard.index < $1.shard.index }
            let count = sorted[0].shard.count
            return PendingCheckpoint(
                run: sorted[0].run, step: sorted[0].step, shardCount: count, shards: sorted,
                missing: Array(Set(0..<count).subtracting(sorted.map(\.shard.index))).sorted(),
                createdAt: sorted.map(\.createdAt).min() ?? 0, logicalBytes: sorted.reduce(0) { $0 + $1.logicalBytes })
        }.sorted { ($0.run, $0.step, $0.shardCount) < ($1.run, $1.step, $1.shardCount) }
    }
}
