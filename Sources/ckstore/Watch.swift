import ArgumentParser
import CKStore
import CKStoreS3
import Foundation

struct Watch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Store, push and trim every complete checkpoint folder a trainer writes into DIR, with no change to the trainer.",
        discussion: """
            SageMaker's checkpoint sync for any trainer. Each subfolder of DIR is a checkpoint; its step is
            trainer_state.json's global_step, else the last number in its name (checkpoint-500,
            global_step500, step_500). A folder is complete, and then stored (put), pushed (--push),
            retained by the run's policy (gc) and the local folders beyond --keep-local removed, when:

              1. it holds Trainer's trainer_state.json and no checkpoint-is-incomplete.txt (Trainer's JIT
                 sentinel), and every .safetensors file is as long as its header says; else
              2. with --marker NAME, a file NAME is in it (a trainer that writes one when done); else
              3. nothing in it has changed for --settle SECONDS (default 60).

            Only folders this store has stored (and pushed, with --push) are ever removed; the newest
            --keep-local stay. On SIGTERM or SIGINT it finishes the put and push it is doing, then every
            complete folder left, and exits 0. A preemption notice (EC2 spot, GCP, Azure: see
            ckstore.preemption) makes it scan at once. The restart side is `ckstore resume`.
            """
    )

    @OptionGroup var store: StoreOptions
    @Argument(help: "The folder the trainer writes its checkpoint folders into.") var directory: String
    @Option(help: "The run.") var run: String
    @Option(help: "Push each checkpoint to this remote (a name, or an s3:// or file:// URL).") var push: String?
    @Option(help: "S3 endpoint for a --push URL.") var endpoint: String?
    @Option(help: "Keep this many newest checkpoint folders in DIR (stored ones only are removed); default: keep all.") var keepLocal: Int?
    @Option(help: "A folder with this file in it is complete.") var marker: String?
    @Option(help: "A folder unchanged for this many seconds is complete (when neither rule above applies).") var settle: Double = 60
    @Option(help: "Seconds between scans.") var interval: Double = 2
    @Flag(help: "Scan once, store what is complete, and exit.") var once = false
    @Flag(help: "Print a JSON line for each checkpoint stored.") var json = false

    func validate() throws {
        if let keepLocal, keepLocal < 0 { throw ValidationError("--keep-local takes 0 or more") }
        guard settle >= 0, interval > 0 else { throw ValidationError("--settle takes 0 or more seconds and --interval more than 0") }
    }

    struct Stored: Encodable {
        var folder: String
        var id: CheckpointID
        var run: String
        var step: Int64
        var alreadyStored: Bool
        var pushed: Bool
        var seconds: Double
    }

    func run() async throws {
        let checkpointStore = try store.open(create: true)
        let remote = try push.map {
            try RemoteOption.connect(checkpointStore, remote: $0, endpoint: endpoint, pathStyle: false)
        }
        // SIGTERM and SIGINT stop it (after the work at hand); a cloud's notice makes it scan at once.
        let stop = StopFlag(signals: [SIGTERM, SIGINT])
        let watcher = PreemptionWatcher(signals: [])
        if !once { watcher.start() }
        defer { watcher.stop() }
        var scanner = FolderScanner(root: directory, marker: marker, settle: settle)
        var noticeLogged = false
        while true {
            let stopping = stop.isSet
            try await storeComplete(scanner.complete(ignoringSettle: false), in: checkpointStore, remote: remote, watcher: watcher)
            if once || stopping {
                // Finishing: a folder that only waits for its settle time is stored too.
                if stopping { try await storeComplete(scanner.complete(ignoringSettle: true), in: checkpointStore, remote: remote, watcher: watcher) }
                return
            }
            if let notice = watcher.notice, !noticeLogged {
                noticeLogged = true
                Terminal.standardError("preemption notice (\(notice.source)): storing and pushing each complete folder as soon as it appears")
            }
            // The next scan after the interval; a stop signal or a first notice cuts the wait short.
            let deadline = Date().addingTimeInterval(interval)
            while Date() < deadline, !stop.isSet, noticeLogged || watcher.notice == nil {
                try await Task.sleep(nanoseconds: 50_000_000)
            }
        }
    }

    /// Puts, pushes and retains each complete folder the store lacks, then trims the local folders.
    private func storeComplete(_ folders: [FolderScanner.Folder], in checkpointStore: CheckpointStore, remote: Remote?, watcher: PreemptionWatcher) async throws {
        var stored = Set(try checkpointStore.list(run: run).map(\.step))
        var pushedSteps = Set<Int64>()
        for folder in folders where !stored.contains(folder.step) {
            let started = Date()
            let result = try await checkpointStore.put(directory: folder.path, options: PutOptions(run: run, step: folder.step))
            for warning in result.warnings { Terminal.warning(warning) }
            stored.insert(folder.step)
            var pushed = false
            if let remote {
                do {
                    _ = try await checkpointStore.push([result.id], to: remote)
                    pushed = true
                    pushedSteps.insert(folder.step)
                } catch {
                    // Stored locally: the folder stays, and the next scan's push catches up.
                    Terminal.warning("\(run)@\(folder.step) is stored locally but its push failed: \(error.message)")
                }
            }
            _ = try await checkpointStore.gc(GCOptions(run: run))
            if json {
                try JSONOutput.printLine(Stored(folder: folder.path, id: result.id, run: run, step: folder.step, alreadyStored: result.alreadyStored,
                                            pushed: pushed, seconds: Date().timeIntervalSince(started)))
            } else {
                Terminal.standardError("\(run)@\(folder.step): stored\(pushed ? " and pushed to \(remote!.name)" : "") from \(folder.path)")
            }
            if let notice = watcher.notice {
                Terminal.standardError(PreemptionWatcher.durableMessage(run: run, step: folder.step, remote: pushed ? remote?.name : nil, notice: notice))
            }
        }
        // Pushes that failed earlier: the whole run, what the remote lacks.
        if let remote, folders.contains(where: { !pushedSteps.contains($0.step) }) {
            let ids = try checkpointStore.list(run: run).map(\.id)
            do { _ = try await checkpointStore.push(ids, to: remote) } catch {
                Terminal.warning("the checkpoints of \(run) could not all be pushed: \(error.message)")
                return
            }
        }
        try trim(stored: stored)
    }

    /// Removes stored checkpoint folders beyond the newest `--keep-local`.
    private func trim(stored: Set<Int64>) throws {
        guard let keepLocal else { return }
        let folders = FolderScanner(root: directory, marker: marker, settle: settle).folders().sorted { $0.step < $1.step }
        for folder in folders.dropLast(keepLocal) where stored.contains(folder.step) {
            try? FileManager.default.removeItem(atPath: folder.path)
        }
    }
}

