@testable import CKStore
import CKStoreReports
import CKStoreTestSupport
import Foundation
import Testing

/// A headless Chromium, if one is installed (`make test` installs Debian's).
enum Chromium {
    static let path: String? = {
        let candidates = [ProcessInfo.processInfo.environment["CHROMIUM"], "/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        return candidates.compactMap { $0 }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()

    /// Runs the browser headless on `arguments`; returns standard output and standard error (written to
    /// a file in `profile`, so neither pipe can fill up while the other is read).
    static func run(_ arguments: [String], profile: String) throws -> (output: String, errors: String) {
        guard let path else { throw CKStoreError(.notFound, "no Chromium installed") }
        try FileManager.default.createDirectory(atPath: profile, withIntermediateDirectories: true)
        let errorsPath = profile + "/stderr.log"
        try Files.write([], to: errorsPath)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = [
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--user-data-dir=\(profile)",
            "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
        ] + arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errorsPath))
        try process.run()
        let stdout = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (String(decoding: stdout, as: UTF8.self), String(decoding: try Files.read(errorsPath), as: UTF8.self))
    }
}

@Suite struct AuditHTMLTests {
    @Test(.enabled(if: Chromium.path != nil, "no Chromium installed: `make test` installs Debian's chromium package"))
    func reportRendersInAHeadlessBrowserWithAVisibleChart() async throws {
        try await withTemporaryDirectory { root in
            _ = try await AuditTests.twoRuns(root)
            let store = try CheckpointStore.open(at: root + "/store")
            let report = try await store.audit(AuditOptions(budget: 8 << 20, whatIf: try RetentionPolicy(parsingRules: "keep-last=2")))
            let html = report.htmlDocument()
            let file = root + "/report.html"
            try Files.write(Array(html.utf8), to: file)

            // Self-contained: nothing is fetched (the SVG namespace is a name, not a request).
            for reference in ["src=\"http", "href=\"http", "url(http", "@import", "<link", "src=\"//"] {
                #expect(!html.contains(reference), "the report refers to an outside resource: \(reference)")
            }
            #expect(html.contains("<svg id=\"chart\"") && html.contains("<polyline"))
            for checkpoint in report.checkpoints { #expect(html.contains(checkpoint.id.short)) }

            // Loaded: the page's own check rasterized the chart and found its lines.
            let dom = try Chromium.run(["--dump-dom", "file://" + file], profile: root + "/profile-dom")
            let marker = try #require(dom.output.firstMatch(of: #/data-chart-pixels="(\d+)"/#), "the page's load handler did not run:\n\(dom.errors.suffix(2000))")
            let pixels = try #require(Int(marker.output.1))
            #expect(pixels > 1000, "the chart's lines cover only \(pixels) pixels")
            #expect(dom.errors.contains("ckstore-audit chart pixels"), "console output is not captured, so errors could go unseen")
            let consoleErrors = dom.errors.split(separator: "\n").filter {
                ($0.contains("CONSOLE") && !$0.contains("ckstore-audit chart pixels")) || $0.contains("Uncaught") || $0.contains("Failed to load")
            }
            #expect(consoleErrors.isEmpty, "console: \(consoleErrors)")

            // A screenshot of the page: a PNG of the window's size.
            let shot = root + "/report.png"
            _ = try Chromium.run(["--hide-scrollbars", "--window-size=1280,2000", "--screenshot=\(shot)", "file://" + file], profile: root + "/profile-shot")
            let png = try Files.read(shot)
            #expect(png.prefix(8) == [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
            func bigEndian(_ offset: Int) -> Int { png[offset..<offset + 4].reduce(0) { $0 << 8 | Int($1) } }
            #expect(png.count > 24 && bigEndian(16) == 1280 && bigEndian(20) == 2000)
            #expect(png.count > 50_000, "a page with tables and a chart compresses to more than \(png.count) bytes")
        }
    }
}
