import Foundation

/// Decides which checkpoints of one run a policy keeps, and why. Pure: no I/O, fixed inputs, so the
/// semantics can be tested with fixed steps and times.
public enum RetentionPlanner {
    /// What the planner needs to know of a checkpoint.
    public struct Candidate: Sendable, Equatable {
        /// The checkpoint.
        public var id: CheckpointID
        /// Its step.
        public var step: Int64
        /// Seconds since 1970, UTC.
        public var createdAt: Double
        /// Its metrics, for keep-best.
        public var metrics: [String: Double]
        /// Its tags, for keep-tag.
        public var tags: [String]
        /// Whether it is pinned.
        public var pinned: Bool

        /// What the rules look at of a catalogued checkpoint.
        init(_ summary: CheckpointSummary) {
            self.init(id: summary.id, step: summary.step, createdAt: summary.createdAt, metrics: summary.metrics, tags: summary.tags, pinned: summary.pinned)
        }

        /// A candidate with what the rules look at.
        public init(id: CheckpointID, step: Int64, createdAt: Double, metrics: [String: Double] = [:], tags: [String] = [], pinned: Bool = false) {
            self.id = id
            self.step = step
            self.createdAt = createdAt
            self.metrics = metrics
            self.tags = tags
            self.pinned = pinned
        }
    }

    /// The decision for one run.
    public struct Plan: Sendable, Equatable {
        /// Kept checkpoints and the rules that keep each (`newest`, `pinned`, `keep-last`, …).
        public var kept: [CheckpointID: [RetentionReason]]
        /// Checkpoints no rule keeps, oldest first.
        public var deleted: [CheckpointID]
        /// Kept checkpoints whose optimizer part is dropped.
        public var slimmed: [CheckpointID]
    }

    /// Applies `policy` to the checkpoints of one run.
    public static func plan(_ policy: RetentionPolicy, _ candidates: [Candidate]) -> Plan {
        // Newest first: by step, then by time, then by id so that the order is total.
        let ordered = candidates.sorted { ($0.step, $0.createdAt, $0.id) > ($1.step, $1.createdAt, $1.id) }
        var reasons = [CheckpointID: [RetentionReason]]()
        func keep(_ candidate: Candidate, _ reason: RetentionReason) { reasons[candidate.id, default: []].append(reason) }

        if let newest = ordered.first { keep(newest, .newest) }
        for candidate in ordered where candidate.pinned { keep(candidate, .pinned) }
        if !policy.hasKeepRules {
            for candidate in ordered where reasons[candidate.id] == nil { keep(candidate, .noPolicy) }
        }
        if let count = policy.keepLast {
            for candidate in ordered.prefix(max(0, count)) { keep(candidate, .keepLast(count)) }
        }
        for best in policy.keepBest {
            let scored = ordered.filter { $0.metrics[best.metric]?.isFinite == true }
            // Stable sort over newest-first order: among equal values the newer checkpoint wins.
            let ranked = scored.enumerated().sorted { lhs, rhs in
                let (a, b) = (lhs.element.metrics[best.metric] ?? 0, rhs.element.metrics[best.metric] ?? 0)
                if a != b { return best.order == .min ? a < b : a > b }
                return lhs.offset < rhs.offset
            }.map(\.element)
            for candidate in ranked.prefix(best.count) { keep(candidate, .keepBest(best)) }
        }
        if let every = policy.keepEvery, every > 0 {
            var seen = Set<Int64>()
            for candidate in ordered {
                let bucket = floorDivide(candidate.step, every)
                if seen.insert(bucket).inserted { keep(candidate, .keepEvery(every)) }
            }
        }
        if let within = policy.keepWithin, let newest = ordered.map(\.createdAt).max() {
            for candidate in ordered where candidate.createdAt >= newest - within {
                keep(candidate, .keepWithin(seconds: within))
            }
        }
        let calendar: [(RetentionReason.Period, Int?, Calendar.Component)] = [
            (.hourly, policy.keepHourly, .hour), (.daily, policy.keepDaily, .day),
            (.weekly, policy.keepWeekly, .weekOfYear), (.monthly, policy.keepMonthly, .month),
        ]
        for (rule, count, component) in calendar {
            guard let count, count > 0 else { continue }
            // restic's semantics: walking from the newest, the first checkpoint of each period fills that
            // period's slot, until `count` periods have one. A checkpoint may fill slots of several rules.
            var last: String?
            var filled = 0
            for candidate in ordered.sorted(by: { ($0.createdAt, $0.step) > ($1.createdAt, $1.step) }) where filled < count {
                let period = periodKey(candidate.createdAt, component)
                if period != last {
                    keep(candidate, .periodic(rule, count))
                    last = period
                    filled += 1
                }
            }
        }
        for tag in policy.keepTags {
            for candidate in ordered where candidate.tags.contains(tag) { keep(candidate, .keepTag(tag)) }
        }

        let deleted = ordered.reversed().filter { reasons[$0.id] == nil }.map(\.id)
        var slimmed = [CheckpointID]()
        if let keepOptimizer = policy.dropOptimizerAfter {
            let kept = ordered.filter { reasons[$0.id] != nil }
            slimmed = kept.dropFirst(max(0, keepOptimizer)).map(\.id)
        }
        return Plan(kept: reasons, deleted: deleted, slimmed: slimmed)
    }

