import ArgumentParser
import CKStore
import CKStoreReports
import Foundation

struct Audit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "What the store, each run, each checkpoint and each part really cost.",
        discussion: """
            Logical bytes are what the checkpoints would take as plain files; stored bytes are frames
            (compressed chunks and manifests); disk bytes add pack framing and the catalogue. A checkpoint's
            exclusive bytes are what deleting it alone would free now; its added bytes are what its put wrote.
            --budget SIZE (500GiB, 2TB) adds headroom and a projection from each run's policy and observed
            growth; --what-if "keep-last=2,keep-best=1:loss:min" simulates a policy without changing anything.
            """
    )

    @OptionGroup var store: StoreOptions
    @Option(help: "Only this run (store totals stay store-wide).") var run: String?
    @Option(parsing: .unconditional, help: "A budget for the store on disk (500GiB, 2TB).") var budget: String?
    @Option(help: "Simulate a policy: rules as in `policy set`, comma-separated (keep-last=2,keep-best=1:loss:min).") var whatIf: String?
    @Option(help: "Write a self-contained HTML report to FILE.") var html: String?
    @Option(parsing: .unconditional, help: "How many of the largest tensors to list.") var top = 10
    @Flag(help: "Print JSON.") var json = false

    func validate() throws {
        guard top >= 0 else { throw ValidationError("--top may not be negative") }
        try asValidation {
            _ = try budget.map { try ByteCount(parsing: $0) }
            _ = try whatIf.map { try RetentionPolicy(parsingRules: $0) }
        }
    }

    func run() async throws {
        var options = AuditOptions(run: run, budget: try budget.map { try ByteCount(parsing: $0).value }, whatIf: try whatIf.map { try RetentionPolicy(parsingRules: $0) })
        options.largestTensors = top
        let report = try await store.open().audit(options)
        if let html {
            do {
                try Data(report.htmlDocument().utf8).write(to: URL(fileURLWithPath: html), options: .atomic)
            } catch {
                throw CKStoreError(.ioFailure, "cannot write the HTML report to \(html): \(error.localizedDescription)")
            }
        }
        if json {
            try JSONOutput.print(report)
            return
        }
        AuditText.print(report)
        if let html { print("\nwrote \(html)") }
    }
}

struct DiskUsage: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "du",
        abstract: "Store totals and one line per run (a short `audit`)."
    )

    @OptionGroup var store: StoreOptions
    @Flag(help: "Print JSON (the totals and runs of `audit --json`).") var json = false

    struct Output: Encodable {
        var logicalBytes: Int64
        var storedBytes: Int64
        var diskBytes: Int64
        var deadBytes: Int64
        var runs: [AuditReport.Run]
    }

    func run() async throws {
        var options = AuditOptions()
        options.largestTensors = 0
        let report = try await store.open().audit(options)
        if json {
            try JSONOutput.print(Output(logicalBytes: report.logicalBytes, storedBytes: report.storedBytes, diskBytes: report.diskBytes, deadBytes: report.deadBytes, runs: report.runs))
            return
        }
        print(AuditText.totalsLine(report))
        print(Format.table(["RUN", "CHECKPOINTS", "LOGICAL", "STORED", "EXCLUSIVE", "SHARE"], report.runs.map {
            [$0.run, String($0.checkpoints), String(describing: ByteCount($0.logicalBytes)), String(describing: ByteCount($0.storedBytes)),
             String(describing: ByteCount($0.exclusiveBytes)), AuditText.percent($0.share)]
        }))
    }
}

/// The text form of an audit.
enum AuditText {
    static func bytes(_ value: Int64) -> String { String(describing: ByteCount(value)) }
    static func percent(_ value: Double) -> String { String(format: "%.1f%%", value * 100) }

    static func totalsLine(_ report: AuditReport) -> String {
        "\(bytes(report.diskBytes)) on disk: \(bytes(report.storedBytes)) stored for \(bytes(report.logicalBytes)) of checkpoints "
            + String(format: "(%.2f× dedup, %.2f× compression)", report.dedupRatio, report.compressionRatio)
            + (report.deadBytes > 0 ? ", \(bytes(report.deadBytes)) awaiting gc" : "")
            + (report.pendingBytes > 0 ? ", \(bytes(report.pendingBytes)) in pending shards" : "")
    }