/// Set when one of the signals comes; the signals no longer end the process.
final class StopFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    private var sources = [any DispatchSourceSignal]()

    init(signals: [Int32]) {
        for number in signals {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number)
            source.setEventHandler { [weak self] in self?.set() }
            source.resume()
            sources.append(source)
        }
    }

    func set() { lock.withLock { value = true } }
    var isSet: Bool { lock.withLock { value } }
}

/// The checkpoint folders below a directory, and which are complete.
struct FolderScanner {
    struct Folder {
        var path: String
        var step: Int64
    }

    let root: String
    let marker: String?
    let settle: Double
    /// For the settle rule: each folder's last seen state and since when.
    private var seen = [String: (signature: String, since: Date)]()

    init(root: String, marker: String?, settle: Double) {
        self.root = root
        self.marker = marker
        self.settle = settle
    }

    static let sentinel = "checkpoint-is-incomplete.txt"

    /// Every subfolder with a step, by step.
    func folders() -> [Folder] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        return names.compactMap { name -> Folder? in
            let path = root + "/" + name
            var isDirectory: ObjCBool = false
            guard !name.hasPrefix("."), FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue,
                  let step = Self.step(of: path, name: name) else { return nil }
            return Folder(path: path, step: step)
        }.sorted { $0.step < $1.step }
    }

    static func step(of path: String, name: String) -> Int64? {
        if let data = FileManager.default.contents(atPath: path + "/trainer_state.json"),
           let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let step = object["global_step"] as? Int {
            return Int64(step)
        }
        let digits = name.reversed().prefix { $0.isNumber }
        return digits.isEmpty ? nil : Int64(String(digits.reversed()))
    }

    /// The complete folders; with `ignoringSettle`, a folder that only waits for its settle time counts.
    mutating func complete(ignoringSettle: Bool) -> [Folder] {
        folders().filter { folder in
            let fm = FileManager.default
            if fm.fileExists(atPath: folder.path + "/trainer_state.json") {
                return !fm.fileExists(atPath: folder.path + "/" + Self.sentinel) && Self.safetensorsWhole(folder.path)
            }
            if let marker { return fm.fileExists(atPath: folder.path + "/" + marker) }
            let signature = Self.signature(folder.path)
            let now = Date()
            if let previous = seen[folder.path], previous.signature == signature {
                return ignoringSettle || now.timeIntervalSince(previous.since) >= settle
            }
            seen[folder.path] = (signature, now)
            return ignoringSettle || settle == 0
        }
    }

    /// Names, sizes and times of every file below: what changes while a trainer writes.
    static func signature(_ path: String) -> String {
        var parts = [String]()
        if let walker = FileManager.default.enumerator(atPath: path) {
            for case let name as String in walker {
                let attributes = try? FileManager.default.attributesOfItem(atPath: path + "/" + name)
                let size = (attributes?[.size] as? NSNumber)?.int64Value ?? -1
                let time = (attributes?[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
                parts.append("\(name):\(size):\(time)")
            }
        }
        return parts.sorted().joined(separator: "|")
    }

    /// Every .safetensors file is as long as its header says (a cut-short one is not).
    static func safetensorsWhole(_ path: String) -> Bool {
        guard let walker = FileManager.default.enumerator(atPath: path) else { return true }
        for case let name as String in walker where name.hasSuffix(".safetensors") {
            guard let handle = FileHandle(forReadingAtPath: path + "/" + name) else { return false }
            defer { try? handle.close() }
            guard let prefix = try? handle.read(upToCount: 8), prefix.count == 8 else { return false }
            let length = prefix.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self).littleEndian }
            guard length > 0, length < 100 << 20, let header = try? handle.read(upToCount: Int(length)), header.count == Int(length),
                  let object = try? JSONSerialization.jsonObject(with: header) as? [String: Any] else { return false }
            var end: Int64 = 0
            for (key, value) in object where key != "__metadata__" {
                guard let offsets = (value as? [String: Any])?["data_offsets"] as? [Int], offsets.count == 2 else { return false }
                end = max(end, Int64(offsets[1]))
            }
            let size = ((try? FileManager.default.attributesOfItem(atPath: path + "/" + name))?[.size] as? NSNumber)?.int64Value ?? -1
            guard size == 8 + Int64(length) + end else { return false }
        }
        return true
    }
}
