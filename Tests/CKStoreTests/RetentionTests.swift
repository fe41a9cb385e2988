import CKStore
import Foundation
import Testing

/// Retention semantics with fixed steps and times.
@Suite struct RetentionTests {
    /// 2026-01-05 00:00:00 UTC, a Monday.
    static let monday: Double = 1_767_571_200

    static func id(_ n: Int) -> CheckpointID {
        CheckpointID(ChunkDigest(bytes: [UInt8](repeating: 0, count: 31) + [UInt8(n)])!)
    }

    /// Checkpoint n at step n×100, one hour apart, loss falling then rising.
    static func series(_ count: Int, hoursApart: Double = 1, losses: [Double?]? = nil) -> [RetentionPlanner.Candidate] {
        (1...count).map { n in
            let loss = losses.map { $0[n - 1] } ?? Double(abs(n - count / 2)) + 1
            return RetentionPlanner.Candidate(id: id(n), step: Int64(n * 100), createdAt: monday + Double(n) * 3600 * hoursApart, metrics: loss.map { ["loss": $0] } ?? [:])
        }
    }

    static func kept(_ policy: RetentionPolicy, _ series: [RetentionPlanner.Candidate]) -> [Int] {
        let plan = RetentionPlanner.plan(policy, series)
        return series.enumerated().filter { plan.kept[$0.element.id] != nil }.map { $0.offset + 1 }
    }

    static func policy(_ build: (inout RetentionPolicy) -> Void) -> RetentionPolicy {
        var policy = RetentionPolicy()
        build(&policy)
        return policy
    }

    /// (what, policy, series, checkpoints kept by number).
    static let table: [(String, RetentionPolicy, [RetentionPlanner.Candidate], [Int])] = [
        ("empty policy keeps everything", RetentionPolicy(), series(5), [1, 2, 3, 4, 5]),
        ("keep-last 2", policy { $0.keepLast = 2 }, series(6), [5, 6]),
        ("keep-last 0 still keeps the newest", policy { $0.keepLast = 0 }, series(4), [4]),
        ("keep-best 1 min", policy { $0.keepBest = [.init(count: 1, metric: "loss", order: .min)] }, series(6), [3, 6]),
        ("keep-best 2 max (3 vs 3: the newer)", policy { $0.keepBest = [.init(count: 2, metric: "loss", order: .max)] }, series(6), [5, 6]),
        ("keep-best ties go to the newer", policy { $0.keepBest = [.init(count: 1, metric: "loss", order: .min)] }, series(5, losses: [2, 1, 3, 1, 4]), [4, 5]),
        ("keep-best skips missing metrics", policy { $0.keepBest = [.init(count: 2, metric: "loss", order: .min)] }, series(5, losses: [nil, 5, nil, 6, nil]), [2, 4, 5]),
        ("keep-every 300: newest per bucket", policy { $0.keepEvery = 300 }, series(7), [2, 5, 7]),
        ("keep-within 2h of the newest", policy { $0.keepWithin = 7200 }, series(6), [4, 5, 6]),
        ("keep-daily 2 with checkpoints 10h apart", policy { $0.keepDaily = 2 }, series(6, hoursApart: 10), [4, 6]),
        ("keep-hourly 3: newest in each hour", policy { $0.keepHourly = 3 }, series(5, hoursApart: 0.5), [1, 3, 5]),
        ("keep-weekly 2 across four ISO weeks", policy { $0.keepWeekly = 2 }, series(6, hoursApart: 24 * 4), [5, 6]),
        ("keep-monthly 1", policy { $0.keepMonthly = 1 }, series(3, hoursApart: 24 * 20), [3]),
        ("union of rules", policy {
            $0.keepLast = 1
            $0.keepBest = [.init(count: 1, metric: "loss", order: .min)]
            $0.keepEvery = 500
        }, series(12), [4, 6, 9, 12]),
    ]

