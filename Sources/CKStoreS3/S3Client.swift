import AsyncHTTPClient
public import CKStore
public import Foundation
import NIOCore
import NIOHTTP1

/// A remote in an S3 bucket (AWS, or any server that speaks S3: SeaweedFS, MinIO, Ceph, R2), over
/// async-http-client with requests signed by ``SigV4Signer``.
///
/// - Credentials come from ``AWSCredentialChain`` (the AWS SDKs' order) and are refreshed before they
///   expire, and once on `ExpiredToken`.
/// - The region is the definition's, the environment's, the profile's, or the instance's (IMDS, on
///   AWS); a 301 or 400 that names the bucket's region (`x-amz-bucket-region`, `<Region>`) teaches it
///   once, and the request is signed again.
/// - Failed requests are retried with exponential backoff and jitter until ``retrySeconds`` have passed,
///   honouring `Retry-After`: 5xx, 429, `SlowDown`, `RequestTimeout`, refused and reset connections, and
///   stalls (no bytes for ``stallSeconds``). Other refusals throw `remote` naming the remote, the
///   request and the HTTP status; 404 on an object is `notFound`.
/// - Objects of ``multipartThreshold`` bytes or more go up in parts; a lost `CompleteMultipartUpload`
///   answer is settled by a HEAD of the object; a failed upload is aborted, even when cancelled.
public struct S3ObjectStore: ObjectStore, MultipartObjectStore {
    public let remoteName: String
    public let bucket: String
    public let prefix: String
    let endpoint: Endpoint
    let pathStyle: Bool
    /// The credentials every request is signed with.
    public let credentials: AWSCredentialProvider
    let state: S3State
    /// Attempts per request, the first included (within ``retrySeconds``).
    public var attempts = 1_000
    /// How long a request is retried, in seconds: `$CKSTORE_S3_RETRY_SECONDS`, else 120.
    public var retrySeconds: Double = 120
    /// A transfer that receives nothing for this long is a stall, retried: `$CKSTORE_S3_STALL_SECONDS`,
    /// else 60.
    public var stallSeconds: Int64 = 60
    /// Objects this large or larger are uploaded as a multipart upload: AWS advises parts from about
    /// 100 MB. A push's packs (64 MiB) go up in one PUT each, signed with the SHA-256 that names them.
    public var multipartThreshold = 100 << 20
    public var partSize = 16 << 20
    /// The deadline of one request, in seconds.
    public var timeoutSeconds: Int64 = 300

    struct Endpoint: Sendable {
        var scheme: String
        var host: String
        /// Nil for the scheme's default port (which is then neither sent nor signed).
        var port: Int?
        /// A path the endpoint's URL carries (`https://host/s3`), kept before the bucket; "" or `/…`.
        var basePath: String
        /// AWS's own endpoint, `s3.REGION.amazonaws.com`, which follows the region when it is learned.
        var isAWS: Bool

        var hostHeader: String { port.map { "\(host):\($0)" } ?? host }
    }

    public var description: String {
        let url = "s3://\(bucket)\(prefix.isEmpty ? "" : "/" + prefix)"
        return remoteName == url ? "remote \(url)" : "remote \(remoteName) (\(url))"
    }

    /// The region requests are signed for now.
    public var region: String { state.region }

