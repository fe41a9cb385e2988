import CKStore
import Foundation

/// One place credentials come from, and how to fetch them (again, for temporary ones).
indirect enum CredentialSource: Sendable {
    /// Long-lived keys: the environment, or a profile's keys in the credentials or config file.
    case fixed(AWSCredentials)
    /// STS `AssumeRoleWithWebIdentity` with the token in a file (EKS's IRSA), read anew at each refresh.
    case webIdentity(roleArn: String, tokenFile: String, sessionName: String, sts: STSEndpoint)
    /// STS `AssumeRole`, signed with the credentials of another source (a profile's `role_arn` with
    /// `source_profile` or `credential_source`).
    case assumeRole(profile: String, roleArn: String, sessionName: String, externalID: String?, duration: Int?, base: CredentialSource, sts: STSEndpoint)
    /// A profile's `credential_process`: a command that prints the credentials as JSON.
    case process(profile: String, command: String)
    /// The container credentials endpoint (ECS, SageMaker, EKS Pod Identity).
    case container(url: String, authorization: ContainerAuthorization?)
    /// The role of the EC2 instance, through IMDSv2.
    case instanceMetadata(InstanceMetadata)

    enum ContainerAuthorization: Sendable {
        case token(String)
        case file(String)
    }

    /// The source's name, as `remote ls` shows it.
    var name: String {
        switch self {
        case .fixed(let credentials): credentials.source
        case .webIdentity: "web-identity"
        case .assumeRole(let profile, _, _, _, _, _, _): "assume-role (profile \(profile))"
        case .process(let profile, _): "credential_process (profile \(profile))"
        case .container: "container"
        case .instanceMetadata: "instance-metadata"
        }
    }

    /// Fetches the credentials (for temporary ones, fresh ones).
    func fetch() async throws -> AWSCredentials {
        switch self {
        case .fixed(let credentials):
            return credentials
        case .webIdentity(let roleArn, let tokenFile, let sessionName, let sts):
            guard let token = try? String(contentsOfFile: tokenFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines), !token.isEmpty else {
                throw CKStoreError(.invalidArgument, "web identity: cannot read a token from \(tokenFile) (AWS_WEB_IDENTITY_TOKEN_FILE)")
            }
            return try await sts.call(action: "AssumeRoleWithWebIdentity", parameters: [
                ("RoleArn", roleArn), ("RoleSessionName", sessionName), ("WebIdentityToken", token),
            ], signedWith: nil, source: name)
        case .assumeRole(_, let roleArn, let sessionName, let externalID, let duration, let base, let sts):
            let baseCredentials = try await base.fetch()
            var parameters = [("RoleArn", roleArn), ("RoleSessionName", sessionName)]
            if let externalID { parameters.append(("ExternalId", externalID)) }
            if let duration { parameters.append(("DurationSeconds", String(duration))) }
            return try await sts.call(action: "AssumeRole", parameters: parameters, signedWith: baseCredentials, source: name)
        case .process(_, let command):
            return try await Self.runProcess(command, source: name)
        case .container(let url, let authorization):
            var headers = [(String, String)]()
            switch authorization {
            case .token(let token)?: headers.append(("Authorization", token))
            case .file(let path)?:
                guard let token = try? String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) else {
                    throw CKStoreError(.invalidArgument, "container credentials: cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE \(path)")
                }
                headers.append(("Authorization", token))
            case nil: break
            }
            var lastError: (any Error)?
            // botocore: 2 s per attempt, 3 attempts.
            for attempt in 1...3 {
                do {
                    let answer = try await PlainHTTP.send("GET", url, headers: headers, timeout: 2)
                    guard answer.status == 200 else {
                        throw CKStoreError(.remote, "container credentials at \(url) answered HTTP \(answer.status): \(answer.text.prefix(200))")
                    }
                    return try Self.decodeJSON(answer.body, source: name)
                } catch let error as CKStoreError {
                    throw error
                } catch {
                    lastError = error
                    if attempt < 3 { try await Task.sleep(nanoseconds: 200_000_000) }
                }
            }
            throw CKStoreError(.remote, "container credentials at \(url) did not answer: \(lastError.map { "\($0)" } ?? "")")
        case .instanceMetadata(let service):
            let base = "/latest/meta-data/iam/security-credentials/"
            let roles: String?
            do {
                roles = try await service.text(base)
            } catch {
                throw CKStoreError(.remote, "no credentials: none in the environment or ~/.aws, and \(error)")
            }
            guard let role = roles?.split(whereSeparator: \.isNewline).first.map(String.init), !role.isEmpty else {
                throw CKStoreError(.remote, "no credentials: none in the environment or ~/.aws, and the instance at \(service.endpoint) has no IAM role (attach an instance profile)")
            }
            guard let body = try await service.text(base + role) else {
                throw CKStoreError(.remote, "instance metadata at \(service.endpoint): role \(role) has no credentials")
            }
            var credentials = try Self.decodeJSON(Array(body.utf8), source: "instance-metadata (role \(role))")
            credentials.source = "instance-metadata (role \(role))"
            return credentials
        }
    }

    /// The JSON of the container endpoint, IMDS and credential_process: `AccessKeyId`,
    /// `SecretAccessKey`, `Token` (or `SessionToken`), `Expiration`; IMDS adds `Code`, which must be
    /// `Success`.
    static func decodeJSON(_ bytes: [UInt8], source: String) throws -> AWSCredentials {
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
            throw CKStoreError(.remote, "credentials from \(source) are not a JSON object")
        }
        if let code = object["Code"] as? String, code != "Success" {
            throw CKStoreError(.remote, "credentials from \(source): Code \(code)\((object["Message"] as? String).map { ": " + $0 } ?? "")")
        }
        guard let key = object["AccessKeyId"] as? String, !key.isEmpty, let secret = object["SecretAccessKey"] as? String, !secret.isEmpty else {
            throw CKStoreError(.remote, "credentials from \(source) have no AccessKeyId and SecretAccessKey")
        }
        let token = (object["Token"] as? String) ?? (object["SessionToken"] as? String)
        return AWSCredentials(accessKey: key, secretKey: secret, sessionToken: token,
                              expiration: try AWSCredentials.expiration(object["Expiration"] as? String, from: source), source: source)
    }

    static func runProcess(_ command: String, source: String) async throws -> AWSCredentials {
        let (status, output, errors) = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<(Int32, [UInt8], String), any Error>) in
            DispatchQueue.global().async {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: "/bin/sh")
                process.arguments = ["-c", command]
                let out = Pipe(), err = Pipe()
                process.standardOutput = out
                process.standardError = err
                do {
                    try process.run()
                    let output = out.fileHandleForReading.readDataToEndOfFile()
                    let errors = err.fileHandleForReading.readDataToEndOfFile()
                    process.waitUntilExit()
                    continuation.resume(returning: (process.terminationStatus, Array(output), String(decoding: errors, as: UTF8.self)))
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
        guard status == 0 else {
            throw CKStoreError(.remote, "\(source): `\(command)` exited with status \(status): \(errors.suffix(300))")
        }
        if let object = try? JSONSerialization.jsonObject(with: Data(output)) as? [String: Any], let version = object["Version"] as? Int, version != 1 {
            throw CKStoreError(.remote, "\(source): `\(command)` printed Version \(version); only version 1 is known")
        }
        return try decodeJSON(output, source: source)
    }
}

