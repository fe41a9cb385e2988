import Foundation

/// Where things live in a remote, below its prefix. A remote is a self-sufficient store: a machine with only
/// its URL and credentials can list, verify and restore from it.
///
/// ```
/// ckstore-remote.json         what this is: {"format": "ckstore-remote", "version": 1}
/// packs/ab/<sha256>           packs in the local pack format, named by the SHA-256 of their bytes
/// index/<sha256>              index objects: where each frame of one push's packs is (JSON)
/// commits/<run key>/<step>    commit objects, the commit points, each written last by a conditional create
/// shards/<run key>/<step>/<I>-of-<N>   shard objects: shard I of a checkpoint of N shards, committed;
///                             the checkpoint's commit object follows once all N are there
/// gc/pending                  what remote gc condemned, and when (the first phase of its two)
/// gc/lease                    the lease of the one gc running
/// ```
///
/// Every object but `gc/*` is immutable and content-named or a commit point; nothing on the push or pull
/// path lists the bucket except to learn what other machines committed (see ``RemoteCache``).
enum RemoteLayout {
    static let marker = "ckstore-remote.json"
    static let packsPrefix = "packs/"
    static let indexPrefix = "index/"
    static let commitsPrefix = "commits/"
    static let shardsPrefix = "shards/"
    static let pending = "gc/pending"
    static let lease = "gc/lease"

    static func pack(_ name: String) -> String { packsPrefix + name.prefix(2) + "/" + name }
    static func index(_ name: String) -> String { indexPrefix + name }
    static func commits(run: String) -> String { commitsPrefix + CommitLog.runKey(run) + "/" }
    static func commit(run: String, step: Int64) -> String { commits(run: run) + String(step) }
    static func shards(run: String, step: Int64) -> String { shardsPrefix + CommitLog.runKey(run) + "/" + String(step) + "/" }
    static func shard(run: String, step: Int64, shard: ShardSpec) -> String { shards(run: run, step: step) + "\(shard.index)-of-\(shard.count)" }

    /// The name of a pack or index object from its key.
    static func name(ofKey key: String) -> String { String(key.split(separator: "/").last ?? "") }
}

/// `ckstore-remote.json`.
struct RemoteMarker: Codable, Equatable {
    var format = "ckstore-remote"
    var version = 1
}

/// One frame as an index object lists it, in its wire form: one-letter keys, `i` absent when empty.
typealias RemoteFrame = PackedFrame

/// An index object: the frames of the packs one push uploaded. Its name is the SHA-256 of its bytes.
struct RemoteIndex: Codable, Sendable {
    struct Pack: Codable, Sendable {
        var name: String
        var size: Int64
        var frames: [RemoteFrame]
    }

    var format = 1
    var packs: [Pack]

    /// The packs and their frames, as the catalogue caches them.
    var frames: [(name: String, frames: [PackedFrame])] { packs.map { ($0.name, $0.frames) } }
}

/// A commit object, `commits/<run key>/<step>`: a checkpoint is on the remote when this exists. It names
/// the index objects that locate every frame the checkpoint needs (its manifest, chunks and their delta
/// bases), and carries what `ls` and remote retention need without reading the manifest: the checkpoint
/// as the store it was put into lists it, its fields written beside the object's own in one JSON object.
/// Those fields read through the commit (`commit.run`).
@dynamicMemberLookup
public struct RemoteCommit: Codable, Sendable, Equatable {
    public var format = 1
    /// The checkpoint as the store it was pushed from listed it, not pinned, its dropped parts those below.
    public var checkpoint: CheckpointSummary
    /// The manifest's digest without its time: two commits of one run and step hold the same checkpoint
    /// when these agree.
    public var content: ChunkDigest
    /// Index objects that together locate every frame of the closure.
    var indexes: [String]
    /// Files and tensors a part rule dropped before the push (path → part; path → tensor names).
    public internal(set) var droppedFiles: [String: String]
    var droppedTensors: [String: [String]]
    /// For a checkpoint combined from shards: each shard's content (a later push of a shard is a no-op
    /// when its content agrees).
    public var shards: [ShardContent]?

    public subscript<T>(dynamicMember field: KeyPath<CheckpointSummary, T>) -> T { checkpoint[keyPath: field] }

