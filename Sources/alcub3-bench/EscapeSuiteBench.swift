import Foundation
import KernelSupport
import Sandbox
import Telemetry

/// The escape suite side by side: escape/alcub3-escape attempts every
/// technique inside `alcub3 run` (the default policy; the memory hog in a run
/// of its own with a 128 MB limit, as Tests/CommandsTests/EscapeSuiteTests
/// does) and inside bubblewrap with typical options. bubblewrap limits no
/// resources and, run by root, leaves /proc/sys writable, so its run is held
/// in a cgroup made for it (pids 500, memory 256 MiB) and its disk filler
/// writes to bubblewrap's /tmp, a tmpfs charged to that memory limit.
struct EscapeSuiteBench {
    let attacker: String
    let alcub3: String
    let layout: CgroupLayout

    struct Attempt {
        let refused: Bool
        let errno: String
        let detail: String
    }

    /// A Detection Finding of `alcub3 run`, for one technique.
    struct Finding {
        let latencyNanos: Int64
        let refusedBy: String
        let title: String
        let mitre: String?
    }

    struct RunOutput {
        var attempts: [String: Attempt] = [:]
        var findings: [String: [Finding]] = [:]
    }

    static let bubblewrapLimits = ResourceLimits(cpuCores: 2, memoryBytes: 256 << 20, pids: 500)
    static let bubblewrapOptions = ["--unshare-all", "--die-with-parent", "--cap-drop", "ALL", "--ro-bind", "/", "/",
                                    "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    static let resourceTechniques: Set<String> = ["fork-bomb", "memory-hog", "disk-filler"]

    func run() throws -> (summary: String, table: String) {
        let techniques = try listTechniques()
        var alcub3 = try alcub3Run(techniques.filter { $0 != "memory-hog" }, memoryLimit: nil)
        let hog = try alcub3Run(["memory-hog"], memoryLimit: "128MB")
        alcub3.attempts.merge(hog.attempts) { a, _ in a }
        alcub3.findings.merge(hog.findings) { $0 + $1 }
        let bubblewrap = try bubblewrapRun()
        return render(techniques, alcub3: alcub3, bubblewrap: bubblewrap)
    }

    private func listTechniques() throws -> [String] {
        let (out, _, _) = try capture(attacker, ["list"], in: nil)
        return out.split(separator: "\n").map(String.init)
    }

    /// Runs `executable`; returns its standard output, the end of its
    /// standard error (kept in a file: a pipe could fill while stdout is read)
    /// and its exit status.
    private func capture(_ executable: String, _ arguments: [String], in directory: String?) throws -> (String, String, Int32) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        let errPath = NSTemporaryDirectory() + "alcub3-bench-stderr-" + UUID().uuidString
        let errFile = try OwnedDescriptor(path: errPath, flags: O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC)
        defer { try? FileManager.default.removeItem(atPath: errPath) }
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle(fileDescriptor: errFile.raw, closeOnDealloc: false)
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let err = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
        withExtendedLifetime(errFile) {}
        return (String(decoding: data, as: UTF8.self), String(err.suffix(500)), process.terminationStatus)
    }

    private func alcub3Run(_ techniques: [String], memoryLimit: String?) throws -> RunOutput {
        let dir = NSTemporaryDirectory() + "alcub3-bench-escape-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var arguments = ["run", "--format", "json"]
        if let memoryLimit {
            try "sandbox_configuration:\n  default_policies:\n    UNCLASSIFIED: {memory_limit: \"\(memoryLimit)\"}\n"
                .write(toFile: dir + "/limits.yaml", atomically: true, encoding: .utf8)
            arguments += ["--policy-file", "limits.yaml"]
        }
        // No --workspace: the disk filler writes to the sandbox's private /tmp, a
        // size-capped tmpfs (the working directory is the host's and has no cap).
        arguments += ["--", attacker, "--host-pid", String(getpid())] + techniques
        let (out, err, code) = try capture(alcub3, arguments, in: dir)
        log("escape suite: alcub3 run of \(techniques.count) techniques exited \(code)" + (code == 0 ? "" : ": \(err)"))
        var output = RunOutput()
        for object in Self.jsonLines(out) {
            if let technique = object["technique"] as? String {
                output.attempts[technique] = Self.attempt(object)
            } else if object["class_uid"] as? Int == 2004, let unmapped = object["unmapped"] as? [String: Any],
                      let technique = unmapped["technique"] as? String {
                let info = object["finding_info"] as? [String: Any]
                let attacks = info?["attacks"] as? [[String: Any]]
                output.findings[technique, default: []].append(Finding(
                    latencyNanos: (unmapped["detection_latency_ns"] as? NSNumber)?.int64Value ?? .max,
                    refusedBy: unmapped["refused_by"] as? String ?? "?",
                    title: info?["title"] as? String ?? technique,
                    mitre: (attacks?.first?["technique"] as? [String: Any])?["uid"] as? String))
            }
        }
        return output
    }

