/// Where things live inside a store folder (DESIGN.md, "On disk").
struct StoreLayout: Sendable {
    /// The store's root folder.
    let root: String

    var cataloguePath: String { root + "/ckstore.db" }
    var packsRoot: String { root + "/packs" }
    var temporaryRoot: String { root + "/tmp" }
    var lockPath: String { root + "/lock" }
    /// The commit lock (``CommitLock``): orders commits against the check that every commit is listed.
    var commitLockPath: String { root + "/lock.commit" }
    var quarantineRoot: String { root + "/quarantine" }
    /// Space kept back for a full disk (``CheckpointStore/reserveBytes``).
    var reservePath: String { root + "/reserve" }
    /// Commit records: the durable commit point of every checkpoint (``CommitLog``).
    var commitsRoot: String { root + "/commits" }

    func packFolder(_ id: PackID) -> String { packsRoot + "/" + id.hex.prefix(2) }
    func packPath(_ id: PackID) -> String { root + "/" + id.relativePath }
    func temporaryPackPath(_ id: PackID) -> String { temporaryRoot + "/" + id.hex + ".pack" }
}