    /// Connects a remote definition, taking credentials, region and endpoint from the environment the way
    /// the AWS tools do.
    ///
    /// - Parameters:
    ///   - credentials: the credentials to sign with; default: the environment's chain.
    ///   - knownRegion: a region learned earlier for this bucket (the store's cache), used when the
    ///     definition and the environment name none.
    ///   - learnedRegion: told when a server names the bucket's region, to cache it.
    public init(_ definition: RemoteDefinition, environment: [String: String] = ProcessInfo.processInfo.environment,
                credentials: AWSCredentialProvider? = nil, knownRegion: String? = nil,
                learnedRegion: (@Sendable (String) -> Void)? = nil) throws {
        guard case .s3(let bucket, let prefix) = try definition.location() else {
            throw CKStoreError(.invalidArgument, "remote \(definition.name) (\(definition.url)) is not an s3:// remote")
        }
        let chain = AWSCredentialChain(environment: environment, remote: definition.name)
        self.credentials = try credentials ?? AWSCredentialProvider(chain: chain)
        func nonEmpty(_ name: String) -> String? { environment[name].flatMap { $0.isEmpty ? nil : $0 } }
        let configured = definition.region ?? nonEmpty("AWS_REGION") ?? nonEmpty("AWS_DEFAULT_REGION") ?? chain.profileRegion ?? knownRegion
        let endpointText = definition.endpoint ?? nonEmpty("AWS_ENDPOINT_URL_S3") ?? nonEmpty("AWS_ENDPOINT_URL")
        self.remoteName = definition.name
        self.bucket = bucket
        self.prefix = prefix
        let endpoint: Endpoint
        if let endpointText {
            guard let url = URLComponents(string: endpointText), let scheme = url.scheme?.lowercased(), scheme == "http" || scheme == "https",
                  let host = url.host, !host.isEmpty, url.query == nil else {
                throw CKStoreError(.invalidArgument, "remote \(definition.name): endpoint \(endpointText) is not an http(s)://HOST[:PORT][/PATH] URL")
            }
            var path = url.percentEncodedPath
            while path.hasSuffix("/") { path.removeLast() }
            let defaultPort = scheme == "https" ? 443 : 80
            endpoint = Endpoint(scheme: scheme, host: host.lowercased(), port: url.port == defaultPort ? nil : url.port, basePath: path, isAWS: false)
        } else {
            endpoint = Endpoint(scheme: "https", host: "s3.\(configured ?? "us-east-1").amazonaws.com", port: nil, basePath: "", isAWS: true)
        }
        self.endpoint = endpoint
        // Virtual-hosted on AWS (path style is deprecated there) unless asked, or the bucket's dots would
        // break the certificate's wildcard; path style on other servers (most want it, and a bare IP
        // or localhost cannot carry the bucket) unless --virtual-hosted.
        switch definition.addressing {
        case .path: self.pathStyle = true
        case .virtualHosted: self.pathStyle = false
        case .automatic: self.pathStyle = endpoint.isAWS ? bucket.contains(".") : true
        }
        self.state = S3State(region: configured ?? "us-east-1", regionKnown: configured != nil, awsEndpoint: endpoint.isAWS,
                             metadata: endpoint.isAWS && configured == nil ? InstanceMetadata(environment: environment) : nil,
                             learned: learnedRegion)
        if let seconds = nonEmpty("CKSTORE_S3_RETRY_SECONDS").flatMap(Double.init), seconds >= 0 { retrySeconds = seconds }
        if let seconds = nonEmpty("CKSTORE_S3_STALL_SECONDS").flatMap(Int64.init), seconds > 0 { stallSeconds = seconds }
        // Multipart tuning: `$CKSTORE_S3_MULTIPART_THRESHOLD` and `$CKSTORE_S3_PART_SIZE` in bytes (S3
        // wants parts of 5 MiB or more, the last aside).
        if let bytes = nonEmpty("CKSTORE_S3_MULTIPART_THRESHOLD").flatMap(Int.init), bytes > 0 { multipartThreshold = bytes }
        if let bytes = nonEmpty("CKSTORE_S3_PART_SIZE").flatMap(Int.init), bytes > 0 { partSize = bytes }
    }

    // MARK: ObjectStore

    public func get(_ key: String, range: Range<Int64>?) async throws -> [UInt8] {
        guard range.map({ !$0.isEmpty }) ?? true else { return [] }
        var headers = [(String, String)]()
        if let range { headers.append(("Range", "bytes=\(range.lowerBound)-\(range.upperBound - 1)")) }
        let response = try await send("GET", key: key, headers: headers)
        switch response.status {
        case 200, 206:
            if let range, response.status == 200 {
                // A server that ignored the range sent the whole object.
                guard range.upperBound <= Int64(response.body.count) else {
                    throw CKStoreError(.remote, "\(description): GET \(key) bytes \(range): the object has only \(response.body.count) bytes")
                }
                return Array(response.body[Int(range.lowerBound)..<Int(range.upperBound)])
            }
            if let range, response.body.count != range.count {
                throw CKStoreError(.remote, "\(description): GET \(key) bytes \(range): the server sent \(response.body.count) bytes")
            }
            return response.body
        case 404 where response.errorCode != "NoSuchBucket":
            throw CKStoreError(.notFound, "\(description): no object \(key)")
        case 416:
            throw CKStoreError(.remote, "\(description): GET \(key): the range \(range.map { "\($0)" } ?? "") is outside the object (HTTP 416)")
        default:
            throw failure("GET", key, response)
        }
    }

