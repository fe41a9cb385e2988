public import CKStore
import Foundation

extension AuditReport {
    /// The audit as one self-contained HTML page: the tables of `ckstore audit`, and an inline SVG chart
    /// of stored bytes over the checkpoints of each run with the budget line and the projection. No
    /// script, style sheet, font or image comes from anywhere else.
    ///
    /// The page checks itself once loaded: it draws the chart's data lines onto a canvas and records how
    /// many pixels they cover in `<body data-chart-pixels>`, so a headless browser can tell that they
    /// rendered.
    public func htmlDocument() -> String {
        var html = """
            <!DOCTYPE html>
            <html lang="en">
            <head>
            <meta charset="utf-8">
            <meta name="viewport" content="width=device-width, initial-scale=1">
            <title>ckstore audit — \(Self.escape(store))</title>
            <style>
            body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem; color: #1d2430; }
            h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.1rem; margin-top: 2rem; border-bottom: 1px solid #d7dce3; }
            .muted { color: #5b6675; } .cards { display: flex; flex-wrap: wrap; gap: .8rem; margin: 1rem 0; }
            .card { border: 1px solid #d7dce3; border-radius: 6px; padding: .6rem .9rem; min-width: 9rem; }
            .card b { display: block; font-size: 1.25rem; }
            table { border-collapse: collapse; width: 100%; margin: .5rem 0; } th, td { text-align: left; padding: .25rem .6rem; border-bottom: 1px solid #eceff3; }
            td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; } .over { color: #b3261e; font-weight: 600; } .ok { color: #1b7f3b; font-weight: 600; }
            svg text { font: 12px system-ui, sans-serif; fill: #3d4756; }
            </style>
            </head>
            <body>
            <h1>Checkpoint storage audit</h1>
            <p class="muted">Store <code>\(Self.escape(store))</code>\(run.map { ", run <b>" + Self.escape($0) + "</b>" } ?? "") · generated \(Self.date(generatedAt)) UTC</p>
            <p>Every figure comes from the store's catalogue. <i>Logical</i> bytes are what the checkpoints take as plain files;
            <i>stored</i> bytes are the compressed, deduplicated chunks; <i>on disk</i> adds pack framing and the catalogue.
            A checkpoint's <i>exclusive</i> bytes are what deleting it alone would free.</p>
            <div class="cards">
            \(Self.card("On disk", Self.bytes(diskBytes)))
            \(Self.card("Stored", Self.bytes(storedBytes)))
            \(Self.card("Logical", Self.bytes(logicalBytes)))
            \(Self.card("Saved", String(format: "%.1f×", dedupRatio * compressionRatio), "\(String(format: "%.2f", dedupRatio))× dedup · \(String(format: "%.2f", compressionRatio))× compression"))
            \(Self.card("Awaiting gc", Self.bytes(deadBytes)))
            \(Self.card("Contents", "\(checkpointCount) checkpoints", "\(runCount) runs · \(chunkCount) chunks · \(packCount) packs"))
            </div>

            """
        if let budget {
            let status = budget.fits ? "<span class=\"ok\">\(Self.bytes(budget.headroomBytes)) headroom</span>" : "<span class=\"over\">over by \(Self.bytes(-budget.headroomBytes))</span>"
            let steady = budget.steadyStateBytes.map { "Under the retention policies the store settles at \(Self.bytes($0))\($0 <= budget.budgetBytes ? ", within budget" : ", over budget")." }
                ?? "A run's policy keeps a growing number of checkpoints, so the store keeps growing."
            let more = budget.moreCheckpoints.map { " About <b>\($0)</b> more checkpoints fit before the budget is exceeded." } ?? ""
            html += "<h2>Budget \(Self.bytes(budget.budgetBytes))</h2>\n<p>\(status). \(steady)\(more)</p>\n"
        }
        html += "<h2>Stored bytes over time</h2>\n" + chartSVG() + "\n"
        html += Self.table(
            title: "Runs",
            header: ["Run", "Checkpoints", "Kept by policy", "Logical", "Stored", "Exclusive", "Added per checkpoint (last 10)", "Share", "Policy"],
            numeric: [1, 2, 3, 4, 5, 6, 7],
            rows: runs.map { [$0.run, "\($0.checkpoints)", "\($0.keptByPolicy)", Self.bytes($0.logicalBytes), Self.bytes($0.storedBytes), Self.bytes($0.exclusiveBytes), Self.bytes($0.averageAddedBytes), String(format: "%.1f%%", $0.share * 100), $0.policy] }
        )
        if let budget {
            html += Self.table(
                title: "Projection",
                header: ["Run", "Bytes per checkpoint", "Kept at steady state", "Steady state", "More checkpoints"],
                numeric: [1, 2, 3, 4],
                rows: budget.runs.map { [$0.run, Self.bytes($0.bytesPerCheckpoint), $0.keptAtSteadyState.map(String.init) ?? "unbounded", $0.steadyStateBytes.map(Self.bytes) ?? "unbounded", $0.moreCheckpoints.map(String.init) ?? "no limit"] }
            )
        }
        html += Self.table(
            title: "Checkpoints",
            header: ["Id", "Run", "Step", "Created", "Logical", "Added", "Exclusive", "Shared", ""],
            numeric: [2, 4, 5, 6, 7],
            rows: checkpoints.map { [$0.id.short, $0.run, "\($0.step)", Self.date($0.createdAt), Self.bytes($0.logicalBytes), Self.bytes($0.addedBytes), Self.bytes($0.exclusiveBytes), Self.bytes($0.sharedBytes), $0.pinned ? "pinned" : ""] }
        )
        html += Self.table(title: "Parts", header: ["Part", "Logical", "Stored"], numeric: [1, 2], rows: parts.map { [$0.part, Self.bytes($0.logicalBytes), Self.bytes($0.storedBytes)] })
        if !largestTensors.isEmpty {
            html += Self.table(
                title: "Largest tensors", header: ["Run", "File", "Tensor", "Stored", "Logical"], numeric: [3, 4],
                rows: largestTensors.map { [$0.run, $0.file, $0.tensor, Self.bytes($0.storedBytes), Self.bytes($0.logicalBytes)] }
            )
        }
        if let whatIf {
            html += "<h2>What if: \(Self.escape(whatIf.policy))</h2>\n<p>Would delete \(whatIf.deleted.count) checkpoints"
                + (whatIf.deleted.isEmpty ? "" : " (" + whatIf.deleted.map { Self.escape("\($0.run)@\($0.step)") }.joined(separator: ", ") + ")")
                + " and free \(Self.bytes(whatIf.storedBytesFreed)) of stored chunks, \(Self.bytes(whatIf.diskBytesFreed)) on disk.</p>\n"
        }
        html += """
            <script>
            // Self-check: rasterize the chart's data lines alone and count the pixels they cover.
            window.addEventListener("load", function () {
              var svg = document.getElementById("chart"), lines = svg.cloneNode(false);
              svg.querySelectorAll("polyline").forEach(function (line) { lines.appendChild(line.cloneNode(true)); });
              var image = new Image();
              image.onload = function () {
                var canvas = document.createElement("canvas");
                canvas.width = svg.viewBox.baseVal.width; canvas.height = svg.viewBox.baseVal.height;
                var context = canvas.getContext("2d");
                context.drawImage(image, 0, 0);
                var data = context.getImageData(0, 0, canvas.width, canvas.height).data, inked = 0;
                for (var i = 3; i < data.length; i += 4) { if (data[i] > 0) inked++; }
                document.body.setAttribute("data-chart-pixels", String(inked));
                console.log("ckstore-audit chart pixels: " + inked);
              };
              image.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(new XMLSerializer().serializeToString(lines));
            });
            </script>
            </body>
            </html>

            """
        return html
    }

