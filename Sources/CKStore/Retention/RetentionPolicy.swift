import Foundation

/// A run's retention policy: a union of rules; a checkpoint is kept when any rule keeps it.
///
/// An empty policy keeps everything. Whatever the rules, the newest checkpoint of a run (its resume point)
/// and pinned checkpoints are kept.
///
/// ```swift
/// var policy = RetentionPolicy()
/// policy.keepLast = 2
/// policy.keepBest = [.init(count: 1, metric: "loss", order: .min)]
/// policy.keepEvery = 5000
/// ```
public struct RetentionPolicy: Codable, Sendable, Equatable {
    /// Keep the best `count` checkpoints by a metric.
    public struct Best: Codable, Sendable, Hashable, CustomStringConvertible {
        /// Whether smaller or larger values are better.
        public enum Order: String, Codable, Sendable { case min, max }
        /// How many to keep.
        public var count: Int
        /// The metric to rank by.
        public var metric: String
        /// Which end of the ranking is best.
        public var order: Order

        /// A keep-best rule.
        public init(count: Int, metric: String, order: Order) {
            self.count = count
            self.metric = metric
            self.order = order
        }

        /// Parses `N:METRIC:min|max`.
        public init(parsing text: String) throws {
            let parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 3, let count = Int(parts[0]), count > 0, !parts[1].isEmpty, let order = Order(rawValue: parts[2]) else {
                throw CKStoreError(.invalidArgument, "keep-best takes N:METRIC:min or N:METRIC:max (for example 1:loss:min), not \(text)")
            }
            self.init(count: count, metric: parts[1], order: order)
        }

        public var description: String { "\(count):\(metric):\(order.rawValue)" }
    }

    /// Keep the newest N checkpoints.
    public var keepLast: Int?
    /// Keep the best N by a metric (several rules may be given).
    @DefaultWhenMissing public var keepBest: [Best] = []
    /// One checkpoint per step bucket `floor(step / keepEvery)`: the newest in each.
    public var keepEvery: Int64?
    /// Seconds, measured back from the run's newest checkpoint.
    public var keepWithin: Double?
    /// Keep the newest checkpoint of each of the last N hours that have one.
    public var keepHourly: Int?
    /// The same by day (UTC).
    public var keepDaily: Int?
    /// The same by ISO week.
    public var keepWeekly: Int?
    /// The same by month.
    public var keepMonthly: Int?
    /// Keep checkpoints with any of these tags.
    @DefaultWhenMissing public var keepTags: [String] = []
    /// Drop the optimizer part of every kept checkpoint but the newest N, keeping weights and metadata.
    public var dropOptimizerAfter: Int?
    /// Glob patterns of the files, or of the tensors inside safetensors files, that make up a part, beyond
    /// the built-in `optimizer*.pt` files for "optimizer".
    @DefaultWhenMissing public var parts: [String: [String]] = [:]

    /// The empty policy: keeps everything.
    public init() {}

    enum CodingKeys: String, CodingKey {
        case parts
        case keepLast = "keep_last"
        case keepBest = "keep_best"
        case keepEvery = "keep_every"
        case keepWithin = "keep_within"
        case keepHourly = "keep_hourly"
        case keepDaily = "keep_daily"
        case keepWeekly = "keep_weekly"
        case keepMonthly = "keep_monthly"
        case keepTags = "keep_tags"
        case dropOptimizerAfter = "drop_optimizer_after"
    }

    /// Parses rules written as the flags of `ckstore policy set`, without dashes in front and joined by
    /// commas: `keep-last=2,keep-best=1:loss:min,drop-optimizer-after=1` (what `audit --what-if` takes).
    public init(parsingRules text: String) throws {
        var rules = [(key: String, value: String)]()
        for rule in text.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !rule.isEmpty {
            let key = String(rule.prefix { $0 != "=" }), value = String(rule.drop { $0 != "=" }.dropFirst())
            guard rule.contains("="), !value.isEmpty else {
                throw CKStoreError(.invalidArgument, "a policy rule is NAME=VALUE (keep-last=2), not \(rule)")
            }
            rules.append((key, value))
        }
        try self.init(rules: rules)
    }

