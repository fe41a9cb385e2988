import ArgumentParser
import BenchSupport
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// ckstore beside restic, borg and zstd on simulated training series, in one run: each tool stores the
/// whole series checkpoint by checkpoint into a fresh repository, then restores the newest checkpoint.
/// Reports stored bytes, median put time per checkpoint, restore time and peak memory, and checks the
/// targets of issue 6 against restic and borg measured in the same run.
@main
struct Compare: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ckstore-compare",
        abstract: "Measure ckstore beside restic, borg and zstd on simulated training series."
    )

    @Option(help: "Folder holding the release ckstore and ckstore-gen binaries.") var bin = "../.build/release"
    @Option(help: "Scratch folder (about 3 times one series' size).") var work = "/tmp/ckstore-compare"
    @Option(help: "Model parameters per checkpoint.") var parameters = 25_000_000
    @Option(help: "Checkpoints per series.") var checkpoints = 8
    @Option(help: "Optimizer steps simulated between checkpoints.") var every = 20
    @Option(parsing: .upToNextOption, help: "Series to run: fp32, bf16, frozen.") var variants = ["fp32", "bf16", "frozen"]
    @Option(help: "Restores of the newest checkpoint per tool (the median is reported).") var restores = 3
    @Option(help: "zstd level for ckstore's puts (default: the store's).") var level: Int?
    @Option(help: "Maximum delta depth for ckstore's puts (default: the store's).") var maxDeltaDepth: Int?
    @Option(parsing: .upToNextOption, help: "Tools to run (default: ckstore and every peer installed).") var tools: [String] = []
    @Flag(help: "Also run ckstore with weights predicted from the optimizer (`init --predict-weights on`), as the tool ckstore+predict.") var predictWeights = false
    @Option(help: "An earlier ckstore binary to put every series with beside this one (`make compare-previous REV=…`): reports bytes added per checkpoint and put and restore times as ratios.") var previous: String?
    @Option(help: "What to call the --previous binary in tables (its revision).") var previousLabel = "previous"
    @Option(parsing: .upToNextOption, help: ArgumentHelp("Folders of checkpoint-N folders (a real trainer's output) to measure instead of generated series.", discussion: "Each is labelled by its folder name and held to the stored-bytes target of fp32, bf16 or frozen when its name contains one.")) var folders: [String] = []

    /// One tool's way of storing and restoring a checkpoint folder.
    struct Tool {
        var name: String
        /// A command that loads the tool's program and libraries, run after the page cache is dropped:
        /// every tool starts warm, so a measurement is the work on the data, not loading Swift's,
        /// Python's or Go's runtime from disk.
        var warmUp: [String]
        var setUp: (_ repository: String) throws -> Void
        var put: (_ repository: String, _ folder: String, _ index: Int) -> [String]
        /// Restores checkpoint `index` into `destination`; returns the command and where the folder lands.
        var restore: (_ repository: String, _ folder: String, _ index: Int, _ destination: String) -> (command: [String], restored: String)
    }

    func run() throws {
        setenv("RESTIC_PASSWORD", "ckstore-benchmark", 1)
        setenv("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes", 1)
        setenv("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes", 1)
        setenv("BORG_BASE_DIR", work + "/borg-home", 1)
        let ckstore = bin + "/ckstore"
        let extra = (level.map { ["--level", String($0)] } ?? []) + (maxDeltaDepth.map { ["--max-delta-depth", String($0)] } ?? [])
        var available: [Tool] = [
            Tool(name: "ckstore", warmUp: [ckstore, "--help"], setUp: { _ in }, put: { repository, folder, _ in
                [ckstore, "put", folder, "--store", repository, "--run", "bench"] + extra
            }, restore: { repository, _, _, destination in
                ([ckstore, "get", "bench@latest", destination, "--store", repository], destination)
            }),
        ]
        if let previous {
            available.append(Tool(name: "ckstore@" + previousLabel, warmUp: [previous, "--help"], setUp: { _ in }, put: { repository, folder, _ in
                [previous, "put", folder, "--store", repository, "--run", "bench"] + extra
            }, restore: { repository, _, _, destination in
                ([previous, "get", "bench@latest", destination, "--store", repository], destination)
            }))
        }
        if predictWeights {
            available.append(Tool(name: "ckstore+predict", warmUp: [ckstore, "--help"], setUp: { repository in
                _ = try Command.measure([ckstore, "init", "--store", repository, "--predict-weights", "on"])
            }, put: { repository, folder, _ in
                [ckstore, "put", folder, "--store", repository, "--run", "bench"] + extra
            }, restore: { repository, _, _, destination in
                ([ckstore, "get", "bench@latest", destination, "--store", repository], destination)
            }))
        }
        if Command.exists("restic") {
            available.append(Tool(name: "restic", warmUp: ["restic", "version"], setUp: { repository in
                _ = try Command.measure(["restic", "init", "--repo", repository, "--repository-version", "2"])
            }, put: { repository, folder, _ in
                ["restic", "-r", repository, "backup", "--compression", "auto", "-q", folder]
            }, restore: { repository, folder, _, destination in
                (["restic", "-r", repository, "restore", "latest", "--target", destination], destination + folder)
            }))
        }
        if Command.exists("borg") {
            available.append(Tool(name: "borg", warmUp: ["borg", "--version"], setUp: { repository in
                _ = try Command.measure(["borg", "init", "--encryption", "none", repository])
            }, put: { repository, folder, index in
                ["borg", "create", "--compression", "zstd,3", "\(repository)::checkpoint-\(index)", folder]
            }, restore: { repository, folder, index, destination in
                (["/bin/sh", "-c", "mkdir -p '\(destination)' && cd '\(destination)' && borg extract '\(repository)::checkpoint-\(index)'"], destination + folder)
            }))
        }
        if Command.exists("zstd") {
            available.append(Tool(name: "zstd -3 -T2", warmUp: ["zstd", "--version"], setUp: { repository in
                try FileManager.default.createDirectory(atPath: repository, withIntermediateDirectories: true)
            }, put: { repository, folder, index in
                let names = (try? FileManager.default.contentsOfDirectory(atPath: folder).sorted()) ?? []
                let target = "\(repository)/\(index)"
                return ["/bin/sh", "-c", "mkdir -p '\(target)' && " + names.map { "zstd -q -3 -T2 '\(folder)/\($0)' -o '\(target)/\($0).zst'" }.joined(separator: " && ")]
            }, restore: { repository, folder, index, destination in
                let names = (try? FileManager.default.contentsOfDirectory(atPath: folder).sorted()) ?? []
                return (["/bin/sh", "-c", "mkdir -p '\(destination)' && " + names.map { "zstd -q -d -T2 '\(repository)/\(index)/\($0).zst' -o '\(destination)/\($0)'" }.joined(separator: " && ")], destination)
            }))
        }
        let selected = tools.isEmpty ? available : available.filter { tools.contains($0.name) }
        print("tools: \(selected.map(\.name).joined(separator: ", ")) (missing peers: `make bench-deps`)")
        print("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, \(ProcessInfo.processInfo.physicalMemory >> 30) GiB")

        var tables = [String]()
        if folders.isEmpty {
            for variant in variants {
                tables.append(try runSeries(variant: variant, tools: selected))
            }
        } else {
            for folder in folders {
                let label = URL(fileURLWithPath: folder).lastPathComponent
                tables.append(try runSeries(label: label, folder: folder, target: ["fp32", "bf16", "frozen"].first { label.contains($0) }, tools: selected))
            }
        }
        print("")
        print(tables.joined(separator: "\n\n"))
    }

    /// Generates (once) and measures one simulated series.
    func runSeries(variant: String, tools: [Tool]) throws -> String {
        let series = "\(work)/series-\(variant)-\(parameters)-\(checkpoints)x\(every)"
        let folders = (try? FileManager.default.contentsOfDirectory(atPath: series))?.filter { $0.hasPrefix("checkpoint-") } ?? []
        if folders.count != checkpoints {
            try? FileManager.default.removeItem(atPath: series)
            print("generating the \(variant) series in \(series) …")
            _ = try Command.measure([bin + "/ckstore-gen", series, "--series", variant, "--parameters", String(parameters), "--checkpoints", String(checkpoints), "--every", String(every)])
        }
        return try runSeries(label: variant, folder: series, target: variant, tools: tools)
    }

    /// Stores and restores the checkpoint folders of `series` with every tool; returns its Markdown table.
    func runSeries(label variant: String, folder series: String, target: String?, tools: [Tool]) throws -> String {
        var folders = try FileManager.default.contentsOfDirectory(atPath: series).filter { $0.hasPrefix("checkpoint-") }
        guard !folders.isEmpty else { throw ValidationError("\(series) holds no checkpoint-N folders") }
        folders.sort { Int($0.dropFirst("checkpoint-".count)) ?? 0 < Int($1.dropFirst("checkpoint-".count)) ?? 0 }
        let paths = folders.map { series + "/" + $0 }
        let sizes = paths.map { Double(folderSize($0)) }
        let logical = sizes.reduce(0, +)
        print(String(format: "\n%@: %d checkpoints of %.1f MiB (%.2f GiB in all)", variant, paths.count, sizes[0] / 1_048_576, logical / 1_073_741_824))

        let canDropCaches = FileManager.default.isWritableFile(atPath: "/proc/sys/vm/drop_caches")
        func settle(warming inputs: [String], tool: Tool) throws {
            _ = try Command.measure(["sync"])
            if canDropCaches { _ = try Command.shell("echo 3 > /proc/sys/vm/drop_caches") }
            for input in inputs { _ = try Command.shell("find '\(input)' -type f -exec cat {} + > /dev/null") }
            _ = try Command.measure(tool.warmUp)
            try pretouchFreeMemory(gibibytes: 2)
        }

        struct Result {
            var name: String
            var stored: Int64 = 0
            var puts: [BenchSupport.Measurement] = []
            /// The repository's growth with each put: for ckstore, of its packs (frames and manifests), which
            /// leaves out the catalogue and the fixed 4 MiB reserve a store keeps for `rm` and `gc`.
            var added: [Int64] = []
            var restores: [BenchSupport.Measurement] = []
            var peakKiB: Int { (puts + restores).map(\.peakKiB).max() ?? 0 }
        }
        var results = [Result]()
        for tool in tools {
            let repository = "\(work)/repo-\(tool.name.split(separator: " ")[0])"
            try? FileManager.default.removeItem(atPath: repository)
            try? FileManager.default.removeItem(atPath: work + "/borg-home")
            try tool.setUp(repository)
            var result = Result(name: tool.name)
            let grows = tool.name.hasPrefix("ckstore") ? repository + "/packs" : repository
            var before = folderSize(grows)
            for (index, path) in paths.enumerated() {
                try settle(warming: [path], tool: tool)
                let measured = try Command.measure(tool.put(repository, path, index))
                result.puts.append(measured)
                let after = folderSize(grows)
                result.added.append(after - before)
                before = after
                print(String(format: "  %-12@ put %@: %6.2f s  %6.0f MB/s  peak %6.1f MiB", tool.name as NSString, folders[index] as NSString, measured.seconds, sizes[index] / measured.seconds / 1e6, Double(measured.peakKiB) / 1024))
            }
            _ = try Command.measure(["sync"])
            result.stored = folderSize(repository)
            let newest = paths.count - 1
            for attempt in 1...restores {
                let destination = "\(work)/restored"
                try? FileManager.default.removeItem(atPath: destination)
                try settle(warming: [repository], tool: tool)
                let (command, restored) = tool.restore(repository, paths[newest], newest, destination)
                let measured = try Command.measure(command)
                result.restores.append(measured)
                print(String(format: "  %-12@ restore newest: %6.2f s  peak %6.1f MiB", tool.name as NSString, measured.seconds, Double(measured.peakKiB) / 1024))
                if attempt == 1 {
                    // Outside the timing: the restore must give the checkpoint back byte for byte.
                    _ = try Command.measure(["diff", "-r", paths[newest], restored])
                }
            }
            try? FileManager.default.removeItem(atPath: "\(work)/restored")
            try? FileManager.default.removeItem(atPath: repository)
            results.append(result)
        }

        let newestBytes = sizes[sizes.count - 1]
        var lines = [
            "### \(variant): \(paths.count) checkpoints of \(String(format: "%.0f", sizes[0] / 1_048_576)) MiB (\(String(format: "%.2f", logical / 1_073_741_824)) GiB logical)",
            "",
            "| tool | stored MiB | of logical | put s/checkpoint (median) | put MB/s | restore newest s (median) | restore MB/s | peak MiB |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for result in results {
            let put = median(result.puts.map(\.seconds)), restore = median(result.restores.map(\.seconds))
            lines.append(String(format: "| %@ | %.1f | %.3f | %.2f | %.0f | %.2f | %.0f | %.0f |", result.name as NSString, Double(result.stored) / 1_048_576,
                                Double(result.stored) / logical, put, logical / Double(paths.count) / put / 1e6, restore, newestBytes / restore / 1e6, Double(result.peakKiB) / 1024))
        }
        if let head = results.first(where: { $0.name == "ckstore" }), let earlier = results.first(where: { $0.name == "ckstore@" + previousLabel }) {
            lines += [""] + Self.sideBySide(head: (head.added, head.puts.map(\.seconds), head.restores.map(\.seconds)),
                                            earlier: (earlier.added, earlier.puts.map(\.seconds), earlier.restores.map(\.seconds)),
                                            label: previousLabel, folders: folders)
        }
        for ours in results where ours.name == "ckstore" || ours.name == "ckstore+predict" {
            let storedTarget = target.flatMap { ["fp32": 0.65, "bf16": 0.8, "frozen": 0.4][$0] }
            lines.append("")
            if target == "fp32" {
                // Issue 18: the whole store at most 0.70 of logical on the real fp32 series.
                let share = Double(ours.stored) / logical
                lines.append("- \(ours.name): stored \(String(format: "%.3f", share)) of logical (issue 18 target ≤ 0.70: \(share <= 0.70 ? "met" : "NOT met"))")
            }
            for peer in results where peer.name == "restic" || peer.name == "borg" {
                let stored = Double(ours.stored) / Double(peer.stored)
                let put = median(peer.puts.map(\.seconds)) / median(ours.puts.map(\.seconds))
                let restore = median(peer.restores.map(\.seconds)) / median(ours.restores.map(\.seconds))
                func f(_ value: Double) -> String { String(format: "%.2f", value) }
                func verdict(_ met: Bool) -> String { met ? "met" : "NOT met" }
                // Ratios of medians in binary floating point: the median of 0.93 s and 0.96 s is
                // 0.9450000000000001, and 1.89 s over it 1.9999999999999998, which is 2×, not short of it.
                func atLeast(_ value: Double, _ target: Double) -> Bool { value >= target * (1 - 1e-9) }
                func atMost(_ value: Double, _ target: Double) -> Bool { value <= target * (1 + 1e-9) }
                let putTarget = peer.name == "restic" ? 3.0 : 2
                var checks = ["put \(f(put))× \(peer.name)'s throughput (target ≥ \(putTarget)×: \(verdict(atLeast(put, putTarget))))"]
                if peer.name == "restic" {
                    if let storedTarget { checks.insert("stored \(f(stored))× restic's (target ≤ \(storedTarget)×: \(verdict(atMost(stored, storedTarget))))", at: 0) }
                    checks.append("restore of the newest \(f(restore))× restic's speed (target ≥ 3×: \(verdict(atLeast(restore, 3))))")
                } else {
                    checks.insert("stored \(f(stored))× \(peer.name)'s", at: 0)
                }
                lines.append("- \(ours.name) vs \(peer.name): " + checks.joined(separator: "; "))
            }
            let peak = Double(ours.peakKiB) / 1024
            lines.append("- \(ours.name) peak memory \(String(format: "%.0f", peak)) MiB (target < 512 MiB: \(peak < 512 ? "met" : "NOT met"))")
        }
        let table = lines.joined(separator: "\n")
        print("\n" + table)
        return table
    }

    /// This build beside an earlier one on one series: bytes each checkpoint added, HEAD ÷ earlier, and
    /// the ratio of the medians of put and restore times (above 1: HEAD is slower).
    static func sideBySide(head: (added: [Int64], puts: [Double], restores: [Double]), earlier: (added: [Int64], puts: [Double], restores: [Double]),
                           label: String, folders: [String]) -> [String] {
        var lines = [
            "| checkpoint | MB added, HEAD | MB added, \(label) | HEAD ÷ \(label) |",
            "| --- | ---: | ---: | ---: |",
        ]
        for (index, folder) in folders.enumerated() where index < head.added.count && index < earlier.added.count {
            let ours = Double(head.added[index]), theirs = Double(earlier.added[index])
            lines.append(String(format: "| %@ | %.1f | %.1f | %.4f |", folder as NSString, ours / 1e6, theirs / 1e6, theirs > 0 ? ours / theirs : .nan))
        }
        let ours = Double(head.added.reduce(0, +)), theirs = Double(earlier.added.reduce(0, +))
        lines.append(String(format: "| all | %.1f | %.1f | %.4f |", ours / 1e6, theirs / 1e6, theirs > 0 ? ours / theirs : .nan))
        lines.append("")
        lines.append(String(format: "- put time, median per checkpoint: HEAD ÷ %@ = %.3f (%.2f s against %.2f s)", label as NSString,
                            median(head.puts) / median(earlier.puts), median(head.puts), median(earlier.puts)))
        lines.append(String(format: "- restore of the newest, median: HEAD ÷ %@ = %.3f (%.2f s against %.2f s)", label as NSString,
                            median(head.restores) / median(earlier.restores), median(head.restores), median(earlier.restores)))
        return lines
    }
}
