/// A zstd compression level (1 … 19; negative levels are zstd's fast modes).
public struct CompressionLevel: Hashable, Sendable, CustomStringConvertible {
    /// The zstd level.
    public var rawValue: Int32

    /// The level ckstore uses when none is given.
    public static let `default` = CompressionLevel(unchecked: 1)

    /// Creates a level; nil if zstd would not accept it.
    public init?(_ value: Int) {
        guard (-7...19).contains(value), value != 0 else { return nil }
        rawValue = Int32(value)
    }

    private init(unchecked value: Int32) { rawValue = value }

    public var description: String { String(rawValue) }
}
