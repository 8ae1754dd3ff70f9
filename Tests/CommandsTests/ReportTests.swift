import Foundation
import Service
import Testing
@testable import Commands

/// `integrity report`: one sandbox's events, alerts, integrity findings and
/// audit entries as a self-contained HTML page (checked in headless Chromium)
/// and as JSON.
@Suite(.serialized, .enabled(if: isRoot, "needs root: BPF, cgroups and namespaces"))
struct ReportTests {
    /// Where the last rendered report and its screenshot are kept for a person to look at.
    static let keep = packageRoot.appendingPathComponent(".build/report-test").path

    @Test func aReportOfASandboxThatWritesRunsAndAttemptsAnEscape() throws {
        let service = try TestService(configuration: TestService.quickIntegrityChecks)
        defer { service.tearDown() }
        try service.start()
        // Files (one named like markup: the sandbox chooses its names), a
        // subprocess, a connection, an escape attempt, then a change the
        // service's validation finds after the baseline below. (The first
        // sleep keeps the sandbox's set-up apart from the actions in the report.)
        let script = "sleep 0.3; mkdir -p src '<script>x<' && echo one > src/a.txt && echo hi > '<script>x</script>.txt' && "
            + "/bin/sh -c 'echo sub > sub.txt' && "
            + "/usr/bin/python3 -c 'import socket; s=socket.socket(); s.settimeout(1); s.connect_ex((\"127.0.0.1\", 9))'; "
            + "\(EscapeSuiteTests.attacker) mount; sleep 1.5; echo changed > src/a.txt; sleep 60"
        #expect(try service.run(["sandbox", "create", "--agent-id", "rep-1", "--", "/bin/sh", "-c", script]).code == 0)
        usleep(1_000_000)
        #expect(try service.run(["integrity", "baseline", "--agent-id", "rep-1", "--output", "b.json"], in: service.root).code == 0)
        usleep(3_500_000)  // the change at about 2 s, then a validation cycle (1 s)

        let made = try service.run(["integrity", "report", "--agent-id", "rep-1", "--output", "report.html"], in: service.root)
        #expect(made.code == 0 && made.stdout.contains("written to report.html and report.json"), "\(made.stdout) \(made.stderr)")
        let html = try String(contentsOfFile: service.root + "/report.html", encoding: .utf8)

        for section in ["summary", "timeline", "alerts", "integrity", "anomaly", "processes", "files", "destinations", "audit"] {
            #expect(html.contains("id=\"\(section)\""), "no \(section) section")
        }
        #expect(html.contains("<td>mount</td>"), "no mount alert in the table")
        #expect(html.contains("/workspace/src/a.txt"), "no written file")
        #expect(html.contains("<td>content</td>"), "no integrity finding for the changed file")
        #expect(html.contains("127.0.0.1:9"), "no destination")
        #expect(html.contains("sandbox.create") && html.contains("baseline.create"), "audit entries missing")
        #expect(html.contains("still learning"), "the anomaly section must say why it has no scores")
        // Self-contained and inert: no script, no remote resource, balanced elements.
        let lower = html.lowercased()
        for forbidden in ["<script", "http://", "https://", "src=", "<link", "@import", "url("] {
            #expect(!lower.contains(forbidden), "the report contains \(forbidden)")
        }
        #expect(html.contains("&lt;script&gt;x&lt;/script&gt;.txt"), "the markup-like file name is not shown escaped")
        for element in ["svg", "table", "section", "tr"] {
            let opened = html.components(separatedBy: "<\(element)").count - 1
            #expect(opened > 0 && opened == html.components(separatedBy: "</\(element)>").count - 1, "unbalanced <\(element)>")
        }

        // The same data as JSON, beside the HTML and on stdout.
        let data = try Data(contentsOf: URL(fileURLWithPath: service.root + "/report.json"))
        let report = try JSONDecoder().decode(SandboxReport.self, from: data)
        #expect(report.agentID == "rep-1" && report.format == SandboxReport.formatName)
        #expect(report.alerts.contains { $0.technique == "mount" && $0.refusedBy != nil }, "\(report.alerts.map(\.technique))")
        #expect(report.integrityFindings.contains { $0.change == "content" && $0.path == "/workspace/src/a.txt" && $0.old != nil })
        #expect(report.topFiles.contains { $0.name == "/workspace/src/a.txt" }, "\(report.topFiles.map(\.name))")
        #expect(report.topProcesses.contains { $0.name == "python3" } && report.topProcesses.contains { $0.name == "alcub3-escape" }, "\(report.topProcesses.map(\.name))")
        #expect(report.topDestinations.contains { $0.name == "127.0.0.1:9" }, "\(report.topDestinations.map(\.name))")
        #expect(report.timeline.buckets.map(\.alert).reduce(0, +) >= 2, "alerts missing from the timeline")
        #expect(!report.anomalyScores.available && report.anomalyScores.points.isEmpty)
        let printed = try service.run(["integrity", "report", "--agent-id", "rep-1", "--format", "json"])
        #expect(printed.code == 0)
        #expect((try? JSONDecoder().decode(SandboxReport.self, from: Data(printed.stdout.utf8)))?.sandboxID == report.sandboxID)

        // A range before the sandbox lived: an empty report, not years of empty minutes.
        let early = try service.run(["integrity", "report", "--agent-id", "rep-1", "--format", "json",
                                     "--start-time", "2000-01-01T00:00:00Z", "--end-time", "2000-01-01T01:00:00Z"])
        let empty = try JSONDecoder().decode(SandboxReport.self, from: Data(early.stdout.utf8))
        #expect(empty.eventsRead == 0 && empty.alerts.isEmpty && empty.timeline.buckets.count == 1, "\(early.stderr)")
        // Bad input: clear errors with their exit codes.
        let backwards = try service.run(["integrity", "report", "--agent-id", "rep-1", "--start-time", "1m", "--end-time", "2h"])
        #expect(backwards.code == 64 && backwards.stderr.contains("after the end time"), "\(backwards.stderr)")
        let nonsense = try service.run(["integrity", "report", "--agent-id", "rep-1", "--start-time", "yesterday"])
        #expect(nonsense.code == 64 && nonsense.stderr.contains("invalid --start-time"), "\(nonsense.stderr)")
        let outside = try service.run(["integrity", "report", "--agent-id", "rep-1", "--output", "../r.html"], in: service.root)
        #expect(outside.code == 64 && outside.stderr.contains("leaves the working directory"))
        #expect(try service.run(["integrity", "report", "--agent-id", "nobody"]).code == 72)

        try FileManager.default.createDirectory(atPath: Self.keep, withIntermediateDirectories: true)
        try? FileManager.default.removeItem(atPath: Self.keep + "/report.html")
        try FileManager.default.copyItem(atPath: service.root + "/report.html", toPath: Self.keep + "/report.html")
        try Self.screenshot(html: Self.keep + "/report.html", png: Self.keep + "/report.png")
        #expect(try service.run(["sandbox", "terminate", "--agent-id", "rep-1", "--force"]).code == 0)
    }