/// AWS STS, where roles are assumed: `$AWS_ENDPOINT_URL_STS`, `$AWS_ENDPOINT_URL`, else the regional
/// endpoint of the profile's or the environment's region (the global one without a region).
struct STSEndpoint: Sendable {
    var url: String
    var region: String

    init(environment: [String: String], profileRegion: String?) {
        let region = environment["AWS_REGION"].flatMap { $0.isEmpty ? nil : $0 } ?? environment["AWS_DEFAULT_REGION"].flatMap { $0.isEmpty ? nil : $0 } ?? profileRegion
        self.region = region ?? "us-east-1"
        if let url = environment["AWS_ENDPOINT_URL_STS"].flatMap({ $0.isEmpty ? nil : $0 }) ?? environment["AWS_ENDPOINT_URL"].flatMap({ $0.isEmpty ? nil : $0 }) {
            self.url = url.hasSuffix("/") ? String(url.dropLast()) : url
        } else {
            self.url = region.map { "https://sts.\($0).amazonaws.com" } ?? "https://sts.amazonaws.com"
        }
    }

    /// Calls `action` (Query API, POST form) and reads the `<Credentials>` of its answer. Retries 5xx,
    /// throttling and unanswered requests three times.
    func call(action: String, parameters: [(String, String)], signedWith credentials: AWSCredentials?, source: String) async throws -> AWSCredentials {
        let all = [("Action", action), ("Version", "2011-06-15")] + parameters
        let body = Array(all.map { SigV4Signer.uriEncode($0.0, slash: true) + "=" + SigV4Signer.uriEncode($0.1, slash: true) }.joined(separator: "&").utf8)
        guard let components = URLComponents(string: url), let host = components.host else {
            throw CKStoreError(.invalidArgument, "STS endpoint \(url) is not an http(s) URL")
        }
        let hostHeader = components.port.map { "\(host):\($0)" } ?? host
        var lastError = ""
        for attempt in 1...4 {
            var headers = [("Content-Type", "application/x-www-form-urlencoded; charset=utf-8"), ("Host", hostHeader)]
            if let credentials {
                let signer = SigV4Signer(accessKey: credentials.accessKey, secretKey: credentials.secretKey, sessionToken: credentials.sessionToken, region: region, service: "sts")
                let amzDate = SigV4Signer.amzDate(Date())
                let payloadHash = SigV4Signer.payloadHash(body)
                headers += [("x-amz-date", amzDate), ("x-amz-content-sha256", payloadHash)]
                if let token = credentials.sessionToken { headers.append(("x-amz-security-token", token)) }
                let path = components.percentEncodedPath.isEmpty ? "/" : components.percentEncodedPath
                let signature = signer.sign(.init(method: "POST", encodedPath: path, headers: headers, payloadHash: payloadHash), amzDate: amzDate)
                headers.append(("Authorization", signature.authorization))
            }
            do {
                let answer = try await PlainHTTP.send("POST", url + (components.percentEncodedPath.isEmpty ? "/" : ""), headers: headers, body: body, timeout: 30)
                let xml = answer.text
                if answer.status == 200, let block = XMLScan.blocks("Credentials", in: xml).first,
                   let key = XMLScan.value("AccessKeyId", in: block), let secret = XMLScan.value("SecretAccessKey", in: block) {
                    return AWSCredentials(accessKey: key, secretKey: secret, sessionToken: XMLScan.value("SessionToken", in: block),
                                          expiration: try AWSCredentials.expiration(XMLScan.value("Expiration", in: block), from: source), source: source)
                }
                lastError = "HTTP \(answer.status)\(XMLScan.value("Code", in: xml).map { " " + $0 } ?? "")\(XMLScan.value("Message", in: xml).map { ": " + $0 } ?? "")"
                guard answer.status >= 500 || answer.status == 429 || XMLScan.value("Code", in: xml) == "Throttling" else { break }
            } catch let error as CKStoreError {
                throw error
            } catch {
                lastError = "\(error)"
            }
            if attempt < 4 { try await Task.sleep(nanoseconds: UInt64(200_000_000 << attempt)) }
        }
        throw CKStoreError(.remote, "\(source): STS \(action) at \(url) failed: \(lastError)")
    }
}