    public func put(_ key: String, _ body: [UInt8], ifAbsent: Bool) async throws -> Bool {
        try await put(key, body, ifAbsent: ifAbsent, payloadHash: nil)
    }

    /// A pack's name is the SHA-256 of its bytes, which SigV4 sends as `x-amz-content-sha256`: AWS checks
    /// the body against it, and the body is not hashed a second time here.
    public func put(_ key: String, _ body: [UInt8], sha256: String) async throws {
        _ = try await put(key, body, ifAbsent: false, payloadHash: sha256)
    }

    private func put(_ key: String, _ body: [UInt8], ifAbsent: Bool, payloadHash: String?) async throws -> Bool {
        if !ifAbsent, body.count >= multipartThreshold { return try await putMultipart(key, body) }
        let headers = ifAbsent ? [("If-None-Match", "*")] : []
        let response = try await send("PUT", key: key, headers: headers, body: body[...], payloadHash: payloadHash)
        switch response.status {
        case 200: return true
        case 412 where ifAbsent: return false
        default: throw failure("PUT", key, response)
        }
    }

    public func head(_ key: String) async throws -> ObjectInfo? {
        let response = try await send("HEAD", key: key)
        switch response.status {
        case 200:
            guard let size = response.headers.first(name: "content-length").flatMap({ Int64($0) }) else {
                throw CKStoreError(.remote, "\(description): HEAD \(key): the answer has no Content-Length")
            }
            let text = response.headers.first(name: "last-modified") ?? ""
            guard let modified = Self.httpDate(text) else {
                throw CKStoreError(.remote, "\(description): HEAD \(key): Last-Modified \"\(text)\" is not an HTTP date; ckstore does not guess an object's age")
            }
            return ObjectInfo(key: key, size: size, lastModified: modified)
        case 404: return nil
        default: throw failure("HEAD", key, response)
        }
    }

    public func delete(_ key: String) async throws {
        let response = try await send("DELETE", key: key)
        guard [200, 204, 404].contains(response.status) else { throw failure("DELETE", key, response) }
    }

    public func list(prefix listPrefix: String) async throws -> [ObjectInfo] {
        let fullPrefix = fullKey(listPrefix)
        var out = [ObjectInfo]()
        var token: String?
        repeat {
            var query = [("list-type", "2"), ("prefix", fullPrefix)]
            if let token { query.append(("continuation-token", token)) }
            let response = try await send("GET", key: nil, query: query)
            guard response.status == 200 else { throw failure("LIST", listPrefix, response) }
            let xml = String(decoding: response.body, as: UTF8.self)
            for entry in XMLScan.blocks("Contents", in: xml) {
                guard let full = XMLScan.value("Key", in: entry), full.hasPrefix(fullPrefix) else {
                    throw CKStoreError(.remote, "\(description): LIST \(listPrefix): the server listed a key outside the prefix")
                }
                let key = prefix.isEmpty ? full : String(full.dropFirst(prefix.count + 1))
                guard let size = XMLScan.value("Size", in: entry).flatMap({ Int64($0) }) else {
                    throw CKStoreError(.remote, "\(description): LIST \(listPrefix): \(key) has no Size")
                }
                let text = XMLScan.value("LastModified", in: entry) ?? ""
                guard let modified = Self.isoDate(text) else {
                    throw CKStoreError(.remote, "\(description): LIST \(listPrefix): \(key) has LastModified \"\(text)\", not an ISO 8601 time; ckstore does not guess an object's age")
                }
                out.append(ObjectInfo(key: key, size: size, lastModified: modified))
            }
            token = try nextToken(xml, tag: "NextContinuationToken", what: "LIST \(listPrefix)")
        } while token != nil
        return out.sorted { $0.key < $1.key }
    }

