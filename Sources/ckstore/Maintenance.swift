import ArgumentParser
import CKStore
import Foundation

struct Verify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check the store's integrity; exit 1 when anything a checkpoint needs is damaged or missing.",
        discussion: """
            Quick (default): catalogue integrity, every needed chunk in an existing pack at a valid offset,
            pack sizes and trailers agreeing with the catalogue, manifests parsing. --full also reads,
            decodes and re-hashes every frame; --sample P does that for a random P% of the packs. With REFs,
            exactly what restoring those checkpoints needs is checked, fully.
            """
    )

    @OptionGroup var store: StoreOptions
    @Argument(help: "Checkpoints to check fully (id prefix, RUN@STEP, RUN@latest).") var references: [String] = []
    @Flag(help: "Read, decode and re-hash every frame.") var full = false
    @Option(parsing: .unconditional, help: "Fully check a random PERCENT of the packs (at least one).") var sample: Double?
    @Option(parsing: .unconditional, help: "Report pending checkpoints (some shards committed, not all) whose oldest shard is older than this (90m, 24h, 2d).") var pendingAge = "24h"
    @Flag(help: "Print JSON.") var json = false
    @OptionGroup(title: "Remote (check its objects instead: quick checks that every object a checkpoint needs exists, --full reads and hashes them)") var remote: RemoteOption
    @OptionGroup var progress: ProgressOptions

    func validate() throws {
        if full && sample != nil { throw ValidationError("--full and --sample exclude each other") }
        if let sample, !(sample > 0 && sample <= 100) { throw ValidationError("--sample takes a percentage above 0 and at most 100") }
        _ = try asValidation { try RetentionPolicy.parseDuration(pendingAge) }
    }

    func run() async throws {
        if remote.remote != nil {
            let checkpointStore = try store.open(create: true)
            let depth: VerifyDepth = full ? .full : sample.map { .sample(percent: $0) } ?? .quick
            let report = try await checkpointStore.verify(remote: try remote.connect(checkpointStore), depth: depth, pendingAge: try RetentionPolicy.parseDuration(pendingAge))
            if json {
                try JSONOutput.print(report)
            } else {
                print("\(report.mode) check of remote \(report.remote): \(report.checkpoints) checkpoints, \(report.packs) packs, \(report.objectsHashed) objects (\(ByteCount(report.bytesHashed))) hashed in \(String(format: "%.2f", report.seconds)) s: \(report.ok ? "ok" : "DAMAGE FOUND")")
                for problem in report.problems {
                    print("  \(problem.object): \(problem.problem)")
                    if !problem.checkpoints.isEmpty { print("    breaks \(problem.checkpoints.map(\.short).joined(separator: ", "))") }
                }
                for pending in report.stalePending { print(Self.staleLine(pending)) }
            }
            if !report.ok { throw ExitCode(1) }
            return
        }
        let checkpointStore = try store.open()
        var ids = [CheckpointID]()
        for reference in references {
            ids.append(try await checkpointStore.checkpoint(for: CheckpointReference(parsing: reference)))
        }
        let depth: VerifyDepth = full ? .full : sample.map { .sample(percent: $0) } ?? .quick
        var options = VerifyOptions(depth: depth, checkpoints: ids)
        options.pendingAge = try RetentionPolicy.parseDuration(pendingAge)
        let renderer = progress.renderer()
        options.progress = renderer?.handler
        let report = try await checkpointStore.verify(options)
        renderer?.finish()
        if json {
            try JSONOutput.print(report)
        } else {
            print(Self.text(report))
        }
        if !report.ok { throw ExitCode(1) }
    }

    static func text(_ report: VerifyReport) -> String {
        var lines = [String]()
        let checked = report.chunksChecked > 0
            ? ", \(report.chunksChecked) chunks (\(ByteCount(report.logicalBytesChecked))) re-hashed"
            : ""
        lines.append("\(report.mode) check of \(report.packsChecked) packs\(checked) in \(String(format: "%.2f", report.seconds)) s: \(report.ok ? "ok" : "DAMAGE FOUND")")
        for problem in report.problems { lines.append("  problem: \(problem)") }
        for damage in report.damage {
            lines.append("  \(damage.missing ? "missing" : "damaged") chunk \(damage.chunk.hex.prefix(16)): \(damage.problem)")
            for affected in damage.affects {
                let place = [affected.file, affected.tensor.map { "tensor \($0)" }].compactMap { $0 }.joined(separator: ", ")
                lines.append("    breaks \(affected.checkpoint.short) (\(affected.run)@\(affected.step))\(place.isEmpty ? "" : ": " + place)")
            }
        }
        if !report.affectedCheckpoints.isEmpty {
            lines.append("affected checkpoints: \(report.affectedCheckpoints.map(\.short).joined(separator: ", "))")
        }
        for pending in report.stalePending { lines.append(staleLine(pending)) }
        return lines.joined(separator: "\n")
    }

    /// A pending checkpoint that has waited too long for its other shards.
    static func staleLine(_ pending: PendingCheckpoint) -> String {
        "  stale pending: \(pending.run)@\(pending.step) has \(pending.shards.count) of \(pending.shardCount) shards since \(Format.date(pending.createdAt)); shards \(pending.missing.map(String.init).joined(separator: ", ")) never came (the next gc removes it)"
    }
}

struct Repair: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Rebuild a missing or damaged catalogue from the packs, and set aside damaged packs.",
        discussion: """
            Reads and checks every frame of every pack. A missing or damaged ckstore.db is moved aside and
            rebuilt from the packs' frames and manifests. Chunks whose frames are gone or damaged leave the
            catalogue, so the next put of that content stores it again; the intact frames of a damaged pack
            are copied into a new pack and the damaged pack is moved to quarantine/. Reports the
            checkpoints that are incomplete afterwards. Exit 1 when any are.
            """
    )

    @OptionGroup var store: StoreOptions
    @Flag(help: "Report what would be done; change nothing.") var dryRun = false
    @Flag(help: "Print JSON.") var json = false
    @OptionGroup var progress: ProgressOptions

    func run() async throws {
        let renderer = progress.renderer()
        let report = try await CheckpointStore.repair(at: store.path, dryRun: dryRun, progress: renderer?.handler)
        renderer?.finish()
        if json {
            try JSONOutput.print(report)
        } else {
            var lines = [String]()
            let verb = dryRun ? "would be" : "was"
            if report.catalogueRebuilt {
                lines.append("catalogue \(verb) rebuilt from the packs (\(report.catalogueProblem ?? "damaged"))")
                if let moved = report.damagedCatalogueMovedTo { lines.append("the damaged catalogue was moved to \(moved)") }
            } else {
                lines.append("catalogue is sound")
            }
            lines.append("\(report.packsScanned) packs scanned, \(report.framesIntact) intact frames, \(report.checkpoints) checkpoints")
            if !report.droppedChunks.isEmpty { lines.append("\(report.droppedChunks.count) chunks \(dryRun ? "would be" : "were") dropped from the catalogue (their frames are gone or damaged)") }
            for pack in report.quarantinedPacks { lines.append("pack \(pack) \(dryRun ? "would be" : "was") moved to quarantine/ (\(report.salvagedFrames) intact frames kept in a new pack)") }
            for skipped in report.skippedManifests { lines.append("skipped manifest \(skipped)") }
            for id in report.incompleteCheckpoints { lines.append("incomplete: checkpoint \(id.short) needs chunks the store no longer has") }
            print(lines.joined(separator: "\n"))
        }
        if !report.incompleteCheckpoints.isEmpty { throw ExitCode(1) }
    }
}
