/// Where the retention policy that applies to a run comes from. Written as its name in JSON
/// (`"source": "run"`), which `policy show --json` and the Python package read.
public enum PolicySource: String, Sendable, Codable, CustomStringConvertible {
    /// The run has a policy of its own.
    case run
    /// The run has none, and the store-wide default applies (or: this is the default itself).
    case `default`
    /// Neither the run nor the store has one: everything is kept.
    case none

    public var description: String { rawValue }
}
