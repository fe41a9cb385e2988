import ArgumentParser
import CKStore
import Foundation

struct Advise: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "How often to checkpoint a run, from what the store measured: the Young–Daly interval.",
        discussion: """
            C, what one checkpoint costs, is the median put plus the median push of the run's newest 10
            checkpoints, as this store timed them (or --checkpoint-seconds). The rate of progress is the
            median, over consecutive checkpoints, of the time between them less the later one's put, over
            the steps between them. With the mean time between interruptions (--mtbf 6h, or
            --interruptions-per-day 4), the advised interval is √(2·C·MTBF), in whole steps.

            For today's interval (the median steps between the newest checkpoints) and the advised one:
            the compute expected to be lost to one interruption (half an interval), the share of the
            machine spent checkpointing or redoing work (C/T + T/(2·MTBF)), and the checkpoints, stored
            bytes and monthly storage cost of the run's retention policy (the audit's bytes per
            checkpoint; at its steady state, or after 30 days of training when the policy lets the run
            grow). Costs in money need --compute-cost-per-hour and --storage-cost-per-gb-month (a GB is
            2^30 bytes, as S3 bills it); without them those JSON fields are absent.
            """
    )

    @OptionGroup var store: StoreOptions
    @Argument(help: "The run.") var run: String
    @Option(help: "Mean time between interruptions: a number and s, m, h, d or w (6h, 90m, 2d).") var mtbf: String?
    @Option(help: "Interruptions a day, instead of --mtbf.") var interruptionsPerDay: Double?
    @Option(help: "What an hour of the training machine costs (USD).") var computeCostPerHour: Double?
    @Option(help: "What a GB stored for a month costs (USD; S3 Standard: 0.023).") var storageCostPerGbMonth: Double?
    @Option(help: "Seconds one checkpoint takes to become durable, instead of what the store measured.") var checkpointSeconds: Double?
    @Flag(help: "Print JSON.") var json = false

    func mtbfSeconds() throws -> Double {
        switch (mtbf, interruptionsPerDay) {
        case (nil, nil):
            throw ValidationError("say how often the machine is interrupted: --mtbf 6h, or --interruptions-per-day 4")
        case (.some, .some):
            throw ValidationError("give --mtbf or --interruptions-per-day, not both")
        case (let text?, nil):
            let seconds: Double
            do {
                seconds = try RetentionPolicy.parseDuration(text)
            } catch let error as CKStoreError {
                throw ValidationError("--mtbf: \(error.message)")
            }
            guard seconds > 0 else { throw ValidationError("--mtbf must be longer than 0") }
            return seconds
        case (nil, let perDay?):
            guard perDay.isFinite, perDay > 0 else { throw ValidationError("--interruptions-per-day must be more than 0") }
            return 86_400 / perDay
        }
    }

    func validate() throws {
        _ = try mtbfSeconds()
        for (flag, value) in [("--compute-cost-per-hour", computeCostPerHour), ("--storage-cost-per-gb-month", storageCostPerGbMonth),
                              ("--checkpoint-seconds", checkpointSeconds)] {
            if let value, !(value.isFinite && value >= 0) { throw ValidationError("\(flag) must be a number of at least 0") }
        }
    }

    func run() async throws {
        let options = AdviceOptions(run: run, mtbfSeconds: try mtbfSeconds(), computeCostPerHour: computeCostPerHour,
                                    storageCostPerGBMonth: storageCostPerGbMonth, checkpointSeconds: checkpointSeconds)
        let advice = try await store.open().advise(options)
        if json {
            try JSONOutput.print(advice)
            return
        }
        Self.print(advice)
    }

    static func print(_ advice: Advice) {
        var measured = "given"
        if advice.checkpointSecondsSource == "measured" {
            let put = advice.putSeconds.map { String(format: "put %.3g s", $0) } ?? ""
            let push = advice.pushSeconds.map { String(format: " + push %.3g s", $0) } ?? " (never pushed)"
            measured = put + push + ", medians of the newest \(Advice.window)"
        }
        Swift.print(String(format: "run %@: a checkpoint takes %.3g s to be durable (%@); %.3g s per step", advice.run, advice.checkpointSeconds, measured, advice.secondsPerStep))
        Swift.print("interrupted every \(duration(advice.mtbfSeconds)) on average; policy: \(advice.policy)")
        Swift.print("")
        let rows: [(String, (Advice.Interval) -> String)] = [
            ("interval", { "\($0.steps) steps, \(duration($0.seconds))" }),
            ("lost per interruption", { duration($0.lostSecondsPerInterruption) + ($0.lostCostPerInterruption.map { String(format: " ($%.2f)", $0) } ?? "") }),
            ("overhead", { String(format: "%.1f%%", $0.overheadFraction * 100) }),
            ("kept checkpoints", { "\($0.keptCheckpoints)" + ($0.bounded ? "" : " after 30 days (grows)") }),
            ("stored", { AuditText.bytes($0.storedBytes) + ($0.storageCostPerMonth.map { String(format: ", $%.2f a month", $0) } ?? "") }),
        ]
        Swift.print("\("".padding(toLength: 24, withPad: " ", startingAt: 0))\("now".padding(toLength: 34, withPad: " ", startingAt: 0))advised (Young–Daly)")
        for (name, value) in rows {
            Swift.print(name.padding(toLength: 24, withPad: " ", startingAt: 0) + value(advice.current).padding(toLength: 34, withPad: " ", startingAt: 0) + value(advice.advised))
        }
    }

    static func duration(_ seconds: Double) -> String {
        switch seconds {
        case ..<120: String(format: "%.1f s", seconds)
        case ..<7200: String(format: "%.1f min", seconds / 60)
        case ..<172_800: String(format: "%.1f h", seconds / 3600)
        default: String(format: "%.1f d", seconds / 86_400)
        }
    }

}