    /// Stored bytes added over the checkpoints in creation order: one line per run, the store's total,
    /// the budget, and the projection of the total.
    func chartSVG() -> String {
        let width = 960.0, height = 380.0, left = 80.0, right = 24.0, top = 20.0, bottom = 62.0
        let ordered = checkpoints.sorted { ($0.createdAt, $0.run, $0.step) < ($1.createdAt, $1.run, $1.step) }
        let colors = ["#1f6feb", "#d9480f", "#2f9e44", "#9c36b5", "#0b7285", "#e67700", "#c2255c", "#5c940d"]
        let runNames = Array(Set(ordered.map(\.run))).sorted()

        // Cumulative added bytes per run and in total, by position in creation order.
        var total: Int64 = 0
        var perRun = [String: Int64]()
        var totalPoints = [(Double, Int64)]()
        var runPoints = [String: [(Double, Int64)]]()
        for (index, checkpoint) in ordered.enumerated() {
            total += checkpoint.addedBytes
            perRun[checkpoint.run, default: 0] += checkpoint.addedBytes
            totalPoints.append((Double(index + 1), total))
            runPoints[checkpoint.run, default: []].append((Double(index + 1), perRun[checkpoint.run] ?? 0))
        }
        // The projection: further checkpoints at the fastest growing run's rate, up to the budget.
        var projection = [(Double, Int64)]()
        if let budget, let last = totalPoints.last ?? Optional((0, 0)) {
            let growth = budget.runs.filter { $0.moreCheckpoints != nil }.map(\.bytesPerCheckpoint).max()
            let steps = min(max(budget.moreCheckpoints ?? 0, 1), max(ordered.count, 10))
            if let growth {
                projection = [last, (last.0 + Double(steps), last.1 + growth * Int64(steps))]
            } else if let steady = budget.steadyStateBytes {
                projection = [last, (last.0 + Double(max(ordered.count / 2, 5)), steady)]
            }
        }
        let maxX = max(projection.last?.0 ?? 0, totalPoints.last?.0 ?? 0, 1)
        let maxY = Double(max([total, budget?.budgetBytes ?? 0, projection.map(\.1).max() ?? 0].max() ?? 1, 1)) * 1.08
        func x(_ value: Double) -> Double { left + (width - left - right) * value / maxX }
        func y(_ value: Int64) -> Double { top + (height - top - bottom) * (1 - Double(value) / maxY) }
        func path(_ points: [(Double, Int64)]) -> String {
            ([(0, 0)] + points).map { String(format: "%.1f,%.1f", x($0.0), y($0.1)) }.joined(separator: " ")
        }

        var svg = "<svg id=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 \(Int(width)) \(Int(height))\" width=\"100%\" role=\"img\" aria-label=\"Stored bytes over checkpoints\">\n"
        svg += "<rect x=\"0\" y=\"0\" width=\"\(Int(width))\" height=\"\(Int(height))\" fill=\"#ffffff\"/>\n"
        for tick in 0...4 {
            let value = Int64(maxY / 1.08 * Double(tick) / 4)
            svg += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eceff3\"/>", left, y(value), width - right, y(value))
            svg += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%@</text>\n", left - 6, y(value) + 4, Self.bytes(value))
        }
        svg += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#9aa4b2\"/>\n", left, y(0), width - right, y(0))
        svg += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">checkpoints, oldest to newest</text>\n", (left + width - right) / 2, height - bottom + 20)
        if let budget {
            svg += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#b3261e\" stroke-width=\"2\" stroke-dasharray=\"8 5\"/>", left, y(budget.budgetBytes), width - right, y(budget.budgetBytes))
            svg += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" style=\"fill:#b3261e\">budget %@</text>\n", width - right, y(budget.budgetBytes) - 6, Self.bytes(budget.budgetBytes))
        }
        if !projection.isEmpty {
            svg += "<polyline fill=\"none\" stroke=\"#5b6675\" stroke-width=\"2\" stroke-dasharray=\"4 4\" points=\"" + projection.map { String(format: "%.1f,%.1f", x($0.0), y($0.1)) }.joined(separator: " ") + "\"/>\n"
        }
        if runNames.count > 1 {
            svg += "<polyline fill=\"none\" stroke=\"#1d2430\" stroke-width=\"2.5\" points=\"\(path(totalPoints))\"/>\n"
        }
        for (index, name) in runNames.enumerated() {
            svg += "<polyline fill=\"none\" stroke=\"\(colors[index % colors.count])\" stroke-width=\"2\" points=\"\(path(runPoints[name] ?? []))\"/>\n"
        }
        // Legend.
        var legend = runNames.enumerated().map { (Self.escape($1), colors[$0 % colors.count], "") }
        if runNames.count > 1 { legend.insert(("all runs", "#1d2430", ""), at: 0) }
        if !projection.isEmpty { legend.append(("projection", "#5b6675", " stroke-dasharray=\"4 4\"")) }
        // Legend: one row under the axis.
        var position = left
        for entry in legend.prefix(10) {
            let row = height - 12
            svg += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%@\" stroke-width=\"2\"%@/>", position, row - 4, position + 24, row - 4, entry.1, entry.2)
            svg += String(format: "<text x=\"%.1f\" y=\"%.1f\">%@</text>\n", position + 30, row, entry.0)
            position += 30 + Double(entry.0.count) * 7 + 24
        }
        return svg + "</svg>"
    }

    static func bytes(_ value: Int64) -> String { String(describing: ByteCount(value)) }

    static func date(_ seconds: Double) -> String {
        let formatter = DateFormatter()
        formatter.dateFormat = "yyyy-MM-dd HH:mm"
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter.string(from: Date(timeIntervalSince1970: seconds))
    }

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    static func card(_ title: String, _ value: String, _ detail: String = "") -> String {
        "<div class=\"card\"><span class=\"muted\">\(escape(title))</span><b>\(escape(value))</b>\(detail.isEmpty ? "" : "<span class=\"muted\">\(escape(detail))</span>")</div>"
    }

    static func table(title: String, header: [String], numeric: Set<Int>, rows: [[String]]) -> String {
        func cells(_ row: [String], _ tag: String) -> String {
            row.enumerated().map { "<\(tag)\(numeric.contains($0) ? " class=\"n\"" : "")>\(escape($1))</\(tag)>" }.joined()
        }
        return "<h2>\(escape(title))</h2>\n<table>\n<thead><tr>\(cells(header, "th"))</tr></thead>\n<tbody>\n"
            + rows.map { "<tr>\(cells($0, "td"))</tr>" }.joined(separator: "\n") + "\n</tbody>\n</table>\n"
    }
}
