import ArgumentParser
import BenchSupport
@_spi(Benchmarking) import CKStore
import CKStoreTestSupport
import Foundation

/// Put and get throughput and peak memory of ckstore on a generated trainer-shaped checkpoint series,
/// beside `cp -r` and `zstd -3 -T2` of the same files, measured interleaved in one run; medians reported.
@main
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ckstore-bench", abstract: "Measure ckstore put/get beside cp and zstd.")

    @Option(help: "Folder holding the release ckstore binary.") var bin = "../.build/release"
    @Option(help: "Scratch folder (several GiB).") var work = "/tmp/ckstore-bench"
    @Option(help: "Model parameters per checkpoint (12 bytes each on disk: weights plus two Adam moments).") var parameters = 96_000_000
    @Option(help: "Repetitions of each measurement (the median is reported).") var repetitions = 3
    @Option(help: .hidden) var generate: String?
    @Flag(help: "Only the catalogue benchmark: audit, gc planning and sweep over a synthetic catalogue.") var gcOnly = false
    @Option(help: "Checkpoints in the synthetic catalogue.") var gcCheckpoints = 1000
    @Option(help: "Chunks per checkpoint in the synthetic catalogue.") var gcChunks = 2000

    func run() throws {
        let ckstore = bin + "/ckstore"
        let series = work + "/series"
        if let generate {
            // Full training from one checkpoint to the next, except the embeddings and the first layer (frozen).
            var checkpoint = TrainerCheckpoint(seed: 42, layout: TrainerCheckpoint.layout(parameterCount: parameters))
            for _ in 0..<2 {
                checkpoint.train(steps: 100) { $0.hasPrefix("embed.") || $0.hasPrefix("layers.0.") }
                try checkpoint.write(to: "\(generate)/checkpoint-\(checkpoint.step)")
            }
            return
        }
        if gcOnly {
            try catalogueBenchmark(ckstore: ckstore)
            return
        }
        if !FileManager.default.fileExists(atPath: series + "/checkpoint-200") {
            try? FileManager.default.removeItem(atPath: series)
            print("generating the series in \(series) …")
            // In a child process: peak memory is read per child, and a child starts from its parent's size.
            _ = try Command.measure([CommandLine.arguments[0], "--generate", series, "--parameters", String(parameters)])
        }
        let first = series + "/checkpoint-100", second = series + "/checkpoint-200"
        let bytes = Double(folderSize(first))
        let files = try FileManager.default.contentsOfDirectory(atPath: first).sorted()
        print(String(format: "checkpoint: %.1f MiB in %d files (%@)", bytes / 1_048_576, files.count, files.joined(separator: ", ")))

        var results: [String: [BenchSupport.Measurement]] = [:]
        func record(_ name: String, _ measurement: BenchSupport.Measurement) {
            results[name, default: []].append(measurement)
            print(String(format: "  %-28@ %7.3f s  %7.0f MB/s  peak %6.1f MiB", name as NSString, measurement.seconds, bytes / measurement.seconds / 1e6, Double(measurement.peakKiB) / 1024))
        }
        let scratch = work + "/scratch"
        let canDropCaches = FileManager.default.isWritableFile(atPath: "/proc/sys/vm/drop_caches")
        /// Every command starts from the same state: dirty pages written back, the page cache emptied (when
        /// allowed), then its input read once, so inputs are warm and the rest of memory is free, and free
        /// memory touched (see `pretouchFreeMemory`).
        func settle(warming inputs: [String]) throws {
            _ = try Command.measure(["sync"])
            _ = try Command.measure(["sync"])
            if canDropCaches { _ = try Command.shell("echo 3 > /proc/sys/vm/drop_caches") }
            for input in inputs { _ = try Command.shell("find '\(input)' -type f -exec cat {} + > /dev/null") }
            try pretouchFreeMemory(gibibytes: 3)
        }
        func remove(_ path: String) { try? FileManager.default.removeItem(atPath: path) }
        print(canDropCaches ? "page cache dropped before each command, inputs pre-read" : "page cache not droppable here: inputs stay warm from earlier runs")

        for repetition in 1...repetitions {
            print("repetition \(repetition)")
            remove(scratch)
            try FileManager.default.createDirectory(atPath: scratch + "/zstd", withIntermediateDirectories: true)
            try settle(warming: [first])
            let zstdLine = files.map { "zstd -q -3 -T2 -f '\(first)/\($0)' -o '\(scratch)/zstd/\($0).zst'" }.joined(separator: " && ")
            record("zstd -3 -T2 (per file)", try Command.shell(zstdLine))
            let zstdBytes = folderSize(scratch + "/zstd")
            remove(scratch + "/zstd")
            try settle(warming: [first])
            record("cp -r", try Command.measure(["cp", "-r", first, scratch + "/copy"]))
            remove(scratch + "/copy")
            let store = scratch + "/store"
            try settle(warming: [first])
            record("ckstore put (new data)", try Command.measure([ckstore, "put", first, "--store", store, "--run", "bench"]))
            try settle(warming: [first])
            record("ckstore put (already stored)", try Command.measure([ckstore, "put", first, "--store", store, "--run", "bench", "--step", "1"]))
            try settle(warming: [store])
            record("ckstore get", try Command.measure([ckstore, "get", "bench@100", scratch + "/restored", "--store", store]))
            if repetition == repetitions {
                let diff = try Command.measure(["diff", "-r", first, scratch + "/restored"])
                print("restored checkpoint identical to the original (diff -r took \(String(format: "%.1f", diff.seconds)) s)")
            }
            remove(scratch + "/restored")
            // Integrity: verify --full re-reads, decodes and re-hashes every frame of the checkpoint.
            try settle(warming: [first])
            record("sha256sum", try Command.shell(files.map { "sha256sum '\(first)/\($0)'" }.joined(separator: " && ")))
            try settle(warming: [store])
            record("ckstore verify --full", try Command.measure([ckstore, "verify", "--full", "--store", store]))
            if canDropCaches {
                // Cold cache: what a restore on a freshly started machine sees (nothing pre-read).
                try settle(warming: [])
                record("cp -r (cold cache)", try Command.measure(["cp", "-r", first, scratch + "/copy"]))
                remove(scratch + "/copy")
                try settle(warming: [])
                record("ckstore get (cold cache)", try Command.measure([ckstore, "get", "bench@100", scratch + "/restored", "--store", store]))
                remove(scratch + "/restored")
            }
            try settle(warming: [second])
            record("ckstore put (next, frozen base)", try Command.measure([ckstore, "put", second, "--store", store, "--run", "bench"]))
            if repetition == repetitions {
                let stored = folderSize(store + "/packs")
                print(String(format: "stored after both checkpoints: %.1f MiB of %.1f MiB logical; zstd -3 alone on the first: %.1f MiB", Double(stored) / 1_048_576, (bytes + Double(folderSize(second))) / 1_048_576, Double(zstdBytes) / 1_048_576))
            }
        }

        func med(_ name: String) -> Double { median(results[name, default: []].map(\.seconds)) }
        func peak(_ name: String) -> Double { Double(results[name, default: []].map(\.peakKiB).max() ?? 0) / 1024 }
        let zstd = med("zstd -3 -T2 (per file)"), copy = med("cp -r")
        let putNew = med("ckstore put (new data)"), putDedup = med("ckstore put (already stored)"), get = med("ckstore get")
        print("")
        print("| measurement | median s | MB/s | peak MiB | target | met |")
        print("| --- | ---: | ---: | ---: | --- | --- |")
        func row(_ name: String, _ target: String, _ met: Bool?) {
            let seconds = med(name)
            print(String(format: "| %@ | %.3f | %.0f | %.1f | %@ | %@ |", name, seconds, bytes / seconds / 1e6, peak(name), target, met.map { $0 ? "yes" : "**no**" } ?? ""))
        }
        row("zstd -3 -T2 (per file)", "reference", nil)
        row("cp -r", "reference", nil)
        row("ckstore put (new data)", String(format: "≥ 0.5× zstd: %.2f×", zstd / putNew), zstd / putNew >= 0.5)
        row("ckstore put (already stored)", String(format: "≥ 1 GB/s: %.2f GB/s", bytes / putDedup / 1e9), bytes / putDedup >= 1e9)
        row("ckstore get", String(format: "≥ 0.5× cp -r: %.2f×", copy / get), copy / get >= 0.5)
        row("ckstore put (next, frozen base)", "", nil)
        let sha = med("sha256sum"), verify = med("ckstore verify --full")
        row("sha256sum", "reference", nil)
        row("ckstore verify --full", String(format: "≥ 0.7× sha256sum: %.2f×", sha / verify), sha / verify >= 0.7)
        if canDropCaches {
            let coldCopy = med("cp -r (cold cache)"), coldGet = med("ckstore get (cold cache)")
            row("cp -r (cold cache)", "reference", nil)
            row("ckstore get (cold cache)", String(format: "≥ 0.5× cp -r (cold): %.2f×", coldCopy / coldGet), coldCopy / coldGet >= 0.5)
        }
        let peaks = results.keys.filter { $0.hasPrefix("ckstore") }.map(peak)
        print(String(format: "\npeak memory of any ckstore command: %.1f MiB (target < 512 MiB for a %.0f MiB checkpoint)", peaks.max() ?? 0, bytes / 1_048_576))
    }

    /// gc over a catalogue of `gcCheckpoints` × `gcChunks` (no pack files): planning (`--dry-run`) and
    /// planning plus sweep, each on a fresh copy, medians of `repetitions`.
    func catalogueBenchmark(ckstore: String) throws {
        let template = work + "/gc-template"
        try? FileManager.default.removeItem(atPath: template)
        let started = Date()
        try SyntheticCatalogue.build(at: template, checkpoints: gcCheckpoints, chunksPerCheckpoint: gcChunks)
        print(String(format: "synthetic catalogue: %d checkpoints × %d chunks (half shared with the previous), built in %.1f s, %.0f MiB",
                     gcCheckpoints, gcChunks, Date().timeIntervalSince(started), Double(folderSize(template)) / 1_048_576))
        _ = try Command.measure([ckstore, "policy", "set", "synthetic", "--keep-last", "10", "--keep-every", "10000", "--keep-best", "3:loss:min", "--store", template])
        var plans = [Double](), sweeps = [Double]()
        for repetition in 1...repetitions {
            for dryRun in [true, false] {
                let copy = work + "/gc-copy"
                try? FileManager.default.removeItem(atPath: copy)
                try FileManager.default.copyItem(atPath: template, toPath: copy)
                _ = try Command.measure(["sync"])
                let arguments = [ckstore, "gc", "--store", copy, "--repack-threshold", "1"] + (dryRun ? ["--dry-run"] : [])
                let measurement = try Command.measure(arguments)
                (dryRun ? { plans.append(measurement.seconds) } : { sweeps.append(measurement.seconds) })()
                print(String(format: "  repetition %d, gc%@: %.2f s, peak %.0f MiB", repetition, dryRun ? " --dry-run" : "", measurement.seconds, Double(measurement.peakKiB) / 1024))
            }
        }
        // audit reads the catalogue only: one copy serves every repetition.
        var audits = [String: [Double]]()
        let auditRuns: [(String, [String])] = [
            ("audit", []), ("audit --json --budget 2TB", ["--json", "--budget", "2TB"]),
            ("audit --what-if keep-last=5", ["--what-if", "keep-last=5"]),
        ]
        for repetition in 1...repetitions {
            for (name, extra) in auditRuns {
                let measurement = try Command.measure([ckstore, "audit", "--store", template] + extra)
                audits[name, default: []].append(measurement.seconds)
                print(String(format: "  repetition %d, %@: %.2f s, peak %.0f MiB", repetition, name, measurement.seconds, Double(measurement.peakKiB) / 1024))
            }
        }
        print("")
        print("| measurement | median s | target | met |")
        print("| --- | ---: | --- | --- |")
        for (name, _) in auditRuns {
            let seconds = median(audits[name] ?? [])
            print(String(format: "| %@ | %.2f | %@ | %@ |", name, seconds, name == "audit" ? "< 2 s" : "", name == "audit" ? (seconds < 2 ? "yes" : "**no**") : ""))
        }
        print(String(format: "| gc --dry-run (planning) | %.2f | | |", median(plans)))
        print(String(format: "| gc (planning + sweep) | %.2f | < 10 s | %@ |", median(sweeps), median(sweeps) < 10 ? "yes" : "**no**"))
    }
}
