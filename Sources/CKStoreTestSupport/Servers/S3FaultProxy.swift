import AsyncHTTPClient
import CKStoreS3
import Foundation
import NIOCore
import NIOHTTP1

/// Checks a request's SigV4 `Authorization` header as AWS does: returns nil when it is valid, else the
/// error code AWS would answer.
enum SigV4Check {
    struct Parsed {
        var accessKey: String
        var day: String
        var region: String
        var service: String
        var signedHeaders: [String]
        var signature: String
    }

    static func parse(_ authorization: String?) -> Parsed? {
        guard let authorization, authorization.hasPrefix("AWS4-HMAC-SHA256 ") else { return nil }
        var fields = [String: String]()
        for part in authorization.dropFirst("AWS4-HMAC-SHA256 ".count).split(separator: ",") {
            let pair = part.trimmingCharacters(in: .whitespaces).split(separator: "=", maxSplits: 1)
            if pair.count == 2 { fields[String(pair[0])] = String(pair[1]) }
        }
        guard let credential = fields["Credential"]?.split(separator: "/").map(String.init), credential.count == 5,
              let signed = fields["SignedHeaders"], let signature = fields["Signature"] else { return nil }
        return Parsed(accessKey: credential[0], day: credential[1], region: credential[2], service: credential[3],
                      signedHeaders: signed.split(separator: ";").map(String.init), signature: signature)
    }

    static func verify(_ request: TestHTTPServer.Request, secrets: [String: String], service: String) -> String? {
        guard let parsed = parse(request.header("Authorization")), parsed.service == service else { return "AuthorizationHeaderMalformed" }
        guard let secret = secrets[parsed.accessKey] else { return "InvalidAccessKeyId" }
        return verify(request, parsed: parsed, secret: secret)
    }

    static func verify(_ request: TestHTTPServer.Request, parsed: Parsed, secret: String) -> String? {
        guard let amzDate = request.header("x-amz-date"), amzDate.hasPrefix(parsed.day) else { return "AuthorizationHeaderMalformed" }
        let headers = parsed.signedHeaders.map { name in (name, request.headers[name].joined(separator: ",")) }
        let payloadHash = request.header("x-amz-content-sha256") ?? SigV4Signer.payloadHash(request.body)
        let signer = SigV4Signer(accessKey: parsed.accessKey, secretKey: secret, region: parsed.region, service: parsed.service)
        let expected = signer.sign(.init(method: request.method, encodedPath: request.path, query: request.query, headers: headers, payloadHash: payloadHash), amzDate: amzDate)
        return expected.signature == parsed.signature ? nil : "SignatureDoesNotMatch"
    }
}

/// An S3 proxy for tests, in front of SeaweedFS, that fails the ways real servers and networks do.
///
/// Every request's signature is checked as AWS checks it, with the session token and expiry of
/// ``RotatingKeys`` credentials (an expired one gets 400 `ExpiredToken`, as from AWS), then signed again
/// for SeaweedFS with the same key and forwarded, unless a fault in ``inject(_:times:where:)`` answers
/// instead or changes the exchange. With ``bucketRegion`` set, a request signed for another region gets
/// AWS's 301 `PermanentRedirect` with `x-amz-bucket-region`.
public final class S3FaultProxy: @unchecked Sendable {
    public enum Fault: Sendable, CustomStringConvertible {
        /// Answers this status and S3 error code (with `Retry-After` seconds, if given); nothing forwarded.
        case status(Int, code: String, retryAfter: Int? = nil)
        /// Forwards, then sends `afterBytes` of the body and stalls for `seconds` before closing.
        case stallBody(afterBytes: Int, seconds: Double)
        /// Forwards, then sends only the first `keepBytes` of the body, with a matching length.
        case truncateBody(keepBytes: Int)
        /// Forwards, then closes the connection after `afterBytes` of the body.
        case dropConnection(afterBytes: Int)
        /// Forwards without the `Range` header: the whole object comes back, with 200.
        case ignoreRange
        /// Forwards without `If-None-Match`: a conditional create overwrites.
        case ignoreIfNoneMatch
        /// Forwards a `CompleteMultipartUpload` and loses its answer (the connection closes).
        case loseCompleteMultipartAnswer
        /// Forwards a listing and says it is truncated, with no continuation token.
        case truncatedListingWithoutToken

