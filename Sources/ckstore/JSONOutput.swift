import CKStore
import Foundation

/// Prints values as JSON on standard output (sorted keys, so scripts and diffs see a stable shape).
enum JSONOutput {
    static func print(_ value: some Encodable) throws {
        let encoder = ReportJSON.encoder(pretty: true)
        let data = try encoder.encode(value)
        Swift.print(String(decoding: data, as: UTF8.self))
    }

    /// One JSON object on one line (JSON lines, for commands that report as they go).
    static func printLine(_ value: some Encodable) throws {
        let data = try ReportJSON.encoder(pretty: false).encode(value)
        // Written at once, not buffered: a reader follows these lines as they come.
        FileHandle.standardOutput.write(data + Data([0x0A]))
    }
}

/// Formats for human-readable output.
enum Format {
    static func date(_ seconds: Double) -> String {
        let formatter = DateFormatter()
        formatter.dateFormat = "yyyy-MM-dd HH:mm:ss"
        formatter.locale = Locale(identifier: "en_US_POSIX")
        return formatter.string(from: Date(timeIntervalSince1970: seconds))
    }

    static func isoDate(_ seconds: Double) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: Date(timeIntervalSince1970: seconds))
    }

    static func metric(_ value: Double) -> String {
        if value == value.rounded() && abs(value) < 1e15 { return String(Int64(value)) }
        return String(format: "%.6g", value)
    }

    static func metrics(_ metrics: [String: Double]) -> String {
        metrics.sorted { $0.key < $1.key }.map { "\($0.key)=\(metric($0.value))" }.joined(separator: " ")
    }

    /// Left-aligned columns separated by two spaces.
    static func table(_ header: [String], _ rows: [[String]]) -> String {
        let all = [header] + rows
        let widths = header.indices.map { column in all.map { $0[column].count }.max() ?? 0 }
        return all.map { row in
            row.enumerated().map { index, cell in
                index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
            }.joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }.joined(separator: "\n")
    }
}
