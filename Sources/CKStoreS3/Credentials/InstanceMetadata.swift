public import Foundation

/// The EC2 instance metadata service, through IMDSv2 as the AWS SDKs use it: a session token from
/// `PUT /latest/api/token`, sent with every `GET` (a 401 fetches a new one once). Answers only what it is
/// asked; each request has a short deadline so that a machine off EC2 learns it within about a second.
///
/// The endpoint is `$AWS_EC2_METADATA_SERVICE_ENDPOINT` or `http://169.254.169.254`;
/// `AWS_EC2_METADATA_DISABLED=true` turns it off; `AWS_METADATA_SERVICE_TIMEOUT` (seconds, default 1)
/// and `AWS_METADATA_SERVICE_NUM_ATTEMPTS` (default 1) as for botocore.
public actor InstanceMetadata {
    public nonisolated let endpoint: String
    public nonisolated let timeout: Double
    public nonisolated let attempts: Int
    private var token: (value: String, expires: Date)?
    /// The service refused the token request (an IMDSv1-only service): GETs go without one.
    private var tokenless = false
    static let tokenTTL = 21_600

    /// The service as the environment configures it, or nil when it is switched off.
    public init?(environment: [String: String]) {
        if environment["AWS_EC2_METADATA_DISABLED"]?.lowercased() == "true" { return nil }
        var endpoint = environment["AWS_EC2_METADATA_SERVICE_ENDPOINT"].flatMap { $0.isEmpty ? nil : $0 } ?? "http://169.254.169.254"
        while endpoint.hasSuffix("/") { endpoint.removeLast() }
        self.endpoint = endpoint
        self.timeout = environment["AWS_METADATA_SERVICE_TIMEOUT"].flatMap(Double.init).map { max(0.1, $0) } ?? 1
        self.attempts = environment["AWS_METADATA_SERVICE_NUM_ATTEMPTS"].flatMap(Int.init).map { max(1, $0) } ?? 1
    }

    /// The text at `path` (`/latest/meta-data/…`), or nil for 404 (no such item: no notice, no role).
    ///
    /// - Throws: when the service does not answer, or answers anything but 200 or 404.
    public func text(_ path: String) async throws -> String? {
        var lastError: (any Error)?
        for attempt in 1...attempts {
            do {
                var answer = try await get(path)
                if answer.status == 401 {
                    // The token expired or was revoked: one new one.
                    token = nil
                    answer = try await get(path)
                }
                switch answer.status {
                case 200: return answer.text
                case 404: return nil
                default:
                    throw MetadataError("instance metadata at \(endpoint): GET \(path) answered HTTP \(answer.status)")
                }
            } catch let error as MetadataError {
                throw error
            } catch {
                lastError = error
                if attempt < attempts { try await Task.sleep(nanoseconds: 100_000_000) }
            }
        }
        throw MetadataError("instance metadata at \(endpoint) did not answer GET \(path): \(lastError.map { "\($0)" } ?? "")")
    }

    private func get(_ path: String) async throws -> PlainHTTP.Answer {
        var headers = [(String, String)]()
        if let token = try await sessionToken() { headers.append(("X-aws-ec2-metadata-token", token)) }
        return try await PlainHTTP.send("GET", endpoint + path, headers: headers, timeout: timeout)
    }

    private func sessionToken() async throws -> String? {
        if tokenless { return nil }
        if let token, token.expires > Date().addingTimeInterval(60) { return token.value }
        let answer = try await PlainHTTP.send("PUT", endpoint + "/latest/api/token",
                                              headers: [("X-aws-ec2-metadata-token-ttl-seconds", String(Self.tokenTTL))], timeout: timeout)
        switch answer.status {
        case 200:
            token = (answer.text, Date().addingTimeInterval(Double(Self.tokenTTL)))
            return answer.text
        case 403, 404, 405:
            // IMDSv1 only (or the token API switched off): botocore goes on without a token.
            tokenless = true
            return nil
        default:
            throw MetadataError("instance metadata at \(endpoint): PUT /latest/api/token answered HTTP \(answer.status)")
        }
    }
}

struct MetadataError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