        public var description: String {
            switch self {
            case .status(let status, let code, let after): "HTTP \(status) \(code)\(after.map { " Retry-After \($0)" } ?? "")"
            case .stallBody(let bytes, let seconds): "stall after \(bytes) bytes for \(seconds) s"
            case .truncateBody(let bytes): "body truncated to \(bytes) bytes"
            case .dropConnection(let bytes): "connection dropped after \(bytes) bytes"
            case .ignoreRange: "Range ignored"
            case .ignoreIfNoneMatch: "If-None-Match ignored"
            case .loseCompleteMultipartAnswer: "CompleteMultipartUpload answer lost"
            case .truncatedListingWithoutToken: "truncated listing without a token"
            }
        }
    }

    /// Which requests a fault applies to.
    public struct Match: Sendable {
        let test: @Sendable (TestHTTPServer.Request) -> Bool
        public init(_ test: @escaping @Sendable (TestHTTPServer.Request) -> Bool) { self.test = test }
        public static let any = Match { _ in true }
        /// A GET of an object whose key contains `part` (not a listing).
        public static func get(_ part: String) -> Match { Match { $0.method == "GET" && $0.path.contains(part) && !$0.rawQuery.contains("list-type") } }
        public static func put(_ part: String) -> Match { Match { $0.method == "PUT" && $0.path.contains(part) } }
        public static let listing = Match { $0.method == "GET" && $0.rawQuery.contains("list-type=2") }
        public static let completeMultipart = Match { $0.method == "POST" && $0.rawQuery.contains("uploadId=") }
        public static let uploadPart = Match { $0.method == "PUT" && $0.rawQuery.contains("partNumber=") }
        public static let conditionalPut = Match { $0.method == "PUT" && $0.header("If-None-Match") != nil }
    }

    private struct Rule {
        var fault: Fault
        var match: Match
        var remaining: Int
    }

    public let server: TestHTTPServer
    public let upstream: String
    private let client: HTTPClient
    private let lock = NSLock()
    private var rules = [Rule]()
    private var _bucketRegion: String?
    private var _latency: Double = 0
    private var keysSeen = Set<String>()
    private var _expiredRefusals = 0
    private var _faultsApplied = [String]()
    private var staticSecrets: [String: String]

    public var endpoint: String { server.url }

    /// Starts a proxy for `upstream` (SeaweedFS's S3 URL); `secrets` are the long-lived keys it accepts
    /// besides the rotating ones.
    public static func start(upstream: String, secrets: [String: String]) async throws -> S3FaultProxy {
        let box = Box<S3FaultProxy>()
        let server = try await TestHTTPServer.start { request in
            guard let proxy = box.value else { return .text(503, "starting") }
            return await proxy.handle(request)
        }
        let proxy = S3FaultProxy(server: server, upstream: upstream, secrets: secrets)
        box.value = proxy
        return proxy
    }

    private init(server: TestHTTPServer, upstream: String, secrets: [String: String]) {
        self.server = server
        self.upstream = upstream
        self.staticSecrets = secrets
        var configuration = HTTPClient.Configuration()
        configuration.decompression = .disabled
        configuration.timeout = .init(connect: .seconds(5), read: .seconds(60))
        self.client = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }

    /// Applies `fault` to the next `times` requests that `match` matches.
    public func inject(_ fault: Fault, times: Int = 1, where match: Match = .any) {
        lock.withLock { rules.append(Rule(fault: fault, match: match, remaining: times)) }
    }

    /// Forgets every fault not yet applied.
    public func clearFaults() { lock.withLock { rules.removeAll() } }

