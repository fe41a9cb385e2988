import Synchronization

/// How far a long operation is: what `put`, `get`, `verify --full`, `gc` (while it rewrites packs) and
/// `repair` report as they go. The library only reports; the `ckstore` tool draws the line or prints
/// JSON lines.
public struct ProgressEvent: Sendable, Equatable {
    /// The operation: `put`, `get`, `verify`, `gc` or `repair`.
    public var operation: String
    /// Bytes done so far (read and stored, restored, checked, rewritten, scanned).
    public var bytesDone: Int64
    /// Bytes the operation will do in all, as known when it started.
    public var bytesTotal: Int64
}

/// Receives progress events, possibly from several tasks at once; it should return quickly.
public typealias ProgressHandler = @Sendable (ProgressEvent) -> Void

/// Counts an operation's bytes and reports each step to its handler.
final class ProgressMeter: Sendable {
    private let operation: String
    private let total: Int64
    private let handler: ProgressHandler?
    private let done = Atomic<Int64>(0)

    init(_ operation: String, total: Int64, handler: ProgressHandler?) {
        self.operation = operation
        self.total = total
        // An operation with nothing to do (a gc that rewrites no pack) reports nothing.
        self.handler = total > 0 ? handler : nil
        self.handler?(ProgressEvent(operation: operation, bytesDone: 0, bytesTotal: total))
    }

    /// Counts `bytes` more done.
    func add(_ bytes: Int64) {
        guard let handler else { return }
        let now = done.add(bytes, ordering: .relaxed).newValue
        handler(ProgressEvent(operation: operation, bytesDone: min(now, total), bytesTotal: total))
    }
}
