import ArgumentParser
import CKStore
import Foundation

struct Policy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Set, show or clear retention policies.",
        subcommands: [PolicySet.self, PolicyShow.self, PolicyClear.self]
    )
}

struct PolicySet: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set",
        abstract: "Set a run's retention policy (or the store default with --default); replaces the previous one.",
        discussion: """
            A checkpoint is kept when any rule keeps it; the newest checkpoint of a run and pinned ones are
            always kept. An empty policy keeps everything. --keep-hourly/daily/weekly/monthly follow restic:
            the newest checkpoint of each of the N most recent periods (UTC) that have one; one checkpoint
            may fill the slots of several of these rules.
            """
    )

    @OptionGroup var store: StoreOptions
    @Argument(help: "The run.") var run: String?
    @Flag(name: .customLong("default"), help: "Set the store-wide default, used by runs without a policy.") var isDefault = false
    @Option(parsing: .unconditional, help: "Keep the newest N checkpoints.") var keepLast: Int?
    @Option(help: "Keep the best N by a metric: N:METRIC:min|max (repeatable).") var keepBest: [String] = []
    @Option(parsing: .unconditional, help: "Keep the newest checkpoint of each step bucket floor(step/K).") var keepEvery: Int64?
    @Option(help: "Keep what is within a duration (90m, 36h, 7d) of the run's newest checkpoint.") var keepWithin: String?
    @Option(parsing: .unconditional, help: "Keep the newest checkpoint of each of the last N hours that have one.") var keepHourly: Int?
    @Option(parsing: .unconditional, help: "… of each of the last N days.") var keepDaily: Int?
    @Option(parsing: .unconditional, help: "… of each of the last N ISO weeks.") var keepWeekly: Int?
    @Option(parsing: .unconditional, help: "… of each of the last N months.") var keepMonthly: Int?
    @Option(help: "Keep checkpoints with this tag (repeatable).") var keepTag: [String] = []
    @Option(parsing: .unconditional, help: "Drop the optimizer part (optimizer*.pt and --part optimizer=GLOB files) of all kept checkpoints but the newest N.") var dropOptimizerAfter: Int?
    @Option(help: "Add files to a part: NAME=GLOB (repeatable), e.g. optimizer=*.opt.bin.") var part: [String] = []
    @Flag(help: "Print the stored policy as JSON.") var json = false

    func validate() throws {
        guard (run != nil) != isDefault else { throw ValidationError("give a RUN or --default") }
        do {
            _ = try policy()
        } catch let error as CKStoreError {
            // The rules' parser names a rule as `audit --what-if` spells it (keep-last); here it is a flag.
            throw ValidationError(error.message.hasPrefix("unknown") ? error.message : "--" + error.message)
        }
    }

    /// The policy the flags set, read by the rules' one parser.
    private func policy() throws -> RetentionPolicy {
        let single: [(String, String?)] = [
            ("keep-last", keepLast.map(String.init)), ("keep-every", keepEvery.map(String.init)), ("keep-within", keepWithin),
            ("keep-hourly", keepHourly.map(String.init)), ("keep-daily", keepDaily.map(String.init)), ("keep-weekly", keepWeekly.map(String.init)),
            ("keep-monthly", keepMonthly.map(String.init)), ("drop-optimizer-after", dropOptimizerAfter.map(String.init)),
        ]
        let repeated = keepBest.map { ("keep-best", $0) } + keepTag.map { ("keep-tag", $0) } + part.map { ("part", $0) }
        return try RetentionPolicy(rules: single.compactMap { key, value in value.map { (key, $0) } } + repeated)
    }

    func run() async throws {
        let policy = try policy()
        let checkpointStore = try store.open(create: true)
        try checkpointStore.setPolicy(policy, run: run)
        if json {
            try JSONOutput.print(policy)
        } else {
            print("\(run.map { "run \($0)" } ?? "store default"): \(policy.summary)")
        }
    }
}

