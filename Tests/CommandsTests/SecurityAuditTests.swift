import Foundation
import Testing
@testable import Commands
import KernelSupport

/// Regression tests for findings M1, M3, M7 and L2 of reviews/security-audit.md,
/// each doing the audit's reproduction (or the closest faithful one).

/// The built binary with `environment` (the caller's, as a shell would pass it) in `directory`.
func alcub3(_ arguments: [String], environment: [String: String], in directory: String? = nil) throws -> Result {
    try runProgram(binary, arguments, environment: environment, in: directory)
}

/// A fresh directory of this test's own (tests run beside other people's).
func uniqueDirectory(_ prefix: String) throws -> String {
    let path = NSTemporaryDirectory() + "\(prefix)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// The operator's secrets the audit planted (M7).
let secretEnvironment = ["AWS_SECRET_ACCESS_KEY": "canary-aws", "GITHUB_TOKEN": "canary-gh"]

/// L2: the audit's payload, and a C1 CSI.
let terminalPayload = "x\u{1b}]0;TITLE-PWNED\u{07}\u{1b}[2Jcleared"

@Suite struct TerminalTextTests {
    @Test func theAuditPayloadAndC1ControlsAreEscaped() {
        #expect(TerminalText.escaped(terminalPayload) == "x\\x1B]0;TITLE-PWNED\\x07\\x1B[2Jcleared")
        #expect(TerminalText.escaped("a\u{9b}31mred\u{85}") == "a\\x9B31mred\\x85")
        #expect(TerminalText.escaped("evil\u{202e}txt.exe\u{2066}x\u{2069}") == "evil\\u{202E}txt.exe\\u{2066}x\\u{2069}")
        #expect(TerminalText.escaped("\u{7f}\u{9f}\u{a0}é/ü漢") == "\\x7F\\x9F\u{a0}é/ü漢")
        #expect(RunCommand.printable("a\u{9b}b") == "a\\x9Bb")
    }

    /// `events tail --format table`: a stored file event whose path and a
    /// process event whose command line carry the payload print as text.
    @Test func eventLinesOfAgentTextAreEscaped() throws {
        let file: [String: Any] = ["time_dt": "2026-01-01T00:00:00.000000Z", "agent_id": "a", "class_name": "File System Activity",
                                   "activity_name": "Create", "file": ["path": "/workspace/" + terminalPayload],
                                   "actor": ["process": ["pid": 7, "name": "sh\u{9b}2J"]]]
        let exec: [String: Any] = ["time_dt": "2026-01-01T00:00:00.000000Z", "agent_id": "a", "class_uid": 1007,
                                   "class_name": "Process Activity", "activity_name": "Launch",
                                   "process": ["cmd_line": "echo \u{1b}[2J\u{202e}"]]
        for object in [file, exec] {
            let line = EventLine.render(String(decoding: try JSONSerialization.data(withJSONObject: object), as: UTF8.self))
            #expect(!line.unicodeScalars.contains { $0.value < 0x20 || (0x7f...0x9f).contains($0.value) || $0.value == 0x202e }, "\(line)")
        }
        let line = EventLine.render(String(decoding: try JSONSerialization.data(withJSONObject: file), as: UTF8.self))
        #expect(line.contains("Create /workspace/x\\x1B]0;TITLE-PWNED\\x07\\x1B[2Jcleared"), "\(line)")
        #expect(line.contains("7 sh\\x9B2J"), "\(line)")
        // Not JSON at all: shown escaped as well.
        #expect(EventLine.render("\u{1b}[2J") == "\\x1B[2J")
    }
}

@Suite struct AgentEnvironmentTests {
    let caller = ["PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8", "LC_TIME": "en_GB.UTF-8", "TERM": "xterm",
                  "TZ": "UTC", "SSH_AUTH_SOCK": "/tmp/ssh-x/agent.1", "SUDO_USER": "alice"].merging(secretEnvironment) { a, _ in a }

    @Test func onlyTheMinimalVariablesPassByDefault() throws {
        #expect(try AgentEnvironment.make([], from: caller)
                == ["HOME=/root", "LANG=C.UTF-8", "LC_TIME=en_GB.UTF-8", "PATH=/usr/bin:/bin", "TERM=xterm", "TZ=UTC"])
        #expect(try AgentEnvironment.make([], from: [:]) == ["PATH=" + AgentEnvironment.defaultPath])
    }

    @Test func envCopiesOrSetsAndRefusesWhatItCannotMean() throws {
        let made = try AgentEnvironment.make(["GITHUB_TOKEN", "X=1", "EMPTY=", "TERM=dumb", "X=a=b"], from: caller)
        #expect(made.contains("GITHUB_TOKEN=canary-gh") && made.contains("X=a=b") && made.contains("EMPTY=") && made.contains("TERM=dumb"))
        #expect(!made.contains { $0.hasPrefix("AWS_SECRET_ACCESS_KEY=") || $0.hasPrefix("X=1") })
        #expect { try AgentEnvironment.make(["NOT_SET_ANYWHERE"], from: caller) } throws: { "\(($0 as? Failure)?.message ?? "")".contains("is not set in your environment") }
        for bad in ["", "=1", "1X=2", "A-B=1", "A B"] {
            #expect(throws: Failure.self) { try AgentEnvironment.make([bad], from: caller) }
        }
    }
}