    /// The region the bucket is in; requests signed for another get a 301.
    public var bucketRegion: String? {
        get { lock.withLock { _bucketRegion } }
        set { lock.withLock { _bucketRegion = newValue } }
    }

    /// Seconds each request waits before it is forwarded.
    public var latency: Double {
        get { lock.withLock { _latency } }
        set { lock.withLock { _latency = newValue } }
    }

    /// The access keys requests were signed with.
    public var accessKeys: Set<String> { lock.withLock { keysSeen } }
    /// Requests refused because their credentials had expired.
    public var expiredRefusals: Int { lock.withLock { _expiredRefusals } }
    /// The faults applied, in order.
    public var faultsApplied: [String] { lock.withLock { _faultsApplied } }

    public func stop() {
        server.stop()
        try? client.syncShutdown()
    }

    private func takeFault(for request: TestHTTPServer.Request) -> Fault? {
        lock.withLock {
            guard let index = rules.firstIndex(where: { $0.remaining > 0 && $0.match.test(request) }) else { return nil }
            rules[index].remaining -= 1
            _faultsApplied.append(rules[index].fault.description)
            return rules[index].fault
        }
    }

    static func error(_ status: Int, _ code: String, _ message: String, headers: [(String, String)] = [], extra: String = "") -> TestHTTPServer.Reply {
        var reply = TestHTTPServer.Reply.xml(status, "<Error><Code>\(code)</Code><Message>\(message)</Message>\(extra)<RequestId>proxy</RequestId></Error>")
        reply.headers += headers
        return reply
    }