    private static func floorDivide(_ value: Int64, _ divisor: Int64) -> Int64 {
        let quotient = value / divisor
        return (value % divisor != 0 && (value < 0) != (divisor < 0)) ? quotient - 1 : quotient
    }

    /// The UTC period a time falls in: `2026-11-27T13` for hours, ISO week `2026-W48` for weeks, ….
    static func periodKey(_ seconds: Double, _ component: Calendar.Component) -> String {
        var calendar = Calendar(identifier: .iso8601)
        calendar.timeZone = TimeZone(identifier: "UTC") ?? .current
        let date = Date(timeIntervalSince1970: seconds)
        let parts = calendar.dateComponents([.year, .month, .day, .hour, .weekOfYear, .yearForWeekOfYear], from: date)
        switch component {
        case .hour: return "\(parts.year ?? 0)-\(parts.month ?? 0)-\(parts.day ?? 0)T\(parts.hour ?? 0)"
        case .day: return "\(parts.year ?? 0)-\(parts.month ?? 0)-\(parts.day ?? 0)"
        case .weekOfYear: return "\(parts.yearForWeekOfYear ?? 0)-W\(parts.weekOfYear ?? 0)"
        default: return "\(parts.year ?? 0)-\(parts.month ?? 0)"
        }
    }
}

/// Why a retention plan keeps a checkpoint: one rule of its policy, or a rule no policy can turn off.
/// Decisions compare these values; the text is for people and for `--json` (`keep-last 3`).
public enum RetentionReason: Sendable, Hashable, CustomStringConvertible {
    /// The newest checkpoint of its run: the resume point, always kept.
    case newest
    /// Pinned by the user.
    case pinned
    /// The run has no keep rules, so nothing is deleted: the one reason `gc --budget` may override.
    case noPolicy
    case keepLast(Int)
    case keepBest(RetentionPolicy.Best)
    case keepEvery(Int64)
    case keepWithin(seconds: Double)
    case periodic(Period, Int)
    case keepTag(String)

    /// The calendar periods of `keep-hourly` … `keep-monthly`.
    public enum Period: String, Sendable, Hashable {
        case hourly, daily, weekly, monthly
    }

    public var description: String {
        switch self {
        case .newest: "newest"
        case .pinned: "pinned"
        case .noPolicy: "no policy"
        case .keepLast(let count): "keep-last \(count)"
        case .keepBest(let best): "keep-best \(best)"
        case .keepEvery(let every): "keep-every \(every)"
        case .keepWithin(let seconds): "keep-within \(RetentionPolicy.formatDuration(seconds))"
        case .periodic(let period, let count): "keep-\(period.rawValue) \(count)"
        case .keepTag(let tag): "keep-tag \(tag)"
        }
    }
}
