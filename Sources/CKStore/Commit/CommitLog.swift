import Foundation

/// The commit points of a store's checkpoints, kept where a rebuild from the packs can see them: one small
/// file per checkpoint, `commits/<run key>/<step>`, naming the checkpoint's id and content.
///
/// ``Committer`` alone writes and removes records: after the catalogue transaction that records the
/// checkpoint and before the commit reports success; the record is created with `link(2)` onto its final name, so of two writers of the same
/// run and step exactly one succeeds. A catalogue rebuilt from the packs holds exactly the checkpoints these
/// records name (less those a removal annotation deleted): a manifest left by a killed put, a put refused as
/// a conflict, the loser of a race or a pack copied in from elsewhere has no record and does not come back
/// (I-9). The run key is the first 16 bytes of the run name's SHA-256, so any run name makes a short,
/// safe folder name; the record itself holds the name.
struct CommitLog {
    let layout: StoreLayout
    /// The records' folder: `commits/`, or another while it is being filled.
    let root: String

    init(layout: StoreLayout, root: String? = nil) {
        self.layout = layout
        self.root = root ?? layout.commitsRoot
    }

    /// One checkpoint's commit record.
    struct Record: Codable, Sendable, Equatable {
        var id: CheckpointID
        var run: String
        var step: Int64
        /// The manifest's digest without its creation time and parent: what says whether two puts of one
        /// run and step stored the same content.
        var content: ChunkDigest
        var createdAt: Double
        /// A shard record's shard (its id is then the shard manifest's).
        var shard: ShardSpec?
    }

    /// The records of committed shards whose checkpoint is pending: `shards/<run key>/<step>/<I>-of-<N>`,
    /// written as commit records are, and removed once the checkpoint's own record exists.
    static func shards(layout: StoreLayout) -> CommitLog {
        CommitLog(layout: layout, root: layout.root + "/shards")
    }

    /// Whether this store keeps commit records (every store made or opened read-write since they exist).
    var isKept: Bool { FileSystem.isDirectory(root) }

    func folder(run: String) -> String { root + "/" + Self.runKey(run) }

    /// The folder name of a run's records, locally and in a remote's `commits/`.
    static func runKey(_ run: String) -> String {
        Array(SHA256Hasher.digest(Array(run.utf8)).bytes.prefix(16)).hexString
    }

    func path(run: String, step: Int64, shard: ShardSpec? = nil) -> String {
        folder(run: run) + "/" + String(step) + (shard.map { "/\($0.index)-of-\($0.count)" } ?? "")
    }

    /// The shard record of `shard` of `run` at `step`, if there is one.
    func record(run: String, step: Int64, shard: ShardSpec) throws -> Record? {
        try read(path(run: run, step: step, shard: shard))
    }

    /// The record of `run` at `step`, if there is one.
    func record(run: String, step: Int64) throws -> Record? {
        try read(path(run: run, step: step))
    }

    /// Every record in the store. A record or folder removed while they are listed (a concurrent `rm`, gc
    /// or combine) is left out, not an error.
    func records() throws -> [Record] {
        guard isKept else { return [] }
        var out = [Record]()
        for folder in try Self.names(in: root) where FileSystem.isDirectory(root + "/" + folder) {
            for name in try Self.names(in: root + "/" + folder) where Int64(name) != nil {
                let path = root + "/" + folder + "/" + name
                if FileSystem.isDirectory(path) {
                    // Shard records: one folder per step.
                    for shard in try Self.names(in: path) where shard.contains("-of-") {
                        if let record = try read(path + "/" + shard) { out.append(record) }
                    }
                } else if let record = try read(path) {
                    out.append(record)
                }
            }
        }
        return out
    }

    /// The names in `folder`, or none once it is gone.
    private static func names(in folder: String) throws -> [String] {
        do {
            return try FileSystem.contents(of: folder)
        } catch where !FileSystem.exists(folder) {
            return []
        }
    }

    /// The record at `path`, or nil when there is none. A record removed between the look and the open (a
    /// concurrent `rm` or gc) is absent too, not an error.
    func read(_ path: String) throws -> Record? {
        guard FileSystem.exists(path) else { return nil }
        let file: SystemFile
        do {
            file = try SystemFile.openForReading(path)
        } catch where !FileSystem.exists(path) {
            return nil
        }
        let bytes = try file.read(count: Int(try file.size()), at: 0)
        do {
            return try StoredJSON.decoder().decode(Record.self, from: Data(bytes))
        } catch {
            throw CKStoreError(.damaged, "commit record \(path) cannot be read: \(error); run `ckstore repair`")
        }
    }
}