    /// A policy from rules named as the flags of `ckstore policy set` without their dashes (`keep-last`,
    /// `part`), each with its value as the flag takes it: the one place that reads and checks a rule.
    public init(rules: [(key: String, value: String)]) throws {
        self.init()
        func count(_ key: String, _ value: String) throws -> Int {
            guard let number = Int(value), number >= 0 else { throw CKStoreError(.invalidArgument, "\(key) takes a count of 0 or more, not \(value)") }
            return number
        }
        for (key, value) in rules {
            do {
                switch key {
                case "keep-last": keepLast = try count(key, value)
                case "keep-best": keepBest.append(try Best(parsing: value))
                case "keep-every":
                    guard let every = Int64(value), every > 0 else { throw CKStoreError(.invalidArgument, "keep-every takes a positive step count, not \(value)") }
                    keepEvery = every
                case "keep-within": keepWithin = try Self.parseDuration(value)
                case "keep-hourly": keepHourly = try count(key, value)
                case "keep-daily": keepDaily = try count(key, value)
                case "keep-weekly": keepWeekly = try count(key, value)
                case "keep-monthly": keepMonthly = try count(key, value)
                case "keep-tag": keepTags.append(value)
                case "drop-optimizer-after": dropOptimizerAfter = try count(key, value)
                case "part":
                    let name = String(value.prefix { $0 != "=" }), glob = String(value.drop { $0 != "=" }.dropFirst())
                    guard !name.isEmpty, !glob.isEmpty else { throw CKStoreError(.invalidArgument, "part takes NAME=GLOB, not \(value)") }
                    parts[name, default: []].append(glob)
                default:
                    throw CKStoreError(
                        .invalidArgument,
                        "unknown policy rule \(key); the rules are keep-last, keep-best, keep-every, keep-within, keep-hourly, keep-daily, keep-weekly, keep-monthly, keep-tag, drop-optimizer-after, part"
                    )
                }
            } catch let error as CKStoreError where !error.message.hasPrefix(key) && !error.message.hasPrefix("unknown policy rule") {
                throw CKStoreError(.invalidArgument, "\(key): \(error.message)")
            }
        }
    }

    /// The most checkpoints of a run this policy keeps however many are put, or nil when that number
    /// grows (no rule, `keep-every`, `keep-within`). Counts the newest, `pinned` and `tagged` checkpoints
    /// on top of the rules, so it is an upper bound.
    func steadyStateCount(pinned: Int, tagged: Int) -> Int? {
        guard hasKeepRules, keepEvery == nil, keepWithin == nil else { return nil }
        return countedRules(pinned: pinned, tagged: tagged)
    }

    /// The checkpoints kept whatever the interval: the newest, `pinned`, `tagged`, and the rules that
    /// count (keep-last, keep-best, one per hour, day, week or month).
    private func countedRules(pinned: Int, tagged: Int) -> Int {
        let counted = [keepLast, keepHourly, keepDaily, keepWeekly, keepMonthly].compactMap { $0 }.reduce(0, +)
        return 1 + pinned + tagged + counted + keepBest.reduce(0) { $0 + $1.count }
    }

    /// How many checkpoints of a run this policy keeps when one is made every `intervalSteps` steps,
    /// `intervalSeconds` apart: the steady state when the policy bounds the run (`bounded`), else what it
    /// keeps after `seconds` of training. `keep-within` keeps as many as its window spans; `keep-every`
    /// one per bucket the checkpoints reach; no rule, every checkpoint made. An upper bound, like
    /// ``steadyStateCount(pinned:tagged:)``.
    func keptCount(intervalSteps: Int64, intervalSeconds: Double, after seconds: Double, pinned: Int, tagged: Int) -> (count: Int, bounded: Bool) {
        let made = Int((seconds / intervalSeconds).rounded(.down))
        guard hasKeepRules else { return (made, false) }
        var count = countedRules(pinned: pinned, tagged: tagged)
        if let keepWithin { count += Int((keepWithin / intervalSeconds).rounded(.up)) }
        guard let keepEvery else { return (count, true) }
        let buckets = Double(made) * Double(intervalSteps) / Double(max(keepEvery, intervalSteps))
        return (count + Int(buckets.rounded(.down)), false)
    }

