@testable import CKStore
@testable import CKStoreS3
import CKStoreTestSupport
import Foundation
import Testing

/// S3 as it is in the field (issue 28), against SeaweedFS behind servers of the project's own that speak
/// the documented protocols: credentials from every source of the chain, rotating while a push runs, and
/// a proxy that fails the ways servers and networks fail.
@Suite(.serialized) struct S3FieldTests {
    static let bucket = "ckstore-field"

    /// A store of `count` checkpoints, the folders they came from beside it.
    static func series(_ root: String, count: Int) async throws -> CheckpointStore {
        try await RemoteFolderTests.series(root, "a", count: count)
    }

    /// The remote `s3://bucket/prefix` through the proxy, with the environment given.
    static func remote(_ proxy: S3FaultProxy, prefix: String, environment: [String: String], learned: (@Sendable (String) -> Void)? = nil,
                       region: String = "us-east-1") throws -> (Remote, S3ObjectStore) {
        let definition = RemoteDefinition(name: prefix, url: "s3://\(bucket)/\(prefix)", endpoint: proxy.endpoint, region: region, pathStyle: true)
        var objects = try S3ObjectStore(definition, environment: environment, learnedRegion: learned)
        objects.timeoutSeconds = 30
        objects.retrySeconds = 30
        // Packs go up as multipart uploads (of one part: S3 wants 5 MiB for every part but the last).
        objects.multipartThreshold = 96 << 10
        objects.partSize = 5 << 20
        return (Remote(name: prefix, url: definition.url, objects: objects), objects)
    }

    static var staticKeys: [String: String] { ["AWS_ACCESS_KEY_ID": SeaweedServer.accessKey, "AWS_SECRET_ACCESS_KEY": SeaweedServer.secretKey] }

    /// Restores the newest checkpoint from `remote` into a fresh store and compares it with the folder it
    /// was made from: every byte checked.
    static func pullsBitForBit(_ root: String, _ remote: Remote, count: Int, name: String) async throws {
        let fresh = try CheckpointStore.open(at: root + "/fresh-\(name)", create: true)
        let pulled = try await fresh.pull(.latestValid(run: "r"), from: remote)
        #expect(pulled.step == Int64(count * 10))
        try await fresh.restore(pulled.id, to: root + "/out-\(name)")
        #expect(try Files.tree(root + "/out-\(name)") == Files.tree(root + "/a-ckpt-\(count)"))
        #expect(try await fresh.verify(VerifyOptions(depth: .full)).ok)
    }

    static func noIncompleteUploads(_ objects: S3ObjectStore) async throws -> Bool {
        try await objects.incompleteUploads(prefix: "").isEmpty
    }

    /// A push signs each pack with the SHA-256 that names it (`x-amz-content-sha256`) instead of hashing
    /// the body again. AWS checks the body against that digest (the proxy does as AWS does; SeaweedFS
    /// 4.48 does not check it), so the digest given is the one sent: bytes sent with another digest are
    /// refused and not stored.
    @Test func aBodyThatDoesNotMatchTheDigestItIsSentWithIsRefused() async throws {
        try await SeaweedServer.with { seaweed in
            try await seaweed.createBucket(Self.bucket)
            let proxy = try await S3FaultProxy.start(upstream: seaweed.endpoint, secrets: [SeaweedServer.accessKey: SeaweedServer.secretKey])
            defer { proxy.stop() }
            var (_, objects) = try Self.remote(proxy, prefix: "digest", environment: Self.staticKeys)
            objects.retrySeconds = 5
            // Below the multipart threshold: one PUT, signed with the digest given.
            let body = Array(repeating: UInt8(7), count: 64 << 10)
            let name = SHA256Hasher.digest(body).hex
            try await objects.put("packs/" + name, body, sha256: name)
            #expect(try await objects.get("packs/" + name) == body)
            let other = SHA256Hasher.digest(Array(body.dropLast())).hex
            await #expect(throws: CKStoreError.self) { try await objects.put("packs/" + other, body, sha256: other) }
            #expect(try await objects.head("packs/" + other) == nil)
        }
    }

