public import CKStore
public import Foundation

/// Picks where credentials come from, in botocore's order (`create_credential_resolver`):
///
/// 1. the environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`;
/// 2. assume-role: the profile's `role_arn` with `source_profile` or `credential_source` (STS `AssumeRole`);
/// 3. web identity: `AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN` (or the profile's
///    `web_identity_token_file` and `role_arn`), through STS `AssumeRoleWithWebIdentity`;
/// 4. the shared credentials file's profile;
/// 5. the profile's `credential_process`;
/// 6. the config file's profile keys;
/// 7. the container endpoint (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` / `_FULL_URI`);
/// 8. the EC2 instance's role, through IMDSv2.
///
/// The profile is `AWS_PROFILE` (or `AWS_DEFAULT_PROFILE`), else `default`. SSO profiles are not read:
/// `aws sso login` users export their keys (`aws configure export-credentials --format env`).
public struct AWSCredentialChain: Sendable {
    let environment: [String: String]
    let remote: String
    let files: AWSProfileFiles
    let profile: String
    let profileSet: Bool

    public init(environment: [String: String], remote: String) {
        self.environment = environment
        self.remote = remote
        self.files = AWSProfileFiles(environment: environment)
        let named = environment["AWS_PROFILE"].flatMap { $0.isEmpty ? nil : $0 } ?? environment["AWS_DEFAULT_PROFILE"].flatMap { $0.isEmpty ? nil : $0 }
        self.profile = named ?? "default"
        self.profileSet = named != nil
    }

    /// The region the profile names, if any.
    public var profileRegion: String? { files.merged(profile)?["region"] }

    /// The name of the source the chain picks (`environment`, `profile P`, `instance-metadata`, …),
    /// without fetching anything.
    public func sourceName() throws -> String { try source().name }

    /// The first source that applies.
    ///
    /// - Throws: `invalidArgument` for a half-set environment or a named profile that does not exist.
    func source() throws -> CredentialSource {
        if let key = environment["AWS_ACCESS_KEY_ID"], !key.isEmpty {
            guard let secret = environment["AWS_SECRET_ACCESS_KEY"], !secret.isEmpty else {
                throw CKStoreError(.invalidArgument, "remote \(remote): AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")
            }
            return .fixed(AWSCredentials(accessKey: key, secretKey: secret, sessionToken: environment["AWS_SESSION_TOKEN"], source: "environment"))
        }
        let section = files.merged(profile)
        if section == nil, profileSet {
            throw CKStoreError(.invalidArgument, "remote \(remote): AWS_PROFILE names profile \(profile), which neither \(files.credentialsFile) nor \(files.configFile) has")
        }
        if let section, section["role_arn"] != nil, section["source_profile"] != nil || section["credential_source"] != nil {
            return try assumeRole(profile, section: section, depth: 0)
        }
        if let tokenFile = environment["AWS_WEB_IDENTITY_TOKEN_FILE"].flatMap({ $0.isEmpty ? nil : $0 }) ?? section?["web_identity_token_file"],
           let roleArn = environment["AWS_ROLE_ARN"].flatMap({ $0.isEmpty ? nil : $0 }) ?? section?["role_arn"] {
            let name = environment["AWS_ROLE_SESSION_NAME"].flatMap { $0.isEmpty ? nil : $0 } ?? section?["role_session_name"] ?? Self.sessionName()
            return .webIdentity(roleArn: roleArn, tokenFile: tokenFile, sessionName: name, sts: sts)
        }
        if let keys = try staticKeys(files.credentialsSection(profile), profile: profile, file: files.credentialsFile) { return .fixed(keys) }
        if let command = section?["credential_process"] { return .process(profile: profile, command: command) }
        if let keys = try staticKeys(files.configSection(profile), profile: profile, file: files.configFile) { return .fixed(keys) }
        if let container = try container() { return container }
        if let service = InstanceMetadata(environment: environment) { return .instanceMetadata(service) }
        throw CKStoreError(.invalidArgument, "remote \(remote): no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, write them in \(files.credentialsFile), or run where a role provides them (AWS_EC2_METADATA_DISABLED is set)")
    }

