@testable import CKStoreS3
import CKStore
import NIOHTTP1
import Foundation
import Testing

/// The signer against the examples AWS publishes in "Signature Calculations for the Authorization Header:
/// Transferring Payload in a Single Chunk (AWS Signature Version 4)" of the Amazon S3 API reference: the
/// same credentials, requests and time, and the canonical request, string to sign and signature given
/// there, as literal data.
@Suite struct SigV4Tests {
    let signer = SigV4Signer(accessKey: "AKIAIOSFODNN7EXAMPLE", secretKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", region: "us-east-1")
    let date = "20130524T000000Z"
    let emptyHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    @Test func getObjectWithRange() {
        let signature = signer.sign(.init(
            method: "GET", encodedPath: "/test.txt",
            headers: [("Host", "examplebucket.s3.amazonaws.com"), ("Range", "bytes=0-9"), ("x-amz-content-sha256", emptyHash), ("x-amz-date", date)],
            payloadHash: emptyHash), amzDate: date)
        #expect(signature.canonicalRequest == """
            GET
            /test.txt

            host:examplebucket.s3.amazonaws.com
            range:bytes=0-9
            x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
            x-amz-date:20130524T000000Z

            host;range;x-amz-content-sha256;x-amz-date
            e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
            """)
        #expect(signature.stringToSign == """
            AWS4-HMAC-SHA256
            20130524T000000Z
            20130524/us-east-1/s3/aws4_request
            7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972
            """)
        #expect(signature.signature == "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
        #expect(signature.authorization == "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    }

    @Test func putObject() {
        let body = Array("Welcome to Amazon S3.".utf8)
        let hash = SigV4Signer.payloadHash(body)
        #expect(hash == "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072")
        let signature = signer.sign(.init(
            method: "PUT", encodedPath: "/" + SigV4Signer.uriEncode("test$file.text", slash: false),
            headers: [("Host", "examplebucket.s3.amazonaws.com"), ("Date", "Fri, 24 May 2013 00:00:00 GMT"), ("x-amz-date", date),
                      ("x-amz-storage-class", "REDUCED_REDUNDANCY"), ("x-amz-content-sha256", hash)],
            payloadHash: hash), amzDate: date)
        #expect(signature.canonicalRequest == """
            PUT
            /test%24file.text

            date:Fri, 24 May 2013 00:00:00 GMT
            host:examplebucket.s3.amazonaws.com
            x-amz-content-sha256:44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072
            x-amz-date:20130524T000000Z
            x-amz-storage-class:REDUCED_REDUNDANCY

            date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class
            44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072
            """)
        #expect(signature.stringToSign.hasSuffix("9e0e90d9c76de8fa5b200d8c849cd5b8dc7a3be3951ddb7f6a76b4158342019d"))
        #expect(signature.signature == "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")
    }

    @Test func getBucketLifecycle() {
        let signature = signer.sign(.init(
            method: "GET", encodedPath: "/", query: [("lifecycle", "")],
            headers: [("Host", "examplebucket.s3.amazonaws.com"), ("x-amz-date", date), ("x-amz-content-sha256", emptyHash)],
            payloadHash: emptyHash), amzDate: date)
        #expect(signature.canonicalRequest.split(separator: "\n", omittingEmptySubsequences: false)[2] == "lifecycle=")
        #expect(signature.stringToSign.hasSuffix("9766c798316ff2757b517bc739a67f6213b4ab36dd5da2f94eaebf79c77395ca"))
        #expect(signature.signature == "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543")
    }

    @Test func listObjects() {
        let signature = signer.sign(.init(
            method: "GET", encodedPath: "/", query: [("prefix", "J"), ("max-keys", "2")],
            headers: [("Host", "examplebucket.s3.amazonaws.com"), ("x-amz-date", date), ("x-amz-content-sha256", emptyHash)],
            payloadHash: emptyHash), amzDate: date)
        #expect(signature.canonicalRequest.split(separator: "\n", omittingEmptySubsequences: false)[2] == "max-keys=2&prefix=J")
        #expect(signature.stringToSign.hasSuffix("df57d21db20da04d7fa30298dd4488ba3a2b47ca3a489c74750e0f1e7df1b9b7"))
        #expect(signature.signature == "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")
    }

    @Test func encodesKeysAsS3Wants() {
        #expect(SigV4Signer.uriEncode("packs/ab/x y+z~", slash: false) == "packs/ab/x%20y%2Bz~")
        #expect(SigV4Signer.uriEncode("a/b", slash: true) == "a%2Fb")
        #expect(SigV4Signer.amzDate(Date(timeIntervalSince1970: 1_369_353_600)) == "20130524T000000Z")
    }

    @Test func readsCredentialsLikeTheAWSTools() async throws {
        let environment = ["AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_SESSION_TOKEN": "T", "AWS_EC2_METADATA_DISABLED": "true"]
        #expect(try await AWSCredentials.resolve(environment: environment, remote: "r") == AWSCredentials(accessKey: "AK", secretKey: "SK", sessionToken: "T", source: "environment"))
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("aws-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try "[default]\naws_access_key_id = D1\naws_secret_access_key = D2\n\n# comment\n[work]\naws_access_key_id=W1\naws_secret_access_key=W2\n"
            .write(toFile: folder + "/credentials", atomically: true, encoding: .utf8)
        try "[profile work]\nregion = eu-west-1\n[profile cfg]\naws_access_key_id = C1\naws_secret_access_key = C2\n"
            .write(toFile: folder + "/config", atomically: true, encoding: .utf8)
        let files = ["AWS_SHARED_CREDENTIALS_FILE": folder + "/credentials", "AWS_CONFIG_FILE": folder + "/config", "AWS_EC2_METADATA_DISABLED": "true"]
        #expect(try await AWSCredentials.resolve(environment: files, remote: "r").accessKey == "D1")
        let work = files.merging(["AWS_PROFILE": "work"]) { $1 }
        #expect(try await AWSCredentials.resolve(environment: work, remote: "r") == AWSCredentials(accessKey: "W1", secretKey: "W2", source: "profile work"))
        #expect(AWSCredentialChain(environment: work, remote: "r").profileRegion == "eu-west-1")
        // Keys in the config file's profile come after the credentials file's.
        #expect(try await AWSCredentials.resolve(environment: files.merging(["AWS_PROFILE": "cfg"]) { $1 }, remote: "r").accessKey == "C1")
        // A named profile that exists nowhere is an error, not a fall-through to the next source.
        await #expect(throws: (any Error).self) { try await AWSCredentials.resolve(environment: files.merging(["AWS_PROFILE": "nope"]) { $1 }, remote: "r") }
        // Nothing anywhere, and no instance metadata: a clear error.
        await #expect(throws: (any Error).self) {
            try await AWSCredentials.resolve(environment: ["AWS_SHARED_CREDENTIALS_FILE": folder + "/none", "AWS_CONFIG_FILE": folder + "/none", "AWS_EC2_METADATA_DISABLED": "true"], remote: "r")
        }
        // With IMDS left on, the chain ends there.
        #expect(try AWSCredentialChain(environment: ["AWS_SHARED_CREDENTIALS_FILE": folder + "/none", "AWS_CONFIG_FILE": folder + "/none"], remote: "r").sourceName() == "instance-metadata")
    }

    /// An endpoint written with its scheme's default port is sent and signed without it (the HTTP client
    /// sends `Host: host`; signing `host:443` made every request fail), and a path in the endpoint is
    /// kept before the bucket.
    @Test func defaultPortsAreSignedAsSent() throws {
        let keys = ["AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_EC2_METADATA_DISABLED": "true"]
        let https = try S3ObjectStore(RemoteDefinition(name: "r", url: "s3://bucket/pre", endpoint: "https://objects.example.com:443/s3/"), environment: keys)
        let sent = https.address(key: "commits/a", query: [], region: "us-east-1")
        #expect(sent.host == "objects.example.com")
        #expect(sent.url == "https://objects.example.com/s3/bucket/pre/commits/a")
        #expect(sent.path == "/s3/bucket/pre/commits/a")
        let http = try S3ObjectStore(RemoteDefinition(name: "r", url: "s3://bucket", endpoint: "http://127.0.0.1:80"), environment: keys)
        #expect(http.address(key: "k", query: [], region: "us-east-1").host == "127.0.0.1")
        let other = try S3ObjectStore(RemoteDefinition(name: "r", url: "s3://bucket", endpoint: "https://127.0.0.1:8443"), environment: keys)
        #expect(other.address(key: "k", query: [], region: "us-east-1").host == "127.0.0.1:8443")
    }

    /// AWS gets virtual-hosted requests (the bucket in the host) unless --path-style is given; other
    /// endpoints get the bucket in the path unless --virtual-hosted is; the signature of a virtual-hosted
    /// request is AWS's published one for it.
    @Test func virtualHostedRequests() throws {
        let keys = ["AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "AWS_EC2_METADATA_DISABLED": "true"]
        let aws = try S3ObjectStore(RemoteDefinition(name: "r", url: "s3://examplebucket", region: "us-east-1"), environment: keys)
        let sent = aws.address(key: "test.txt", query: [], region: "us-east-1")
        #expect(sent.host == "examplebucket.s3.us-east-1.amazonaws.com")
        #expect(sent.path == "/test.txt")
        // Signed as sent, the request is the published example's (its host aside, which AWS gives as the
        // global name): the path has no bucket.
        let signature = signer.sign(.init(method: "GET", encodedPath: sent.path,
            headers: [("Host", "examplebucket.s3.amazonaws.com"), ("Range", "bytes=0-9"), ("x-amz-content-sha256", emptyHash), ("x-amz-date", date)],
            payloadHash: emptyHash), amzDate: date)
        #expect(signature.signature == "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
        // The host follows a learned region.
        #expect(aws.address(key: "k", query: [], region: "eu-west-1").host == "examplebucket.s3.eu-west-1.amazonaws.com")
        let forcedPath = try S3ObjectStore(RemoteDefinition(name: "r", url: "s3://examplebucket", region: "us-east-1", pathStyle: true), environment: keys)
        #expect(forcedPath.address(key: "k", query: [], region: "us-east-1").path == "/examplebucket/k")
        let custom = try S3ObjectStore(RemoteDefinition(name: "r", url: "s3://b1b", endpoint: "https://minio.example.com"), environment: keys)
        #expect(custom.address(key: "k", query: [], region: "us-east-1").url == "https://minio.example.com/b1b/k")
        let customVirtual = try S3ObjectStore(RemoteDefinition(name: "r", url: "s3://b1b", endpoint: "https://minio.example.com", virtualHosted: true), environment: keys)
        #expect(customVirtual.address(key: "k", query: [("uploads", "")], region: "us-east-1").url == "https://b1b.minio.example.com/k?uploads")
    }

    /// Retry-After in seconds or as an HTTP date; which answers are worth another try.
    @Test func retriesWhatARetryCanHelp() {
        var headers = HTTPHeaders()
        headers.add(name: "Retry-After", value: "3")
        #expect(S3ObjectStore.retryAfter(headers) == 3)
        var dated = HTTPHeaders()
        dated.add(name: "Retry-After", value: "Wed, 21 Oct 2015 07:28:05 GMT")
        #expect(S3ObjectStore.retryAfter(dated, now: Date(timeIntervalSince1970: 1_445_412_480)) == 5)
        func response(_ status: Int, _ code: String?) -> S3ObjectStore.Response {
            S3ObjectStore.Response(status: status, headers: HTTPHeaders(), body: Array((code.map { "<Error><Code>\($0)</Code></Error>" } ?? "").utf8))
        }
        #expect(S3ObjectStore.retryable(response(503, "SlowDown")) != nil)
        #expect(S3ObjectStore.retryable(response(500, "InternalError")) != nil)
        #expect(S3ObjectStore.retryable(response(429, nil)) != nil)
        #expect(S3ObjectStore.retryable(response(400, "RequestTimeout")) != nil)
        #expect(S3ObjectStore.retryable(response(400, "InvalidArgument")) == nil)
        #expect(S3ObjectStore.retryable(response(403, "AccessDenied")) == nil)
        #expect(S3ObjectStore.retryable(response(404, "NoSuchKey")) == nil)
    }

    /// An answer that refuses expired credentials: `ExpiredToken` by name, or a bodiless `HEAD` refusal
    /// once the credentials that signed it have expired (a `HEAD` has no body to name the error).
    @Test func expiredCredentialsAreRecognisedForHeadsToo() {
        func response(_ status: Int, _ code: String?) -> S3ObjectStore.Response {
            S3ObjectStore.Response(status: status, headers: HTTPHeaders(), body: Array((code.map { "<Error><Code>\($0)</Code></Error>" } ?? "").utf8))
        }
        let now = Date(timeIntervalSince1970: 1_000)
        let expired = AWSCredentials(accessKey: "k", secretKey: "s", sessionToken: "t", expiration: Date(timeIntervalSince1970: 999), source: "test")
        let valid = AWSCredentials(accessKey: "k", secretKey: "s", sessionToken: "t", expiration: Date(timeIntervalSince1970: 1_100), source: "test")
        let fixed = AWSCredentials(accessKey: "k", secretKey: "s", source: "test")
        #expect(S3ObjectStore.refusedAsExpired(method: "GET", response: response(400, "ExpiredToken"), signedWith: valid, now: now))
        #expect(S3ObjectStore.refusedAsExpired(method: "HEAD", response: response(400, nil), signedWith: expired, now: now))
        #expect(S3ObjectStore.refusedAsExpired(method: "HEAD", response: response(403, nil), signedWith: expired, now: now))
        #expect(!S3ObjectStore.refusedAsExpired(method: "HEAD", response: response(400, nil), signedWith: valid, now: now))
        #expect(!S3ObjectStore.refusedAsExpired(method: "HEAD", response: response(403, nil), signedWith: fixed, now: now))
        #expect(!S3ObjectStore.refusedAsExpired(method: "GET", response: response(400, nil), signedWith: expired, now: now))
        #expect(!S3ObjectStore.refusedAsExpired(method: "HEAD", response: response(404, nil), signedWith: expired, now: now))
    }
}