    /// The continuation of a listing: nil at its end; a truncated listing without one is an error, never
    /// an end (ending there would hide live objects from gc).
    private func nextToken(_ xml: String, tag: String, what: String) throws -> String? {
        guard XMLScan.value("IsTruncated", in: xml) == "true" else { return nil }
        guard let token = XMLScan.value(tag, in: xml), !token.isEmpty else {
            throw CKStoreError(.remote, "\(description): \(what): the server said the listing is truncated (IsTruncated) but gave no \(tag); refusing to treat a partial listing as whole")
        }
        return token
    }

    // MARK: Buckets

    /// Creates the bucket (tests and benchmarks make theirs; ckstore itself never creates one).
    public func createBucket() async throws {
        let response = try await send("PUT", key: nil)
        guard response.status == 200 || response.errorCode == "BucketAlreadyOwnedByYou" else { throw failure("PUT (create bucket)", bucket, response) }
    }

    /// Whether the bucket exists (HEAD of the bucket).
    public func bucketExists() async throws -> Bool {
        let response = try await send("HEAD", key: nil, retrying: false)
        switch response.status {
        case 200: return true
        case 404: return false
        default: throw failure("HEAD (bucket)", bucket, response)
        }
    }

    // MARK: Multipart

    private func putMultipart(_ key: String, _ body: [UInt8]) async throws -> Bool {
        let created = try await send("POST", key: key, query: [("uploads", "")])
        guard created.status == 200, let uploadID = XMLScan.value("UploadId", in: String(decoding: created.body, as: UTF8.self)) else {
            throw failure("POST (create multipart upload)", key, created)
        }
        do {
            var parts = [(Int, String)]()
            var start = 0
            while start < body.count {
                let end = min(body.count, start + partSize)
                let number = parts.count + 1
                let response = try await send("PUT", key: key, query: [("partNumber", String(number)), ("uploadId", uploadID)], body: body[start..<end])
                guard response.status == 200, let etag = response.headers.first(name: "etag") else { throw failure("PUT (part \(number))", key, response) }
                parts.append((number, etag))
                start = end
            }
            let xml = "<CompleteMultipartUpload>" + parts.map { "<Part><PartNumber>\($0.0)</PartNumber><ETag>\(XMLScan.escape($0.1))</ETag></Part>" }.joined() + "</CompleteMultipartUpload>"
            let completed: Response
            do {
                completed = try await send("POST", key: key, query: [("uploadId", uploadID)], body: Array(xml.utf8)[...])
            } catch let error as CKStoreError where error.code == .remote {
                // Every answer was lost: the upload may have completed all the same.
                if try await completedUpload(key, size: body.count, parts: parts.count) { return true }
                throw error
            }
            // S3 can answer 200 and put the error in the body.
            if completed.status == 200, !String(decoding: completed.body, as: UTF8.self).contains("<Error>") { return true }
            // A retry after a lost 200 finds the upload gone (NoSuchUpload): the object says whether it
            // completed.
            if completed.errorCode == "NoSuchUpload", try await completedUpload(key, size: body.count, parts: parts.count) { return true }
            throw failure("POST (complete multipart upload)", key, completed)
        } catch {
            // Not left to cost money: aborted with retries, in a task of its own so that a cancelled push
            // still sends it.
            let store = self
            _ = await Task.detached { try? await store.abortUpload(IncompleteUpload(key: key, uploadID: uploadID, initiated: 0)) }.value
            throw error
        }
    }

    /// Whether `key` is an object of `size` bytes made of `parts` parts (its ETag ends in `-parts`): the
    /// upload that lost its answer.
    private func completedUpload(_ key: String, size: Int, parts: Int) async throws -> Bool {
        let response = try await send("HEAD", key: key)
        guard response.status == 200 else { return false }
        let etag = (response.headers.first(name: "etag") ?? "").replacingOccurrences(of: "\"", with: "")
        return response.headers.first(name: "content-length").flatMap { Int($0) } == size && etag.hasSuffix("-\(parts)")
    }

