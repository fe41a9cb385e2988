/// Which part of a checkpoint written by many ranks a put holds: shard `index` of `count` (`--shard I/N`,
/// indexes from 0, as ranks are numbered).
public struct ShardSpec: Codable, Sendable, Hashable, CustomStringConvertible {
    /// The shard's index, `0 ..< count`: the rank that wrote it.
    public var index: Int
    /// How many shards the checkpoint has: the world size that wrote it.
    public var count: Int

    /// The most shards one checkpoint may have.
    public static let maximumCount = 1 << 16

    /// Shard `index` of `count`.
    /// - Throws: ``CKStoreError/Code/invalidArgument`` unless `0 <= index < count <= maximumCount`.
    public init(index: Int, count: Int) throws(CKStoreError) {
        guard count >= 1, count <= Self.maximumCount, index >= 0, index < count else {
            throw CKStoreError(.invalidArgument, "shard \(index)/\(count) is not a shard: give I/N with 0 <= I < N <= \(Self.maximumCount)")
        }
        self.index = index
        self.count = count
    }

    /// Parses `I/N`.
    public init(parsing text: String) throws(CKStoreError) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let index = Int(parts[0]), let count = Int(parts[1]) else {
            throw CKStoreError(.invalidArgument, "\(text.debugDescription) is not a shard: give I/N, such as 0/8 for rank 0 of 8")
        }
        try self.init(index: index, count: count)
    }

    public var description: String { "\(index)/\(count)" }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let index = try container.decode(Int.self, forKey: .index), count = try container.decode(Int.self, forKey: .count)
        do {
            try self.init(index: index, count: count)
        } catch {
            throw DecodingError.dataCorruptedError(forKey: .index, in: container, debugDescription: error.message)
        }
    }

    enum CodingKeys: String, CodingKey { case index, count }
}

/// One shard of a combined checkpoint: what its rank's put held, by content.
public struct ShardContent: Codable, Sendable, Equatable {
    /// The shard's index.
    public var index: Int
    /// Its shard manifest's content digest (``Manifest/contentDigest()``): a later put of the same shard
    /// is a no-op when it agrees, a conflict when it does not.
    public var content: ChunkDigest
}
