import ArgumentParser
import BenchSupport
import CKStoreTestSupport
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// ckstore's push and remote restore beside restic's S3 backend and `rclone copy`, in one run on one
/// SeaweedFS server on 127.0.0.1 (issue 15): an 8-checkpoint training series is stored checkpoint by
/// checkpoint, then the newest checkpoint is restored on an "empty machine" (a fresh store, a fresh restic
/// cache). Bytes uploaded are what each tool's bucket holds afterwards (ckstore's pushes also report them).
@main
struct RemoteBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ckstore-remote-bench",
        abstract: "Measure ckstore push and remote restore beside restic (S3 backend) and rclone on SeaweedFS."
    )

    @Option(help: "Folder holding the release ckstore and ckstore-gen binaries.") var bin = "../.build/release"
    @Option(help: "Scratch folder.") var work = "/tmp/ckstore-remote-bench"
    @Option(help: "Model parameters per checkpoint.") var parameters = 10_000_000
    @Option(help: "Checkpoints in the series.") var checkpoints = 8
    @Option(help: "Series kind: fp32, bf16 or frozen (ckstore-gen --series).") var series = "fp32"
    @Option(help: "Restores of the newest checkpoint per tool (the median is reported).") var restores = 3
    @Option(help: "Parallel uploads and downloads for ckstore (--jobs).") var jobs = 4
    @Option(help: "Also restore with ckstore at these --jobs values, for its peak memory (comma-separated; empty for none).", transform: { $0.split(separator: ",").compactMap { Int($0) } }) var jobsScan: [Int] = [1, 4, 8]
    @Option(help: "ckstore's delta chain bound for the puts (default: the store's, 3); 0 stores every chunk in full, so a restore needs no older frames.") var maxDeltaDepth: Int?

    func run() async throws {
        guard let weed = SeaweedServer.locate() else { throw BenchError("no weed: run `make venv` (or `make test`) first") }
        for tool in ["restic", "rclone"] where !Command.exists(tool) {
            throw BenchError("\(tool) is missing: `make bench-deps`")
        }
        try? FileManager.default.removeItem(atPath: work + "/run")
        try FileManager.default.createDirectory(atPath: work + "/run", withIntermediateDirectories: true)
        let folder = "\(work)/series-\(series)-\(parameters)-\(checkpoints)"
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []).filter { $0.hasPrefix("checkpoint-") }
            .sorted { Int($0.dropFirst(11)) ?? 0 < Int($1.dropFirst(11)) ?? 0 }
        if names.count != checkpoints {
            try? FileManager.default.removeItem(atPath: folder)
            print("generating the \(series) series in \(folder) …")
            _ = try Command.measure([bin + "/ckstore-gen", folder, "--series", series, "--parameters", String(parameters), "--checkpoints", String(checkpoints)])
        }
        let folders = ((try FileManager.default.contentsOfDirectory(atPath: folder)).filter { $0.hasPrefix("checkpoint-") }
            .sorted { Int($0.dropFirst(11)) ?? 0 < Int($1.dropFirst(11)) ?? 0 }).map { folder + "/" + $0 }
        let logical = folders.reduce(Int64(0)) { $0 + folderSize($1) }

        let server = try await SeaweedServer.start(weed: weed, folder: work + "/run/seaweed")
        defer { server.stop() }
        for bucket in ["ckstore", "restic", "rclone"] { try await server.createBucket(bucket) }
        for (key, value) in server.environment { setenv(key, value, 1) }
        // The endpoint is plain HTTP; rclone refuses to start when AWS_CA_BUNDLE is set (as it is here).
        unsetenv("AWS_CA_BUNDLE")
        setenv("RESTIC_PASSWORD", "ckstore-benchmark", 1)
        let rclone = ["RCLONE_CONFIG_SW_TYPE": "s3", "RCLONE_CONFIG_SW_PROVIDER": "SeaweedFS", "RCLONE_CONFIG_SW_ENDPOINT": server.endpoint,
                      "RCLONE_CONFIG_SW_ACCESS_KEY_ID": SeaweedServer.accessKey, "RCLONE_CONFIG_SW_SECRET_ACCESS_KEY": SeaweedServer.secretKey]
        for (key, value) in rclone { setenv(key, value, 1) }
        print("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores; ckstore max delta depth \(maxDeltaDepth.map(String.init) ?? "3 (default)"); series \(series), \(folders.count) checkpoints, \(Self.mb(logical)) MB logical; SeaweedFS at \(server.endpoint)")

        let ckstore = bin + "/ckstore"
        let store = work + "/run/store"
        let remote = ["--remote", "s3://ckstore/series", "--endpoint", server.endpoint]
        let restic = ["restic", "-r", "s3:\(server.endpoint)/restic", "--cache-dir", work + "/run/restic-cache"]
        _ = try Command.measure(restic + ["init", "--repository-version", "2"])

        // Store the series, one checkpoint at a time.
        var putSeconds = [Double](), pushSeconds = [Double](), resticSeconds = [Double](), rcloneSeconds = [Double]()
        var pushedBytes: Int64 = 0
        for (index, path) in folders.enumerated() {
            try dropCaches()
            let depth = maxDeltaDepth.map { ["--max-delta-depth", String($0)] } ?? []
            putSeconds.append(try Command.measure([ckstore, "put", path, "--store", store, "--run", "bench"] + depth).seconds)
            let push = try Command.measureCapturing([ckstore, "push", "bench@latest", "--store", store, "--json", "--jobs", String(jobs)] + remote)
            pushSeconds.append(push.measurement.seconds)
            if let object = try JSONSerialization.jsonObject(with: Data(push.output.utf8)) as? [String: Any], let bytes = object["bytes_uploaded"] as? Int {
                pushedBytes += Int64(bytes)
            }
            try dropCaches()
            resticSeconds.append(try Command.measure(restic + ["backup", "--compression", "auto", "-q", path]).seconds)
            try dropCaches()
            rcloneSeconds.append(try Command.measure(["rclone", "copy", path, "sw:rclone/\(URL(fileURLWithPath: path).lastPathComponent)", "--transfers", String(jobs)]).seconds)
            print("checkpoint \(index + 1): ckstore put \(Self.f(putSeconds.last!)) s + push \(Self.f(pushSeconds.last!)) s, restic \(Self.f(resticSeconds.last!)) s, rclone \(Self.f(rcloneSeconds.last!)) s")
        }
        func bucketBytes(_ bucket: String) async throws -> Int64 {
            try await server.objects(bucket: bucket).list(prefix: "").reduce(0) { $0 + $1.size }
        }
        let ckstoreBytes = try await bucketBytes("ckstore"), resticBytes = try await bucketBytes("restic"), rcloneBytes = try await bucketBytes("rclone")

        // Restore the newest checkpoint on an empty machine, each tool from its bucket.
        let newest = URL(fileURLWithPath: folders.last!).lastPathComponent
        var restoreSeconds: [String: [Double]] = [:], restorePeakKiB: [String: [Int]] = [:]
        func restore(_ tool: String, _ arguments: [String]) throws {
            try dropCaches()
            let measured = try Command.measure(arguments)
            restoreSeconds[tool, default: []].append(measured.seconds)
            restorePeakKiB[tool, default: []].append(measured.peakKiB)
        }
        for attempt in 0..<restores {
            let target = work + "/run/restore-\(attempt)"
            try restore("ckstore", [ckstore, "get", "bench@latest-valid", target + "/ckstore", "--store", target + "/empty-store", "--jobs", String(jobs)] + remote)
            try restore("restic", ["restic", "-r", "s3:\(server.endpoint)/restic", "--cache-dir", target + "/restic-cache", "restore", "latest", "--target", target + "/restic"])
            try restore("rclone", ["rclone", "copy", "sw:rclone/\(newest)", target + "/rclone", "--transfers", String(jobs)])
            let expected = try Command.output(["/bin/sh", "-c", "cd '\(folders.last!)' && sha256sum * | sort"])
            for restored in [target + "/ckstore", target + "/restic" + folders.last!, target + "/rclone"] {
                let actual = try Command.output(["/bin/sh", "-c", "cd '\(restored)' && sha256sum * | sort"])
                guard actual == expected else { throw BenchError("\(restored) differs from \(folders.last!)") }
            }
            try? FileManager.default.removeItem(atPath: target)
        }
        // How ckstore's peak memory scales with --jobs (each range is at most 8 MiB).
        var peakByJobs = [(jobs: Int, seconds: Double, peakKiB: Int)]()
        for scanJobs in jobsScan {
            let target = work + "/run/restore-jobs-\(scanJobs)"
            try dropCaches()
            let measured = try Command.measure([ckstore, "get", "bench@latest-valid", target + "/ckstore", "--store", target + "/empty-store", "--jobs", String(scanJobs)] + remote)
            peakByJobs.append((scanJobs, measured.seconds, measured.peakKiB))
            try? FileManager.default.removeItem(atPath: target)
        }

        let pushTotal = pushSeconds.reduce(0, +), putTotal = putSeconds.reduce(0, +)
        let resticTotal = resticSeconds.reduce(0, +), rcloneTotal = rcloneSeconds.reduce(0, +)
        let restoreMedian = restoreSeconds.mapValues(median)
        print("")
        print("| tool | bytes in the bucket | of logical | store the series (s) | median per checkpoint (s) | restore newest on an empty machine, median of \(restores) (s) |")
        print("| --- | --- | --- | --- | --- | --- |")
        print("| ckstore put + push | \(Self.mb(ckstoreBytes)) MB | \(Self.f(Double(ckstoreBytes) / Double(logical))) | \(Self.f(putTotal + pushTotal)) (push alone \(Self.f(pushTotal))) | \(Self.f(median(zip(putSeconds, pushSeconds).map(+)))) (push \(Self.f(median(pushSeconds)))) | \(Self.f(restoreMedian["ckstore"]!)) |")
        print("| restic backup (s3) | \(Self.mb(resticBytes)) MB | \(Self.f(Double(resticBytes) / Double(logical))) | \(Self.f(resticTotal)) | \(Self.f(median(resticSeconds))) | \(Self.f(restoreMedian["restic"]!)) |")
        print("| rclone copy | \(Self.mb(rcloneBytes)) MB | \(Self.f(Double(rcloneBytes) / Double(logical))) | \(Self.f(rcloneTotal)) | \(Self.f(median(rcloneSeconds))) | \(Self.f(restoreMedian["rclone"]!)) |")
        print("")
        print("ckstore's pushes reported \(Self.mb(pushedBytes)) MB uploaded (the bucket also holds its 39-byte marker)")
        let bytesRatio = Double(ckstoreBytes) / Double(resticBytes)
        let pushRatio = resticTotal / pushTotal, storeRatio = resticTotal / (putTotal + pushTotal)
        let restoreRatio = restoreMedian["restic"]! / restoreMedian["ckstore"]!
        print("bytes uploaded: \(Self.f(bytesRatio))× restic's (target ≤ 0.75×: \(bytesRatio <= 0.75 ? "met" : "MISSED"))")
        print("push: \(Self.f(pushRatio))× faster than restic's backup (target ≥ 2×: \(pushRatio >= 2 ? "met" : "MISSED")); put + push: \(Self.f(storeRatio))×")
        print("restore on an empty machine: \(Self.f(restoreRatio))× faster than restic's (target ≥ 2×: \(restoreRatio >= 2 ? "met" : "MISSED"))")

        // Issue 29's targets: at least as fast as rclone copy of the raw folder, the bucket at most 0.85 of
        // the logical bytes (fp32), and get --remote under 256 MiB for a checkpoint of 2.5 GB or more.
        let newestBytes = folderSize(folders.last!)
        print("")
        print("newest checkpoint: \(Self.mb(newestBytes)) MB; restore on an empty machine, median of \(restores), peak resident memory (max of \(restores)):")
        print("")
        print("| tool | restore (s) | peak RSS (MiB) |")
        print("| --- | --- | --- |")
        for tool in ["ckstore", "restic", "rclone"] {
            print("| \(tool == "ckstore" ? "ckstore get --remote --jobs \(jobs)" : tool == "restic" ? "restic restore" : "rclone copy --transfers \(jobs)") | \(Self.f(restoreMedian[tool]!)) | \(Self.f(Double(restorePeakKiB[tool]!.max()!) / 1024)) |")
        }
        if !peakByJobs.isEmpty {
            print("")
            print("| ckstore get --remote --jobs | restore (s) | peak RSS (MiB) |")
            print("| --- | --- | --- |")
            for row in peakByJobs { print("| \(row.jobs) | \(Self.f(row.seconds)) | \(Self.f(Double(row.peakKiB) / 1024)) |") }
        }
        let rcloneRatio = restoreMedian["rclone"]! / restoreMedian["ckstore"]!
        let share = Double(ckstoreBytes) / Double(logical)
        print("")
        print("restore vs rclone copy of the raw folder: \(Self.f(rcloneRatio))× (target ≥ 1×: \(rcloneRatio >= 1 ? "met" : "MISSED")); bucket \(Self.f(share)) of logical (target ≤ 0.85 on fp32: \(share <= 0.85 ? "met" : "MISSED"))")
        let peakMiB = Double(restorePeakKiB["ckstore"]!.max()!) / 1024
        print("ckstore get --remote peak: \(Self.f(peakMiB)) MiB for \(Self.mb(newestBytes)) MB (target < 256 MiB\(newestBytes >= 2_500_000_000 ? "" : ", stated for 2.5 GB or more"): \(peakMiB < 256 ? "met" : "MISSED"))")
    }

    /// Drops the page cache where the machine lets us, so each tool reads its input from disk.
    func dropCaches() throws {
        _ = try? Command.shell("sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true")
    }

    static func f(_ value: Double) -> String { String(format: "%.2f", value) }
    static func mb(_ bytes: Int64) -> String { String(format: "%.1f", Double(bytes) / 1e6) }
}
