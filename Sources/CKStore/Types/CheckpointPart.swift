/// A part of a checkpoint: what the audit splits bytes by, and what a retention rule can drop while
/// keeping the rest (`--drop optimizer`).
///
/// The three built-in parts are cases; a policy may name more (`policy set --part ema='ema.*'`), each a
/// ``named(_:)`` part. Written and read as its name, so a part is one string in JSON, in annotations and
/// in the catalogue.
public enum CheckpointPart: Hashable, Sendable, Codable, Comparable, CustomStringConvertible, RawRepresentable {
    /// Tensor files that no other part claims: `*.safetensors`, `*.pt`, `*.bin`, `*.pth`, `*.ckpt`.
    case weights
    /// Optimizer state: `optimizer*.pt`, and what the policy's `optimizer` globs name.
    case optimizer
    /// Everything else: configs, trainer state, tokenizer files, manifests.
    case other
    /// A part a retention policy names with globs of its own.
    case named(String)

    public init(rawValue name: String) {
        switch name {
        case "weights": self = .weights
        case "optimizer": self = .optimizer
        case "other": self = .other
        default: self = .named(name)
        }
    }

    public var rawValue: String {
        switch self {
        case .weights: "weights"
        case .optimizer: "optimizer"
        case .other: "other"
        case .named(let name): name
        }
    }

    public var description: String { rawValue }

    /// Built-in parts first, in this order, then named parts by name: the order reports list parts in.
    public static func < (lhs: CheckpointPart, rhs: CheckpointPart) -> Bool {
        func rank(_ part: CheckpointPart) -> Int {
            switch part {
            case .weights: 0
            case .optimizer: 1
            case .other: 2
            case .named: 3
            }
        }
        return (rank(lhs), lhs.rawValue) < (rank(rhs), rhs.rawValue)
    }

    public init(from decoder: any Decoder) throws {
        self.init(rawValue: try decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}
