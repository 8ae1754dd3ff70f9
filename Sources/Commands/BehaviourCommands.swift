import Analysis
import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import KernelSupport
import Service

extension IntegrityCommand {
    /// The live behaviour view: what a responder watches while an agent runs.
    struct MonitorBehavior: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "monitor-behavior",
            abstract: "A live view of one sandbox's behaviour: event rates, top syscalls, the anomaly score over time, new destinations and files, alerts.",
            discussion: "Refreshes in place when stdout is a terminal; otherwise (or with --format json) prints one JSON object per view.")
        @Option(name: .customLong("agent-id")) var agentID: String
        @Option(help: "low, medium or high: judge the windows at this sensitivity (default: the sandbox's).") var sensitivity: String?
        @Option(help: "Seconds between views.") var interval: Double = 1
        @Option(help: "Stop after this many views (default: until the sandbox ends or Ctrl-C).") var count: Int?
        @Option(help: "table or json.") var format: OutputFormat = .table

        func run() throws {
            let chosen = try sensitivity.map(BehaviourView.sensitivity)
            guard interval >= 0.1, interval <= 3600 else { throw fail(Alcub3Exit.usage, "--interval must be from 0.1 to 3600 seconds") }
            let inPlace = format == .table && isatty(STDOUT_FILENO) == 1
            var view = BehaviourView(sensitivity: chosen)
            var shown = 0
            while count.map({ shown < $0 }) ?? true {
                let snapshot: BehavioralAnalyzer.Snapshot
                do {
                    snapshot = try BehaviourView.fetch(agentID: agentID, detailed: false)
                } catch let error as Failure where shown > 0 && error.code == Alcub3Exit.notFound {
                    Output.err("alcub3: the sandbox of '\(agentID)' ended\n")
                    return
                }
                let frame = view.update(snapshot, now: Date().timeIntervalSince1970)
                if format == .json || !inPlace {
                    Output.out(OCSFEncoderLine.line(frame.json) + "\n")
                } else {
                    Output.out("\u{1b}[H\u{1b}[2J" + frame.text)
                }
                shown += 1
                if count.map({ shown >= $0 }) ?? false { break }
                usleep(UInt32(interval * 1e6))
            }
        }
    }

    /// The model's internals for one sandbox.
    struct DebugBehavior: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "debug-behavior",
            abstract: "The behavioural model of one sandbox: profile size, thresholds, common sequences, the last scores with their reasons.")
        @Option(name: .customLong("agent-id")) var agentID: String
        @Flag(help: "Also the profile's most common syscall sequences and every recent window.") var detailed = false
        @Option(help: "table or json.") var format: OutputFormat = .table

        func run() throws {
            let snapshot = try BehaviourView.fetch(agentID: agentID, detailed: detailed)
            if format == .json {
                Output.out(try BehaviourView.json(snapshot) + "\n")
                return
            }
            Output.out(BehaviourView.debugText(snapshot, detailed: detailed))
        }
    }
}

/// Fetches and renders behaviour snapshots from the service.
struct BehaviourView {
    let sensitivity: Sensitivity?
    private var previous: (time: Double, syscalls: UInt64, observations: [String: UInt64])?
    private var seenAlerts: Set<Int> = []

    init(sensitivity: Sensitivity?) { self.sensitivity = sensitivity }

    static func sensitivity(_ text: String) throws -> Sensitivity {
        guard let value = Sensitivity(rawValue: text.lowercased()) else {
            throw fail(Alcub3Exit.usage, "unknown sensitivity '\(RunCommand.printable(text))' (valid: low, medium, high)")
        }
        return value
    }

    static func fetch(agentID: String, detailed: Bool) throws -> BehavioralAnalyzer.Snapshot {
        var request = ServiceRequest(op: .behaviour)
        request.agentID = agentID
        request.verbose = detailed
        let json = try ServiceAccess.call(request, autoStart: false)
        do {
            return try JSONDecoder().decode(BehavioralAnalyzer.Snapshot.self, from: Data(json.utf8))
        } catch {
            throw fail(Alcub3Exit.internalError, "the service's behaviour view could not be read: \(error)")
        }
    }

    static func json(_ value: some Encodable) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    struct Frame {
        var text: String
        var json: [String: Any]
    }

