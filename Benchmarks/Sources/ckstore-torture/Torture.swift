import ArgumentParser
import CKStoreTestSupport
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// SIGKILL trials over `put`, `gc`, `repair` and `get` on a generated series with deltas (issue 14). Some
/// trials delete the catalogue or its write-ahead log first; each trial ends with `repair`. After every
/// trial: every checkpoint ever reported as saved is listed and restores byte for byte (or `verify` says
/// why not), and nothing is listed that was not reported, except a put killed mid-way, whose checkpoint may
/// or may not have reached its commit point.
@main
struct Torture: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ckstore-torture", abstract: "SIGKILL trials against a ckstore store.")

    @Option(help: "Folder holding the ckstore and ckstore-gen binaries.") var bin = "../.build/release"
    @Option(help: "Scratch folder.") var work = "/tmp/ckstore-torture"
    @Option(help: "Trials.") var trials = 1000
    @Option(help: "Checkpoints in the generated series; once all are saved they are put again under the next run name.") var checkpoints = 20
    @Option(help: "Model parameters per checkpoint.") var parameters = 100_000
    @Option(help: "Random seed.") var seed: UInt64 = 1

    struct Failure: Error, CustomStringConvertible { var description: String }

    struct Outcome {
        var status: Int32
        var killed: Bool
        var stdout: String
    }

    func run() throws {
        let ckstore = bin + "/ckstore", generatorBinary = bin + "/ckstore-gen"
        let series = work + "/series", store = work + "/store"
        try? FileManager.default.removeItem(atPath: work)
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        Self.say("generating \(checkpoints) checkpoints of \(parameters) parameters (AdamW fp32, deltas) …")
        _ = try Self.run([generatorBinary, series, "--checkpoints", String(checkpoints), "--parameters", String(parameters), "--series", "fp32", "--every", "5"])
        let folders = try FileManager.default.contentsOfDirectory(atPath: series).filter { $0.hasPrefix("checkpoint-") }
            .sorted { Int($0.dropFirst(11)) ?? 0 < Int($1.dropFirst(11)) ?? 0 }
        _ = try Self.run([ckstore, "init", "--store", store])

        var generator = SeededRandom(seed: seed)
        var reported = [String: String]()    // RUN@STEP -> id, puts that exited 0
        var maybe = Set<String>()            // RUN@STEPs whose put was killed: may or may not be committed
        var nextFolder = 0, cycle = 1
        var killsMidOperation = 0, catalogueDeletions = 0, walDeletions = 0
        let started = Date()
        for trial in 1...trials {
            // Sometimes lose the catalogue or its log first.
            let roll = generator.next() % 100
            if roll < 4 {
                try? FileManager.default.removeItem(atPath: store + "/ckstore.db")
                try? FileManager.default.removeItem(atPath: store + "/ckstore.db-wal")
                try? FileManager.default.removeItem(atPath: store + "/ckstore.db-shm")
                catalogueDeletions += 1
            } else if roll < 8 {
                try? FileManager.default.removeItem(atPath: store + "/ckstore.db-wal")
                walDeletions += 1
            }
            let operation = generator.next() % 4
            let delay = Double(generator.next() % 400) / 1000
            var arguments: [String]
            var putName: String?
            if nextFolder == folders.count {
                nextFolder = 0
                cycle += 1
            }
            switch operation {
            case 0:
                let folder = folders[nextFolder]
                putName = "t\(cycle)@\(folder.dropFirst(11))"
                arguments = [ckstore, "put", series + "/" + folder, "--run", "t\(cycle)", "--store", store, "--quiet"]
            case 1:
                arguments = [ckstore, "gc", "--grace", "0s", "--store", store, "--quiet"]
            case 2:
                arguments = [ckstore, "repair", "--store", store, "--quiet"]
            default:
                guard let name = reported.keys.randomElement(using: &generator) else { continue }
                try? FileManager.default.removeItem(atPath: work + "/out")
                arguments = [ckstore, "get", name, work + "/out", "--store", store, "--quiet"]
            }
            let outcome = try Self.runAndKill(arguments, after: delay)
            if outcome.killed { killsMidOperation += 1 }
            if let name = putName {
                if outcome.status == 0 && !outcome.killed {
                    reported[name] = outcome.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
                    nextFolder += 1
                } else if outcome.killed {
                    maybe.insert(name)
                }
            }
            // Every trial ends with repair, run to completion.
            _ = try? Self.run([ckstore, "repair", "--store", store, "--quiet"])
            // Check: listed ⊆ reported ∪ maybe, and reported ⊆ listed.
            let listed = try Self.listed(ckstore, store)
            for (name, id) in reported where listed[name] != id {
                throw Failure(description: "trial \(trial): \(name) (\(id.prefix(12))) was reported as saved and is \(listed[name].map { "listed as \($0.prefix(12))" } ?? "not listed")")
            }
            for name in listed.keys where reported[name] == nil && !maybe.contains(name) {
                throw Failure(description: "trial \(trial): \(name) is listed but was never reported as saved")
            }
            // A checkpoint a killed put committed counts as saved from now on.
            for name in maybe where listed[name] != nil && reported[name] == nil {
                reported[name] = listed[name]
                if name.hasPrefix("t\(cycle)@"), let step = Int(name.split(separator: "@")[1]) {
                    nextFolder = max(nextFolder, (folders.firstIndex { Int($0.dropFirst(11)) == step } ?? 0) + 1)
                }
            }
            // Restore the newest and one other reported checkpoint byte for byte.
            for name in [putName.flatMap { reported[$0] != nil ? $0 : nil }, reported.keys.randomElement(using: &generator)].compactMap({ $0 }) {
                try? FileManager.default.removeItem(atPath: work + "/check")
                let get = try Self.run([ckstore, "get", name, work + "/check", "--store", store, "--quiet"], allowFailure: true)
                guard get.status == 0, try Self.same(work + "/check", series + "/checkpoint-" + name.split(separator: "@")[1]) else {
                    let verify = try Self.run([ckstore, "verify", "--full", "--store", store], allowFailure: true)
                    throw Failure(description: "trial \(trial): \(name) does not restore byte for byte; verify says: \(verify.stdout)")
                }
            }
            if trial % 50 == 0 {
                Self.say(String(format: "%5d trials, %4d killed mid-operation, %3d checkpoints saved, %.0f s", trial, killsMidOperation, reported.count, Date().timeIntervalSince(started)))
            }
        }
        let verify = try Self.run([ckstore, "verify", "--full", "--store", store], allowFailure: true)
        guard verify.status == 0 else { throw Failure(description: "final verify --full: \(verify.stdout)") }
        Self.say("trials: \(trials); killed mid-operation: \(killsMidOperation); catalogue deleted: \(catalogueDeletions); write-ahead log deleted: \(walDeletions); checkpoints saved: \(reported.count); lost or invented: 0 (any would have stopped the run); final verify --full: ok")
    }

    /// A line on standard output, at once (a long run is watched as it goes).
    static func say(_ line: String) {
        FileHandle.standardOutput.write(Data((line + "\n").utf8))
    }

    static func listed(_ ckstore: String, _ store: String) throws -> [String: String] {
        let output = try run([ckstore, "ls", "--json", "--store", store], allowFailure: true)
        guard output.status == 0, let rows = try JSONSerialization.jsonObject(with: Data(output.stdout.utf8)) as? [[String: Any]] else {
            throw Failure(description: "ls failed after repair: \(output.stdout)")
        }
        var out = [String: String]()
        for row in rows { if let run = row["run"] as? String, let step = row["step"] as? Int, let id = row["id"] as? String { out["\(run)@\(step)"] = id } }
        return out
    }

    static func same(_ a: String, _ b: String) throws -> Bool {
        try run(["/usr/bin/diff", "-r", a, b], allowFailure: true).status == 0
    }

    @discardableResult
    static func run(_ arguments: [String], allowFailure: Bool = false) throws -> Outcome {
        let outcome = try runAndKill(arguments, after: .infinity)
        if !allowFailure && outcome.status != 0 { throw Failure(description: "\(arguments.joined(separator: " ")) exited \(outcome.status)") }
        return outcome
    }

    /// Runs `arguments`, kills it with SIGKILL after `delay` seconds unless it finished.
    static func runAndKill(_ arguments: [String], after delay: Double) throws -> Outcome {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: arguments[0])
        process.arguments = Array(arguments.dropFirst())
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(delay.isFinite ? delay : 3600)
        var killed = false
        nonisolated(unsafe) var data = Data()
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async {
            data = out.fileHandleForReading.readDataToEndOfFile()
            group.leave()
        }
        while process.isRunning && Date() < deadline { usleep(1000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            killed = true
        }
        process.waitUntilExit()
        group.wait()
        return Outcome(status: process.terminationStatus, killed: killed && process.terminationReason == .uncaughtSignal, stdout: String(decoding: data, as: UTF8.self))
    }
}
