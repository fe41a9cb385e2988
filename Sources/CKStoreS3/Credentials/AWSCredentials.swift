public import CKStore
public import Foundation

/// A key pair with its session token and expiry, and the name of the source it came from (for messages
/// and `remote ls`; never the secret).
public struct AWSCredentials: Sendable, Equatable {
    public var accessKey: String
    public var secretKey: String
    /// Sent as `x-amz-security-token`; an empty token is not sent.
    public var sessionToken: String?
    /// When temporary credentials stop working; nil for long-lived keys.
    public var expiration: Date?
    /// Where they came from: `environment`, `web-identity`, `assume-role (profile P)`, `profile P`,
    /// `credential_process (profile P)`, `container`, `instance-metadata (role R)`.
    public var source: String

    public init(accessKey: String, secretKey: String, sessionToken: String? = nil, expiration: Date? = nil, source: String) {
        self.accessKey = accessKey
        self.secretKey = secretKey
        self.sessionToken = sessionToken.flatMap { $0.isEmpty ? nil : $0 }
        self.expiration = expiration
        self.source = source
    }

    /// The credentials found the way the AWS SDKs find them, fetched once (no refresh): for one-shot
    /// use; transfers hold an ``AWSCredentialProvider``.
    public static func resolve(environment: [String: String], remote: String) async throws -> AWSCredentials {
        try await AWSCredentialChain(environment: environment, remote: remote).source().fetch()
    }

    /// Parses the `Expiration` the credential sources give (ISO 8601, with or without fractions).
    static func expiration(_ text: String?, from source: String) throws -> Date? {
        guard let text, !text.isEmpty else { return nil }
        let formatter = ISO8601DateFormatter()
        for options: ISO8601DateFormatter.Options in [[.withInternetDateTime], [.withInternetDateTime, .withFractionalSeconds]] {
            formatter.formatOptions = options
            if let date = formatter.date(from: text) { return date }
        }
        throw CKStoreError(.remote, "credentials from \(source): Expiration \"\(text)\" is not an ISO 8601 time")
    }
}

/// The shared credentials and config files (`~/.aws/credentials`, `~/.aws/config`), read as the AWS
/// SDKs read them: `[name]` sections in the first, `[profile name]` (and `[default]`) in the second.
struct AWSProfileFiles: Sendable {
    var credentialsFile: String
    var configFile: String
    var credentials: [String: [String: String]]
    var config: [String: [String: String]]

    init(environment: [String: String]) {
        let home = environment["HOME"] ?? NSHomeDirectory()
        credentialsFile = environment["AWS_SHARED_CREDENTIALS_FILE"] ?? home + "/.aws/credentials"
        configFile = environment["AWS_CONFIG_FILE"] ?? home + "/.aws/config"
        credentials = (try? String(contentsOfFile: credentialsFile, encoding: .utf8)).map(Self.parseINI) ?? [:]
        config = (try? String(contentsOfFile: configFile, encoding: .utf8)).map(Self.parseINI) ?? [:]
    }

    /// The profile's settings from the credentials file.
    func credentialsSection(_ profile: String) -> [String: String]? { credentials[profile] }

    /// The profile's settings from the config file (`[default]` or `[profile NAME]`; botocore also takes
    /// `[NAME]` there).
    func configSection(_ profile: String) -> [String: String]? {
        profile == "default" ? config["default"] : (config["profile " + profile] ?? config[profile])
    }

    /// Both, the credentials file winning.
    func merged(_ profile: String) -> [String: String]? {
        let a = configSection(profile), b = credentialsSection(profile)
        if a == nil && b == nil { return nil }
        return (a ?? [:]).merging(b ?? [:]) { $1 }
    }

    /// `[section]` → key → value; `#` and `;` start comments.
    static func parseINI(_ text: String) -> [String: [String: String]] {
        var out = [String: [String: String]]()
        var current: String?
        for raw in text.split(whereSeparator: \.isNewline) {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("["), line.hasSuffix("]") {
                current = line.dropFirst().dropLast().trimmingCharacters(in: .whitespaces)
                if let current, out[current] == nil { out[current] = [:] }
                continue
            }
            guard let current, let equals = line.firstIndex(of: "=") else { continue }
            let key = line[..<equals].trimmingCharacters(in: .whitespaces).lowercased()
            let value = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            out[current, default: [:]][key] = value
        }
        return out
    }
}