    /// One view; rates are per second since the previous view.
    mutating func update(_ s: BehavioralAnalyzer.Snapshot, now: Double) -> Frame {
        let chosen = sensitivity ?? s.sensitivity
        let judged = s.windows.map { window -> (BehaviourWindow, anomaly: Double, alert: Bool) in
            let verdict = BehavioralAnalyzer.judge(window, calibration: s.profile?.calibration, sensitivity: chosen)
            return (window, verdict.anomaly, verdict.alert)
        }
        var rates: [String: Double] = [:]
        if let previous, now > previous.time {
            let seconds = now - previous.time
            rates["syscall"] = Double(s.syscalls &- previous.syscalls) / seconds
            for (kind, count) in s.observations { rates[kind] = Double(count &- (previous.observations[kind] ?? 0)) / seconds }
        }
        previous = (now, s.syscalls, s.observations)
        let newAlerts = judged.filter { $0.alert && !seenAlerts.contains($0.0.index) }
        for alert in newAlerts { seenAlerts.insert(alert.0.index) }
        let destinations = s.windows.flatMap(\.indicators).filter { $0.kind == .newDestination }.map(\.detail)
        let files = s.windows.flatMap(\.indicators).filter { [.credentialRead, .writeOutsideWorkspace, .chmoddedExec].contains($0.kind) }
            .map(\.detail)
        let top = s.topSyscalls.sorted { $0.value > $1.value }

        var lines: [String] = []
        let phase = s.phase == "learning" ? "learning (\(Int(s.learningRemainingSeconds ?? 0)) s left)" : "scoring"
        lines.append("alcub3 monitor-behavior  agent \(s.agentID)  \(phase)  sensitivity \(chosen.rawValue)  "
                     + ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: now)))
        lines.append("rates/s    " + (rates.isEmpty ? "(next view)" : rates.sorted { $0.key < $1.key }
            .map { "\($0.key) \(String(format: $0.value >= 100 ? "%.0f" : "%.1f", $0.value))" }.joined(separator: "  ")))
        lines.append("top calls  " + top.prefix(8).map { "\($0.key) \($0.value)" }.joined(separator: "  "))
        let scores = judged.map(\.anomaly)
        lines.append("anomaly    " + Self.sparkline(scores.suffix(60)) + (scores.last.map { String(format: "  now %.2f", $0) } ?? "  (no window scored yet)")
                     + (s.windows.last.map { String(format: "  risk %.2f", $0.risk) } ?? ""))
        lines.append("new dest   " + (destinations.isEmpty ? "-" : destinations.suffix(5).joined(separator: ", ")))
        lines.append("new files  " + (files.isEmpty ? "-" : files.suffix(5).joined(separator: ", ")))
        lines.append("alerts")
        for (window, anomaly, _) in judged.filter(\.alert).suffix(8) {
            let time = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: window.end))
            lines.append("  \(time) window \(window.index) anomaly \(String(format: "%.2f", anomaly)) risk \(String(format: "%.2f", window.risk)) [\(window.maestroLayer)]: "
                         + window.reasons.prefix(3).joined(separator: "; "))
        }
        let json: [String: Any] = [
            "time_dt": ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: now)), "agent_id": s.agentID, "phase": s.phase,
            "sensitivity": chosen.rawValue, "rates": rates, "top_syscalls": Dictionary(uniqueKeysWithValues: top.prefix(8).map { ($0.key, $0.value) }),
            "anomaly": Array(scores.suffix(60)), "risk": s.windows.last?.risk ?? 0, "new_destinations": destinations, "new_files": files,
            "alerts": newAlerts.map { ["window": $0.0.index, "anomaly": $0.anomaly, "risk": $0.0.risk, "reasons": $0.0.reasons,
                                       "maestro_layer": $0.0.maestroLayer] as [String: Any] },
        ]
        // Destinations, files and reasons are the agent's choice: each line escaped for the terminal.
        return Frame(text: lines.map(TerminalText.escaped).joined(separator: "\n") + "\n", json: json)
    }

    static func sparkline(_ values: ArraySlice<Double>) -> String {
        let bars = Array("▁▂▃▄▅▆▇█")
        return String(values.map { bars[min(bars.count - 1, max(0, Int(($0 * Double(bars.count)).rounded(.down))))] })
    }

    static func debugText(_ s: BehavioralAnalyzer.Snapshot, detailed: Bool) -> String {
        var lines = ["agent \(s.agentID): \(s.phase)" + (s.learningRemainingSeconds.map { ", \(Int($0)) s of learning left" } ?? "")]
        if let p = s.profile {
            lines.append("profile: learned \(p.learnedAt) over \(Int(p.observedSeconds)) s; \(p.trainedSyscalls) syscalls, "
                         + "\(p.sequences) sequences (\(p.modelBytes / 1024) KiB); \(p.programs) programs, \(p.destinations) destinations, "
                         + "\(p.reads) files read; peak CPU \(String(format: "%.2f", p.peakCores)) cores")
            if let c = p.calibration {
                let thresholds = Sensitivity.allCases.map { "\($0.rawValue) \(String(format: "%.2f", c.threshold(for: $0)))" }
                lines.append(String(format: "calibration: %d held-out scores, p99 %.2f, p99.9 %.2f, max %.2f bits per call", c.samples, c.p99, c.p999, c.max))
                lines.append("sequence thresholds: " + thresholds.joined(separator: ", ") + " (in use: \(s.sensitivity.rawValue))")
            } else {
                lines.append("calibration: none (too little was learned): sequences alone never alert")
            }
            if !p.commonSequences.isEmpty { lines.append("common sequences: " + p.commonSequences.joined(separator: ", ")) }
        }
        lines.append("risk thresholds: " + Sensitivity.allCases.map { "\($0.rawValue) \(BehavioralAnalyzer.riskThreshold($0))" }.joined(separator: ", ")
                     + "; indicator weights: " + RiskIndicator.Kind.allCases.map { "\($0.rawValue) \($0.weight)" }.joined(separator: ", "))
        lines.append("top syscalls: " + s.topSyscalls.sorted { $0.value > $1.value }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        for window in s.windows.suffix(detailed ? 120 : 10) {
            lines.append(String(format: "window %d: %llu syscalls, peak %.2f bits (threshold %.2f), anomaly %.2f, risk %.2f%@",
                                window.index, window.syscalls, window.peak, window.threshold, window.anomaly, window.risk, window.alert ? ", ALERT" : ""))
            for reason in window.reasons.prefix(detailed ? 20 : 3) { lines.append("  " + reason) }
            if detailed, !window.rareSequences.isEmpty { lines.append("  rare: " + window.rareSequences.joined(separator: ", ")) }
        }
        return lines.map(TerminalText.escaped).joined(separator: "\n") + "\n"
    }
}

/// One JSON line with sorted keys (the renderer's form for live views).
enum OCSFEncoderLine {
    static func line(_ object: [String: Any]) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }
}