    /// The checkpoint as `ls` lists it.
    public var summary: CheckpointSummary { checkpoint }

    private enum CodingKeys: String, CodingKey {
        case format, content, indexes, droppedFiles, droppedTensors, shards
    }

    public func encode(to encoder: any Encoder) throws {
        try checkpoint.encode(to: encoder)
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(format, forKey: .format)
        try container.encode(content, forKey: .content)
        try container.encode(indexes, forKey: .indexes)
        try container.encode(droppedFiles, forKey: .droppedFiles)
        try container.encode(droppedTensors, forKey: .droppedTensors)
        try container.encodeIfPresent(shards, forKey: .shards)
    }
}

extension RemoteCommit {
    /// The commit of `checkpoint`, which it records unpinned and with the parts `droppedFiles` and
    /// `droppedTensors` name as dropped.
    init(_ checkpoint: CheckpointSummary, content: ChunkDigest, indexes: [String], droppedFiles: [String: String] = [:],
         droppedTensors: [String: [String]] = [:], shards: [ShardContent]?) {
        var checkpoint = checkpoint
        checkpoint.pinned = false
        checkpoint.droppedParts = Array(Set(droppedFiles.values).union(droppedTensors.isEmpty ? [] : [CheckpointPart.optimizer.rawValue])).sorted()
        self.init(checkpoint: checkpoint, content: content, indexes: indexes, droppedFiles: droppedFiles, droppedTensors: droppedTensors, shards: shards)
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.init(try CheckpointSummary(from: decoder), content: try container.decode(ChunkDigest.self, forKey: .content),
                  indexes: try container.decode([String].self, forKey: .indexes),
                  droppedFiles: try container.decode([String: String].self, forKey: .droppedFiles),
                  droppedTensors: try container.decode([String: [String]].self, forKey: .droppedTensors),
                  shards: try container.decodeIfPresent([ShardContent].self, forKey: .shards))
        format = try container.decode(Int.self, forKey: .format)
    }
}

enum RemoteJSON {
    static func encode(_ value: some Encodable) throws -> [UInt8] {
        Array(try StoredJSON.encoder().encode(value))
    }

    static func decode<T: Decodable>(_ type: T.Type, _ bytes: [UInt8], what: String) throws -> T {
        do {
            return try StoredJSON.decoder().decode(type, from: Data(bytes))
        } catch {
            throw CKStoreError(.damaged, "\(what) is not a valid ckstore object: \(error)")
        }
    }
}

/// Builds a pack in memory, in the local pack format, from frames copied as stored: what a push uploads.
struct PackImage {
    private(set) var bytes: [UInt8]
    private(set) var frames: [RemoteFrame] = []
    private var headers: [PackWriter.WrittenFrame] = []

    /// An empty pack in `storage`'s memory (a finished pack's, once uploaded), which then holds at least
    /// `capacity` bytes: a push reuses a few buffers instead of faulting in fresh pages for every pack.
    init(reusing storage: [UInt8] = [], capacity: Int) {
        bytes = storage
        bytes.removeAll(keepingCapacity: true)
        bytes.reserveCapacity(capacity)
        bytes += PackFormat.fileHeader()
        // The reserved word of the header gets random bits: two pushes of the same frames make different
        // packs, so a pack remote gc condemned is never re-uploaded under its old name.
        let salt = UInt32.random(in: 0...UInt32.max)
        bytes.replaceSubrange(12..<16, with: withUnsafeBytes(of: salt.littleEndian, Array.init))
    }

    var count: Int { bytes.count }
    var isEmpty: Bool { frames.isEmpty }

    /// Appends a frame as stored (its header and payload, already checked by the caller).
    mutating func append(header: FrameHeader, payload: UnsafeRawBufferPointer) {
        let offset = Int64(bytes.count)
        bytes += header.serialized()
        bytes.append(contentsOf: payload)
        frames.append(RemoteFrame(header, offset: offset))
        headers.append(PackWriter.WrittenFrame(offset: offset, header: header))
    }

    /// The finished pack (frames, trailer and footer), in this image's memory, not a copy of it; the image
    /// is empty afterwards.
    mutating func seal() -> [UInt8] {
        bytes += PackFormat.trailerAndFooter(headers, trailerOffset: Int64(bytes.count))
        defer { bytes = [] }
        return bytes
    }
}
