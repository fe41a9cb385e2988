import CKStore
public import Foundation
import NIOHTTP1

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Watches for the notice a spot or preemptible machine gets before it is taken away, and for SIGTERM:
/// EC2's spot interruption (IMDSv2 `spot/instance-action`, polled every 5 s; the rebalance
/// recommendation too when asked), GCP's `instance/preempted` (a `wait_for_change` long poll), Azure's
/// `Preempt` scheduled event (polled every second). The clouds are detected in parallel with short
/// requests (about a second off-cloud); endpoints move as the SDKs allow:
/// `AWS_EC2_METADATA_SERVICE_ENDPOINT`, `AWS_EC2_METADATA_DISABLED`, `GCE_METADATA_HOST`,
/// `CKSTORE_AZURE_METADATA_ENDPOINT`; `CKSTORE_PREEMPTION_CLOUDS` (`ec2,gcp,azure` or `none`) limits them.
///
/// The Python package's `ckstore.preemption` does the same for Python trainers.
public final class PreemptionWatcher: @unchecked Sendable {
    public enum Cloud: String, CaseIterable, Sendable {
        case ec2, gcp, azure
    }

    /// A notice: where it came from, when it was seen, and when the machine goes (if the cloud says).
    public struct Notice: Sendable, Equatable {
        public var source: String
        public var seenAt: Date
        public var deadline: Date?
    }

    private let environment: [String: String]
    private let clouds: [Cloud]
    private let poll: Double?
    private let timeout: Double
    private let signals: [Int32]
    private let rebalance: Bool
    private let lock = NSLock()
    private var _notice: Notice?
    private var tasks = [Task<Void, Never>]()
    private var detecting: Task<[Cloud], Never>?
    private var sources = [any DispatchSourceSignal]()
    private var waiters = [CheckedContinuation<Notice, Never>]()
    /// The clouds that answered (empty until detection is done).
    public private(set) var detected = [Cloud]()

    /// - Parameters:
    ///   - poll: seconds between polls, for every cloud (default: each cloud's own advice).
    ///   - timeout: seconds each metadata request may take (1 by default, so that a machine off every
    ///     cloud learns it within about a second; EC2's is `AWS_METADATA_SERVICE_TIMEOUT` when set).
    ///   - signals: signals that count as a notice (SIGTERM by default); they no longer end the process.
    public init(environment: [String: String] = ProcessInfo.processInfo.environment, clouds: [Cloud]? = nil, poll: Double? = nil,
                timeout: Double = 1, signals: [Int32] = [SIGTERM], rebalance: Bool = false) {
        var environment = environment
        if environment["AWS_METADATA_SERVICE_TIMEOUT"] == nil { environment["AWS_METADATA_SERVICE_TIMEOUT"] = String(timeout) }
        self.environment = environment
        self.timeout = max(0.1, timeout)
        if let clouds {
            self.clouds = clouds
        } else if let listed = environment["CKSTORE_PREEMPTION_CLOUDS"], !listed.isEmpty {
            self.clouds = listed.split(separator: ",").compactMap { Cloud(rawValue: String($0)) }
        } else {
            self.clouds = Cloud.allCases
        }
        self.poll = poll
        self.signals = signals
        self.rebalance = rebalance
    }

    deinit { stop() }

