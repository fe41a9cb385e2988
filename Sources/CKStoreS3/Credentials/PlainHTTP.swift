import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1

/// The unsigned requests the credential sources and the metadata services take: short, small answers,
/// each with its own deadline.
enum PlainHTTP {
    struct Answer: Sendable {
        var status: Int
        var headers: HTTPHeaders
        var body: [UInt8]
        var text: String { String(decoding: body, as: UTF8.self) }
    }

    /// Sends one request and reads its whole answer (at most 1 MiB) within `timeout` seconds.
    static func send(_ method: String, _ url: String, headers: [(String, String)] = [], body: [UInt8] = [], timeout: Double) async throws -> Answer {
        var request = HTTPClientRequest(url: url)
        request.method = HTTPMethod(rawValue: method)
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if !body.isEmpty || method == "PUT" || method == "POST" {
            request.body = .bytes(ByteBuffer(bytes: body))
            request.headers.replaceOrAdd(name: "Content-Length", value: String(body.count))
        }
        let response = try await metadataHTTPClient.execute(request, timeout: .milliseconds(Int64(timeout * 1000)))
        var collected = try await response.body.collect(upTo: 1 << 20)
        return Answer(status: Int(response.status.code), headers: response.headers, body: collected.readBytes(length: collected.readableBytes) ?? [])
    }
}

/// The client of the metadata services and STS: a connection that cannot be made fails within a second,
/// as botocore's (an instance metadata service that is not there must cost little off-cloud).
let metadataHTTPClient: HTTPClient = {
    var configuration = HTTPClient.Configuration()
    configuration.timeout = .init(connect: .seconds(1), read: .seconds(30))
    configuration.connectionPool.retryConnectionEstablishment = false
    configuration.decompression = .disabled
    if let bundle = ProcessInfo.processInfo.environment["AWS_CA_BUNDLE"], !bundle.isEmpty {
        configuration.tlsConfiguration = S3TLS.configuration(caBundle: bundle)
    }
    return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
}()