    @Test(arguments: table.indices)
    func rule(_ index: Int) {
        let (what, policy, series, expected) = Self.table[index]
        #expect(Self.kept(policy, series) == expected, "\(what)")
    }

    @Test func keepWithinIsMeasuredFromTheNewestNotFromNow() {
        // A series that ended a year ago: "within 2h" still keeps its last two hours.
        let old = Self.series(5).map { candidate -> RetentionPlanner.Candidate in
            var copy = candidate
            copy.createdAt -= 365 * 86400
            return copy
        }
        #expect(Self.kept(Self.policy { $0.keepWithin = 3600 }, old) == [4, 5])
    }

    @Test func dailyPeriodsFollowUTCDayBoundaries() {
        // 23:30 and 00:30 are on different days; 00:30 and 23:00 the same day.
        let times = [Self.monday - 1800, Self.monday + 1800, Self.monday + 23 * 3600]
        let series = times.enumerated().map { RetentionPlanner.Candidate(id: Self.id($0.offset + 1), step: Int64($0.offset + 1), createdAt: $0.element) }
        #expect(Self.kept(Self.policy { $0.keepDaily = 5 }, series) == [1, 3])
        // Sunday 2026-01-04 and Monday 2026-01-05 fall in different ISO weeks.
        #expect(Self.kept(Self.policy { $0.keepWeekly = 5 }, series) == [1, 3])
    }

    @Test func newestAndPinnedAreAlwaysKeptWithReasons() {
        var series = Self.series(5)
        series[1].pinned = true
        series[2].tags = ["golden"]
        let policy = Self.policy {
            $0.keepLast = 1
            $0.keepTags = ["golden"]
        }
        let plan = RetentionPlanner.plan(policy, series)
        #expect(plan.kept[Self.id(5)]?.contains(.newest) == true)
        #expect(plan.kept[Self.id(2)] == [.pinned])
        #expect(plan.kept[Self.id(3)] == [.keepTag("golden")])
        #expect(plan.kept[Self.id(3)]?.map(\.description) == ["keep-tag golden"])
        #expect(plan.deleted == [Self.id(1), Self.id(4)])
        // The newest is kept even by a policy that keeps nothing else.
        #expect(Self.kept(Self.policy { $0.keepBest = [.init(count: 1, metric: "accuracy", order: .max)] }, Self.series(3)) == [3])
    }

    @Test func dropOptimizerSlimsAllButTheNewestKept() {
        let plan = RetentionPlanner.plan(Self.policy {
            $0.keepLast = 3
            $0.dropOptimizerAfter = 1
        }, Self.series(5))
        #expect(Set(plan.slimmed) == [Self.id(3), Self.id(4)])
        #expect(plan.deleted == [Self.id(1), Self.id(2)])
    }

    @Test func policiesParseAndRoundTrip() throws {
        #expect(try RetentionPolicy.Best(parsing: "2:loss:min") == .init(count: 2, metric: "loss", order: .min))
        #expect(throws: CKStoreError.self) { try RetentionPolicy.Best(parsing: "2:loss") }
        #expect(throws: CKStoreError.self) { try RetentionPolicy.Best(parsing: "0:loss:min") }
        #expect(try RetentionPolicy.parseDuration("90m") == 5400)
        #expect(try RetentionPolicy.parseDuration("36h") == 129_600)
        #expect(try RetentionPolicy.parseDuration("7d") == 604_800)
        #expect(throws: CKStoreError.self) { try RetentionPolicy.parseDuration("7 days") }
        let policy = Self.policy {
            $0.keepLast = 2
            $0.keepWithin = 5400
            $0.parts = ["optimizer": ["*.opt"]]
        }
        let decoded = try JSONDecoder().decode(RetentionPolicy.self, from: JSONEncoder().encode(policy))
        #expect(decoded == policy)
        #expect(policy.summary == "keep-last 2, keep-within 90m, part optimizer=*.opt")
    }
}
