import AsyncHTTPClient
public import CKStore
public import Foundation
import NIOCore
import NIOHTTP1

/// A remote in an S3 bucket (AWS, or any server that speaks S3: SeaweedFS, MinIO, Ceph, R2), over
/// async-http-client with requests signed by ``SigV4Signer``.
///
/// Failed requests are retried with exponential backoff when a retry can help: 5xx, 429, timeouts and
/// reset connections. Other refusals throw `remote` naming the remote, the request and the HTTP status;
/// 404 on an object is `notFound`. Objects larger than ``multipartThreshold`` go up in parts.
public struct S3ObjectStore: ObjectStore {
    public let remoteName: String
    public let bucket: String
    public let prefix: String
    let endpoint: Endpoint
    let signer: SigV4Signer
    let pathStyle: Bool
    /// Attempts per request, the first included.
    public var attempts = 6
    /// Objects this large or larger are uploaded as a multipart upload.
    public var multipartThreshold = 32 << 20
    public var partSize = 16 << 20
    /// The deadline of one request, in seconds.
    public var timeoutSeconds: Int64 = 300

    struct Endpoint: Sendable {
        var scheme: String
        var host: String
        var port: Int?
    }

    public var description: String {
        let url = "s3://\(bucket)\(prefix.isEmpty ? "" : "/" + prefix)"
        return remoteName == url ? "remote \(url)" : "remote \(remoteName) (\(url))"
    }