    private var sts: STSEndpoint { STSEndpoint(environment: environment, profileRegion: profileRegion) }

    private func staticKeys(_ section: [String: String]?, profile: String, file: String) throws -> AWSCredentials? {
        guard let section, let key = section["aws_access_key_id"] else { return nil }
        guard let secret = section["aws_secret_access_key"] else {
            throw CKStoreError(.invalidArgument, "remote \(remote): profile \(profile) in \(file) has aws_access_key_id but no aws_secret_access_key")
        }
        return AWSCredentials(accessKey: key, secretKey: secret, sessionToken: section["aws_session_token"], source: "profile \(profile)")
    }

    private func assumeRole(_ profile: String, section: [String: String], depth: Int) throws -> CredentialSource {
        guard depth < 8 else {
            throw CKStoreError(.invalidArgument, "remote \(remote): profile \(profile): source_profile chain is longer than 8 (a loop?)")
        }
        let base: CredentialSource
        if let sourceProfile = section["source_profile"] {
            guard let sourceSection = files.merged(sourceProfile) else {
                throw CKStoreError(.invalidArgument, "remote \(remote): profile \(profile) names source_profile \(sourceProfile), which does not exist")
            }
            if sourceProfile != profile, sourceSection["role_arn"] != nil, sourceSection["source_profile"] != nil || sourceSection["credential_source"] != nil {
                base = try assumeRole(sourceProfile, section: sourceSection, depth: depth + 1)
            } else if let keys = try staticKeys(files.credentialsSection(sourceProfile), profile: sourceProfile, file: files.credentialsFile)
                        ?? staticKeys(files.configSection(sourceProfile), profile: sourceProfile, file: files.configFile) {
                base = .fixed(keys)
            } else if let command = sourceSection["credential_process"] {
                base = .process(profile: sourceProfile, command: command)
            } else {
                throw CKStoreError(.invalidArgument, "remote \(remote): source_profile \(sourceProfile) of profile \(profile) has no keys")
            }
        } else {
            switch section["credential_source"] ?? "" {
            case "Environment":
                guard let key = environment["AWS_ACCESS_KEY_ID"], let secret = environment["AWS_SECRET_ACCESS_KEY"] else {
                    throw CKStoreError(.invalidArgument, "remote \(remote): profile \(profile) has credential_source Environment, but AWS_ACCESS_KEY_ID is not set")
                }
                base = .fixed(AWSCredentials(accessKey: key, secretKey: secret, sessionToken: environment["AWS_SESSION_TOKEN"], source: "environment"))
            case "Ec2InstanceMetadata":
                guard let service = InstanceMetadata(environment: environment) else {
                    throw CKStoreError(.invalidArgument, "remote \(remote): profile \(profile) has credential_source Ec2InstanceMetadata, but AWS_EC2_METADATA_DISABLED is set")
                }
                base = .instanceMetadata(service)
            case "EcsContainer":
                guard let container = try container() else {
                    throw CKStoreError(.invalidArgument, "remote \(remote): profile \(profile) has credential_source EcsContainer, but AWS_CONTAINER_CREDENTIALS_RELATIVE_URI is not set")
                }
                base = container
            case let other:
                throw CKStoreError(.invalidArgument, "remote \(remote): profile \(profile): credential_source \(other) is not Environment, Ec2InstanceMetadata or EcsContainer")
            }
        }
        let duration = section["duration_seconds"].flatMap(Int.init)
        return .assumeRole(profile: profile, roleArn: section["role_arn"]!, sessionName: section["role_session_name"] ?? Self.sessionName(),
                           externalID: section["external_id"], duration: duration, base: base, sts: sts)
    }

