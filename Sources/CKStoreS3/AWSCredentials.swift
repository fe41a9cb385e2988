import CKStore
import Foundation

/// Credentials found the way the AWS tools find them; ckstore never stores them.
///
/// In order: `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (with `AWS_SESSION_TOKEN`); else the profile
/// `AWS_PROFILE` (or `default`) of `AWS_SHARED_CREDENTIALS_FILE` (or `~/.aws/credentials`), whose
/// region may come from `AWS_CONFIG_FILE` (or `~/.aws/config`).
public struct AWSCredentials: Sendable, Equatable {
    public var accessKey: String
    public var secretKey: String
    public var sessionToken: String?
    /// The profile's region from the config file, if any.
    public var region: String?

    public static func resolve(environment: [String: String], remote: String) throws -> AWSCredentials {
        if let key = environment["AWS_ACCESS_KEY_ID"], !key.isEmpty {
            guard let secret = environment["AWS_SECRET_ACCESS_KEY"], !secret.isEmpty else {
                throw CKStoreError(.invalidArgument, "remote \(remote): AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")
            }
            let token = environment["AWS_SESSION_TOKEN"].flatMap { $0.isEmpty ? nil : $0 }
            return AWSCredentials(accessKey: key, secretKey: secret, sessionToken: token, region: nil)
        }
        let home = environment["HOME"] ?? NSHomeDirectory()
        let profile = environment["AWS_PROFILE"].flatMap { $0.isEmpty ? nil : $0 } ?? "default"
        let file = environment["AWS_SHARED_CREDENTIALS_FILE"] ?? home + "/.aws/credentials"
        let configFile = environment["AWS_CONFIG_FILE"] ?? home + "/.aws/config"
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
            throw CKStoreError(.invalidArgument, "remote \(remote): no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or write them in \(file)")
        }
        let section = parseINI(text)[profile] ?? [:]
        guard let key = section["aws_access_key_id"], let secret = section["aws_secret_access_key"] else {
            throw CKStoreError(.invalidArgument, "remote \(remote): profile \(profile) in \(file) has no aws_access_key_id and aws_secret_access_key")
        }
        let config = (try? String(contentsOfFile: configFile, encoding: .utf8)).map(parseINI) ?? [:]
        let region = (config[profile == "default" ? "default" : "profile " + profile] ?? [:])["region"]
        return AWSCredentials(accessKey: key, secretKey: secret, sessionToken: section["aws_session_token"], region: region)
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