    public func incompleteUploads(prefix listPrefix: String) async throws -> [IncompleteUpload] {
        let fullPrefix = fullKey(listPrefix)
        var out = [IncompleteUpload]()
        var markers: (key: String, upload: String)?
        repeat {
            var query = [("uploads", ""), ("prefix", fullPrefix)]
            if let markers { query += [("key-marker", markers.key), ("upload-id-marker", markers.upload)] }
            let response = try await send("GET", key: nil, query: query)
            guard response.status == 200 else { throw failure("LIST (multipart uploads)", listPrefix, response) }
            let xml = String(decoding: response.body, as: UTF8.self)
            for entry in XMLScan.blocks("Upload", in: xml) {
                guard let full = XMLScan.value("Key", in: entry), full.hasPrefix(fullPrefix), let id = XMLScan.value("UploadId", in: entry) else {
                    throw CKStoreError(.remote, "\(description): LIST (multipart uploads): an upload without a key or id, or outside the prefix")
                }
                let text = XMLScan.value("Initiated", in: entry) ?? ""
                guard let initiated = Self.isoDate(text) else {
                    throw CKStoreError(.remote, "\(description): LIST (multipart uploads): \(full) has Initiated \"\(text)\", not an ISO 8601 time")
                }
                out.append(IncompleteUpload(key: prefix.isEmpty ? full : String(full.dropFirst(prefix.count + 1)), uploadID: id, initiated: initiated))
            }
            if XMLScan.value("IsTruncated", in: xml) == "true" {
                guard let key = XMLScan.value("NextKeyMarker", in: xml), let upload = XMLScan.value("NextUploadIdMarker", in: xml), !key.isEmpty else {
                    throw CKStoreError(.remote, "\(description): LIST (multipart uploads): truncated without NextKeyMarker; refusing a partial listing")
                }
                markers = (key, upload)
            } else {
                markers = nil
            }
        } while markers != nil
        return out
    }

    public func abortUpload(_ upload: IncompleteUpload) async throws {
        let response = try await send("DELETE", key: upload.key, query: [("uploadId", upload.uploadID)])
        guard [200, 204, 404].contains(response.status) else { throw failure("DELETE (abort multipart upload)", upload.key, response) }
    }

    // MARK: Requests

    struct Response: Sendable {
        var status: Int
        var headers: HTTPHeaders
        var body: [UInt8]

        /// The `<Code>` of an S3 error body.
        var errorCode: String? { errorDocument.flatMap { XMLScan.value("Code", in: $0) } }
        var errorMessage: String? { errorDocument.flatMap { XMLScan.value("Message", in: $0) } }

        /// The body as text when it can be an S3 error document: small and XML. Never the bytes of an
        /// object: scanning an 8 MiB range of a pack as text for `<Code>`, three times per response, took
        /// most of a pull's time.
        private var errorDocument: String? {
            guard body.count <= 64 << 10, body.first(where: { ![0x20, 0x09, 0x0A, 0x0D].contains($0) }) == UInt8(ascii: "<") else { return nil }
            return String(decoding: body, as: UTF8.self)
        }
    }

    func fullKey(_ key: String) -> String { prefix.isEmpty ? key : prefix + "/" + key }

    /// Why a response is worth another try, or nil.
    static func retryable(_ response: Response) -> String? {
        let code = response.errorCode
        switch (response.status, code) {
        case (500..., _), (429, _): return "HTTP \(response.status)\(code.map { " " + $0 } ?? "")"
        case (400, "RequestTimeout"?), (_, "SlowDown"?), (_, "InternalError"?), (_, "Throttling"?), (409, "ConditionalRequestConflict"?):
            return "HTTP \(response.status) \(code!)"
        default: return nil
        }
    }

    /// The length `bytes FIRST-LAST/TOTAL` announces.
    static func rangeLength(_ header: String) -> Int? {
        guard header.hasPrefix("bytes "), let span = header.dropFirst(6).split(separator: "/").first else { return nil }
        let ends = span.split(separator: "-")
        guard ends.count == 2, let first = Int(ends[0]), let last = Int(ends[1]), last >= first else { return nil }
        return last - first + 1
    }

    /// The wait a `Retry-After` asks for (seconds, or an HTTP date), if any.
    static func retryAfter(_ headers: HTTPHeaders, now: Date = Date()) -> Double? {
        guard let text = headers.first(name: "retry-after")?.trimmingCharacters(in: .whitespaces) else { return nil }
        if let seconds = Double(text), seconds >= 0 { return seconds }
        return httpDate(text).map { max(0, $0 - now.timeIntervalSince1970) }
    }

