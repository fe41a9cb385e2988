import CKStore
import Foundation
public import NIOCore
public import NIOHTTP1
import NIOPosix

/// An HTTP/1.1 server on 127.0.0.1 for the services tests cannot reach here (instance metadata, container
/// credentials, STS, a faulty S3): each request, read whole, goes to an async handler whose reply says
/// what to send, including the ways a real server fails (a stalled, cut or dropped body).
public final class TestHTTPServer: @unchecked Sendable {
    public struct Request: Sendable {
        public var method: String
        /// The request target as sent: the encoded path and query.
        public var uri: String
        public var headers: HTTPHeaders
        public var body: [UInt8]

        /// The encoded path (before `?`).
        public var path: String { String(uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)[0]) }
        /// The query as sent (after `?`), or "".
        public var rawQuery: String {
            let parts = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
            return parts.count > 1 ? String(parts[1]) : ""
        }
        /// The query's parameters, decoded, in order (`?uploads` gives `("uploads", "")`).
        public var query: [(String, String)] { Self.form(rawQuery) }
        public func header(_ name: String) -> String? { headers.first(name: name) }

        /// `a=1&b=2` decoded (`+` is a space in forms).
        public static func form(_ text: String, plusIsSpace: Bool = false) -> [(String, String)] {
            text.split(separator: "&").map { pair in
                let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                func decode(_ s: Substring) -> String {
                    let text = plusIsSpace ? s.replacingOccurrences(of: "+", with: " ") : String(s)
                    return text.removingPercentEncoding ?? text
                }
                return (decode(parts[0]), parts.count > 1 ? decode(parts[1]) : "")
            }
        }
    }

    /// What to send back.
    public struct Reply: Sendable {
        public var status: Int
        public var headers: [(String, String)]
        public var body: [UInt8]
        /// How the body goes wrong, if it does.
        public var fault: BodyFault?

        public init(status: Int, headers: [(String, String)] = [], body: [UInt8] = [], fault: BodyFault? = nil) {
            self.status = status
            self.headers = headers
            self.body = body
            self.fault = fault
        }

        public static func text(_ status: Int, _ text: String, contentType: String = "text/plain") -> Reply {
            Reply(status: status, headers: [("Content-Type", contentType)], body: Array(text.utf8))
        }

        public static func json(_ object: Any, status: Int = 200) -> Reply {
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
            return Reply(status: status, headers: [("Content-Type", "application/json")], body: Array(data))
        }

        public static func xml(_ status: Int, _ xml: String) -> Reply {
            text(status, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n" + xml, contentType: "application/xml")
        }
    }

    /// Ways a body goes wrong. Each announces the whole body's length.
    public enum BodyFault: Sendable {
        /// Sends `bytes` bytes, then nothing for `seconds`, then closes the connection.
        case stall(afterBytes: Int, seconds: Double)
        /// Sends `bytes` bytes and closes the connection.
        case drop(afterBytes: Int)
        /// Sends nothing at all and closes the connection (an answer lost on the way).
        case noAnswer
    }

    public typealias Handler = @Sendable (Request) async -> Reply

    public let port: Int
    public var url: String { "http://127.0.0.1:\(port)" }
    private let channel: any Channel
    private let group: MultiThreadedEventLoopGroup

    /// Starts a server on a free port of 127.0.0.1.
    public static func start(_ handler: @escaping Handler) async throws -> TestHTTPServer {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline(withErrorHandling: true).flatMap {
                    channel.pipeline.addHandler(Connection(handler: handler))
                }
            }
        let channel = try await bootstrap.bind(host: "127.0.0.1", port: 0).get()
        return TestHTTPServer(channel: channel, group: group, port: channel.localAddress?.port ?? 0)
    }

    private init(channel: any Channel, group: MultiThreadedEventLoopGroup, port: Int) {
        self.channel = channel
        self.group = group
        self.port = port
    }

    public func stop() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
    }

    private final class Connection: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart

        let handler: Handler
        var head: HTTPRequestHead?
        var body = [UInt8]()

        init(handler: @escaping Handler) { self.handler = handler }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                self.head = head
                body.removeAll(keepingCapacity: true)
            case .body(var buffer):
                body += buffer.readBytes(length: buffer.readableBytes) ?? []
            case .end:
                guard let head else { return }
                let request = Request(method: head.method.rawValue, uri: head.uri, headers: head.headers, body: body)
                let channel = context.channel
                let keepAlive = head.isKeepAlive
                let handler = self.handler
                // Answered outside the cooperative pool: other tests may keep it busy.
                Task(executorPreference: DedicatedExecutor.shared) {
                    let reply = await handler(request)
                    Self.send(reply, on: channel, keepAlive: keepAlive, head: head.method == .HEAD)
                }
            }
        }

        static func send(_ reply: Reply, on channel: any Channel, keepAlive: Bool, head isHead: Bool) {
            var headers = HTTPHeaders(reply.headers)
            if !headers.contains(name: "Content-Length") { headers.add(name: "Content-Length", value: String(reply.body.count)) }
            if reply.fault != nil || !keepAlive { headers.replaceOrAdd(name: "Connection", value: "close") }
            let responseHead = HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: reply.status), headers: headers)
            channel.eventLoop.execute {
                if case .noAnswer? = reply.fault {
                    channel.close(promise: nil)
                    return
                }
                channel.write(HTTPServerResponsePart.head(responseHead), promise: nil)
                var sent = reply.body
                switch reply.fault {
                case .stall(let bytes, _)?, .drop(let bytes)?: sent = Array(reply.body.prefix(bytes))
                default: break
                }
                if !sent.isEmpty, !isHead {
                    channel.write(HTTPServerResponsePart.body(.byteBuffer(channel.allocator.buffer(bytes: sent))), promise: nil)
                }
                switch reply.fault {
                case .stall(_, let seconds)?:
                    channel.flush()
                    channel.eventLoop.scheduleTask(in: .milliseconds(Int64(seconds * 1000))) { channel.close(promise: nil) }
                case .drop?:
                    channel.flush()
                    channel.close(promise: nil)
                default:
                    let done = channel.writeAndFlush(HTTPServerResponsePart.end(nil))
                    if !keepAlive { done.whenComplete { _ in channel.close(promise: nil) } }
                }
            }
        }
    }
}
