import Crypto
public import Foundation

/// AWS Signature Version 4 for S3 requests, signed in the `Authorization` header with the payload's
/// SHA-256 in `x-amz-content-sha256` (AWS's "Transferring Payload in a Single Chunk").
///
/// Tested against the examples AWS publishes for it (`SigV4Tests`): canonical request, string to sign and
/// signature.
public struct SigV4Signer: Sendable {
    public var accessKey: String
    public var secretKey: String
    public var sessionToken: String?
    public var region: String
    public var service = "s3"

    public init(accessKey: String, secretKey: String, sessionToken: String? = nil, region: String, service: String = "s3") {
        self.accessKey = accessKey
        self.secretKey = secretKey
        self.sessionToken = sessionToken
        self.region = region
        self.service = service
    }

    /// A request to sign: method, the path as sent (already URI-encoded), query parameters (decoded) and
    /// headers (any case).
    public struct Request: Sendable {
        public var method: String
        public var encodedPath: String
        public var query: [(String, String)]
        public var headers: [(String, String)]
        public var payloadHash: String

        public init(method: String, encodedPath: String, query: [(String, String)] = [], headers: [(String, String)], payloadHash: String) {
            self.method = method
            self.encodedPath = encodedPath
            self.query = query
            self.headers = headers
            self.payloadHash = payloadHash
        }
    }

    /// What signing produced, each step kept for tests and for debugging a refused request.
    public struct Signature: Sendable {
        public var canonicalRequest: String
        public var stringToSign: String
        public var signature: String
        public var authorization: String
    }

    /// The SHA-256 of a payload, in hex: the value of `x-amz-content-sha256`.
    public static func payloadHash(_ bytes: some DataProtocol) -> String { hex(SHA256.hash(data: bytes)) }

    /// `x-amz-date` for a time: `20130524T000000Z`.
    public static func amzDate(_ date: Date) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMdd'T'HHmmss'Z'"
        return formatter.string(from: date)
    }

    /// Signs `request` made at `amzDate` (which must also be its `x-amz-date` header).
    public func sign(_ request: Request, amzDate: String) -> Signature {
        let day = String(amzDate.prefix(8))
        let headers = Dictionary(grouping: request.headers.map { ($0.0.lowercased(), Self.trimmed($0.1)) }, by: \.0)
            .mapValues { $0.map(\.1).joined(separator: ",") }
        let names = headers.keys.sorted()
        let canonicalHeaders = names.map { "\($0):\(headers[$0]!)\n" }.joined()
        let signedHeaders = names.joined(separator: ";")
        let encodedQuery: [(name: String, value: String)] = request.query.map { (Self.uriEncode($0.0, slash: true), Self.uriEncode($0.1, slash: true)) }
        let sortedQuery = encodedQuery.sorted { (a, b) -> Bool in a.name == b.name ? a.value < b.value : a.name < b.name }
        let canonicalQuery = sortedQuery.map { $0.name + "=" + $0.value }.joined(separator: "&")
        let canonicalRequest = [request.method, request.encodedPath, canonicalQuery, canonicalHeaders, signedHeaders, request.payloadHash]
            .joined(separator: "\n")
        let scope = "\(day)/\(region)/\(service)/aws4_request"
        let stringToSign = ["AWS4-HMAC-SHA256", amzDate, scope, Self.hex(SHA256.hash(data: Array(canonicalRequest.utf8)))].joined(separator: "\n")
        var key = SymmetricKey(data: Array("AWS4\(secretKey)".utf8))
        for part in [day, region, service, "aws4_request"] {
            key = SymmetricKey(data: Array(HMAC<SHA256>.authenticationCode(for: Array(part.utf8), using: key)))
        }
        let signature = Self.hex(HMAC<SHA256>.authenticationCode(for: Array(stringToSign.utf8), using: key))
        let authorization = "AWS4-HMAC-SHA256 Credential=\(accessKey)/\(scope),SignedHeaders=\(signedHeaders),Signature=\(signature)"
        return Signature(canonicalRequest: canonicalRequest, stringToSign: stringToSign, signature: signature, authorization: authorization)
    }

    /// URI-encodes as SigV4 wants: every byte but `A-Z a-z 0-9 - . _ ~` as `%XY` (upper case), and `/`
    /// too unless `slash` is false (object key paths keep it).
    public static func uriEncode(_ text: String, slash: Bool) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.append(Character(Unicode.Scalar(byte)))
            case UInt8(ascii: "/") where !slash:
                out.append("/")
            default:
                out += String(format: "%%%02X", byte)
            }
        }
        return out
    }

    /// A header value as signed: leading and trailing spaces removed, inner runs of spaces made one.
    static func trimmed(_ value: String) -> String {
        value.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
    }

    static func hex(_ bytes: some Sequence<UInt8>) -> String {
        bytes.map { String(format: "%02x", $0) }.joined()
    }
}