    /// Connects a remote definition, taking credentials, region and endpoint from the environment the way
    /// the AWS tools do.
    public init(_ definition: RemoteDefinition, environment: [String: String] = ProcessInfo.processInfo.environment) throws {
        guard case .s3(let bucket, let prefix) = try definition.location() else {
            throw CKStoreError(.invalidArgument, "remote \(definition.name) (\(definition.url)) is not an s3:// remote")
        }
        let credentials = try AWSCredentials.resolve(environment: environment, remote: definition.name)
        let region = definition.region ?? environment["AWS_REGION"] ?? environment["AWS_DEFAULT_REGION"] ?? credentials.region ?? "us-east-1"
        let endpointText = definition.endpoint ?? environment["AWS_ENDPOINT_URL_S3"] ?? environment["AWS_ENDPOINT_URL"]
        self.remoteName = definition.name
        self.bucket = bucket
        self.prefix = prefix
        self.signer = SigV4Signer(accessKey: credentials.accessKey, secretKey: credentials.secretKey, sessionToken: credentials.sessionToken, region: region)
        if let endpointText {
            guard let url = URLComponents(string: endpointText), let scheme = url.scheme, scheme == "http" || scheme == "https", let host = url.host, !host.isEmpty else {
                throw CKStoreError(.invalidArgument, "remote \(definition.name): endpoint \(endpointText) is not an http(s)://HOST[:PORT] URL")
            }
            self.endpoint = Endpoint(scheme: scheme, host: host, port: url.port)
            // A custom endpoint (given or from the environment) is usually an S3-compatible server, which
            // wants the bucket in the path.
            self.pathStyle = true
        } else {
            self.endpoint = Endpoint(scheme: "https", host: "s3.\(region).amazonaws.com", port: nil)
            self.pathStyle = definition.pathStyle || bucket.contains(".")
        }
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
        if !ifAbsent, body.count >= multipartThreshold { return try await putMultipart(key, body) }
        let headers = ifAbsent ? [("If-None-Match", "*")] : []
        let response = try await send("PUT", key: key, headers: headers, body: body)
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
            let size = response.headers.first(name: "content-length").flatMap { Int64($0) } ?? 0
            let modified = response.headers.first(name: "last-modified").flatMap(Self.httpDate) ?? 0
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
                guard let full = XMLScan.value("Key", in: entry) else { continue }
                let key = prefix.isEmpty ? full : String(full.dropFirst(prefix.count + 1))
                let size = XMLScan.value("Size", in: entry).flatMap { Int64($0) } ?? 0
                let modified = XMLScan.value("LastModified", in: entry).flatMap(Self.isoDate) ?? 0
                out.append(ObjectInfo(key: key, size: size, lastModified: modified))
            }
            token = XMLScan.value("IsTruncated", in: xml) == "true" ? XMLScan.value("NextContinuationToken", in: xml) : nil
        } while token != nil
        return out.sorted { $0.key < $1.key }
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
                let response = try await send("PUT", key: key, query: [("partNumber", String(number)), ("uploadId", uploadID)], body: Array(body[start..<end]))
                guard response.status == 200, let etag = response.headers.first(name: "etag") else { throw failure("PUT (part \(number))", key, response) }
                parts.append((number, etag))
                start = end
            }
            let xml = "<CompleteMultipartUpload>" + parts.map { "<Part><PartNumber>\($0.0)</PartNumber><ETag>\(XMLScan.escape($0.1))</ETag></Part>" }.joined() + "</CompleteMultipartUpload>"
            let completed = try await send("POST", key: key, query: [("uploadId", uploadID)], body: Array(xml.utf8))
            // S3 can answer 200 and put the error in the body.
            guard completed.status == 200, !String(decoding: completed.body, as: UTF8.self).contains("<Error>") else {
                throw failure("POST (complete multipart upload)", key, completed)
            }
            return true
        } catch {
            _ = try? await send("DELETE", key: key, query: [("uploadId", uploadID)], retrying: false)
            throw error
        }
    }

    // MARK: Requests

    struct Response: Sendable {
        var status: Int
        var headers: HTTPHeaders
        var body: [UInt8]

        /// The `<Code>` of an S3 error body.
        var errorCode: String? { XMLScan.value("Code", in: String(decoding: body, as: UTF8.self)) }
        var errorMessage: String? { XMLScan.value("Message", in: String(decoding: body, as: UTF8.self)) }
    }

    func fullKey(_ key: String) -> String { prefix.isEmpty ? key : prefix + "/" + key }

    /// Sends a signed request, retrying what a retry can help.
    func send(_ method: String, key: String?, query: [(String, String)] = [], headers extra: [(String, String)] = [], body: [UInt8] = [], retrying: Bool = true) async throws -> Response {
        let objectPath = key.map { "/" + SigV4Signer.uriEncode(fullKey($0), slash: false) } ?? "/"
        let path = pathStyle ? "/" + bucket + (key == nil ? "" : objectPath) : objectPath
        let host = pathStyle ? endpoint.host : bucket + "." + endpoint.host
        let hostHeader = endpoint.port.map { "\(host):\($0)" } ?? host
        // A parameter without a value (`?uploads`) is sent bare; SigV4 signs it as `uploads=`.
        let queryText = query.map { name, value in
            value.isEmpty ? SigV4Signer.uriEncode(name, slash: true) : SigV4Signer.uriEncode(name, slash: true) + "=" + SigV4Signer.uriEncode(value, slash: true)
        }.joined(separator: "&")
        let url = "\(endpoint.scheme)://\(hostHeader)\(path)\(queryText.isEmpty ? "" : "?" + queryText)"
        let payloadHash = SigV4Signer.payloadHash(body)
        var delay = 0.2
        var lastError: (any Error)?
        for attempt in 1...(retrying ? attempts : 1) {
            try Task.checkCancellation()
            let amzDate = SigV4Signer.amzDate(Date())
            var headers = extra + [("host", hostHeader), ("x-amz-date", amzDate), ("x-amz-content-sha256", payloadHash)]
            if let token = signer.sessionToken { headers.append(("x-amz-security-token", token)) }
            let signature = signer.sign(.init(method: method, encodedPath: path, query: query, headers: headers, payloadHash: payloadHash), amzDate: amzDate)
            var request = HTTPClientRequest(url: url)
            request.method = HTTPMethod(rawValue: method)
            for (name, value) in headers where name != "host" { request.headers.add(name: name, value: value) }
            request.headers.add(name: "Authorization", value: signature.authorization)
            if !body.isEmpty || method == "PUT" || method == "POST" {
                request.body = .bytes(ByteBuffer(bytes: body))
                request.headers.replaceOrAdd(name: "Content-Length", value: String(body.count))
            }
            do {
                let response = try await s3HTTPClient.execute(request, timeout: .seconds(timeoutSeconds))
                var collected = try await response.body.collect(upTo: Int.max)
                let bytes = collected.readBytes(length: collected.readableBytes) ?? []
                let status = Int(response.status.code)
                if retrying, attempt < attempts, status >= 500 || status == 429 || (status == 409 && Response(status: status, headers: response.headers, body: bytes).errorCode == "ConditionalRequestConflict") {
                    lastError = failure(method, key ?? "/", Response(status: status, headers: response.headers, body: bytes))
                } else {
                    return Response(status: status, headers: response.headers, body: bytes)
                }
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                // Refused connections, resets and timeouts: the server may be back in a moment.
                lastError = error
                guard retrying, attempt < attempts else { break }
            }
            try await Task.sleep(nanoseconds: UInt64(delay * Double.random(in: 0.75...1.25) * 1e9))
            delay = min(delay * 2, 5)
        }
        if let error = lastError as? CKStoreError { throw error }
        throw CKStoreError(.remote, "\(description): \(method) \(key ?? "/") failed: \(lastError.map { "\($0)" } ?? "no response") (the server did not answer; is \(endpoint.scheme)://\(hostHeader) reachable?)")
    }

    func failure(_ what: String, _ key: String, _ response: Response) -> CKStoreError {
        var message = "\(description): \(what) \(key): HTTP \(response.status)"
        if let code = response.errorCode { message += " \(code)" }
        if let text = response.errorMessage { message += ": \(text)" }
        switch (response.status, response.errorCode) {
        case (403, _), (_, "InvalidAccessKeyId"?), (_, "SignatureDoesNotMatch"?):
            message += " (check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN, or the profile in ~/.aws/credentials)"
        case (_, "NoSuchBucket"?):
            message = "\(description): bucket \(bucket) does not exist (HTTP \(response.status)\(response.errorCode.map { " " + $0 } ?? ""))"
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

/// The HTTP client of every S3 remote in the process, kept for its whole life (as `HTTPClient.shared` is)
/// but configured for ckstore's own retries: a connection that cannot be made fails the attempt within
/// the connect timeout instead of being retried by the pool until the request's deadline (a killed server
/// otherwise held a push for minutes), and a stalled transfer fails after the read timeout.
let s3HTTPClient: HTTPClient = {
    var configuration = HTTPClient.Configuration()
    configuration.timeout = .init(connect: .seconds(10), read: .seconds(120))
    configuration.connectionPool.retryConnectionEstablishment = false
    configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 64
    configuration.decompression = .disabled
    return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
}()

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
