import ArgumentParser
import CKStore
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `--quiet` and `--progress`, shared by the long commands (put, get, verify, gc, repair).
struct ProgressOptions: ParsableArguments {
    /// Where progress goes.
    enum Mode: String, ExpressibleByArgument, CaseIterable {
        /// One updating line on standard error, when it is a terminal (the default).
        case auto
        /// JSON lines on standard error: `{"type":"progress",…}`.
        case json
        /// Nothing.
        case none
    }

    @Flag(name: .shortAndLong, help: "Show no progress.") var quiet = false
    @Option(help: "Progress on standard error: auto (a line on a terminal), json (JSON lines) or none.") var progress: Mode = .auto

    /// A renderer for `operation`, or nil when nothing is to be shown.
    func renderer() -> ProgressRenderer? {
        if quiet { return nil }
        switch progress {
        case .none: return nil
        case .json: return ProgressRenderer(style: .json)
        case .auto: return isatty(STDERR_FILENO) == 1 ? ProgressRenderer(style: .line) : nil
        }
    }
}

/// Draws progress events on standard error: one line rewritten in place (`\r`) at most ten times a
/// second, ending in a final summary line; or a JSON line per event at most five times a second, ending
/// with one that says `"done": true`.
final class ProgressRenderer: Sendable {
    enum Style { case line, json }

    private struct State {
        var last: ProgressEvent?
        var drawn: ContinuousClock.Instant?
    }

    private let style: Style
    private let started = ContinuousClock.now
    // The newest event and when it was last drawn, protected by this mutex (events come from many tasks).
    private let state = Mutex(State())

    init(style: Style) { self.style = style }

    /// The handler to give the library.
    var handler: ProgressHandler { { [self] event in report(event) } }

    private func report(_ event: ProgressEvent) {
        let now = ContinuousClock.now
        let text: String? = state.withLock { state in
            // Events of one operation come from many tasks, each counting its bytes atomically and then
            // reporting: a task that counted first can report last. The bytes done only grow, so an event
            // behind the newest one is old news (the final line must say everything was done).
            if let last = state.last, last.operation == event.operation, last.bytesDone > event.bytesDone { return nil }
            state.last = event
            let interval: Duration = style == .line ? .milliseconds(100) : .milliseconds(200)
            if let drawn = state.drawn, now - drawn < interval { return nil }
            state.drawn = now
            return render(event, at: now, done: false)
        }
        if let text { write(text) }
    }

    /// Draws the final state: the summary line, or the last JSON line with `"done": true`.
    func finish() {
        let text: String? = state.withLock { state in
            guard let last = state.last else { return nil }
            return render(last, at: .now, done: true)
        }
        if let text { write(text) }
    }

    private func render(_ event: ProgressEvent, at now: ContinuousClock.Instant, done: Bool) -> String {
        let seconds = max((now - started) / .seconds(1), 1e-6)
        let rate = Double(event.bytesDone) / seconds
        let eta = rate > 0 ? Double(max(event.bytesTotal - event.bytesDone, 0)) / rate : nil
        switch style {
        case .json:
            var object: [String: JSONScalar] = [
                "type": .text("progress"), "operation": .text(event.operation), "bytes_done": .integer(event.bytesDone),
                "bytes_total": .integer(event.bytesTotal), "bytes_per_second": .number(rate.rounded()), "seconds": .number((seconds * 1000).rounded() / 1000),
            ]
            if let eta, !done { object["eta_seconds"] = .number((eta * 10).rounded() / 10) }
            if done { object["done"] = .bool(true) }
            return JSONScalar.line(object) + "\n"
        case .line:
            let percent = event.bytesTotal > 0 ? Int(Double(event.bytesDone) / Double(event.bytesTotal) * 100) : 100
            let speed = String(format: "%.0f MB/s", rate / 1e6)
            if done {
                return "\r\u{1B}[K\(event.operation): \(ByteCount(event.bytesDone)) of \(ByteCount(event.bytesTotal)) in \(String(format: "%.2f", seconds)) s (\(speed))\n"
            }
            let remaining = eta.map { " ETA \(Self.clock($0))" } ?? ""
            return "\r\u{1B}[K\(event.operation): \(ByteCount(event.bytesDone)) / \(ByteCount(event.bytesTotal)) \(percent)% \(speed)\(remaining)"
        }
    }

    private static func clock(_ seconds: Double) -> String {
        let whole = Int(seconds.rounded(.up))
        return whole >= 3600 ? String(format: "%d:%02d:%02d", whole / 3600, whole / 60 % 60, whole % 60) : String(format: "%d:%02d", whole / 60, whole % 60)
    }

    private func write(_ text: String) {
        FileHandle.standardError.write(Data(text.utf8))
    }
}

/// The few JSON values a progress line holds, encoded in a stable key order.
enum JSONScalar: Encodable {
    case text(String)
    case integer(Int64)
    case number(Double)
    case bool(Bool)

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .text(let value): try container.encode(value)
        case .integer(let value): try container.encode(value)
        case .number(let value): try container.encode(value)
        case .bool(let value): try container.encode(value)
        }
    }

    /// One line of JSON, keys sorted.
    static func line(_ object: [String: JSONScalar]) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(object)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }
}