struct PolicyShow: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show the policy of a run, or of every run and the default.")

    @OptionGroup var store: StoreOptions
    @Argument(help: "The run.") var run: String?
    @Flag(help: "Print JSON.") var json = false

    struct Entry: Encodable {
        var scope: String
        var source: PolicySource
        var policy: RetentionPolicy
        var summary: String
    }

    func run() async throws {
        let checkpointStore = try store.open()
        var entries = [Entry]()
        if let run {
            let (policy, source) = try checkpointStore.policy(run: run)
            entries.append(Entry(scope: run, source: source, policy: policy, summary: policy.summary))
        } else {
            let (fallback, _) = try checkpointStore.policy(run: nil)
            entries.append(Entry(scope: "*", source: .default, policy: fallback, summary: fallback.summary))
            let runs = Set(try checkpointStore.list().map(\.run)).union(try checkpointStore.runsWithPolicies())
            for name in runs.sorted() {
                let (policy, source) = try checkpointStore.policy(run: name)
                entries.append(Entry(scope: name, source: source, policy: policy, summary: policy.summary))
            }
        }
        if json {
            try JSONOutput.print(run == nil ? AnyEncodable(entries) : AnyEncodable(entries[0]))
        } else {
            for entry in entries {
                let origin = switch entry.source {
                case .run: ""
                case .default: entry.scope == "*" ? "" : " (store default)"
                case .none: " (no policy)"
                }
                print("\(entry.scope == "*" ? "default" : entry.scope): \(entry.summary)\(origin)")
            }
        }
    }
}

/// Type erasure for printing one of two shapes.
struct AnyEncodable: Encodable {
    let encode: (any Encoder) throws -> Void
    init(_ value: some Encodable) { encode = value.encode }
    func encode(to encoder: any Encoder) throws { try encode(encoder) }
}

struct PolicyClear: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "clear", abstract: "Remove a run's policy (or the default): it then keeps everything, or follows the default.")

    @OptionGroup var store: StoreOptions
    @Argument(help: "The run.") var run: String?
    @Flag(name: .customLong("default"), help: "Clear the store-wide default.") var isDefault = false

    func validate() throws {
        guard (run != nil) != isDefault else { throw ValidationError("give a RUN or --default") }
    }

    func run() async throws {
        let removed = try store.open().clearPolicy(run: run)
        print(removed ? "cleared" : "there was no policy to clear")
    }
}

/// The checkpoint that pin, unpin, tag and untag change.
struct MarkedCheckpoint: ParsableArguments {
    @OptionGroup var store: StoreOptions
    @Argument(help: "The checkpoint.") var reference: String

    /// Makes `change` to the checkpoint and says `done` with its short id and `detail`.
    func change(_ done: String, _ detail: String = "", _ change: (CheckpointStore, CheckpointID) throws -> Void) async throws {
        let (checkpointStore, id) = try await store.resolve(reference)
        try change(checkpointStore, id)
        print("\(done) \(id.short)\(detail)")
    }
}

struct Pin: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Pin a checkpoint: no retention rule deletes it, and rm needs --force.")
    @OptionGroup var checkpoint: MarkedCheckpoint

    func run() async throws { try await checkpoint.change("pinned") { try $0.setPinned($1, true) } }
}

struct Unpin: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Unpin a checkpoint.")
    @OptionGroup var checkpoint: MarkedCheckpoint

    func run() async throws { try await checkpoint.change("unpinned") { try $0.setPinned($1, false) } }
}

struct Tag: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Add a tag to a checkpoint.")
    @OptionGroup var checkpoint: MarkedCheckpoint
    @Argument(help: "The tag.") var tag: String

    func run() async throws { try await checkpoint.change("tagged", " \(tag)") { try $0.setTag($1, tag, present: true) } }
}

struct Untag: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Remove a tag from a checkpoint.")
    @OptionGroup var checkpoint: MarkedCheckpoint
    @Argument(help: "The tag.") var tag: String

    func run() async throws { try await checkpoint.change("untagged", " \(tag)") { try $0.setTag($1, tag, present: false) } }
}

