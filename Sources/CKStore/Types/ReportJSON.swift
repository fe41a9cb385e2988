public import Foundation

/// How ckstore writes its reports as JSON, as `--json` prints them: snake_case field names taken from the
/// Swift names (`storedBytesAdded` → `stored_bytes_added`), keys sorted, and a diverged run's NaN or
/// infinite loss as the strings `"NaN"`, `"Infinity"`, `"-Infinity"`. Dictionary keys (metrics, paths,
/// tensor names) are written as they are.
///
/// The report types (``PutResult``, ``GCReport``, ``VerifyReport``, ``AuditReport``, …) name their fields
/// only in Swift; encode them with this encoder to get the field names the CLI and the Python package use.
///
/// ```swift
/// let report = try await store.gc(GCOptions(dryRun: true))
/// let json = try ReportJSON.encoder().encode(report)   // {"bytes_freed": …, "dry_run": true, …}
/// ```
public enum ReportJSON {
    /// A new encoder with ckstore's report settings; `pretty` adds indentation.
    public static func encoder(pretty: Bool = false) -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "Infinity", negativeInfinity: "-Infinity", nan: "NaN")
        return encoder
    }
}

/// How ckstore writes the small JSON objects it keeps (commit records, remote objects, `remotes.json`):
/// keys sorted, and snake_case field names taken from the Swift names, as the reports have them, so that a
/// type names its fields only in Swift. Dictionary keys (metrics, object keys) are written and read as
/// they are.
enum StoredJSON {
    static func encoder(pretty: Bool = false) -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.sortedKeys, .prettyPrinted] : [.sortedKeys]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        return encoder
    }

    static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return decoder
    }
}