    /// Renders `html` in headless Chromium (Debian's chromium, from `make deps`)
    /// and checks the screenshot: present, not trivially small, not one colour.
    static func screenshot(html: String, png: String) throws {
        let chromium = "/usr/bin/chromium"
        try #require(FileManager.default.isExecutableFile(atPath: chromium),
                     "Chromium is not installed: `make deps` installs Debian's chromium package")
        try? FileManager.default.removeItem(atPath: png)
        let profile = NSTemporaryDirectory() + "alcub3-chromium-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: profile) }
        let browser = Process()
        browser.executableURL = URL(fileURLWithPath: chromium)
        // --no-sandbox: Chromium refuses to run as root with its own sandbox.
        browser.arguments = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--user-data-dir=\(profile)",
                             "--screenshot=\(png)", "--window-size=1280,2000", "file://\(html)"]
        let log = Pipe()
        browser.standardOutput = log
        browser.standardError = log
        browser.standardInput = FileHandle.nullDevice
        try browser.run()
        let deadline = Date().addingTimeInterval(90)
        while browser.isRunning && Date() < deadline { usleep(100_000) }
        if browser.isRunning { browser.terminate() }
        let output = String(decoding: log.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        browser.waitUntilExit()
        let size = ((try? FileManager.default.attributesOfItem(atPath: png))?[.size] as? Int) ?? 0
        try #require(size > 0, "Chromium wrote no screenshot (exit \(browser.terminationStatus)): \(output.suffix(1500))")
        #expect(size > 30_000, "the screenshot is \(size) bytes: an empty page?")
        // Distinct byte values in the inflated image data: a one-colour page
        // filters down to a handful; text and charts give dozens.
        let count = Process()
        count.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        count.arguments = ["-c", """
            import sys, struct, zlib
            d = open(sys.argv[1], 'rb').read(); i = 8; idat = b''
            while i < len(d):
                n, = struct.unpack('>I', d[i:i+4]); kind = d[i+4:i+8]
                if kind == b'IDAT': idat += d[i+8:i+8+n]
                i += 12 + n
            print(len(set(zlib.decompress(idat))))
            """, png]
        let counted = Pipe()
        count.standardOutput = counted
        try count.run()
        let distinct = Int(String(decoding: counted.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        count.waitUntilExit()
        #expect(distinct > 32, "the screenshot looks like one colour (\(distinct) distinct byte values)")
    }
}

/// The renderer alone, on a report whose every text is hostile (no service needed).
@Suite struct ReportRendererTests {
    @Test func everyTextIsEscapedAndTheChartScales() throws {
        let evil = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>&amp;\u{1}"
        let bucket: (Int) -> [String: Any] = { i in
            ["start": "2026-01-01T00:\(String(format: "%02d", i % 60)):00.000000000Z", "process": i % 7, "file": i * 3,
             "network": i % 2, "alert": i == 150 ? 1 : 0]
        }
        let ranked: [String: Any] = ["name": evil, "count": 3, "failures": 1]
        let object: [String: Any] = [
            "format": SandboxReport.formatName, "generatedAt": "2026-01-01T05:00:00.000000000Z", "agentID": "agent-1",
            "sandboxID": "sb-1", "classification": evil, "isolation": "process", "state": "running", "command": [evil],
            "createdAt": "2026-01-01T00:00:00.000000000Z", "policy": [["name": evil, "value": evil]],
            "start": "2026-01-01T00:00:00.000000000Z", "end": "2026-01-01T05:00:00.000000000Z",
            "eventsByKind": [evil: 1], "eventsRead": 1, "eventsTruncated": false,
            "timeline": ["bucketSeconds": 60, "end": "2026-01-01T05:00:00.000000000Z", "buckets": (0..<300).map(bucket)],
            "alerts": [["id": 1, "time": "2026-01-01T02:30:00.000000000Z", "technique": evil, "severityID": 4, "message": evil,
                        "refusedBy": evil, "process": evil]],
            "alertsOmitted": 0,
            "integrityFindings": [["alertID": 1, "time": "2026-01-01T02:30:00.000000000Z", "change": evil, "path": evil,
                                   "old": evil, "new": evil, "foundBy": evil, "cause": evil]],
            "anomalyScores": ["available": false, "note": SandboxReport.anomalyNote, "points": []],
            "topProcesses": [ranked], "topFiles": [ranked], "topDestinations": [ranked],
            "audit": [["seq": 1, "time": "2026-01-01T00:00:00.000000000Z", "actor": evil, "action": evil, "details": evil, "hash": evil]],
            "auditOmitted": 0,
        ]
        let report = try JSONDecoder().decode(SandboxReport.self, from: JSONSerialization.data(withJSONObject: object))
        let html = ReportRenderer.html(report, jsonName: evil)
        for raw in ["<script", "<img", "onerror=alert(2)>", "\u{1}"] {
            #expect(!html.contains(raw), "unescaped: \(raw)")
        }
        #expect(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&gt;&lt;img src=x onerror=alert(2)&gt;&amp;amp;\\x01"))
        // 300 buckets: a bar per non-empty bucket and kind (file: 299, process: 257, network: 150, alert: 1).
        let bars = html.components(separatedBy: "<rect class=").count - 1
        #expect(bars == 707)
        try FileManager.default.createDirectory(atPath: ReportTests.keep, withIntermediateDirectories: true)
        try html.write(toFile: ReportTests.keep + "/synthetic.html", atomically: true, encoding: .utf8)
    }
}