    func handle(_ request: TestHTTPServer.Request) async -> TestHTTPServer.Reply {
        // Authentication, as AWS does it.
        guard let parsed = SigV4Check.parse(request.header("Authorization")) else {
            return Self.error(403, "AccessDenied", "Anonymous access is refused")
        }
        let token = request.header("x-amz-security-token")
        let secret: String
        if let fixed = staticSecrets[parsed.accessKey] {
            secret = fixed
        } else if let issued = RotatingKeys.check(accessKey: parsed.accessKey, token: token) {
            guard Date().timeIntervalSince1970 < issued.expires else {
                lock.withLock { _expiredRefusals += 1 }
                return Self.error(400, "ExpiredToken", "The provided token has expired.")
            }
            secret = RotatingKeys.secret(issued.n)
        } else if parsed.accessKey.hasPrefix("CKROT") {
            return Self.error(403, "InvalidToken", "The provided token is malformed or otherwise invalid.")
        } else {
            return Self.error(403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
        }
        if let problem = SigV4Check.verify(request, parsed: parsed, secret: secret) {
            return Self.error(403, problem, "The request signature we calculated does not match the signature you provided.")
        }
        // AWS checks the body against the SHA-256 it was signed with (a 64-digit hex value; not
        // UNSIGNED-PAYLOAD or a streaming mode).
        if let declared = request.header("x-amz-content-sha256"), declared.count == 64, declared != SigV4Signer.payloadHash(request.body) {
            return Self.error(400, "XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not match what was computed.")
        }
        lock.withLock { _ = keysSeen.insert(parsed.accessKey) }
        if let region = bucketRegion, parsed.region != region {
            return Self.error(301, "PermanentRedirect", "The bucket you are attempting to access must be addressed using the specified endpoint.",
                              headers: [("x-amz-bucket-region", region)], extra: "<Region>\(region)</Region>")
        }
        let wait = latency
        if wait > 0 { try? await Task.sleep(nanoseconds: UInt64(wait * 1e9)) }

        let fault = takeFault(for: request)
        if case .status(let status, let code, let after)? = fault {
            return Self.error(status, code, "injected by the test proxy", headers: after.map { [("Retry-After", String($0))] } ?? [])
        }
        var dropped = Set<String>()
        if case .ignoreRange? = fault { dropped.insert("range") }
        if case .ignoreIfNoneMatch? = fault { dropped.insert("if-none-match") }
        guard var reply = await forward(request, parsed: parsed, secret: secret, dropping: dropped) else {
            return Self.error(502, "BadGateway", "the upstream server did not answer")
        }
        switch fault {
        case .stallBody(let bytes, let seconds)?: reply.fault = .stall(afterBytes: bytes, seconds: seconds)
        case .dropConnection(let bytes)?: reply.fault = .drop(afterBytes: bytes)
        case .truncateBody(let keep)?:
            reply.body = Array(reply.body.prefix(keep))
            reply.headers.removeAll { $0.0.lowercased() == "content-length" }
        case .loseCompleteMultipartAnswer?: reply.fault = .noAnswer
        case .truncatedListingWithoutToken?:
            var xml = String(decoding: reply.body, as: UTF8.self)
            xml = xml.replacingOccurrences(of: "<IsTruncated>false</IsTruncated>", with: "<IsTruncated>true</IsTruncated>")
            if let open = xml.range(of: "<NextContinuationToken>"), let close = xml.range(of: "</NextContinuationToken>") {
                xml.removeSubrange(open.lowerBound..<close.upperBound)
            }
            reply.body = Array(xml.utf8)
            reply.headers.removeAll { $0.0.lowercased() == "content-length" }
        default: break
        }
        return reply
    }

    /// Signs the request again for the upstream (same key, no session token, the upstream's host) and
    /// sends it there.
    private func forward(_ request: TestHTTPServer.Request, parsed: SigV4Check.Parsed, secret: String, dropping: Set<String>) async -> TestHTTPServer.Reply? {
        guard let url = URLComponents(string: upstream), let host = url.host else { return nil }
        let hostHeader = url.port.map { "\(host):\($0)" } ?? host
        let payloadHash = request.header("x-amz-content-sha256") ?? SigV4Signer.payloadHash(request.body)
        let amzDate = SigV4Signer.amzDate(Date())
        var headers = [(String, String)]()
        for (name, value) in request.headers {
            let lower = name.lowercased()
            if ["authorization", "host", "x-amz-security-token", "x-amz-date", "content-length", "connection"].contains(lower) || dropping.contains(lower) { continue }
            headers.append((lower, value))
        }
        headers += [("host", hostHeader), ("x-amz-date", amzDate)]
        if !headers.contains(where: { $0.0 == "x-amz-content-sha256" }) { headers.append(("x-amz-content-sha256", payloadHash)) }
        let signer = SigV4Signer(accessKey: parsed.accessKey, secretKey: secret, region: parsed.region)
        let signature = signer.sign(.init(method: request.method, encodedPath: request.path, query: request.query, headers: headers, payloadHash: payloadHash), amzDate: amzDate)
        var outgoing = HTTPClientRequest(url: upstream + request.uri)
        outgoing.method = HTTPMethod(rawValue: request.method)
        for (name, value) in headers { outgoing.headers.add(name: name, value: value) }
        outgoing.headers.add(name: "Authorization", value: signature.authorization)
        if !request.body.isEmpty || request.method == "PUT" || request.method == "POST" {
            outgoing.body = .bytes(ByteBuffer(bytes: request.body))
            outgoing.headers.replaceOrAdd(name: "Content-Length", value: String(request.body.count))
        }
        do {
            let response = try await client.execute(outgoing, timeout: .seconds(60))
            var collected = try await response.body.collect(upTo: 1 << 30)
            let body = collected.readBytes(length: collected.readableBytes) ?? []
            var replyHeaders = [(String, String)]()
            for (name, value) in response.headers {
                let lower = name.lowercased()
                if lower == "transfer-encoding" || lower == "connection" { continue }
                if lower == "content-length" && request.method != "HEAD" { continue }
                replyHeaders.append((name, value))
            }
            return TestHTTPServer.Reply(status: Int(response.status.code), headers: replyHeaders, body: body)
        } catch {
            return nil
        }
    }
}