    /// Whether a server refused a request because the credentials that signed it expired: S3's
    /// `ExpiredToken` (and STS's names for it), or, for a `HEAD`, whose answer has no body to name an
    /// error, a 400 or 403 once those credentials have expired by this machine's clock.
    static func refusedAsExpired(method: String, response: Response, signedWith credentials: AWSCredentials, now: Date = Date()) -> Bool {
        if ["ExpiredToken", "TokenRefreshRequired", "ExpiredTokenException"].contains(response.errorCode ?? "") { return true }
        guard method == "HEAD", [400, 403].contains(response.status), let expiration = credentials.expiration else { return false }
        return expiration <= now
    }

    /// Sends a signed request, retrying what a retry can help within ``retrySeconds``.
    func send(_ method: String, key: String?, query: [(String, String)] = [], headers extra: [(String, String)] = [], body: ArraySlice<UInt8> = [], payloadHash knownHash: String? = nil, retrying: Bool = true) async throws -> Response {
        let payloadHash = knownHash ?? SigV4Signer.payloadHash(body)
        let started = ContinuousClock.now
        let budget = Duration.milliseconds(Int64(retrySeconds * 1000))
        var delay = 0.25
        var lastError: (any Error)?
        // Credentials refused as expired are fetched again, a few times: on a loaded machine the new
        // ones may themselves arrive late.
        var expiredRefusals = 0
        var redirects = 0
        var attempt = 0
        while true {
            attempt += 1
            try Task.checkCancellation()
            let region = await state.currentRegion()
            let (url, host, path) = address(key: key, query: query, region: region)
            let credentials = try await self.credentials.credentials()
            let signer = SigV4Signer(accessKey: credentials.accessKey, secretKey: credentials.secretKey, sessionToken: credentials.sessionToken, region: region)
            let amzDate = SigV4Signer.amzDate(Date())
            var headers = extra + [("Host", host), ("x-amz-date", amzDate), ("x-amz-content-sha256", payloadHash)]
            if let token = credentials.sessionToken { headers.append(("x-amz-security-token", token)) }
            let signature = signer.sign(.init(method: method, encodedPath: path, query: query, headers: headers, payloadHash: payloadHash), amzDate: amzDate)
            var request = HTTPClientRequest(url: url)
            request.method = HTTPMethod(rawValue: method)
            for (name, value) in headers { request.headers.add(name: name, value: value) }
            request.headers.add(name: "Authorization", value: signature.authorization)
            if !body.isEmpty || method == "PUT" || method == "POST" {
                // Sent in 4 MiB pieces copied as the connection takes them, not in one copy of the body.
                request.body = .bytes(body, length: .known(Int64(body.count)))
                request.headers.replaceOrAdd(name: "Content-Length", value: String(body.count))
            }
            var wait: Double?
            do {
                let client = S3HTTPClients.client(stallSeconds: stallSeconds)
                let answer = try await client.execute(request, timeout: .seconds(timeoutSeconds))
                let bytes = try await Self.body(of: answer, method: method)
                let response = Response(status: Int(answer.status.code), headers: answer.headers, body: bytes)
                if method != "HEAD", let length = answer.headers.first(name: "content-length").flatMap({ Int($0) }), length != bytes.count {
                    // A body cut short (a dropped connection the client did not report).
                    throw CKStoreError(.ioFailure, "\(method) \(key ?? "/"): the server announced \(length) bytes and sent \(bytes.count)")
                }
                if response.status == 206, let range = answer.headers.first(name: "content-range"), let expected = Self.rangeLength(range), expected != bytes.count {
                    // A part cut short with a matching Content-Length: Content-Range still says what was due.
                    throw CKStoreError(.ioFailure, "\(method) \(key ?? "/"): Content-Range \(range) announced \(expected) bytes and \(bytes.count) came")
                }
                // The wrong region: learn the bucket's and sign again.
                if redirects < 2, let learned = Self.bucketRegion(response), learned != region, [301, 307, 400, 403].contains(response.status) {
                    redirects += 1
                    state.learn(learned)
                    continue
                }
                if expiredRefusals < 3, Self.refusedAsExpired(method: method, response: response, signedWith: credentials) {
                    expiredRefusals += 1
                    _ = try await self.credentials.refresh(after: credentials)
                    continue
                }
                guard retrying, let reason = Self.retryable(response) else { return response }
                lastError = failure(method, key ?? "/", response)
                _ = reason
                wait = Self.retryAfter(response.headers)
            } catch is CancellationError {
                throw CancellationError()
            } catch let error as CKStoreError where error.code != .ioFailure {
                throw error
            } catch {
                // Refused connections, resets, stalls and cut bodies: the server may be back in a moment.
                lastError = error
            }
            guard retrying, attempt < attempts else { break }
            // Full jitter on an exponential backoff (AWS's advice), or the server's Retry-After.
            let pause = wait ?? delay * Double.random(in: 0.5...1.0)
            delay = min(delay * 2, 20)
            guard ContinuousClock.now - started + .milliseconds(Int64(pause * 1000)) <= budget else { break }
            try await Task.sleep(nanoseconds: UInt64(pause * 1e9))
        }
        if let error = lastError as? CKStoreError, error.code == .remote { throw error }
        let seconds = Double((ContinuousClock.now - started).components.seconds)
        throw CKStoreError(.remote, "\(description): \(method) \(key ?? "/") failed after \(attempt) attempts in \(Int(seconds)) s: \(lastError.map { "\($0)" } ?? "no response") (is \(endpoint.scheme)://\(endpoint.hostHeader) reachable?)")
    }