    /// Each source of the chain gives credentials that expire every 2 s; a push that lasts several
    /// lifetimes (the proxy delays each request) signs with fresh ones fetched before the old expire (the
    /// proxy refuses expired ones as AWS does), at least three keys are used, and the pull restores every
    /// byte.
    @Test func everyCredentialSourceRefreshesAcrossExpirations() async throws {
        try await withTemporaryDirectory { root in
            try await SeaweedServer.with(identities: RotatingKeys.identities) { seaweed in
                try await seaweed.createBucket(Self.bucket)
                let proxy = try await S3FaultProxy.start(upstream: seaweed.endpoint, secrets: [SeaweedServer.accessKey: SeaweedServer.secretKey])
                defer { proxy.stop() }
                let keys = RotatingKeys(lifetime: 2)
                let imds = try await InstanceMetadataServer.start(keys: keys)
                defer { imds.stop() }
                let container = try await ContainerCredentialsServer.start(keys: keys)
                defer { container.stop() }
                let sts = try await STSServer.start(keys: keys, webIdentityToken: "eks-token", baseKeys: (SeaweedServer.accessKey, SeaweedServer.secretKey))
                defer { sts.stop() }
                try "eks-token\n".write(toFile: root + "/token", atomically: true, encoding: .utf8)
                // credential_process: a script that hands out keys 48, 49, … for 2 s each.
                try "48".write(toFile: root + "/counter", atomically: true, encoding: .utf8)
                let script = """
                    #!/bin/sh
                    n=$(cat \(root)/counter); echo $((n + 1)) > \(root)/counter
                    now=$(date +%s); expires=$((now + 3))
                    printf '{"Version": 1, "AccessKeyId": "CKROT%s", "SecretAccessKey": "rotsecret-%s", "SessionToken": "tok.%s.%s000", "Expiration": "%s"}' \
                      "$n" "$n" "$n" "$expires" "$(date -u -d @$expires +%Y-%m-%dT%H:%M:%SZ)"
                    """
                try script.write(toFile: root + "/creds.sh", atomically: true, encoding: .utf8)
                chmod(root + "/creds.sh", 0o755)
                try """
                    [base]
                    aws_access_key_id = \(SeaweedServer.accessKey)
                    aws_secret_access_key = \(SeaweedServer.secretKey)
                    """.write(toFile: root + "/credentials", atomically: true, encoding: .utf8)
                try """
                    [profile ml]
                    role_arn = arn:aws:iam::123456789012:role/ml
                    source_profile = base
                    [profile proc]
                    credential_process = \(root)/creds.sh
                    """.write(toFile: root + "/config", atomically: true, encoding: .utf8)
                let files = ["AWS_SHARED_CREDENTIALS_FILE": root + "/credentials", "AWS_CONFIG_FILE": root + "/config", "HOME": root]
                let noFiles = ["AWS_SHARED_CREDENTIALS_FILE": root + "/none", "AWS_CONFIG_FILE": root + "/none", "HOME": root]
                let sources: [(name: String, environment: [String: String], expected: String)] = [
                    // botocore's knobs for a slow metadata service: this machine may be loaded by other tests.
                    ("imds", noFiles.merging(["AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.endpoint, "AWS_METADATA_SERVICE_TIMEOUT": "5",
                                              "AWS_METADATA_SERVICE_NUM_ATTEMPTS": "3"]) { $1 }, "instance-metadata (role ckstore-role)"),
                    ("container", noFiles.merging(["AWS_CONTAINER_CREDENTIALS_FULL_URI": container.fullURI,
                                                   "AWS_CONTAINER_AUTHORIZATION_TOKEN": "Bearer ckstore-test", "AWS_EC2_METADATA_DISABLED": "true"]) { $1 }, "container"),
                    ("web-identity", noFiles.merging(["AWS_WEB_IDENTITY_TOKEN_FILE": root + "/token", "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/eks",
                                                      "AWS_ENDPOINT_URL_STS": sts.endpoint, "AWS_EC2_METADATA_DISABLED": "true"]) { $1 }, "web-identity"),
                    ("assume-role", files.merging(["AWS_PROFILE": "ml", "AWS_ENDPOINT_URL_STS": sts.endpoint, "AWS_EC2_METADATA_DISABLED": "true"]) { $1 }, "assume-role (profile ml)"),
                    ("process", files.merging(["AWS_PROFILE": "proc", "AWS_EC2_METADATA_DISABLED": "true"]) { $1 }, "credential_process (profile proc)"),
                ]
                let store = try await Self.series(root, count: 3)
                proxy.latency = 0.25
                for source in sources {
                    let keysBefore = proxy.accessKeys
                    let (remote, objects) = try Self.remote(proxy, prefix: source.name, environment: source.environment)
                    let started = Date()
                    let report = try await store.push(try store.list().map(\.id), to: remote, jobs: 1)
                    let seconds = Date().timeIntervalSince(started)
                    #expect(report.pushed.count == 3, "\(source.name)")
                    #expect(seconds > 2 * keys.lifetime, "\(source.name): the push took \(seconds) s, less than two lifetimes")
                    let used = proxy.accessKeys.subtracting(keysBefore).filter { $0.hasPrefix("CKROT") }
                    #expect(used.count >= 3, "\(source.name): \(used.count) keys used in \(seconds) s")
                    #expect(await objects.credentials.fetches >= 3, "\(source.name)")
                    let fetched = try await objects.credentials.credentials().source
                    #expect(fetched == source.expected, "\(source.name): \(fetched)")
                    // Refreshed ahead of expiry, not only after a server refused them: without the refresh
                    // ahead, every fetch after the first would be forced by a refusal. (How many requests a
                    // loaded machine delivers late, and so gets refused, varies; at least one fetch came first.)
                    let fetches = await objects.credentials.fetches
                    let reactive = await objects.credentials.reactiveFetches
                    #expect(fetches - 1 - reactive >= 1, "\(source.name): all \(fetches - 1) refreshes were forced by a server's refusal")
                }
                #expect(sts.actions.contains("AssumeRoleWithWebIdentity") && sts.actions.contains("AssumeRole"))
                #expect(imds.unauthorized == 0)
                proxy.latency = 0
                let (remote, _) = try Self.remote(proxy, prefix: "process", environment: sources[4].environment)
                try await Self.pullsBitForBit(root, remote, count: 3, name: "creds")
            }
        }
    }