    /// The part a piece of a checkpoint belongs to: the first part whose globs match its file path or
    /// its tensor name (`optimizer` includes `optimizer*.pt`), else `weights` for tensor files, else
    /// `other`.
    func part(path: String, tensor: String) -> CheckpointPart {
        var named = parts.filter { $0.key != CheckpointPart.optimizer.rawValue }.sorted { $0.key < $1.key }.map { (CheckpointPart(rawValue: $0.key), $0.value) }
        named.insert((.optimizer, optimizerGlobs), at: 0)
        for (part, globs) in named where globs.contains(where: { fnmatch($0, path, 0) == 0 || (!tensor.isEmpty && fnmatch($0, tensor, 0) == 0) }) {
            return part
        }
        let lowered = path.lowercased()
        return [".safetensors", ".pt", ".bin", ".pth", ".ckpt"].contains(where: { lowered.hasSuffix($0) }) ? .weights : .other
    }

    /// True when no rule is set: such a policy keeps everything.
    public var isEmpty: Bool { self == RetentionPolicy() }

    /// True when the policy has a rule that keeps or deletes whole checkpoints.
    var hasKeepRules: Bool {
        keepLast != nil || !keepBest.isEmpty || keepEvery != nil || keepWithin != nil || keepHourly != nil
            || keepDaily != nil || keepWeekly != nil || keepMonthly != nil || !keepTags.isEmpty
    }

    /// Parses a duration: a number followed by `s`, `m`, `h`, `d` or `w` (`90m`, `36h`, `7d`).
    public static func parseDuration(_ text: String) throws -> Double {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604_800]
        guard let unit = text.last, let factor = units[unit], let value = Double(text.dropLast()), value >= 0 else {
            throw CKStoreError(.invalidArgument, "a duration is a number and a unit s, m, h, d or w (90m, 36h, 7d), not \(text)")
        }
        return value * factor
    }

    /// The file globs of the optimizer part.
    var optimizerGlobs: [String] { ["optimizer*.pt", "*/optimizer*.pt"] + (parts[CheckpointPart.optimizer.rawValue] ?? []) }

    /// A one-line summary (`keep-last 2, keep-best 1:loss:min`).
    public var summary: String {
        var rules = [String]()
        if let keepLast { rules.append("keep-last \(keepLast)") }
        for best in keepBest { rules.append("keep-best \(best)") }
        if let keepEvery { rules.append("keep-every \(keepEvery)") }
        if let keepWithin { rules.append("keep-within \(Self.formatDuration(keepWithin))") }
        if let keepHourly { rules.append("keep-hourly \(keepHourly)") }
        if let keepDaily { rules.append("keep-daily \(keepDaily)") }
        if let keepWeekly { rules.append("keep-weekly \(keepWeekly)") }
        if let keepMonthly { rules.append("keep-monthly \(keepMonthly)") }
        for tag in keepTags { rules.append("keep-tag \(tag)") }
        if let dropOptimizerAfter { rules.append("drop-optimizer-after \(dropOptimizerAfter)") }
        for (part, globs) in parts.sorted(by: { $0.key < $1.key }) { rules.append("part \(part)=\(globs.joined(separator: ","))") }
        return rules.isEmpty ? "keep everything" : rules.joined(separator: ", ")
    }

    public static func formatDuration(_ seconds: Double) -> String {
        for (unit, size) in [("w", 604_800.0), ("d", 86400), ("h", 3600), ("m", 60)] where seconds >= size && seconds.truncatingRemainder(dividingBy: size) == 0 {
            return "\(Int(seconds / size))\(unit)"
        }
        return "\(Int(seconds))s"
    }
}
