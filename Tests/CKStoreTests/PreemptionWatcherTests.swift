@testable import CKStoreS3
import CKStoreTestSupport
import Foundation
import Testing

/// The Swift preemption watcher against servers that speak EC2's (IMDSv2), GCP's and Azure's documented
/// notice protocols, reached through the overrides a user would set.
@Suite struct PreemptionWatcherTests {
    static func waitForNotice(_ watcher: PreemptionWatcher, seconds: Double) async -> PreemptionWatcher.Notice? {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let notice = watcher.notice { return notice }
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
        return watcher.notice
    }

    @Test func eachCloudsNoticeIsSeenWithinAPoll() async throws {
        let imds = try await InstanceMetadataServer.start(keys: RotatingKeys(lifetime: 60))
        defer { imds.stop() }
        // One server for each cloud: each announces once.
        let gcp = try await CloudNoticeServer.start()
        defer { gcp.stop() }
        let azure = try await CloudNoticeServer.start()
        defer { azure.stop() }
        let environments: [(PreemptionWatcher.Cloud, [String: String], String, Double)] = [
            (.ec2, ["AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.endpoint], "ec2 spot terminate", 120),
            (.gcp, ["GCE_METADATA_HOST": gcp.endpoint.replacingOccurrences(of: "http://", with: "")], "gcp preemption", 30),
            (.azure, ["CKSTORE_AZURE_METADATA_ENDPOINT": azure.endpoint], "azure preempt", 30),
        ]
        for (cloud, environment, source, lead) in environments {
            // Metadata requests may take 5 s: this machine may be loaded by other tests, and the servers are in
            // this process.
            let watcher = PreemptionWatcher(environment: environment, clouds: [cloud], poll: 0.3, timeout: 5, signals: [])
            watcher.start()
            #expect(await watcher.detection() == [cloud], "\(cloud)")
            #expect(!watcher.requested)
            let announced = Date()
            switch cloud {
            case .ec2: imds.announceSpotAction(after: 0)
            case .gcp: gcp.announce()
            case .azure: azure.announce()
            }
            // Seen within a poll; the wait is long only because this machine may be loaded by other tests.
            let notice = try #require(await Self.waitForNotice(watcher, seconds: 30), "\(cloud): no notice")
            #expect(notice.source == source)
            #expect(notice.seenAt >= announced)
            // The deadline is the cloud's (whole seconds), however late the notice was seen.
            let deadline = try #require(notice.deadline, "\(cloud)")
            #expect(deadline.timeIntervalSince(notice.seenAt) <= lead + 1, "\(cloud): \(deadline) vs \(notice.seenAt)")
            #expect(deadline.timeIntervalSince(announced) >= lead - 2, "\(cloud): \(deadline) vs \(announced)")
            watcher.stop()
        }
        #expect(imds.unauthorized == 0)
        let message = PreemptionWatcher.durableMessage(run: "r", step: 7, remote: "s3://b/p",
                                                       notice: .init(source: "ec2 spot terminate", seenAt: Date(timeIntervalSince1970: 100), deadline: Date(timeIntervalSince1970: 220)),
                                                       now: Date(timeIntervalSince1970: 112.5))
        #expect(message == "checkpoint r@7 durable on s3://b/p, 12.5 s after the notice (ec2 spot terminate), 107.5 s before the deadline")
    }

    @Test func offCloudNothingIsWatched() async {
        let environment = ["AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9", "GCE_METADATA_HOST": "127.0.0.1:9",
                           "CKSTORE_AZURE_METADATA_ENDPOINT": "http://127.0.0.1:9"]
        let watcher = PreemptionWatcher(environment: environment, signals: [])
        watcher.start()
        #expect(await watcher.detection().isEmpty)
        #expect(!watcher.requested)
        watcher.stop()
        let disabled = PreemptionWatcher(environment: ["AWS_EC2_METADATA_DISABLED": "true", "CKSTORE_PREEMPTION_CLOUDS": "ec2"], signals: [])
        disabled.start()
        #expect(await disabled.detection().isEmpty)
        disabled.stop()
    }
}
