/// This ckstore's version and the versions of the formats it reads and writes: what `ckstore version
/// --json` prints, and what the Python package and remotes check before they trust a binary or a store.
public enum CKStoreVersion {
    /// The release, as `ckstore --version` prints it.
    public static let release = "0.9.0"
    /// The pack file format (the header's version field).
    public static var packFormat: Int { Int(PackFormat.formatVersion) }
    /// The manifest format: manifests up to this are read, this is written.
    public static var manifestFormat: Int { Manifest.currentFormat }
    /// The catalogue schema (`PRAGMA user_version`): catalogues up to this are opened (older ones are
    /// migrated), this is written.
    public static var catalogueSchema: Int { Schema.currentVersion }
    /// Frame encodings this ckstore decodes, by number.
    public static var frameEncodings: [Int] { FrameEncoding.allCases.map { Int($0.rawValue) } }
}