    /// Under each fault in turn, a push, pull, verify and gc through the proxy either succeed with every
    /// byte checked or fail with the right error, and the next gc leaves no incomplete multipart upload.
    @Test func everyFaultIsSurvivedOrNamed() async throws {
        try await withTemporaryDirectory { root in
            try await SeaweedServer.with { seaweed in
                try await seaweed.createBucket(Self.bucket)
                let proxy = try await S3FaultProxy.start(upstream: seaweed.endpoint, secrets: [SeaweedServer.accessKey: SeaweedServer.secretKey])
                defer { proxy.stop() }
                let store = try await Self.series(root, count: 2)
                let ids = try store.list().map(\.id)
                let environment = Self.staticKeys.merging(["AWS_EC2_METADATA_DISABLED": "true", "CKSTORE_S3_STALL_SECONDS": "1"]) { $1 }
                typealias Fault = S3FaultProxy.Fault
                typealias Match = S3FaultProxy.Match
                let survived: [(String, Fault, Match, Int)] = [
                    ("internal", .status(500, code: "InternalError"), .any, 3),
                    ("slowdown", .status(503, code: "SlowDown", retryAfter: 1), .any, 2),
                    ("throttled", .status(429, code: "TooManyRequests"), .any, 2),
                    ("requesttimeout", .status(400, code: "RequestTimeout"), .put("packs/"), 2),
                    ("stall", .stallBody(afterBytes: 64, seconds: 4), .get("packs/"), 1),
                    ("truncate", .truncateBody(keepBytes: 40), .get("packs/"), 1),
                    ("drop", .dropConnection(afterBytes: 64), .get("packs/"), 2),
                    ("norange", .ignoreRange, .get("packs/"), 3),
                    ("lostcomplete", .loseCompleteMultipartAnswer, .completeMultipart, 1),
                ]
                for (name, fault, match, times) in survived {
                    let (remote, objects) = try Self.remote(proxy, prefix: name, environment: environment)
                    proxy.clearFaults()
                    proxy.inject(fault, times: times, where: match)
                    let started = Date()
                    let report = try await store.push(ids, to: remote)
                    #expect(report.pushed.count == 2, "\(name)")
                    // The pull goes through the fault too when it is a read's.
                    proxy.inject(fault, times: times, where: match)
                    try await Self.pullsBitForBit(root, remote, count: 2, name: name)
                    proxy.inject(fault, times: times, where: match)
                    let verified = try await store.verify(remote: remote, depth: .full)
                    #expect(verified.ok && verified.problems.isEmpty, "\(name)")
                    proxy.inject(fault, times: times, where: match)
                    _ = try await store.collectGarbage(on: remote, grace: 1, minimumGrace: 0)
                    #expect(try await Self.noIncompleteUploads(objects), "\(name)")
                    #expect(proxy.faultsApplied.contains(fault.description), "\(name): the fault was never applied")
                    if name == "slowdown" { #expect(Date().timeIntervalSince(started) >= 2, "Retry-After: 1 was not honoured") }
                }

                // A server that ignores If-None-Match: refused with a `remote` error naming it, unless the
                // remote accepts the risk.
                let (blind, _) = try Self.remote(proxy, prefix: "blind", environment: environment)
                proxy.clearFaults()
                proxy.inject(.ignoreIfNoneMatch, times: 1000, where: .conditionalPut)
                do {
                    _ = try await store.push(ids, to: blind)
                    Issue.record("a push to a server that ignores conditional writes went ahead")
                } catch let error as CKStoreError {
                    #expect(error.code == .remote && error.message.contains("ignores conditional writes"))
                }
                // gc's lease is a conditional create too.
                await #expect(throws: CKStoreError.self) { try await store.collectGarbage(on: blind, grace: 1, minimumGrace: 0) }
                var risky = blind
                risky.unsafeUnconditionalCommits = true
                #expect(try await store.push(ids, to: risky).pushed.count == 2)
                proxy.clearFaults()
                try await Self.pullsBitForBit(root, risky, count: 2, name: "blind")

                // A bucket in another region: the 301 teaches it, once, and the remote says so.
                let learned = Learned()
                let (moved, movedObjects) = try Self.remote(proxy, prefix: "moved", environment: environment, learned: { learned.set($0) })
                proxy.bucketRegion = "eu-west-1"
                #expect(try await store.push(ids, to: moved).pushed.count == 2)
                #expect(movedObjects.region == "eu-west-1" && learned.value == "eu-west-1")
                try await Self.pullsBitForBit(root, moved, count: 2, name: "moved")
                proxy.bucketRegion = nil

                // A listing cut without a continuation token: push, pull, verify and gc refuse it with a
                // `remote` error, and nothing is deleted.
                let (listed, listedObjects) = try Self.remote(proxy, prefix: "internal", environment: environment)
                let before = try await listedObjects.list(prefix: "")
                // A store that never saw this remote lists it on its first push.
                let newcomer = try await RemoteFolderTests.series(root, "newcomer", count: 1)
                proxy.inject(.truncatedListingWithoutToken, times: 1000, where: .listing)
                let operations: [(String, () async throws -> Void)] = [
                    ("push", { _ = try await newcomer.push(try newcomer.list().map(\.id), to: listed) }),
                    ("pull", { _ = try await newcomer.pull(.latestValid(run: "r"), from: listed) }),
                    ("verify", { _ = try await store.verify(remote: listed, depth: .quick) }),
                    ("gc", { _ = try await store.collectGarbage(on: listed, grace: 1, minimumGrace: 0) }),
                ]
                for (operation, run) in operations {
                    do {
                        try await run()
                        Issue.record("\(operation) acted on a truncated listing")
                    } catch let error as CKStoreError {
                        #expect(error.code == .remote && error.message.contains("truncated"), "\(operation): \(error)")
                    }
                }
                proxy.clearFaults()
                #expect(try await listedObjects.list(prefix: "") == before)
            }
        }
    }

    /// On AWS with no region configured, the instance's region (IMDSv2) is the one signed for.
    @Test func theInstanceNamesTheRegionOnAWS() async throws {
        let imds = try await InstanceMetadataServer.start(keys: RotatingKeys(lifetime: 60), region: "ap-southeast-2")
        defer { imds.stop() }
        let environment = Self.staticKeys.merging(["AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.endpoint, "AWS_CONFIG_FILE": "/nonexistent",
                                                   "AWS_METADATA_SERVICE_TIMEOUT": "5", "AWS_METADATA_SERVICE_NUM_ATTEMPTS": "3"]) { $1 }
        let objects = try S3ObjectStore(RemoteDefinition(name: "r", url: "s3://bucket"), environment: environment)
        #expect(await objects.state.currentRegion() == "ap-southeast-2")
        #expect(objects.address(key: "k", query: [], region: objects.region).host == "bucket.s3.ap-southeast-2.amazonaws.com")
        // A region given wins, and IMDS is not asked.
        let given = try S3ObjectStore(RemoteDefinition(name: "r", url: "s3://bucket", region: "us-west-2"), environment: environment)
        #expect(await given.state.currentRegion() == "us-west-2")
        // Off-cloud (nothing listens there), the default.
        let offCloud = try S3ObjectStore(RemoteDefinition(name: "r", url: "s3://bucket"),
                                         environment: Self.staticKeys.merging(["AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9", "AWS_CONFIG_FILE": "/nonexistent"]) { $1 })
        #expect(await offCloud.state.currentRegion() == "us-east-1")
    }

    /// A push whose parts cannot be sent fails within its retry budget and aborts its upload; an upload
    /// a killed push left is aborted by the next gc after the grace period (`multipart_aborted`).
    @Test func abandonedMultipartUploadsAreAborted() async throws {
        try await withTemporaryDirectory { root in
            try await SeaweedServer.with { seaweed in
                try await seaweed.createBucket(Self.bucket)
                let proxy = try await S3FaultProxy.start(upstream: seaweed.endpoint, secrets: [SeaweedServer.accessKey: SeaweedServer.secretKey])
                defer { proxy.stop() }
                let store = try await Self.series(root, count: 1)
                let environment = Self.staticKeys.merging(["AWS_EC2_METADATA_DISABLED": "true"]) { $1 }
                var (remote, objects) = try Self.remote(proxy, prefix: "parts", environment: environment)
                objects.retrySeconds = 2
                remote.objects = objects
                proxy.inject(.status(503, code: "SlowDown"), times: 10_000, where: .uploadPart)
                await #expect(throws: CKStoreError.self) { try await store.push(try store.list().map(\.id), to: remote) }
                proxy.clearFaults()
                #expect(try await Self.noIncompleteUploads(objects))

                // A killed push's upload: started, never completed.
                let started = try await objects.send("POST", key: "packs/ab/left-behind", query: [("uploads", "")])
                #expect(started.status == 200)
                #expect(try await objects.incompleteUploads(prefix: "").count == 1)
                let young = try await store.collectGarbage(on: remote, grace: 3600)
                #expect(young.multipartAborted == 0 && young.multipartInProgress == 1)
                try await Task.sleep(nanoseconds: 1_200_000_000)
                let report = try await store.collectGarbage(on: remote, grace: 1, minimumGrace: 0)
                #expect(report.multipartAborted == 1)
                #expect(try await Self.noIncompleteUploads(objects))
            }
        }
    }
}

final class Learned: @unchecked Sendable {
    private let lock = NSLock()
    private var _value: String?
    var value: String? { lock.withLock { _value } }
    func set(_ value: String) { lock.withLock { _value = value } }
}
