import ArgumentParser
import Foundation
import Service
import Telemetry

/// `alcub3 integrity`: signed baselines of a sandbox and validation against them.
struct IntegrityCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "integrity", abstract: "Integrity baselines of sandboxes and validation against them.",
        subcommands: [Baseline.self, Validate.self, DebugValidate.self])

    struct Baseline: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Record a signed baseline of a sandbox's files (content hashes, metadata, a Merkle root).")
        @Option(name: .customLong("agent-id")) var agentID: String
        @Option(help: "Write the baseline to this file (inside the working directory); default: print it.") var output: String?
        @Flag(help: "Replace the sandbox's current baseline (recorded in the audit log).") var update = false
        @Option(help: "table or json.") var format: OutputFormat = .table

        func run() throws {
            let path = try output.map(SafePath.inWorkingDirectory)
            var request = ServiceRequest(op: .baseline)
            request.agentID = agentID
            request.update = update
            let json = try ServiceAccess.decode(String.self, try ServiceAccess.call(request))
            guard let path else {
                Output.out(json + "\n")
                return
            }
            guard FileManager.default.createFile(atPath: path, contents: Data((json + "\n").utf8), attributes: [.posixPermissions: 0o600]) else {
                throw fail(ExitCodes.kernelRefused, "cannot write \(output ?? path)")
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

    /// Shared with `sandbox validate`.
    static func validate(agentID: String, baseline: String, format: OutputFormat, trace: Bool = false) throws {
        var request = ServiceRequest(op: .validate)
        request.agentID = agentID
        if FileManager.default.fileExists(atPath: baseline) {
            guard let data = FileManager.default.contents(atPath: baseline), data.count <= 256 << 20 else {
                throw fail(ExitCodes.invalidPolicy, "cannot read the baseline \(baseline) (unreadable, or over 256 MiB)")
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
                    Output.out("    \(finding.change.rawValue) \(finding.path)"
                               + (finding.old.map { " was \($0)" } ?? "") + (finding.new.map { " now \($0)" } ?? "")
                               + " [\(finding.foundBy)\(finding.cause.map { ": \($0)" } ?? "")]\n")
                }
            }
        }
        if !report.valid { throw ExitCode(1) }
    }
}
