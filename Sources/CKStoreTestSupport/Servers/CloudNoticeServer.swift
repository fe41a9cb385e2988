public import Foundation

/// GCP's and Azure's preemption notices as they document them, on 127.0.0.1 (EC2's is
/// ``InstanceMetadataServer``'s `spot/instance-action`):
///
/// - GCP: `GET /computeMetadata/v1/instance/preempted` needs `Metadata-Flavor: Google` (else 403) and
///   answers `FALSE` or `TRUE` with that header; `?wait_for_change=true` waits until the value changes
///   (or `timeout_sec`).
/// - Azure: `GET /metadata/scheduledevents?api-version=2020-07-01` needs `Metadata: true` (else 400) and
///   answers `{"DocumentIncarnation": N, "Events": [...]}`, with a `Preempt` event once announced.
public final class CloudNoticeServer: @unchecked Sendable {
    public let server: TestHTTPServer
    private let lock = NSLock()
    private var announcedAt: Date?

    public var endpoint: String { server.url }
    /// When the notice appeared.
    public var appearedAt: Date? { lock.withLock { announcedAt } }

    public static func start() async throws -> CloudNoticeServer {
        let box = Box<CloudNoticeServer>()
        let server = try await TestHTTPServer.start { request in await box.value?.handle(request) ?? .text(503, "") }
        let notices = CloudNoticeServer(server: server)
        box.value = notices
        return notices
    }

    private init(server: TestHTTPServer) { self.server = server }

    public func announce() { lock.withLock { if announcedAt == nil { announcedAt = Date() } } }

    func handle(_ request: TestHTTPServer.Request) async -> TestHTTPServer.Reply {
        let query = Dictionary(request.query) { a, _ in a }
        switch request.path {
        case "/computeMetadata/v1/instance/preempted":
            guard request.header("Metadata-Flavor") == "Google" else { return .text(403, "") }
            if query["wait_for_change"] == "true" {
                let until = Date().addingTimeInterval(Double(query["timeout_sec"] ?? "60") ?? 60)
                while appearedAt == nil && Date() < until { try? await Task.sleep(nanoseconds: 20_000_000) }
            }
            return TestHTTPServer.Reply(status: 200, headers: [("Metadata-Flavor", "Google"), ("Content-Type", "application/text")],
                                        body: Array((appearedAt == nil ? "FALSE" : "TRUE").utf8))
        case "/metadata/scheduledevents":
            guard request.header("Metadata") == "true" else { return .json(["error": "Bad request. Required metadata header not specified"], status: 400) }
            guard query["api-version"] == "2020-07-01" else { return .text(400, "") }
            var events = [[String: Any]]()
            if let appeared = appearedAt {
                let formatter = DateFormatter()
                formatter.locale = Locale(identifier: "en_US_POSIX")
                formatter.timeZone = TimeZone(identifier: "GMT")
                formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
                events.append(["EventId": "602d9444-d2cd-49c7-8624-8643e7171297", "EventType": "Preempt", "ResourceType": "VirtualMachine",
                               "Resources": ["ckstore-vm"], "EventStatus": "Scheduled", "NotBefore": formatter.string(from: appeared.addingTimeInterval(30)),
                               "Description": "", "EventSource": "Platform", "DurationInSeconds": -1])
            }
            return .json(["DocumentIncarnation": events.isEmpty ? 1 : 2, "Events": events])
        default:
            return .text(404, "")
        }
    }

    public func stop() { server.stop() }
}