    /// Catches the signals at once, then detects the clouds and watches those that answer, in the
    /// background (``detection()`` waits for the clouds found).
    public func start() {
        for number in signals {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number)
            let name = number == SIGTERM ? "SIGTERM" : number == SIGINT ? "SIGINT" : "signal \(number)"
            source.setEventHandler { [weak self] in self?.record(Notice(source: name, seenAt: Date(), deadline: nil)) }
            source.resume()
            lock.withLock { sources.append(source) }
        }
        let clouds = self.clouds
        // Polled outside the cooperative pool, so that a busy process (a put hashing on every core) does
        // not delay a notice.
        let detecting = Task(executorPreference: DedicatedExecutor.shared) { [weak self] () -> [Cloud] in
            guard let self else { return [] }
            let found = await withTaskGroup(of: Cloud?.self) { group in
                for cloud in clouds { group.addTask { await self.detect(cloud) ? cloud : nil } }
                var out = [Cloud]()
                for await cloud in group { if let cloud { out.append(cloud) } }
                return out
            }
            let detected = clouds.filter(found.contains)
            self.lock.withLock { self.detected = detected }
            for cloud in detected where !Task.isCancelled {
                let task = Task(executorPreference: DedicatedExecutor.shared) { [weak self] in
                    guard let self else { return }
                    await self.watch(cloud)
                }
                self.lock.withLock { self.tasks.append(task) }
            }
            return detected
        }
        lock.withLock { self.detecting = detecting }
    }

    /// The clouds that answered, once detection is done (about a second at most).
    public func detection() async -> [Cloud] {
        guard let detecting = lock.withLock({ self.detecting }) else { return [] }
        return await detecting.value
    }

    /// Stops watching and gives the signals their default action back.
    public func stop() {
        let (tasks, sources) = lock.withLock { () -> ([Task<Void, Never>], [any DispatchSourceSignal]) in
            defer { self.tasks.removeAll(); self.sources.removeAll() }
            return (self.tasks, self.sources)
        }
        for task in tasks { task.cancel() }
        lock.withLock { detecting }?.cancel()
        for source in sources { source.cancel() }
        for number in signals where !sources.isEmpty { signal(number, SIG_DFL) }
    }

    /// The first notice, if one came.
    public var notice: Notice? { lock.withLock { _notice } }
    public var requested: Bool { notice != nil }

    /// Waits for the first notice.
    public func wait() async -> Notice {
        await withCheckedContinuation { continuation in
            let ready: Notice? = lock.withLock {
                if let notice = _notice { return notice }
                waiters.append(continuation)
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }

    /// `checkpoint RUN@STEP durable on REMOTE, N s after the notice, M s before the deadline`.
    public static func durableMessage(run: String, step: Int64, remote: String?, notice: Notice, now: Date = Date()) -> String {
        var message = "checkpoint \(run)@\(step) durable on \(remote ?? "the local store (no remote)"), "
            + String(format: "%.1f s after the notice (%@)", now.timeIntervalSince(notice.seenAt), notice.source)
        if let deadline = notice.deadline { message += String(format: ", %.1f s before the deadline", deadline.timeIntervalSince(now)) }
        return message
    }

    func record(_ notice: Notice) {
        let waiting = lock.withLock { () -> [CheckedContinuation<Notice, Never>] in
            guard _notice == nil else { return [] }
            _notice = notice
            defer { waiters.removeAll() }
            return waiters
        }
        for waiter in waiting { waiter.resume(returning: notice) }
    }

    // MARK: The clouds

    private var gcpBase: String {
        let host = environment["GCE_METADATA_HOST"].flatMap { $0.isEmpty ? nil : $0 } ?? "metadata.google.internal"
        return host.contains("://") ? host : "http://" + host
    }

    private var azureBase: String {
        var base = environment["CKSTORE_AZURE_METADATA_ENDPOINT"].flatMap { $0.isEmpty ? nil : $0 } ?? "http://169.254.169.254"
        while base.hasSuffix("/") { base.removeLast() }
        return base
    }

    private static let azurePath = "/metadata/scheduledevents?api-version=2020-07-01"

    private func detect(_ cloud: Cloud) async -> Bool {
        switch cloud {
        case .ec2:
            guard let metadata = InstanceMetadata(environment: environment) else { return false }
            // Any answer (a notice, or 404 for none) means the service is there.
            do {
                _ = try await metadata.text("/latest/meta-data/spot/instance-action")
                return true
            } catch {
                return false
            }
        case .gcp:
            guard let answer = try? await PlainHTTP.send("GET", gcpBase + "/computeMetadata/v1/instance/preempted", headers: [("Metadata-Flavor", "Google")], timeout: timeout) else { return false }
            return answer.status == 200 && answer.headers.first(name: "Metadata-Flavor") == "Google"
        case .azure:
            guard let answer = try? await PlainHTTP.send("GET", azureBase + Self.azurePath, headers: [("Metadata", "true")], timeout: timeout) else { return false }
            return answer.status == 200 && (try? JSONSerialization.jsonObject(with: Data(answer.body)) as? [String: Any])?["Events"] != nil
        }
    }

    private func watch(_ cloud: Cloud) async {
        let interval: Double
        switch cloud {
        case .ec2: interval = poll ?? 5
        case .gcp: interval = poll ?? 0
        case .azure: interval = poll ?? 1
        }
        let metadata = cloud == .ec2 ? InstanceMetadata(environment: environment) : nil
        while !Task.isCancelled && !requested {
            if let notice = await check(cloud, metadata: metadata) {
                record(notice)
                return
            }
            try? await Task.sleep(nanoseconds: UInt64(max(interval, cloud == .gcp ? 0.2 : 0.05) * 1e9))
        }
    }

    private func check(_ cloud: Cloud, metadata: InstanceMetadata?) async -> Notice? {
        switch cloud {
        case .ec2:
            guard let metadata else { return nil }
            if let text = try? await metadata.text("/latest/meta-data/spot/instance-action") {
                let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
                let deadline = (object?["time"] as? String).flatMap(Self.isoDate)
                return Notice(source: "ec2 spot \((object?["action"] as? String) ?? "interruption")", seenAt: Date(), deadline: deadline)
            }
            if rebalance, (try? await metadata.text("/latest/meta-data/events/recommendations/rebalance")) ?? nil != nil {
                return Notice(source: "ec2 rebalance recommendation", seenAt: Date(), deadline: nil)
            }
            return nil
        case .gcp:
            // Blocks until the value changes, or the server's timeout.
            guard let answer = try? await PlainHTTP.send("GET", gcpBase + "/computeMetadata/v1/instance/preempted?wait_for_change=true&timeout_sec=25",
                                                        headers: [("Metadata-Flavor", "Google")], timeout: 29) else { return nil }
            guard answer.status == 200, answer.text.trimmingCharacters(in: .whitespacesAndNewlines).uppercased() == "TRUE" else { return nil }
            return Notice(source: "gcp preemption", seenAt: Date(), deadline: Date().addingTimeInterval(30))
        case .azure:
            guard let answer = try? await PlainHTTP.send("GET", azureBase + Self.azurePath, headers: [("Metadata", "true")], timeout: max(2, timeout)), answer.status == 200,
                  let events = (try? JSONSerialization.jsonObject(with: Data(answer.body)) as? [String: Any])?["Events"] as? [[String: Any]] else { return nil }
            guard let preempt = events.first(where: { $0["EventType"] as? String == "Preempt" }) else { return nil }
            return Notice(source: "azure preempt", seenAt: Date(), deadline: (preempt["NotBefore"] as? String).flatMap(Self.httpDate))
        }
    }

    static func isoDate(_ text: String) -> Date? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.date(from: text)
    }

    static func httpDate(_ text: String) -> Date? {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        return formatter.date(from: text)
    }
}
