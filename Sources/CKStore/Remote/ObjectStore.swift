import Foundation

/// An object in a remote: its key (relative to the remote's prefix), size and last modification time.
public struct ObjectInfo: Sendable, Hashable {
    /// The key below the remote's prefix (`packs/…`, `commits/…`).
    public var key: String
    /// Bytes.
    public var size: Int64
    /// Unix seconds.
    public var lastModified: Double

    public init(key: String, size: Int64, lastModified: Double) {
        self.key = key
        self.size = size
        self.lastModified = lastModified
    }
}

/// What a remote must offer: the five S3 operations ckstore uses, with the semantics S3 gives them.
///
/// Keys are relative to the remote's prefix and use `/` as separator. Implementations: ``FileObjectStore``
/// (`file://`, a shared or network file system) and the S3 transport of the `CKStoreS3` module. Errors
/// are ``CKStoreError``s: `notFound` for a key that does not exist, `remote` for a refused request (naming
/// the remote and the HTTP status) and `ioFailure` for a transport that failed; a transport retries what
/// is worth retrying (5xx, timeouts, resets) before it throws.
public protocol ObjectStore: Sendable {
    /// The remote as people name it (`s3://bucket/prefix`, `file:///path`), for messages.
    var description: String { get }

    /// The object's bytes, or the bytes in `range` of it.
    ///
    /// - Throws: `notFound` when the key does not exist.
    func get(_ key: String, range: Range<Int64>?) async throws -> [UInt8]

    /// Writes an object. With `ifAbsent`, the write is a conditional create (`If-None-Match: *`): of two
    /// writers of the same key exactly one succeeds.
    ///
    /// - Returns: false only when `ifAbsent` is set and the key exists already (nothing was written).
    func put(_ key: String, _ body: [UInt8], ifAbsent: Bool) async throws -> Bool

    /// Writes an object whose SHA-256 (lowercase hex) the caller has computed: a transport that sends a
    /// body's digest (S3's `x-amz-content-sha256`) uses it instead of hashing the body again. Unconditional.
    func put(_ key: String, _ body: [UInt8], sha256: String) async throws

    /// The object's size and time, or nil when it does not exist.
    func head(_ key: String) async throws -> ObjectInfo?

    /// Deletes an object; deleting a key that does not exist is not an error.
    func delete(_ key: String) async throws

    /// Every object whose key starts with `prefix`, in key order.
    func list(prefix: String) async throws -> [ObjectInfo]
}

/// An upload in parts that was started and never completed or aborted: its parts cost storage until
/// it is aborted.
public struct IncompleteUpload: Sendable, Hashable {
    /// The key below the remote's prefix.
    public var key: String
    public var uploadID: String
    /// Unix seconds.
    public var initiated: Double

    public init(key: String, uploadID: String, initiated: Double) {
        self.key = key
        self.uploadID = uploadID
        self.initiated = initiated
    }
}

/// A transport that uploads large objects in parts (S3): remote gc lists the uploads a killed push left
/// and aborts the old ones.
public protocol MultipartObjectStore: ObjectStore {
    /// The incomplete multipart uploads of keys that start with `prefix`.
    func incompleteUploads(prefix: String) async throws -> [IncompleteUpload]
    /// Aborts one, freeing its parts; an upload that is gone already is not an error.
    func abortUpload(_ upload: IncompleteUpload) async throws
}

extension ObjectStore {
    /// The whole object.
    public func get(_ key: String) async throws -> [UInt8] { try await get(key, range: nil) }

    /// A transport that sends no digest has no use for it.
    public func put(_ key: String, _ body: [UInt8], sha256: String) async throws {
        _ = try await put(key, body, ifAbsent: false)
    }

    /// The object, or nil when it does not exist.
    func getIfPresent(_ key: String, range: Range<Int64>? = nil) async throws -> [UInt8]? {
        do {
            return try await get(key, range: range)
        } catch let error as CKStoreError where error.code == .notFound {
            return nil
        }
    }
}