@Suite(.serialized, .enabled(if: isRoot, "needs root: BPF, cgroups and namespaces"))
struct RunHardeningTests {
    /// M7: `alcub3 run` gave the agent the operator's whole environment.
    @Test func runGivesTheAgentNoSecretsUnlessAsked() throws {
        let directory = try uniqueDirectory("alcub3-env")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let environment = ProcessInfo.processInfo.environment.merging(secretEnvironment) { _, new in new }
        let script = "env > env.txt"
        let plain = try alcub3(["run", "--agent-id", "env-plain-\(getpid())", "--", "/bin/sh", "-c", script], environment: environment, in: directory)
        #expect(plain.code == 0, "\(plain.stderr)")
        let inside = try String(contentsOfFile: directory + "/env.txt", encoding: .utf8)
        #expect(!inside.contains("canary"), "the operator's secrets reached the agent: \(inside)")
        #expect(inside.contains("PATH="))

        let asked = try alcub3(["run", "--agent-id", "env-asked-\(getpid())", "--env", "GITHUB_TOKEN", "--env", "X=1", "--",
                                "/bin/sh", "-c", script], environment: environment, in: directory)
        #expect(asked.code == 0, "\(asked.stderr)")
        let lines = try String(contentsOfFile: directory + "/env.txt", encoding: .utf8).split(separator: "\n")
        #expect(lines.contains("GITHUB_TOKEN=canary-gh") && lines.contains("X=1"), "\(lines)")
        #expect(!lines.contains { $0.hasPrefix("AWS_SECRET_ACCESS_KEY") })
    }

    /// M3: with ALCUB3_STATE_DIR (and _SOCKET) pointing elsewhere, the
    /// overriding service's files were visible in every `alcub3 run` sandbox;
    /// an operator's baseline key outside the state directory too.
    @Test func runHidesTheServiceTheEnvironmentPointsAt() throws {
        // Not under /tmp (the sandbox has a /tmp of its own, where nothing of the host's would show
        // anyway), nor under the package, which a CI clone may have under /tmp.
        let root = "/var/tmp/alcub3-test-m3-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        for sub in ["state", "run", "keys", "visible"] {
            try FileManager.default.createDirectory(atPath: root + "/" + sub, withIntermediateDirectories: true)
        }
        try "CONTENT-OF-STATE".write(toFile: root + "/state/state-file.txt", atomically: true, encoding: .utf8)
        try "CONTENT-OF-SOCKET-DIR".write(toFile: root + "/run/socket-file.txt", atomically: true, encoding: .utf8)
        try "CONTENT-OF-BASELINE-KEY".write(toFile: root + "/keys/baseline.key", atomically: true, encoding: .utf8)
        try "CONTENT-VISIBLE".write(toFile: root + "/visible/ok.txt", atomically: true, encoding: .utf8)
        try "service:\n  baseline_key: \(root)/keys/baseline.key\n".write(toFile: root + "/service.yaml", atomically: true, encoding: .utf8)
        var environment = ProcessInfo.processInfo.environment
        environment["ALCUB3_STATE_DIR"] = root + "/state"
        environment["ALCUB3_SOCKET"] = root + "/run/alcub3.sock"
        let work = try uniqueDirectory("alcub3-cwd")
        defer { try? FileManager.default.removeItem(atPath: work) }
        let script = "ls -A \(root)/state \(root)/run > seen.txt 2>&1; "
            + "cat \(root)/state/state-file.txt \(root)/run/socket-file.txt \(root)/keys/baseline.key \(root)/visible/ok.txt >> seen.txt 2>&1; true"
        let r = try alcub3(["run", "--agent-id", "hid-\(getpid())", "--policy-file", root + "/service.yaml", "--", "/bin/sh", "-c", script],
                           environment: environment, in: work)
        #expect(r.code == 0, "\(r.stderr)")
        let seen = try String(contentsOfFile: work + "/seen.txt", encoding: .utf8)
        #expect(seen.contains("CONTENT-VISIBLE"), "the test directory is not visible at all: \(seen)")
        #expect(!seen.contains("CONTENT-OF-"), "the sandbox read the overriding service's files: \(seen)")
        #expect(!seen.split(separator: "\n").contains("state-file.txt") && !seen.split(separator: "\n").contains("socket-file.txt"), "\(seen)")
    }
}

