import CKStore
import CKStoreS3
public import Foundation
import NIOHTTP1

/// Temporary credentials for tests: key `CKROT<n>`, secret `rotsecret-<n>`, session token
/// `tok.<n>.<expiry in ms>`. SeaweedFS is given every key up front (it cannot check session tokens);
/// the ``S3FaultProxy`` in front of it checks the token and its expiry as AWS would.
public final class RotatingKeys: @unchecked Sendable {
    public static let count = 64
    public let lifetime: Double
    private let lock = NSLock()
    private var next: Int
    private var issued = [Int]()

    public init(lifetime: Double, first: Int = 0) {
        self.lifetime = lifetime
        self.next = first
    }

    public static func accessKey(_ n: Int) -> String { "CKROT\(n)" }
    public static func secret(_ n: Int) -> String { "rotsecret-\(n)" }

    /// SeaweedFS identities for every key.
    public static var identities: [(accessKey: String, secretKey: String)] { (0..<count).map { (accessKey($0), secret($0)) } }

    /// The next credentials: (key, secret, token, expiration).
    public func issue() -> (key: String, secret: String, token: String, expiration: Date) {
        lock.withLock {
            let n = next % Self.count
            next += 1
            issued.append(n)
            let expiration = Date().addingTimeInterval(lifetime)
            return (Self.accessKey(n), Self.secret(n), "tok.\(n).\(Int64(expiration.timeIntervalSince1970 * 1000))", expiration)
        }
    }

    /// How many credentials were issued.
    public var issuedCount: Int { lock.withLock { issued.count } }

    /// The key number and expiry a token names, when it is one of ours for that key.
    static func check(accessKey: String, token: String?) -> (n: Int, expires: Double)? {
        guard accessKey.hasPrefix("CKROT"), let n = Int(accessKey.dropFirst(5)) else { return nil }
        guard let token else { return nil }
        let parts = token.split(separator: ".")
        guard parts.count == 3, parts[0] == "tok", Int(parts[1]) == n, let ms = Double(parts[2]) else { return nil }
        return (n, ms / 1000)
    }

    static func iso(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: date)
    }
}

/// The EC2 instance metadata service as AWS documents it, with IMDSv2 required: `PUT /latest/api/token`
/// (with `X-aws-ec2-metadata-token-ttl-seconds`) gives a token; every `GET` without a valid one is 401.
/// Serves the instance's role credentials (`/latest/meta-data/iam/security-credentials/ROLE`), its region
/// (`/latest/meta-data/placement/region`) and, once ``announceSpotAction(after:)`` is called, a spot
/// interruption notice (`/latest/meta-data/spot/instance-action`, 404 until then).
public final class InstanceMetadataServer: @unchecked Sendable {
    public let server: TestHTTPServer
    public let keys: RotatingKeys
    public let role: String
    public let region: String
    private let lock = NSLock()
    private var tokens = [String: Date]()
    private var spotAction: (time: Date, visibleAt: Date)?
    /// Requests refused for want of a valid token.
    public private(set) var unauthorized = 0

    public var endpoint: String { server.url }

    public static func start(keys: RotatingKeys, role: String = "ckstore-role", region: String = "eu-central-1") async throws -> InstanceMetadataServer {
        let box = Box<InstanceMetadataServer>()
        let server = try await TestHTTPServer.start { request in await box.value?.handle(request) ?? .text(503, "starting") }
        let metadata = InstanceMetadataServer(server: server, keys: keys, role: role, region: region)
        box.value = metadata
        return metadata
    }

    private init(server: TestHTTPServer, keys: RotatingKeys, role: String, region: String) {
        self.server = server
        self.keys = keys
        self.role = role
        self.region = region
    }

    /// A spot notice that appears `after` seconds from now, for a stop two minutes after it appears.
    public func announceSpotAction(after: Double) {
        let visible = Date().addingTimeInterval(after)
        lock.withLock { spotAction = (visible.addingTimeInterval(120), visible) }
    }

    func handle(_ request: TestHTTPServer.Request) async -> TestHTTPServer.Reply {
        if request.method == "PUT", request.path == "/latest/api/token" {
            guard let ttl = request.header("X-aws-ec2-metadata-token-ttl-seconds").flatMap(Int.init), (1...21_600).contains(ttl) else {
                return .text(400, "")
            }
            let token = "imds-" + UUID().uuidString
            lock.withLock { tokens[token] = Date().addingTimeInterval(Double(ttl)) }
            return .text(200, token)
        }
        guard request.method == "GET" || request.method == "HEAD" else { return .text(405, "") }
        let valid = lock.withLock { () -> Bool in
            guard let token = request.header("X-aws-ec2-metadata-token"), let expires = tokens[token] else { return false }
            return expires > Date()
        }
        guard valid else {
            lock.withLock { unauthorized += 1 }
            return .text(401, "")
        }
        let base = "/latest/meta-data/iam/security-credentials/"
        switch request.path {
        case base, String(base.dropLast()):
            return .text(200, role)
        case base + role:
            let issued = keys.issue()
            return .json(["Code": "Success", "LastUpdated": RotatingKeys.iso(Date()), "Type": "AWS-HMAC",
                          "AccessKeyId": issued.key, "SecretAccessKey": issued.secret, "Token": issued.token,
                          "Expiration": RotatingKeys.iso(issued.expiration)])
        case "/latest/meta-data/placement/region":
            return .text(200, region)
        case "/latest/meta-data/spot/instance-action":
            let action = lock.withLock { spotAction }
            guard let action, Date() >= action.visibleAt else { return .text(404, "") }
            let formatter = ISO8601DateFormatter()
            formatter.formatOptions = [.withInternetDateTime]
            return .json(["action": "terminate", "time": formatter.string(from: action.time)])
        default:
            return .text(404, "")
        }
    }

