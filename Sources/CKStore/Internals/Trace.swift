import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Stage timings on standard error when `CKSTORE_TRACE` is set: where a put's or a restore's time goes,
/// for measurements on machines without a profiler (docs/benchmarks.md, "Many cores").
struct Trace {
    static let enabled = getenv("CKSTORE_TRACE") != nil
    private let started = ContinuousClock.now
    private let operation: String

    init(_ operation: String) { self.operation = operation }

    /// Prints `stage` with the seconds since this trace began.
    func mark(_ stage: @autoclosure () -> String) {
        guard Self.enabled else { return }
        let seconds = (ContinuousClock.now - started) / .seconds(1)
        let line = Array("trace \(operation): \(String(format: "%.3f", seconds)) s \(stage())\n".utf8)
        _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    }
}
