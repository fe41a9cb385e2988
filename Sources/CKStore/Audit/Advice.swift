import Foundation

/// What ``CheckpointStore/advise(_:)`` is asked: the run, how often its machine is interrupted and,
/// for costs in money, the prices.
public struct AdviceOptions: Sendable {
    public var run: String
    /// Mean time between interruptions, in seconds.
    public var mtbfSeconds: Double
    /// What an hour of the training machine costs; nil gives no costs in money for compute.
    public var computeCostPerHour: Double?
    /// What a GiB (S3's "GB": 2^30 bytes) stored for a month costs; nil gives none for storage.
    public var storageCostPerGBMonth: Double?
    /// The seconds one checkpoint takes to become durable, instead of the measured ones.
    public var checkpointSeconds: Double?

    public init(run: String, mtbfSeconds: Double, computeCostPerHour: Double? = nil, storageCostPerGBMonth: Double? = nil, checkpointSeconds: Double? = nil) {
        self.run = run
        self.mtbfSeconds = mtbfSeconds
        self.computeCostPerHour = computeCostPerHour
        self.storageCostPerGBMonth = storageCostPerGBMonth
        self.checkpointSeconds = checkpointSeconds
    }
}

/// How often to checkpoint a run: the Young–Daly interval √(2·C·MTBF) from the store's own
/// measurements, against the run's interval today. C is what one checkpoint costs (its put and its
/// push, medians of the newest ``Advice/window`` measured), the rate of progress comes from the steps
/// and times between the run's checkpoints, and the storage figures from the audit's projection of the
/// run's retention policy.
public struct Advice: Sendable, Codable, Equatable {
    /// How many of the newest checkpoints the medians are taken over.
    public static let window = 10
    /// The span a growing run's storage is given for: 30 days of training.
    public static let month: Double = 30 * 86_400

    /// The figures at one interval.
    public struct Interval: Sendable, Codable, Equatable {
        /// Steps between checkpoints.
        public var steps: Int64
        /// Seconds of training between checkpoints (`steps` × seconds per step).
        public var seconds: Double
        public var minutes: Double
        /// Compute expected to be lost to one interruption: the work since the last checkpoint, half an
        /// interval on average.
        public var lostSecondsPerInterruption: Double
        /// `lostSecondsPerInterruption` at the compute price; nil without one.
        public var lostCostPerInterruption: Double?
        /// The share of the machine's time spent checkpointing or redoing lost work: C/T + T/(2·MTBF).
        public var overheadFraction: Double
        /// Checkpoints a day of training makes.
        public var checkpointsPerDay: Double
        /// Checkpoints the run's policy keeps: at its steady state when `bounded`, else after 30 days.
        public var keptCheckpoints: Int
        /// Whether the policy bounds the run.
        public var bounded: Bool
        /// `keptCheckpoints` × the run's bytes per checkpoint, plus its base.
        public var storedBytes: Int64
        /// What `storedBytes` cost a month at the storage price; nil without one.
        public var storageCostPerMonth: Double?
    }

    public var run: String
    /// The run's retention policy, as `policy show` writes it.
    public var policy: String
    public var mtbfSeconds: Double
    /// C: the seconds one checkpoint takes to become durable (put, then push).
    public var checkpointSeconds: Double
    /// `measured` (put and push medians) or `given`.
    public var checkpointSecondsSource: String
    /// Median put seconds of the newest measured checkpoints; nil when none was measured.
    public var putSeconds: Double?
    /// Median push seconds, likewise; nil when none was pushed (C is then the put alone).
    public var pushSeconds: Double?
    /// Seconds of training per step: the median, over consecutive checkpoints, of the time between them
    /// less the later one's put, over the steps between them.
    public var secondsPerStep: Double
    /// What each kept checkpoint adds on disk, and the run's base (the audit's projection).
    public var bytesPerCheckpoint: Int64
    public var baseBytes: Int64
    /// √(2·C·MTBF), before rounding to whole steps.
    public var youngDalySeconds: Double
    /// The run's interval today (the median steps between its newest checkpoints).
    public var current: Interval
    /// The Young–Daly interval in whole steps.
    public var advised: Interval
}