    public func stop() { server.stop() }
}

/// The container credentials endpoint (ECS, SageMaker, EKS Pod Identity): `GET PATH` with the
/// `Authorization` token given, answering `AccessKeyId`, `SecretAccessKey`, `Token`, `Expiration`.
public final class ContainerCredentialsServer: @unchecked Sendable {
    public let server: TestHTTPServer
    public let path: String
    public let authorization: String?

    public var fullURI: String { server.url + path }

    public static func start(keys: RotatingKeys, path: String = "/v2/credentials/ckstore-task", authorization: String? = "Bearer ckstore-test") async throws -> ContainerCredentialsServer {
        let server = try await TestHTTPServer.start { request in
            guard request.method == "GET", request.path == path else { return .text(404, "") }
            if let authorization, request.header("Authorization") != authorization { return .text(401, "") }
            let issued = keys.issue()
            return .json(["AccessKeyId": issued.key, "SecretAccessKey": issued.secret, "Token": issued.token,
                          "Expiration": RotatingKeys.iso(issued.expiration), "RoleArn": "arn:aws:iam::123456789012:role/ckstore"])
        }
        return ContainerCredentialsServer(server: server, path: path, authorization: authorization)
    }

    private init(server: TestHTTPServer, path: String, authorization: String?) {
        self.server = server
        self.path = path
        self.authorization = authorization
    }

    public func stop() { server.stop() }
}

/// AWS STS's Query API for the two calls the credential chain makes: `AssumeRoleWithWebIdentity`
/// (unsigned; the token must be the one given) and `AssumeRole` (signed with SigV4 for service `sts` by
/// `baseKeys`). Answers the documented XML.
public final class STSServer: @unchecked Sendable {
    public let server: TestHTTPServer
    public var endpoint: String { server.url }
    private let lock = NSLock()
    private var calls = [String]()
    /// The actions called, in order.
    public var actions: [String] { lock.withLock { calls } }

    public static func start(keys: RotatingKeys, webIdentityToken: String, baseKeys: (accessKey: String, secretKey: String)) async throws -> STSServer {
        let box = Box<STSServer>()
        let server = try await TestHTTPServer.start { request in
            guard request.method == "POST" else { return .text(405, "") }
            let form = Dictionary(TestHTTPServer.Request.form(String(decoding: request.body, as: UTF8.self), plusIsSpace: true)) { a, _ in a }
            let action = form["Action"] ?? ""
            box.value?.record(action)
            func error(_ status: Int, _ code: String, _ message: String) -> TestHTTPServer.Reply {
                .xml(status, "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>\(code)</Code><Message>\(message)</Message></Error><RequestId>1</RequestId></ErrorResponse>")
            }
            guard form["Version"] == "2011-06-15", let roleArn = form["RoleArn"], form["RoleSessionName"] != nil else {
                return error(400, "MissingParameter", "RoleArn, RoleSessionName and Version are required")
            }
            switch action {
            case "AssumeRoleWithWebIdentity":
                guard form["WebIdentityToken"] == webIdentityToken else { return error(400, "InvalidIdentityToken", "the token is not valid") }
            case "AssumeRole":
                guard SigV4Check.verify(request, secrets: [baseKeys.accessKey: baseKeys.secretKey], service: "sts") == nil else {
                    return error(403, "SignatureDoesNotMatch", "the request signature does not match")
                }
            default:
                return error(400, "InvalidAction", "unknown action \(action)")
            }
            let issued = keys.issue()
            return .xml(200, """
                <\(action)Response xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><\(action)Result>\
                <Credentials><AccessKeyId>\(issued.key)</AccessKeyId><SecretAccessKey>\(issued.secret)</SecretAccessKey>\
                <SessionToken>\(issued.token)</SessionToken><Expiration>\(RotatingKeys.iso(issued.expiration))</Expiration></Credentials>\
                <AssumedRoleUser><Arn>\(roleArn)/\(form["RoleSessionName"]!)</Arn><AssumedRoleId>AROA:\(form["RoleSessionName"]!)</AssumedRoleId></AssumedRoleUser>\
                </\(action)Result><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></\(action)Response>
                """)
        }
        let sts = STSServer(server: server)
        box.value = sts
        return sts
    }

    private init(server: TestHTTPServer) { self.server = server }

    func record(_ action: String) { lock.withLock { calls.append(action) } }

    public func stop() { server.stop() }
}

/// A reference set once a server is up (its handler is made before the object that handles).
final class Box<T: AnyObject & Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var _value: T?
    var value: T? {
        get { lock.withLock { _value } }
        set { lock.withLock { _value = newValue } }
    }

    init() {}
}