struct Remove: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rm", abstract: "Delete checkpoints (their bytes are freed by the next gc).")
    @OptionGroup var store: StoreOptions
    @Argument(help: "The checkpoints.") var references: [String]
    @Flag(help: "Also delete pinned checkpoints.") var force = false
    @Flag(help: "Say what would be removed and what the next gc would then free; change nothing.") var dryRun = false
    @Flag(help: "Remove pending checkpoints instead (RUN@STEP: some shards committed, not all), as a restarted job does before it saves those steps again.") var pending = false
    @Flag(help: "Print JSON.") var json = false
    @OptionGroup(title: "Remote (with --pending: remove the pending checkpoint's shard objects from it)") var remote: RemoteOption

    /// What `rm --json` prints.
    struct Report: Encodable {
        var dryRun: Bool
        var removed: [GCReport.Deleted]
        /// With --pending: the pending checkpoints removed.
        var pending: [PendingCheckpoint]?
        /// What the next gc frees because of these checkpoints alone (dry runs only).
        var bytesFreed: Int64?
        var chunksFreed: Int?
        var packsDeleted: Int?
        var packsRewritten: Int?
    }

    func validate() throws {
        if references.isEmpty { throw ValidationError("name at least one checkpoint") }
        if pending && dryRun { throw ValidationError("--pending and --dry-run exclude each other") }
        if remote.remote != nil && !pending { throw ValidationError("--remote goes with --pending (a remote's checkpoints are removed by its retention, `gc --remote`)") }
    }

    func run() async throws {
        if pending {
            let checkpointStore = try store.open(create: remote.remote != nil)
            let target = try remote.remote.map { _ in try remote.connect(checkpointStore) }
            var removed = [PendingCheckpoint]()
            for reference in references {
                guard case .step(let run, let step) = try CheckpointReference(parsing: reference) else {
                    throw CKStoreError(.invalidArgument, "rm --pending takes RUN@STEP, not \(reference)")
                }
                let gone = if let target { try await checkpointStore.removeRemotePending(target, run: run, step: step) } else { try checkpointStore.removePending(run: run, step: step) }
                if let gone { removed.append(gone) }
            }
            if json {
                try JSONOutput.print(Report(dryRun: false, removed: [], pending: removed))
                return
            }
            for entry in removed { print("removed pending \(entry.run)@\(entry.step) (\(entry.shards.count) of \(entry.shardCount) shards)") }
            if removed.isEmpty { Terminal.standardError("nothing pending at \(references.joined(separator: ", "))") }
            return
        }
        let checkpointStore = try store.open()
        var ids = [CheckpointID]()
        for reference in references { ids.append(try await checkpointStore.checkpoint(for: CheckpointReference(parsing: reference))) }
        if dryRun {
            let plan = try checkpointStore.planRemoval(ids, force: force)
            if json {
                try JSONOutput.print(Report(dryRun: true, removed: plan.deletedCheckpoints, bytesFreed: plan.bytesFreed, chunksFreed: plan.chunksFreed,
                                            packsDeleted: plan.packsDeleted, packsRewritten: plan.packsRewritten))
                return
            }
            for checkpoint in plan.deletedCheckpoints { print("would remove \(checkpoint.id.short) (\(checkpoint.run)@\(checkpoint.step))") }
            print("the next gc would then free \(ByteCount(plan.bytesFreed)) (\(plan.chunksFreed) chunks; \(plan.packsDeleted) packs deleted, \(plan.packsRewritten) rewritten)")
            return
        }
        let summaries = try ids.map { try checkpointStore.summary(of: $0) }
        try checkpointStore.remove(ids, force: force)
        if json {
            try JSONOutput.print(Report(dryRun: false, removed: summaries.map(GCReport.Deleted.init)))
            return
        }
        print("removed \(ids.map(\.short).joined(separator: ", ")); run `ckstore gc` to free their bytes")
    }
}