/// A remote in a folder: a shared or network file system (`file:///mnt/shared/ckstore`), through the same
/// code path as S3.
///
/// Objects are files below the root. A write goes to a temporary file, is fsynced and renamed into place
/// (so readers never see a partial object); a conditional create uses link(2), which fails when the name
/// exists, the file-system form of `If-None-Match: *`.
public struct FileObjectStore: ObjectStore {
    public let root: String

    public init(root: String) {
        self.root = root.count > 1 && root.hasSuffix("/") ? String(root.dropLast()) : root
    }

    public var description: String { "file://" + root }

    private func path(_ key: String) throws -> String {
        guard !key.isEmpty, !key.hasPrefix("/"), !key.split(separator: "/", omittingEmptySubsequences: false).contains(where: { $0 == ".." || $0 == "." || $0.isEmpty }) else {
            throw CKStoreError(.internalInvariant, "object key \(key) is not a relative path")
        }
        return root + "/" + key
    }

    public func get(_ key: String, range: Range<Int64>?) async throws -> [UInt8] {
        let file: SystemFile
        do {
            file = try SystemFile.openForReading(try path(key))
        } catch let error as CKStoreError where error.code == .notFound {
            throw CKStoreError(.notFound, "\(description): no object \(key)", cause: error)
        }
        let size = try file.size()
        let wanted = range ?? 0..<size
        guard wanted.lowerBound >= 0, wanted.upperBound <= size else {
            throw CKStoreError(.remote, "\(description): range \(wanted) of \(key) is outside its \(size) bytes")
        }
        return try file.read(count: Int(wanted.count), at: wanted.lowerBound)
    }

    public func put(_ key: String, _ body: [UInt8], ifAbsent: Bool) async throws -> Bool {
        let destination = try path(key)
        let folder = (destination as NSString).deletingLastPathComponent
        if !FileSystem.isDirectory(folder) { try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true) }
        let temporary = folder + "/.tmp-" + UUID().uuidString
        let file = try SystemFile.createNew(temporary)
        do {
            try file.write(body, at: 0)
            try file.sync()
            if ifAbsent {
                defer { try? FileSystem.removeFile(temporary) }
                guard try FileSystem.linkExclusively(temporary, destination) else { return false }
            } else {
                try FileSystem.rename(temporary, destination)
            }
            try FileSystem.syncDirectory(folder)
            return true
        } catch {
            try? FileSystem.removeFile(temporary)
            throw error
        }
    }

    public func head(_ key: String) async throws -> ObjectInfo? {
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: try path(key)) else { return nil }
        let size = (attributes[.size] as? NSNumber)?.int64Value ?? 0
        let modified = (attributes[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
        return ObjectInfo(key: key, size: size, lastModified: modified)
    }

    public func delete(_ key: String) async throws {
        let target = try path(key)
        do {
            try FileSystem.removeFile(target)
        } catch let error as CKStoreError where error.code == .notFound {
            return
        }
    }

    public func list(prefix: String) async throws -> [ObjectInfo] {
        // The folder part of the prefix is walked; the rest filters names.
        let slash = prefix.lastIndex(of: "/")
        let folderKey = slash.map { String(prefix[..<$0]) } ?? ""
        let start = folderKey.isEmpty ? root : root + "/" + folderKey
        var out = [ObjectInfo]()
        guard let walker = FileManager.default.enumerator(atPath: start) else { return [] }
        while let relative = walker.nextObject() as? String {
            let key = folderKey.isEmpty ? relative : folderKey + "/" + relative
            guard key.hasPrefix(prefix), !(relative as NSString).lastPathComponent.hasPrefix(".tmp-") else { continue }
            guard let attributes = walker.fileAttributes, attributes[.type] as? FileAttributeType == .typeRegular else { continue }
            let size = (attributes[.size] as? NSNumber)?.int64Value ?? 0
            let modified = (attributes[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
            out.append(ObjectInfo(key: key, size: size, lastModified: modified))
        }
        return out.sorted { $0.key < $1.key }
    }
}