    /// The container endpoint, as botocore checks it: a relative URI below `http://169.254.170.2`, or a
    /// full URI that is https, loopback, or the ECS/EKS link-local hosts.
    private func container() throws -> CredentialSource? {
        let authorization: CredentialSource.ContainerAuthorization?
        if let file = environment["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"].flatMap({ $0.isEmpty ? nil : $0 }) {
            authorization = .file(file)
        } else {
            authorization = environment["AWS_CONTAINER_AUTHORIZATION_TOKEN"].flatMap { $0.isEmpty ? nil : .token($0) }
        }
        if let relative = environment["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"].flatMap({ $0.isEmpty ? nil : $0 }) {
            return .container(url: "http://169.254.170.2" + (relative.hasPrefix("/") ? relative : "/" + relative), authorization: authorization)
        }
        guard let full = environment["AWS_CONTAINER_CREDENTIALS_FULL_URI"].flatMap({ $0.isEmpty ? nil : $0 }) else { return nil }
        guard let url = URLComponents(string: full), let scheme = url.scheme, let host = url.host else {
            throw CKStoreError(.invalidArgument, "remote \(remote): AWS_CONTAINER_CREDENTIALS_FULL_URI \(full) is not a URL")
        }
        let allowed = scheme == "https" || ["127.0.0.1", "localhost", "::1", "[::1]", "169.254.170.2", "169.254.170.23", "fd00:ec2::23", "[fd00:ec2::23]"].contains(host)
            || host.hasPrefix("127.")
        guard allowed else {
            throw CKStoreError(.invalidArgument, "remote \(remote): AWS_CONTAINER_CREDENTIALS_FULL_URI must be https, loopback, 169.254.170.2 or 169.254.170.23, not \(full)")
        }
        return .container(url: full, authorization: authorization)
    }

    static func sessionName() -> String { "ckstore-\(Int(Date().timeIntervalSince1970))" }
}

/// Credentials that stay valid for a long transfer: fetched from their source when first needed, and
/// fetched again before they expire, as botocore does (an advisory refresh 15 minutes before the
/// `Expiration`, mandatory at 10; for credentials that live less than an hour, at a quarter and a tenth
/// of their life), and once more when a server answers `ExpiredToken`. Concurrent requests share one
/// fetch.
public actor AWSCredentialProvider {
    /// Where the credentials come from (never the secret).
    public nonisolated let source: String
    let origin: CredentialSource
    private var current: (credentials: AWSCredentials, obtained: Date)?
    private var fetching: Task<AWSCredentials, any Error>?
    /// How many times credentials were fetched (the first time included).
    public private(set) var fetches = 0

    init(_ origin: CredentialSource) {
        self.origin = origin
        self.source = origin.name
    }

    /// The provider for the chain's first applicable source.
    public init(chain: AWSCredentialChain) throws {
        self.init(try chain.source())
    }

    /// Long-lived keys given directly.
    public init(fixed credentials: AWSCredentials) {
        self.init(.fixed(credentials))
    }

    /// Credentials to sign a request with now.
    public func credentials() async throws -> AWSCredentials {
        guard let current else { return try await fetch() }
        guard let expiration = current.credentials.expiration else { return current.credentials }
        let life = max(1, expiration.timeIntervalSince(current.obtained))
        let now = Date()
        let advisory = expiration.addingTimeInterval(-min(900, life / 4))
        guard now >= advisory else { return current.credentials }
        let mandatory = expiration.addingTimeInterval(-min(600, life / 10))
        do {
            return try await fetch()
        } catch where now < mandatory {
            // Advisory: the old credentials still have time; the next request tries again.
            return current.credentials
        }
    }

    /// How many fetches a server's `ExpiredToken` forced (the refresh before expiry came too late).
    public private(set) var reactiveFetches = 0

    /// New credentials after a server refused `rejected` as expired; the same ones if another request
    /// already replaced them.
    public func refresh(after rejected: AWSCredentials) async throws -> AWSCredentials {
        if let current, current.credentials != rejected { return current.credentials }
        reactiveFetches += 1
        return try await fetch()
    }

    private func fetch() async throws -> AWSCredentials {
        if let fetching { return try await fetching.value }
        let origin = self.origin
        let task = Task { try await origin.fetch() }
        fetching = task
        defer { fetching = nil }
        let obtained = Date()
        let credentials = try await task.value
        fetches += 1
        current = (credentials, obtained)
        return credentials
    }
}
