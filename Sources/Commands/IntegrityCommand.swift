import ArgumentParser
import Foundation
import KernelSupport
import Service
import Store
import Telemetry

/// `alcub3 integrity`: signed baselines of a sandbox and validation against them.
struct IntegrityCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "integrity", abstract: "Integrity baselines of sandboxes and validation against them.",
        subcommands: [Baseline.self, Validate.self, DebugValidate.self, Report.self, MonitorBehavior.self, DebugBehavior.self,
                      EvaluateBehavior.self])

    struct Baseline: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Record a signed baseline of a sandbox's files (content hashes, metadata, a Merkle root).")
        @Option(name: .customLong("agent-id"), help: "The sandbox's agent id (with --list: only its baselines).") var agentID: String?
        @Option(help: "Write the baseline to this file (inside the working directory); default: print it.") var output: String?
        @Flag(help: "Replace the sandbox's current baseline (recorded in the audit log).") var update = false
        @Flag(help: "List the stored baselines (ids, sandbox, time, size) instead of making one.") var list = false
        @Option(help: "table or json.") var format: OutputFormat = .table

        func run() throws {
            if list {
                var request = ServiceRequest(op: .baseline)
                request.agentID = agentID
                request.list = true
                let result = try ServiceAccess.call(request)
                if format == .json { ServiceAccess.printJSON(result); return }
                for row in try ServiceAccess.decode([BaselineSummary].self, result) {
                    Output.out("\(row.id)  agent \(row.agentID)  \(WallClock.iso8601(unixNanos: row.createdNs))  \(row.bytes) bytes\n")
                }
                return
            }
            guard let agentID else { throw fail(Alcub3Exit.usage, "give --agent-id (or --list)") }
            let path = try output.map(SafePath.inWorkingDirectory)
            var request = ServiceRequest(op: .baseline)
            request.agentID = agentID
            request.update = update
            var progressShown = false
            let json = try ServiceAccess.decode(String.self, try ServiceAccess.call(request) { message in
                // Progress on long trees, on stderr so the output stays the baseline or its summary.
                if message.type == .step, format == .table, let text = message.message {
                    Output.err("\r" + text)
                    progressShown = true
                }
            })
            if progressShown { Output.err("\n") }
            guard let path else {
                Output.out(json + "\n")
                return
            }
            guard FileManager.default.createFile(atPath: path, contents: Data((json + "\n").utf8), attributes: [.posixPermissions: 0o600]) else {
                throw fail(Alcub3Exit.kernelRefused, "cannot write \(output ?? path)")
            }
            let summary = (try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])?["baseline"] as? [String: Any]
            if format == .json {
                Output.out(OCSFEncoder.jsonLine(["baseline": summary?["id"] ?? "", "file": path,
                                                 "entries": (summary?["entries"] as? [Any])?.count ?? 0,
                                                 "root_hash": summary?["rootHash"] ?? ""]) + "\n")
            } else {
                Output.out("baseline \(summary?["id"] ?? "?") of \(agentID): \((summary?["entries"] as? [Any])?.count ?? 0) entries, "
                           + "root \(summary?["rootHash"] ?? "?"), written to \(output ?? path)\n")
            }
        }
    }

    struct Validate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check a sandbox against a baseline; exit 0 when valid, 1 when anything changed.")
        @Option(name: .customLong("agent-id")) var agentID: String
        @Option(help: "A baseline file, or the id of a stored baseline.") var baseline: String
        @Option(help: "table or json.") var format: OutputFormat = .table

        func run() throws {
            try IntegrityCommand.validate(agentID: agentID, baseline: baseline, format: format)
        }
    }

    struct DebugValidate: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "debug-validate", abstract: "Validate with each step of the cycle and its time.")
        @Option(name: .customLong("agent-id")) var agentID: String
        @Option(help: "A baseline file, or the id of a stored baseline.") var baseline: String
        @Flag(help: "Print every step (always on; accepted for the published command line).") var trace = false
        @Option(help: "table or json.") var format: OutputFormat = .table

        func run() throws {
            try IntegrityCommand.validate(agentID: agentID, baseline: baseline, format: format, trace: true)
        }
    }

    struct Report: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "A self-contained HTML report of a sandbox over a time range, and the same data as JSON.",
            discussion: "Timeline of events and alerts, Detection Findings, integrity findings, top processes, files written and "
                + "destinations, the sandbox's audit log entries. With --output F.html the JSON goes beside it (F.json).")
        @Option(name: .customLong("agent-id")) var agentID: String
        @Option(name: .customLong("start-time"), help: "ISO 8601, or an age such as 5m, 2h (default: the sandbox's start).")
        var startTime: String?
        @Option(name: .customLong("end-time"), help: "ISO 8601, or an age such as 5m, 2h (default: the sandbox's end, or now).")
        var endTime: String?
        @Option(help: "Write the HTML here and the JSON beside it (inside the working directory); default: print a summary.")
        var output: String?
        @Option(help: "table or json (json prints the report's data).") var format: OutputFormat = .table

        func run() throws {
            let htmlPath = try output.map(SafePath.inWorkingDirectory)
            let jsonPath = try htmlPath.map { try SafePath.inWorkingDirectory(ReportRenderer.jsonPath(besides: $0)) }
            var request = ServiceRequest(op: .report)
            request.agentID = agentID
            request.sinceNs = try startTime.map { try SinceParser.parse($0, option: "--start-time") }
            request.untilNs = try endTime.map { try SinceParser.parse($0, option: "--end-time") }
            let json = try ServiceAccess.call(request)
            let report = try ServiceAccess.decode(SandboxReport.self, json)
            if let htmlPath, let jsonPath {
                let jsonName = (jsonPath as NSString).lastPathComponent
                for (path, text) in [(htmlPath, ReportRenderer.html(report, jsonName: jsonName)), (jsonPath, ServiceAccess.prettyJSON(json) + "\n")] {
                    guard FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600]) else {
                        throw fail(Alcub3Exit.kernelRefused, "cannot write \(path)")
                    }
                }
            }
            if format == .json {
                ServiceAccess.printJSON(json)
            } else if let output {
                Output.out("report of \(agentID) (\(report.sandboxID)): \(report.eventsRead) events, \(report.alerts.count + report.alertsOmitted) alerts, "
                           + "written to \(output) and \(ReportRenderer.jsonPath(besides: output))\n")
            } else {
                Output.out(ReportRenderer.text(report))
            }
        }
    }

    /// Shared with `sandbox validate`.
    static func validate(agentID: String, baseline: String, format: OutputFormat, trace: Bool = false) throws {
        var request = ServiceRequest(op: .validate)
        request.agentID = agentID
        if FileManager.default.fileExists(atPath: baseline) {
            guard let data = FileManager.default.contents(atPath: baseline), data.count <= 256 << 20 else {
                throw fail(Alcub3Exit.invalidPolicy, "cannot read the baseline \(baseline) (unreadable, or over 256 MiB)")
            }
            request.baselineText = String(decoding: data, as: UTF8.self)
        } else {
            request.baselineText = baseline
        }
        request.baselineSource = baseline
        let result = try ServiceAccess.call(request)
        let report = try ServiceAccess.decode(ValidationReport.self, result)
        if format == .json {
            ServiceAccess.printJSON(result)
        } else {
            if trace {
                for step in report.steps { Output.out(String(format: "%8d us  %@\n", step.microseconds, step.name as NSString)) }
            }
            Output.out("\(report.valid ? "VALID" : "VIOLATIONS")  agent \(report.agentID), sandbox \(report.sandboxID), "
                       + "baseline \(report.baselineID), confidence \(report.confidence), \(report.microseconds) us\n")
            for dimension in report.dimensions {
                Output.out("  \(dimension.name): \(dimension.status) (\(dimension.checkedEntries) entries checked)\n")
                for finding in dimension.findings {
                    // The path (and a link target) is the agent's choice: escaped for the terminal.
                    Output.out(TerminalText.escaped("    \(finding.change.rawValue) \(finding.path)"
                               + (finding.old.map { " was \($0)" } ?? "") + (finding.new.map { " now \($0)" } ?? "")
                               + " [\(finding.foundBy)\(finding.cause.map { ": \($0)" } ?? "")]") + "\n")
                }
            }
        }
        if !report.valid { throw ExitCode(1) }
    }
}