    private func bubblewrapRun() throws -> [String: Attempt] {
        let cgroup = try SandboxCgroup(layout: layout, name: "bench-bwrap")
        let applied: AppliedLimits
        do {
            applied = try cgroup.apply(Self.bubblewrapLimits)
        } catch {
            try? cgroup.destroy()
            throw error
        }
        defer {
            try? cgroup.destroy()
            SandboxCgroup.removeV1(applied)
        }
        // A shell joins the cgroups, then becomes bubblewrap: nothing it starts is
        // outside them. (Not SandboxedProcess: it would drop the capabilities
        // bubblewrap needs to set up its user namespace.)
        let procs = [cgroup.path + "/cgroup.procs"] + applied.v1ProcsFiles
        let join = procs.map { "echo $$ > '\($0)'" }.joined(separator: " && ")
        let (out, err, code) = try capture("/bin/sh", ["-c", join + " && exec \"$@\"", "sh", "/usr/bin/bwrap"] + Self.bubblewrapOptions
                                      + ["--", attacker, "--workspace", "/tmp", "--host-pid", String(getpid()), "all"], in: "/")
        // 1: the attacker saw a technique succeed.
        log("escape suite: bubblewrap run exited \(code)" + (code <= 1 ? "" : ": \(err)"))
        var attempts: [String: Attempt] = [:]
        for object in Self.jsonLines(out) {
            if let technique = object["technique"] as? String { attempts[technique] = Self.attempt(object) }
        }
        return attempts
    }

