import Foundation
import KernelSupport
import Policy
import Sandbox
import Service
import Telemetry

/// Output paths given on the command line stay inside the working directory.
enum SafePath {
    static func inWorkingDirectory(_ path: String) throws -> String {
        let cwd = FileManager.default.currentDirectoryPath
        let absolute = path.hasPrefix("/") ? path : cwd + "/" + path
        let normalized = (absolute as NSString).standardizingPath
        guard normalized == cwd || normalized.hasPrefix(cwd.hasSuffix("/") ? cwd : cwd + "/") else {
            throw fail(Alcub3Exit.usage, "path '\(path)' leaves the working directory \(cwd)")
        }
        if normalized.split(separator: "/").contains("..") { throw fail(Alcub3Exit.usage, "path '\(path)' contains '..'") }
        return normalized
    }
}

/// `--since` (and `--start-time`, `--end-time`): an ISO 8601 time or an age like 300s, 5m, 2h, 1d.
enum SinceParser {
    static func parse(_ text: String, option: String = "--since") throws -> Int64 {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
        if let unit = text.last, let scale = units[unit], let value = Double(text.dropLast()), value >= 0 {
            return WallClock.nowUnixNanos() - Int64(value * scale * 1e9)
        }
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let date = formatter.date(from: text) ?? ISO8601DateFormatter().date(from: text) {
            return Int64(date.timeIntervalSince1970 * 1e9)
        }
        throw fail(Alcub3Exit.usage, "invalid \(option) '\(text)': use an ISO 8601 time or an age such as 300s, 5m, 2h, 1d")
    }
}

/// One stored event as a readable line. Paths, argv and names in it are the
/// agent's choice: the line is escaped for the terminal (TerminalText).
enum EventLine {
    static func render(_ json: String) -> String { TerminalText.escaped(fields(json)) }

    private static func fields(_ json: String) -> String {
        guard let o = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any] else { return json }
        let time = (o["time_dt"] as? String).map { String($0.dropFirst(11).prefix(15)) } ?? "?"
        let agent = o["agent_id"] as? String ?? "?"
        if let record = o["record"] as? String { return "\(time) \(agent) \(record)" }
        let actor = ((o["actor"] as? [String: Any])?["process"] as? [String: Any])
        let who = "\(actor?["pid"] as? Int ?? 0) \(actor?["name"] as? String ?? "?")"
        var what = "\(o["class_name"] as? String ?? "?"): \(o["activity_name"] as? String ?? "?")"
        if let file = (o["file"] as? [String: Any])?["path"] as? String { what += " \(file)" }
        if let dst = o["dst_endpoint"] as? [String: Any] { what += " \(dst["ip"] ?? dst["path"] ?? ""):\(dst["port"] ?? "")" }
        if let process = o["process"] as? [String: Any], o["class_uid"] as? Int == 1007, let cmd = process["cmd_line"] as? String { what += " \(cmd)" }
        if o["status"] as? String == "Failure" { what += " -> \(o["status_code"] ?? "")" }
        return "\(time) \(agent) \(who) \(what)"
    }
}

/// `sandbox monitor` in table form; rates come from two snapshots.
enum MonitorView {
    static func render(_ s: [String: Any], previous: [String: Any]?) -> String {
        let seconds = previous.map { Double((s["takenNs"] as? Int64 ?? 0) - ($0["takenNs"] as? Int64 ?? 0)) / 1e9 } ?? 0
        func rate(_ now: Double, _ before: Double?) -> String {
            guard let before, seconds > 0 else { return "" }
            return String(format: " (%.1f/s)", (now - before) / seconds)
        }
        let kinds = s["eventsByKind"] as? [String: Int] ?? [:]
        let before = previous?["eventsByKind"] as? [String: Int]
        let events = kinds.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)\(rate(Double($0.value), before?[$0.key].map(Double.init)))" }
        let cpu = (s["cpuUsageNs"] as? Double).map { String(format: "%.2f s", $0 / 1e9) } ?? "n/a"
        let cpuRate = (s["cpuUsageNs"] as? Double).flatMap { now in (previous?["cpuUsageNs"] as? Double).map { String(format: " (%.0f%% of a core)", (now - $0) / 1e9 / max(seconds, 1e-9) * 100) } } ?? ""
        let memory = (s["memoryBytes"] as? Double).map { String(format: "%.1f MiB", $0 / 1_048_576) } ?? "n/a"
        let syscalls = s["syscalls"] as? Double ?? 0
        return """
            \(WallClock.iso8601(unixNanos: WallClock.nowUnixNanos()).prefix(19)) \(s["agentID"] ?? "?") \(s["sandboxID"] ?? "?") \(s["state"] ?? "?")
              cpu \(cpu)\(cpuRate)  memory \(memory)  pids \(s["pids"] ?? 0)
              events \(events.isEmpty ? "none" : events.joined(separator: ", "))
              syscalls \(Int(syscalls))\(rate(syscalls, previous?["syscalls"] as? Double))  kernel drops \(s["kernelDropped"] ?? 0)
              alerts \((s["latestAlerts"] as? [Any])?.count ?? 0)  integrity \(s["integrity"] ?? "?")

            """
    }
}

/// `--seccomp-profile FILE`: the file's text once it has been checked here,
/// so a bad profile is refused (exit 68, naming the place) before anything starts.
enum SeccompProfileFile {
    static func read(_ path: String) throws -> String {
        do {
            let profile = try SeccompProfile(contentsOf: path)
            try profile.checkInitRequirements()
            _ = try SeccompCompiler.compile(profile)
        } catch let error as PolicyError {
            throw fail(Alcub3Exit.invalidPolicy, "seccomp profile refused: \(error)")
        }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw fail(Alcub3Exit.invalidPolicy, "seccomp profile refused: \(path) is not UTF-8 text")
        }
        return text
    }
}

/// The command after `--` of `run`, `sandbox create` and `sandbox exec`. An
/// argument parser's passthrough also catches an option it does not know
/// before `--` (`run --allow-domain x -- true`); that is a usage error naming
/// the option (exit 64), never a command to look up.
enum PassthroughCommand {
    static func argv(_ captured: [String]) throws -> [String] {
        if let first = captured.first, first != "--", first.hasPrefix("-") {
            throw fail(Alcub3Exit.usage, "unknown option '\(first)' (the command goes after --)")
        }
        return captured.first == "--" ? Array(captured.dropFirst()) : captured
    }
}