@Suite(.serialized, .enabled(if: isRoot, "needs root: BPF, cgroups and namespaces"))
struct AuditServiceTests {
    /// The audit log as `sqlite3 -json` gives it.
    func auditRows(_ database: String) throws -> [[String: Any]] {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/sqlite3")
        p.arguments = ["-json", "-readonly", database, "SELECT seq, actor, action, subject, details_json, requester_json, mac FROM audit_log ORDER BY seq"]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (try? JSONSerialization.jsonObject(with: data) as? [[String: Any]]) ?? []
    }

    func requester(_ row: [String: Any]) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data((row["requester_json"] as? String ?? "").utf8)) as? [String: Any]) ?? [:]
    }

    /// M1 through a real daemon: create, exec, policy set and terminate are
    /// audited with who asked (uid, gid, pid, sandboxed or not), every record
    /// MAC'd; the audit's re-chain forgery of a copy is named at its record.
    @Test func requestsAreAuditedWithTheirRequesterAndARechainIsNamed() throws {
        let service = try TestService()
        defer { service.tearDown() }
        try service.start()
        let agent = "aud-\(getpid())"
        let created = try service.run(["sandbox", "create", "--agent-id", agent, "--", "/bin/sleep", "300"])
        #expect(created.code == 0, "\(created.stderr)")
        let exec = try service.run(["sandbox", "exec", "--agent-id", agent, "--", "/bin/true"])
        #expect(exec.code == 0, "\(exec.stderr)")
        let policy = try service.run(["sandbox", "policy", "set", "--agent-id", agent, "--allowed-destination", "10.9.0.0/16"])
        #expect(policy.code == 0, "\(policy.stderr)")
        let ended = try service.run(["sandbox", "terminate", "--agent-id", agent, "--force"])
        #expect(ended.code == 0, "\(ended.stderr)")

        let rows = try auditRows(service.database)
        #expect(rows.allSatisfy { ($0["mac"] as? String)?.count == 64 }, "unkeyed records: \(rows)")
        var pids: [Int] = []
        for action in ["sandbox.create", "sandbox.exec", "policy.set", "sandbox.terminate"] {
            let row = try #require(rows.first { $0["action"] as? String == action }, "no \(action) record in \(rows)")
            let who = requester(row)
            #expect(who["channel"] as? String == "socket" && who["uid"] as? Int == 0 && who["gid"] as? Int == 0, "\(action): \(who)")
            #expect(who["sandboxed"] as? Bool == false && (who["cgroup"] as? String)?.isEmpty == false, "\(action): \(who)")
            let pid = try #require(who["pid"] as? Int)
            #expect(pid > 0 && row["actor"] as? String == "uid 0 pid \(pid)", "\(action): \(row)")
            pids.append(pid)
            #expect((row["details_json"] as? String)?.contains(agent) == true, "\(action): \(row)")
        }
        #expect(Set(pids).count == 4, "each request came from its own CLI process: \(pids)")
        #expect(rows.first { $0["action"] as? String == "sandbox.exec" }.flatMap { $0["details_json"] as? String }?.contains("/bin/true") == true)

        // The key: root's, 0600, beside the database; not readable from a sandbox.
        let keyPath = service.environment["ALCUB3_STATE_DIR"]! + "/audit.key"
        var st = stat()
        #expect(lstat(keyPath, &st) == 0 && st.st_mode & 0o777 == 0o600 && st.st_uid == 0)
        #expect(try service.run(["audit", "verify"]).stdout.hasPrefix("audit log intact"))

        // The audit's forgery on a copy: one record's details rewritten, every SHA-256 link recomputed.
        let copy = service.root + "/forged.db"
        let backup = Process()
        backup.executableURL = URL(fileURLWithPath: "/usr/bin/sqlite3")
        backup.arguments = [service.database, ".backup \(copy)"]
        try backup.run()
        backup.waitUntilExit()
        let intact = try service.run(["audit", "verify", "--database", copy, "--key", keyPath])
        #expect(intact.code == 0 && intact.stdout.contains("intact"), "\(intact)")
        let target = try #require(rows.first { $0["action"] as? String == "sandbox.create" }?["seq"] as? Int)
        let script = packageRoot.appendingPathComponent("Tests/Fixtures/audit-rechain.py").path
        let rechain = Process()
        rechain.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        rechain.arguments = [script, copy, String(target), #"{"agent_id":"innocent-agent","command":"true"}"#]
        try rechain.run()
        rechain.waitUntilExit()
        #expect(rechain.terminationStatus == 0)
        let forged = try service.run(["audit", "verify", "--database", copy, "--key", keyPath])
        #expect(forged.code == 1, "\(forged)")
        #expect(forged.stdout.hasPrefix("audit log BROKEN at record \(target): MAC does not verify"), "\(forged.stdout)")
        // Without the key (none beside the copy) keyed records cannot pass.
        let keyless = try service.run(["audit", "verify", "--database", copy])
        #expect(keyless.code == 1 && keyless.stdout.contains("no audit key"), "\(keyless)")
    }

    /// M7 for `sandbox create` and `exec`, and L2 through `events tail`:
    /// a file the agent names with the audit's payload prints escaped.
    @Test func execGetsNoSecretsAndEventsTailEscapesAgentText() throws {
        let service = try TestService()
        defer { service.tearDown() }
        try service.start()
        let agent = "envx-\(getpid())"
        let environment = service.environment.merging(secretEnvironment) { _, new in new }
        let created = try alcub3(["sandbox", "create", "--agent-id", agent, "--", "/bin/sh", "-c",
                                  "env > create-env; touch \"$(printf 'x\\033]0;TITLE-PWNED\\007\\033[2Jcleared')\"; sleep 300"],
                                 environment: environment, in: service.root)
        #expect(created.code == 0, "\(created.stderr)")
        let plain = try alcub3(["sandbox", "exec", "--agent-id", agent, "--", "/bin/sh", "-c", "env; cat create-env"],
                               environment: environment)
        #expect(plain.code == 0, "\(plain.stderr)")
        #expect(!plain.stdout.contains("canary") && plain.stdout.contains("PATH="), "\(plain.stdout)")
        let asked = try alcub3(["sandbox", "exec", "--agent-id", agent, "--env", "GITHUB_TOKEN", "--env", "X=1", "--", "/usr/bin/env"],
                               environment: environment)
        let lines = asked.stdout.split(separator: "\n")
        #expect(lines.contains("GITHUB_TOKEN=canary-gh") && lines.contains("X=1") && !asked.stdout.contains("canary-aws"), "\(asked.stdout)")

        // The state directory (database, audit key) is hidden inside.
        let key = try service.run(["sandbox", "exec", "--agent-id", agent, "--", "/bin/cat", service.environment["ALCUB3_STATE_DIR"]! + "/audit.key"])
        #expect(key.code != 0 && key.stdout.isEmpty, "the audit key is readable in a sandbox: \(key)")

        var table = ""
        for _ in 0..<50 {
            table = try service.run(["events", "tail", "--agent-id", agent, "--lines", "100000", "--format", "table"]).stdout
            if table.contains("TITLE-PWNED") { break }
            usleep(100_000)
        }
        #expect(table.contains("x\\x1B]0;TITLE-PWNED\\x07\\x1B[2Jcleared"), "\(table.suffix(600))")
        #expect(!table.unicodeScalars.contains { $0.value == 0x1b || $0.value == 0x07 || (0x80...0x9f).contains($0.value) })
    }
}