    static func jsonLines(_ text: String) -> [[String: Any]] {
        text.split(separator: "\n").compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any]
        }
    }

    static func attempt(_ object: [String: Any]) -> Attempt {
        Attempt(refused: object["refused"] as? Bool ?? false, errno: object["errno"] as? String ?? "",
                detail: object["detail"] as? String ?? "")
    }

    /// Why an attempt ended, short: its errno, else the clause of its detail
    /// that says why (the attacker puts the verdict last: "no capabilities: ...").
    static func reason(_ attempt: Attempt) -> String {
        if !attempt.errno.isEmpty { return attempt.errno }
        if attempt.detail.contains("killed by SIGKILL") { return "SIGKILL (OOM)" }
        let last = attempt.detail.split(separator: ";").last.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        // "no capabilities: CapEff 0000...": the verdict without its evidence.
        if let colon = last.range(of: ": "), last.distance(from: last.startIndex, to: colon.lowerBound) <= 40 {
            return String(last[..<colon.lowerBound])
        }
        return shorten(last)
    }

    /// The first clause of an attempt's detail: what succeeded, for a technique not refused.
    static func clause(_ detail: String) -> String {
        shorten(detail.split(separator: ";").first.map(String.init) ?? detail)
    }

    static func shorten(_ text: String) -> String { text.count > 90 ? String(text.prefix(87)) + "..." : text }

    static func cell(_ text: String) -> String { text.replacingOccurrences(of: "|", with: "\\|") }

    private func render(_ techniques: [String], alcub3: RunOutput, bubblewrap: [String: Attempt]) -> (summary: String, table: String) {
        let sysrqAbsent = !FileManager.default.fileExists(atPath: "/proc/sysrq-trigger")
        var rows = ""
        var alcub3Refused = 0, alcub3Reported = 0, bubblewrapRefused = 0, bubblewrapByOurCgroup = 0
        var fastest: [Double] = []
        var all: [Double] = []
        for id in techniques {
            let findings = alcub3.findings[id] ?? []
            let name = findings.first.map { $0.title + ($0.mitre.map { " (\($0))" } ?? "") } ?? ""
            var alcub3Cell = "**no result**"
            if let a = alcub3.attempts[id] {
                let how = Set(findings.map(\.refusedBy)).sorted().joined(separator: ", ")
                alcub3Cell = a.refused ? "yes: \(how.isEmpty ? "" : how + ", ")\(Self.reason(a))" : "**no**: \(Self.clause(a.detail))"
                if a.refused { alcub3Refused += 1 }
            }
            var reported = "**no**"
            if let first = findings.map(\.latencyNanos).min() {
                alcub3Reported += 1
                fastest.append(Double(first) / 1e6)
                all += findings.map { Double($0.latencyNanos) / 1e6 }
                reported = String(format: "yes, %.2f ms", Double(first) / 1e6) + (findings.count > 1 ? " (\(findings.count) findings)" : "")
            } else if id == "sysrq" && sysrqAbsent {
                reported = "no: this kernel has no /proc/sysrq-trigger"
            }
            var bubblewrapCell = "**no result**"
            if let b = bubblewrap[id] {
                let ours = Self.resourceTechniques.contains(id) && b.refused
                bubblewrapCell = b.refused ? "yes: \(Self.reason(b))\(ours ? " (the bench's cgroup)" : "")" : "**no**: \(Self.clause(b.detail))"
                if b.refused { bubblewrapRefused += 1 }
                if ours { bubblewrapByOurCgroup += 1 }
            }
            rows += "| \(id) | \(Self.cell(name)) | \(Self.cell(alcub3Cell)) | \(reported) | \(Self.cell(bubblewrapCell)) | no |\n"
        }
        let total = techniques.count
        let sortedAll = all.sorted()
        let latency = fastest.isEmpty ? "none" : String(
            format: "first finding per technique: median %.2f ms, slowest %.2f ms; all %d findings: p50 %.2f ms, p99 %.2f ms",
            median(fastest), fastest.max()!, all.count, percentile(sortedAll, 0.5), percentile(sortedAll, 0.99))
        let date = WallClock.iso8601(unixNanos: WallClock.nowUnixNanos()).prefix(10)
        let table = """
            Generated by `make bench` on \(date) (\(host())); rerun it to replace this section.
            alcub3: `alcub3 run --format json -- alcub3-escape --host-pid PID TECHNIQUE...` with the default policy
            (release build), the memory hog in a run of its own with `memory_limit: "128MB"`. bubblewrap:
            `bwrap \(Self.bubblewrapOptions.joined(separator: " ")) -- alcub3-escape --workspace /tmp --host-pid PID all`,
            held by the bench in a cgroup with pids.max 500 and a 256 MiB memory limit (bubblewrap sets no limits:
            without that cgroup the fork bomb and the memory hog would reach the host). Reported: the time from the
            kernel's record of the attempt to alcub3's Detection Finding (`unmapped.detection_latency_ns`, fastest
            finding of the technique). bubblewrap raises no alerts.

            | technique | name (MITRE ATT&CK) | alcub3: refused (by, errno) | alcub3: reported | bubblewrap: refused | bubblewrap: reported |
            |---|---|---|---|---|---|
            \(rows)
            alcub3 refused \(alcub3Refused) of \(total) techniques and reported \(alcub3Reported), each within 50 ms of the attempt:
            \(ok(fastest.count == total && fastest.allSatisfy { $0 < 50 })) (\(latency)).
            bubblewrap refused \(bubblewrapRefused) of \(total), \(bubblewrapByOurCgroup) of them only through the bench's cgroup, and
            reported none.

            """
        let summary = """
            ## Escape suite, side by side with bubblewrap

            The \(total) techniques of escape/alcub3-escape, attempted inside `alcub3 run` and inside bubblewrap with
            typical options; docs/security.md has the table and how each technique is refused.
            alcub3 refused \(alcub3Refused) of \(total) and reported \(alcub3Reported) (\(latency)).
            bubblewrap refused \(bubblewrapRefused), \(bubblewrapByOurCgroup) of them only through the cgroup the bench put it in,
            and reports nothing.

            """
        return (summary, table)
    }
}