    /// A response's body, gathered into one array sized by its `Content-Length` up front: a ranged GET
    /// of a pack holds its range once, not twice over in buffers that double as they grow.
    static func body(of answer: HTTPClientResponse, method: String) async throws -> [UInt8] {
        var bytes = [UInt8]()
        if method != "HEAD", let length = answer.headers.first(name: "content-length").flatMap({ Int($0) }), length > 0 {
            // A server's word is not trusted with more than a range's worth up front.
            bytes.reserveCapacity(min(length, 64 << 20))
        }
        for try await chunk in answer.body {
            bytes.append(contentsOf: chunk.readableBytesView)
        }
        return bytes
    }

    /// Where a request goes: its URL, its `Host` header (sent and signed as is: a default port is in
    /// neither) and its path as signed. The bucket is in the host for virtual-hosted style and in the path
    /// otherwise, after the endpoint's own path; AWS's host follows the region.
    func address(key: String?, query: [(String, String)], region: String) -> (url: String, host: String, path: String) {
        let objectPath = key.map { "/" + SigV4Signer.uriEncode(fullKey($0), slash: false) } ?? "/"
        let path = endpoint.basePath + (pathStyle ? "/" + bucket + (key == nil ? "" : objectPath) : objectPath)
        // A parameter without a value (`?uploads`) is sent bare; SigV4 signs it as `uploads=`.
        let queryText = query.map { name, value in
            value.isEmpty ? SigV4Signer.uriEncode(name, slash: true) : SigV4Signer.uriEncode(name, slash: true) + "=" + SigV4Signer.uriEncode(value, slash: true)
        }.joined(separator: "&")
        let base = endpoint.isAWS ? "s3.\(region).amazonaws.com" : endpoint.hostHeader
        let host = pathStyle ? base : bucket + "." + base
        return ("\(endpoint.scheme)://\(host)\(path)\(queryText.isEmpty ? "" : "?" + queryText)", host, path)
    }

    /// The region an answer names for the bucket: `x-amz-bucket-region`, or the `<Region>` of a
    /// `PermanentRedirect` or `AuthorizationHeaderMalformed` body.
    static func bucketRegion(_ response: Response) -> String? {
        if let header = response.headers.first(name: "x-amz-bucket-region"), !header.isEmpty { return header }
        let code = response.errorCode
        guard code == "PermanentRedirect" || code == "AuthorizationHeaderMalformed" || code == "IllegalLocationConstraintException" else { return nil }
        return XMLScan.value("Region", in: String(decoding: response.body, as: UTF8.self))
    }

    func failure(_ what: String, _ key: String, _ response: Response) -> CKStoreError {
        var message = "\(description): \(what) \(key): HTTP \(response.status)"
        if let code = response.errorCode { message += " \(code)" }
        if let text = response.errorMessage { message += ": \(text)" }
        switch (response.status, response.errorCode) {
        case (403, _), (_, "InvalidAccessKeyId"?), (_, "SignatureDoesNotMatch"?):
            message += " (credentials from \(credentials.source); check them, the profile in ~/.aws, or the role's permissions)"
        case (_, "NoSuchBucket"?):
            message = "\(description): bucket \(bucket) does not exist (HTTP \(response.status)\(response.errorCode.map { " " + $0 } ?? ""))"
        case (301, _):
            message += " (the bucket is in another region; give --region)"
        default: break
        }
        return CKStoreError(.remote, message)
    }