struct GC: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gc",
        abstract: "Apply retention policies, then free what no checkpoint needs.",
        discussion: """
            Deletes the checkpoints no rule keeps, drops parts as part rules say, removes chunks nothing
            references (as content or delta base), deletes packs with no live frame, rewrites packs whose
            dead share exceeds --repack-threshold, and removes orphan packs older than --grace. --dry-run
            says for every checkpoint whether it is kept and by which rules, and how many bytes would be freed.
            """
    )

    @OptionGroup var store: StoreOptions
    @Option(help: "Apply only this run's policy.") var run: String?
    @Flag(help: "Decide and report; change nothing.") var dryRun = false
    @Option(parsing: .unconditional, help: "Rewrite packs whose dead share exceeds this fraction.") var repackThreshold = 0.3
    @Option(parsing: .unconditional, help: "Remove orphan packs and temporary files older than this (90m, 1h, 2d); with --remote, how long an object stays condemned before it is deleted (at least 1m).") var grace = "1h"
    @Option(parsing: .unconditional, help: "Then delete the oldest checkpoints no rule protects until packs and catalogue fit in SIZE (500GiB, 2TB); rewrites every pack with a dead frame.") var budget: String?
    @Option(parsing: .unconditional, help: "Remove pending checkpoints (some shards committed, not all) whose oldest shard is older than this (90m, 24h, 2d; 0 removes every pending one).") var pendingAge = "24h"
    @Flag(help: "Print JSON.") var json = false
    @OptionGroup(title: "Remote (collect its garbage instead: this store's policies and pins applied to its runs, then objects no commit needs deleted in two phases, --grace apart)") var remote: RemoteOption
    @OptionGroup var progress: ProgressOptions

    func validate() throws {
        guard repackThreshold >= 0 && repackThreshold <= 1 else { throw ValidationError("--repack-threshold takes a fraction from 0 to 1") }
        try asValidation {
            _ = try budget.map { try ByteCount(parsing: $0) }
            _ = try RetentionPolicy.parseDuration(grace)
            _ = try RetentionPolicy.parseDuration(pendingAge)
        }
    }

    func run() async throws {
        if remote.remote != nil {
            let checkpointStore = try store.open(create: true)
            let report = try await checkpointStore.collectGarbage(on: try remote.connect(checkpointStore), grace: try RetentionPolicy.parseDuration(grace), dryRun: dryRun, pendingAge: try RetentionPolicy.parseDuration(pendingAge))
            if json {
                try JSONOutput.print(report)
            } else {
                var rows = report.kept.map { [$0.id.short, $0.run, String($0.step), "keep", $0.reasons.joined(separator: ", ")] }
                rows += report.deletedCheckpoints.map { [$0.id.short, $0.run, String($0.step), report.dryRun ? "would delete" : "deleted", ""] }
                rows.sort { ($0[1], Int64($0[2]) ?? 0) < ($1[1], Int64($1[2]) ?? 0) }
                print("remote \(report.remote):")
                print(Format.table(["ID", "RUN", "STEP", "DECISION", "KEPT BY"], rows))
                print("")
                print("\(report.dryRun ? "would free" : "freed") \(ByteCount(report.bytesFreed)) in \(report.deletedObjects) objects condemned at least \(RetentionPolicy.formatDuration(report.graceSeconds)) ago; \(report.dryRun ? "would condemn" : "condemned") \(report.condemnedObjects) more (\(ByteCount(report.condemnedBytes))), deleted by a gc after the grace period if still unused")
                if report.multipartAborted + report.multipartInProgress > 0 {
                    print("\(report.dryRun ? "would abort" : "aborted") \(report.multipartAborted) incomplete multipart uploads older than the grace period; \(report.multipartInProgress) younger left alone")
                }
            }
            return
        }
        var options = GCOptions(run: run, dryRun: dryRun)
        options.repackThreshold = repackThreshold
        options.orphanGrace = try RetentionPolicy.parseDuration(grace)
        options.budget = try budget.map { try ByteCount(parsing: $0).value }
        options.pendingAge = try RetentionPolicy.parseDuration(pendingAge)
        let renderer = progress.renderer()
        options.progress = renderer?.handler
        let report = try await store.open().gc(options)
        renderer?.finish()
        if json {
            try JSONOutput.print(report)
            return
        }
        var rows = report.kept.map { [$0.id.short, $0.run, String($0.step), "keep", $0.reasons.joined(separator: ", ") + ($0.dropped.isEmpty ? "" : "; drops " + $0.dropped.joined(separator: ", "))] }
        rows += report.deletedCheckpoints.map { [$0.id.short, $0.run, String($0.step), report.dryRun ? "would delete" : "deleted", ""] }
        rows.sort { ($0[1], Int64($0[2]) ?? 0) < ($1[1], Int64($1[2]) ?? 0) }
        print(Format.table(["ID", "RUN", "STEP", "DECISION", "KEPT BY"], rows))
        for pending in report.pendingRemoved {
            print("\(report.dryRun ? "would remove" : "removed") pending \(pending.run)@\(pending.step): \(pending.shards.count) of \(pending.shardCount) shards committed \(Format.date(pending.createdAt)), shards \(pending.missing.map(String.init).joined(separator: ", ")) never came")
        }
        let verb = report.dryRun ? "would free" : "freed"
        print("\n\(verb) \(ByteCount(report.bytesFreed)) on disk (\(report.chunksFreed) chunks; \(report.packsDeleted) packs deleted, \(report.packsRewritten) rewritten, \(report.orphansRemoved) orphan files)")
        if report.chunksReencoded > 0 {
            print("stored \(report.chunksReencoded) delta chunks in full again, so that the deleted checkpoints' frames they were based on could go")
        }
        if let outcome = report.budget {
            let verb = report.dryRun ? "would delete" : "deleted"
            print("budget \(ByteCount(outcome.budgetBytes)): \(ByteCount(outcome.diskBytesBefore)) before, \(ByteCount(outcome.diskBytesAfter)) after; \(verb) \(outcome.deletedForBudget.count) checkpoints beyond the policies to fit")
        }
        if report.bytesUnreferenced > report.bytesFreed {
            print("\(ByteCount(report.bytesUnreferenced - report.bytesFreed)) of unreferenced frames stay in packs below the repack threshold")
        }
    }
}