extension CheckpointStore {
    /// How often `options.run` should checkpoint, from what the store measured: see ``Advice``.
    ///
    /// - Throws: `invalidArgument` for an MTBF or price that is not positive, `notFound` for an unknown
    ///   run, and `invalidArgument` when the run has too few checkpoints to measure its rate of progress
    ///   or no measured put (checkpoints stored before catalogue version 8) and no
    ///   `checkpointSeconds`.
    public func advise(_ options: AdviceOptions) async throws(CKStoreError) -> Advice {
        guard options.mtbfSeconds.isFinite, options.mtbfSeconds > 0 else {
            throw CKStoreError(.invalidArgument, "the time between interruptions must be positive")
        }
        for (name, value) in [("compute cost per hour", options.computeCostPerHour), ("storage cost per GB-month", options.storageCostPerGBMonth),
                              ("checkpoint seconds", options.checkpointSeconds)] {
            if let value, !(value.isFinite && value >= 0) { throw CKStoreError(.invalidArgument, "the \(name) must be a number of at least 0, not \(value)") }
        }
        let run = options.run
        let checkpoints = try CKStoreError.wrapping("listing the checkpoints of \(run)") { try list(run: run) }.sorted { $0.step < $1.step }
        guard !checkpoints.isEmpty else { throw CKStoreError(.notFound, "no checkpoints of run \(run)") }
        let costs = try self.costs(run: run)

        // The newest measurement of each checkpoint, by kind.
        var put = [CheckpointID: Double]()
        var push = [CheckpointID: Double]()
        for cost in costs {
            switch cost.kind {
            case .put: put[cost.checkpoint] = cost.seconds
            case .push: push[cost.checkpoint] = cost.seconds
            }
        }
        let newest = checkpoints.reversed()
        let putSeconds = Self.median(newest.compactMap { put[$0.id] }.prefix(Advice.window))
        let pushSeconds = Self.median(newest.compactMap { push[$0.id] }.prefix(Advice.window))
        let checkpointSeconds: Double
        if let given = options.checkpointSeconds {
            checkpointSeconds = given
        } else if let putSeconds {
            checkpointSeconds = putSeconds + (pushSeconds ?? 0)
        } else {
            throw CKStoreError(.invalidArgument, "no put of run \(run) was timed (checkpoints stored before catalogue version 8 were not): put a checkpoint first, or say how long one takes with --checkpoint-seconds")
        }

        // The rate of progress and today's interval, from the newest consecutive pairs.
        let pairs = zip(checkpoints, checkpoints.dropFirst()).filter { $1.step > $0.step }.suffix(Advice.window)
        let rates = pairs.compactMap { earlier, later -> Double? in
            let training = later.createdAt - earlier.createdAt - (put[later.id] ?? 0)
            return training > 0 ? training / Double(later.step - earlier.step) : nil
        }
        guard let secondsPerStep = Self.median(rates), secondsPerStep > 0 else {
            throw CKStoreError(.invalidArgument, "run \(run) needs two checkpoints at different steps, made at different times, to measure its rate of progress")
        }
        let currentSteps = Int64(Self.median(pairs.map { Double($1.step - $0.step) }) ?? 1)

        // Storage: the audit's projection of the run, and the policy's count at each interval.
        var auditOptions = AuditOptions(run: run, budget: Int64.max)
        auditOptions.largestTensors = 0
        let projection = try await audit(auditOptions).budget?.runs.first { $0.run == run }
        let bytesPerCheckpoint = projection?.bytesPerCheckpoint ?? 0
        let baseBytes = projection?.baseBytes ?? 0
        let (policy, _) = try CKStoreError.wrapping("reading the policy of \(run)") { try self.policy(run: run) }
        let pinned = checkpoints.filter(\.pinned).count
        let tagged = checkpoints.filter { !$0.tags.isEmpty }.count

        func interval(_ steps: Int64) -> Advice.Interval {
            let seconds = Double(steps) * secondsPerStep
            let lost = seconds / 2
            let kept = policy.keptCount(intervalSteps: steps, intervalSeconds: seconds, after: Advice.month, pinned: pinned, tagged: tagged)
            let stored = Int64(kept.count) * bytesPerCheckpoint + baseBytes
            return Advice.Interval(
                steps: steps, seconds: seconds, minutes: seconds / 60, lostSecondsPerInterruption: lost,
                lostCostPerInterruption: options.computeCostPerHour.map { lost / 3600 * $0 },
                overheadFraction: checkpointSeconds / seconds + seconds / (2 * options.mtbfSeconds),
                checkpointsPerDay: 86_400 / seconds, keptCheckpoints: kept.count, bounded: kept.bounded, storedBytes: stored,
                storageCostPerMonth: options.storageCostPerGBMonth.map { Double(stored) / Double(1 << 30) * $0 }
            )
        }
        let youngDaly = (2 * checkpointSeconds * options.mtbfSeconds).squareRoot()
        let advisedSteps = max(1, Int64((youngDaly / secondsPerStep).rounded()))
        return Advice(
            run: run, policy: policy.summary, mtbfSeconds: options.mtbfSeconds, checkpointSeconds: checkpointSeconds,
            checkpointSecondsSource: options.checkpointSeconds == nil ? "measured" : "given", putSeconds: putSeconds, pushSeconds: pushSeconds,
            secondsPerStep: secondsPerStep, bytesPerCheckpoint: bytesPerCheckpoint, baseBytes: baseBytes, youngDalySeconds: youngDaly,
            current: interval(max(1, currentSteps)), advised: interval(advisedSteps)
        )
    }

    /// The median (the mean of the middle two for an even count); nil for none.
    static func median(_ values: some Collection<Double>) -> Double? {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return nil }
        let middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    }
}