    static func isoDate(_ text: String) -> Double? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let date = formatter.date(from: text) { return date.timeIntervalSince1970 }
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.date(from: text)?.timeIntervalSince1970
    }

    static func httpDate(_ text: String) -> Double? {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        return formatter.date(from: text)?.timeIntervalSince1970
    }
}

/// What an S3 remote learns as it goes, shared by every copy of it: the region its bucket is in.
final class S3State: @unchecked Sendable {
    private let lock = NSLock()
    private var _region: String
    private var regionKnown: Bool
    private let awsEndpoint: Bool
    private let metadata: InstanceMetadata?
    private let learned: (@Sendable (String) -> Void)?

    init(region: String, regionKnown: Bool, awsEndpoint: Bool, metadata: InstanceMetadata?, learned: (@Sendable (String) -> Void)?) {
        self._region = region
        self.regionKnown = regionKnown
        self.awsEndpoint = awsEndpoint
        self.metadata = metadata
        self.learned = learned
    }

    var region: String { lock.withLock { _region } }

    /// The region to sign for; on AWS with none configured, the instance's (IMDS) once, if it answers.
    func currentRegion() async -> String {
        let (known, current) = lock.withLock { (regionKnown, _region) }
        guard !known, awsEndpoint, let metadata else { return current }
        let found = try? await metadata.text("/latest/meta-data/placement/region")
        return lock.withLock {
            if !regionKnown, let found, !found.isEmpty { _region = found.trimmingCharacters(in: .whitespacesAndNewlines) }
            regionKnown = true
            return _region
        }
    }

    func learn(_ region: String) {
        lock.withLock {
            _region = region
            regionKnown = true
        }
        learned?(region)
    }
}

/// The HTTP clients of every S3 remote in the process, kept for its whole life (as `HTTPClient.shared`
/// is), one per stall timeout, configured for ckstore's own retries: a connection that cannot be made
/// fails the attempt within the connect timeout instead of being retried by the pool until the request's
/// deadline (a killed server otherwise held a push for minutes), and a transfer that receives nothing
/// for the stall timeout fails (and is retried). `AWS_CA_BUNDLE` names the CAs to trust.
enum S3HTTPClients {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var clients = [Int64: HTTPClient]()

    static func client(stallSeconds: Int64) -> HTTPClient {
        lock.withLock {
            if let client = clients[stallSeconds] { return client }
            var configuration = HTTPClient.Configuration()
            configuration.timeout = .init(connect: .seconds(10), read: .seconds(stallSeconds))
            configuration.connectionPool.retryConnectionEstablishment = false
            configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 64
            configuration.decompression = .disabled
            if let bundle = ProcessInfo.processInfo.environment["AWS_CA_BUNDLE"], !bundle.isEmpty {
                configuration.tlsConfiguration = S3TLS.configuration(caBundle: bundle)
            }
            let client = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
            clients[stallSeconds] = client
            return client
        }
    }
}

/// The few S3 XML answers ckstore reads (ListObjectsV2, multipart uploads, errors), by scanning for
/// elements; S3's answers are flat and never nest an element in one of the same name.
enum XMLScan {
    static func blocks(_ tag: String, in xml: String) -> [String] {
        var out = [String]()
        var rest = xml[...]
        while let open = rest.range(of: "<\(tag)>"), let close = rest.range(of: "</\(tag)>", range: open.upperBound..<rest.endIndex) {
            out.append(String(rest[open.upperBound..<close.lowerBound]))
            rest = rest[close.upperBound...]
        }
        return out
    }

    static func value(_ tag: String, in xml: String) -> String? { blocks(tag, in: xml).first.map(unescape) }

    static func unescape(_ text: String) -> String {
        text.replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(of: "&gt;", with: ">")
            .replacingOccurrences(of: "&quot;", with: "\"").replacingOccurrences(of: "&apos;", with: "'")
            .replacingOccurrences(of: "&#34;", with: "\"").replacingOccurrences(of: "&amp;", with: "&")
    }

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }
}