    static func print(_ report: AuditReport) {
        Swift.print(totalsLine(report))
        Swift.print("\(report.runCount) runs, \(report.checkpointCount) checkpoints, \(report.chunkCount) chunks, \(report.packCount) packs; catalogue \(bytes(report.catalogueBytes))")
        if report.missingReferences > 0 {
            Swift.print("warning: \(report.missingReferences) chunk references point at missing chunks; run `ckstore verify`")
        }
        Swift.print("\nRUNS")
        Swift.print(Format.table(["RUN", "CHECKPOINTS", "KEPT BY POLICY", "LOGICAL", "STORED", "EXCLUSIVE", "ADDED/CKPT (LAST 10)", "SHARE", "POLICY"], report.runs.map {
            [$0.run, String($0.checkpoints), String($0.keptByPolicy), bytes($0.logicalBytes), bytes($0.storedBytes), bytes($0.exclusiveBytes),
             bytes($0.averageAddedBytes), percent($0.share), $0.policy]
        }))
        Swift.print("\nCHECKPOINTS")
        Swift.print(Format.table(["ID", "RUN", "STEP", "LOGICAL", "ADDED", "EXCLUSIVE", "SHARED", ""], report.checkpoints.map {
            [$0.id.short, $0.run, String($0.step), bytes($0.logicalBytes), bytes($0.addedBytes), bytes($0.exclusiveBytes), bytes($0.sharedBytes), $0.pinned ? "pinned" : ""]
        }))
        Swift.print("\nPARTS")
        Swift.print(Format.table(["PART", "LOGICAL", "STORED"], report.parts.map { [$0.part, bytes($0.logicalBytes), bytes($0.storedBytes)] }))
        if !report.largestTensors.isEmpty {
            Swift.print("\nLARGEST TENSORS")
            Swift.print(Format.table(["RUN", "FILE", "TENSOR", "STORED", "LOGICAL"], report.largestTensors.map {
                [$0.run, $0.file, $0.tensor, bytes($0.storedBytes), bytes($0.logicalBytes)]
            }))
        }
        if let budget = report.budget {
            Swift.print("\nBUDGET \(bytes(budget.budgetBytes))")
            Swift.print(budget.fits ? "\(bytes(budget.headroomBytes)) headroom" : "over budget by \(bytes(-budget.headroomBytes))")
            if let steady = budget.steadyStateBytes {
                Swift.print("steady state under the policies: \(bytes(steady)) (\(steady <= budget.budgetBytes ? "fits" : "does not fit"))")
            } else {
                Swift.print("steady state: unbounded (a run's policy keeps a growing number of checkpoints)")
            }
            if let more = budget.moreCheckpoints { Swift.print("\(more) more checkpoints fit before the budget is exceeded") }
            Swift.print(Format.table(["RUN", "BYTES/CKPT", "KEPT AT STEADY STATE", "STEADY STATE", "MORE CHECKPOINTS"], budget.runs.map {
                [$0.run, bytes($0.bytesPerCheckpoint), $0.keptAtSteadyState.map(String.init) ?? "unbounded",
                 $0.steadyStateBytes.map(bytes) ?? "unbounded", $0.moreCheckpoints.map(String.init) ?? "no limit"]
            }))
        }
        if let whatIf = report.whatIf {
            Swift.print("\nWHAT IF \(whatIf.policy)\(whatIf.run.map { " on run " + $0 } ?? "")")
            Swift.print("would delete \(whatIf.deleted.count) checkpoints\(whatIf.deleted.isEmpty ? "" : ": " + whatIf.deleted.map { "\($0.run)@\($0.step)" }.joined(separator: ", "))"
                + (whatIf.slimmed > 0 ? "; drop parts of \(whatIf.slimmed)" : ""))
            Swift.print("would free \(bytes(whatIf.storedBytesFreed)) of frames, \(bytes(whatIf.diskBytesFreed)) on disk")
        }
    }
}
