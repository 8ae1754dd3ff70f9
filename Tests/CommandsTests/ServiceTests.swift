import Foundation
import Testing

/// A private service for one test suite: its own socket, state and bpffs
/// pins, so the tests never touch a real installation.
final class TestService: @unchecked Sendable {
    let root: String
    let environment: [String: String]
    /// The daemon's pid. posix_spawn and waitpid, not Foundation's Process:
    /// its reaper missed a SIGKILLed child here and waitUntilExit hung.
    private(set) var pid: pid_t = 0

    /// A configuration whose integrity cycles run every second (tests cannot wait 30 s).
    static let quickIntegrityChecks = "sandbox_configuration:\n  integrity_monitoring: {check_interval: \"1s\"}\n"

    /// `configuration`: YAML the daemon gets through ALCUB3_CONFIG (over the shipped defaults).
    init(metricsPort: UInt16? = nil, configuration: String? = nil) throws {
        root = NSTemporaryDirectory() + "alcub3-svc-" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        var env = ProcessInfo.processInfo.environment
        env["ALCUB3_SOCKET"] = root + "/run/alcub3.sock"
        env["ALCUB3_STATE_DIR"] = root + "/state"
        env["ALCUB3_PIN_DIR"] = "/sys/fs/bpf/" + (root as NSString).lastPathComponent
        env["ALCUB3_METRICS"] = metricsPort.map { "127.0.0.1:\($0)" } ?? "off"
        env["ALCUB3_NO_AUTOSTART"] = "1"
        if let configuration {
            try configuration.write(toFile: root + "/daemon.yaml", atomically: true, encoding: .utf8)
            env["ALCUB3_CONFIG"] = root + "/daemon.yaml"
        }
        environment = env
    }

    var pinDirectory: String { environment["ALCUB3_PIN_DIR"]! }
    var database: String { environment["ALCUB3_STATE_DIR"]! + "/alcub3.db" }

    func start() throws {
        let logPath = root + "/daemon.log"
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup(binary), strdup("daemon"), nil]
        let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        let rc = posix_spawn(&pid, binary, &actions, nil, argv, envp)
        guard rc == 0 else { throw TestFailure("posix_spawn: \(rc)") }
        for _ in 0..<200 {
            if (try? run(["sandbox", "list"], autoStart: false))?.code == 0 { return }
            usleep(50_000)
        }
        throw TestFailure("the service did not come up: \(log())")
    }

    /// The stored record of `agentID` once its sandbox has stopped (polled every 0.1 s for `seconds`), or nil.
    func stoppedRecord(agentID: String, seconds: Double) throws -> [String: Any]? {
        for _ in 0..<Int(seconds * 10) {
            let list = try run(["sandbox", "list", "--status", "stopped", "--format", "json"])
            let records = (try? JSONSerialization.jsonObject(with: Data(list.stdout.utf8))) as? [[String: Any]]
            if let record = records?.first(where: { $0["agentID"] as? String == agentID }) { return record }
            usleep(100_000)
        }
        return nil
    }

    func log() -> String { (try? String(contentsOfFile: root + "/daemon.log", encoding: .utf8)) ?? "" }

    private func end(_ signal: Int32) {
        guard pid > 0 else { return }
        kill(pid, signal)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        pid = 0
    }

    func kill9() { end(SIGKILL) }
    func stop() { end(SIGTERM) }

    func run(_ arguments: [String], autoStart: Bool = true, in directory: String? = nil, as uid: UInt32? = nil) throws -> Result {
        if let uid {
            return try runProgram("/usr/bin/setpriv", ["--reuid=\(uid)", "--regid=\(uid)", "--clear-groups", binary] + arguments,
                                  environment: environment, in: directory)
        }
        return try runProgram(binary, arguments, environment: environment, in: directory)
    }

    /// Terminates every sandbox, stops the service, removes its files and pins.
    /// `sandbox create` of a shell command under the UNCLASSIFIED policy with
    /// `settings` (flow YAML) merged over it; the result and the created record.
    func create(_ agent: String, unclassified settings: String, _ script: String) throws -> (Result, [String: Any]?) {
        let file = "\(agent)-policy.yaml"
        try "sandbox_configuration:\n  default_policies:\n    UNCLASSIFIED: {\(settings)}\n"
            .write(toFile: root + "/" + file, atomically: true, encoding: .utf8)
        let r = try run(["sandbox", "create", "--agent-id", agent, "--policy-file", file, "--format", "json", "--",
                         "/bin/sh", "-c", script], in: root)
        return (r, (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8))) as? [String: Any])
    }

    func tearDown() {
        if pid > 0 {
            if let list = try? run(["sandbox", "list", "--format", "json"], autoStart: false),
               let records = try? JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as? [[String: Any]] {
                for r in records { _ = try? run(["sandbox", "terminate", "--force", "--agent-id", r["agentID"] as? String ?? ""]) }
            }
            stop()
        }
        try? FileManager.default.removeItem(atPath: root)
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

@Suite(.serialized, .enabled(if: isRoot, "needs root: BPF, cgroups and namespaces"))
struct ServiceTests {
    @Test func sandboxLifecycleThroughTheService() throws {
        let metricsPort = UInt16(20000 + getpid() % 10000)
        let service = try TestService(metricsPort: metricsPort)
        defer { service.tearDown() }
        let before = HostState.baseline()
        try service.start()

        let created = try service.run(["sandbox", "create", "--agent-id", "life-1", "--classification", "UNCLASSIFIED"])
        #expect(created.code == 0, "create: \(created.stderr)")
        let again = try service.run(["sandbox", "create", "--agent-id", "life-1"])
        #expect(again.code == 73 && again.stderr.contains("already in use"), "\(again.stderr)")

        let list = try service.run(["sandbox", "list", "--format", "json"])
        let records = try #require(try JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as? [[String: Any]])
        #expect(records.contains { $0["agentID"] as? String == "life-1" && $0["state"] as? String == "running" })

        let exec = try service.run(["sandbox", "exec", "--agent-id", "life-1", "--", "sh", "-c", "echo inside; echo oops >&2; exit 3"])
        #expect(exec.code == 3)
        #expect(exec.stdout == "inside\n" && exec.stderr == "oops\n", "exec: \(exec)")
        // The command ran in the sandbox's pid namespace: its init is pid 1 there.
        let ps = try service.run(["sandbox", "exec", "--agent-id", "life-1", "--", "cat", "/proc/1/comm"])
        #expect(ps.stdout == "alcub3-init\n", "\(ps)")
        // The service's socket directory is hidden inside the sandbox.
        let hidden = try service.run(["sandbox", "exec", "--agent-id", "life-1", "--", "ls", "-A", (service.environment["ALCUB3_SOCKET"]! as NSString).deletingLastPathComponent])
        #expect(hidden.stdout.isEmpty, "socket dir visible in the sandbox: \(hidden)")

        let monitor = try service.run(["sandbox", "monitor", "--agent-id", "life-1", "--interval", "0.2s", "--count", "2", "--format", "json"])
        #expect(monitor.code == 0)
        let views = monitor.stdout.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        #expect(views.count == 2 && views[0]["state"] as? String == "running")
        #expect((views.last?["eventsByKind"] as? [String: Any])?["process"] != nil, "\(views)")

        // Prometheus text: sandboxes by state, events by kind, drops.
        let curl = Process()
        curl.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        curl.arguments = ["-s", "--max-time", "5", "http://127.0.0.1:\(metricsPort)/metrics"]
        let page = Pipe()
        curl.standardOutput = page
        try curl.run()
        let metrics = String(decoding: page.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        curl.waitUntilExit()
        #expect(metrics.contains("alcub3_sandboxes{state=\"running\"} 1.0"), "\(metrics.prefix(400))")
        #expect(metrics.contains("alcub3_events_total{kind=\"process\"}"))
        #expect(metrics.contains("alcub3_kernel_records_dropped_total 0.0"))

        let dir = service.root
        let exported = try service.run(["sandbox", "export", "--agent-id", "life-1", "--output", "life-1.json"], in: dir)
        #expect(exported.code == 0, "\(exported.stderr)")
        let escape = try service.run(["sandbox", "export", "--agent-id", "life-1", "--output", "../x.json"], in: dir)
        #expect(escape.code == 64 && escape.stderr.contains("leaves the working directory"))
        let imported = try service.run(["sandbox", "import", "--config", "life-1.json", "--agent-id", "life-2"], in: dir)
        #expect(imported.code == 0, "\(imported.stderr)")
        let policies = try ["life-1", "life-2"].map { agent -> String in
            let r = try service.run(["sandbox", "export", "--agent-id", agent, "--output", "\(agent)-again.json"], in: dir)
            #expect(r.code == 0)
            let o = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/\(agent)-again.json"))) as? [String: Any]
            let p = try JSONSerialization.data(withJSONObject: ["policy": o?["policy"] ?? "", "limits": o?["limits"] ?? ""], options: .sortedKeys)
            return String(decoding: p, as: UTF8.self)
        }
        #expect(policies[0] == policies[1])

        for agent in ["life-1", "life-2"] {
            let t = try service.run(["sandbox", "terminate", "--agent-id", agent, "--grace", "1"])
            #expect(t.code == 0, "\(t.stderr)")
        }
        let gone = try service.run(["sandbox", "terminate", "--agent-id", "life-1"])
        #expect(gone.code == 72)
        let events = try service.run(["events", "tail", "--agent-id", "life-1", "--kind", "process"])
        #expect(events.stdout.contains("\"class_uid\":1007"), "\(events.stdout.prefix(300))")
        service.stop()
        #expect(HostState.settled(like: before), "left behind after terminate and stop")
        #expect(!FileManager.default.fileExists(atPath: service.pinDirectory))
    }

    /// kill -9 the service while a sandbox works: the sandbox keeps running and
    /// isolated, and the restarted service adopts it, records the gap and keeps
    /// monitoring.
    @Test func killedServiceRestartsWithoutLoss() throws {
        let service = try TestService()
        defer { service.tearDown() }
        try service.start()
        let host = try HostListener()
        let loop = "i=0; while true; do i=$((i+1)); echo $i > count.txt; "
            + "/usr/bin/python3 -c 'import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(s.connect_ex((\"127.0.0.1\", \(host.port))))'; "
            + "echo $? > connect.txt; sleep 0.2; done"
        let created = try service.run(["sandbox", "create", "--agent-id", "survivor", "--classification", "SECRET", "--share-cwd",
                                       "--isolation-level", "process", "--", "sh", "-c", loop], in: service.root)
        #expect(created.code == 0, "\(created.stderr)")
        usleep(800_000)
        service.kill9()
        // The shell truncates count.txt before writing it: a read may catch it empty, so read until a number comes.
        func count() -> Int {
            for _ in 0..<20 {
                let text = (try? String(contentsOfFile: service.root + "/count.txt", encoding: .utf8)) ?? ""
                if let n = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) { return n }
                usleep(10_000)
            }
            return 0
        }
        let countAtKill = count()
        usleep(800_000)
        let countLater = count()
        #expect(countLater > countAtKill, "the sandbox stopped when the service died")
        // Still isolated: its network namespace has no route to the host's listener.
        #expect((try? String(contentsOfFile: service.root + "/connect.txt", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) == "111")
        #expect(host.accepted == 0)

        try service.start()
        let list = try service.run(["sandbox", "list", "--format", "json"])
        #expect(list.stdout.contains("\"survivor\""), "\(list.stdout) \(service.log())")
        let tail = try service.run(["events", "tail", "--agent-id", "survivor", "--lines", "100000"])
        #expect(tail.stdout.contains("\"record\":\"monitoring_gap\""), "no gap record")
        let lastID = tail.stdout.split(separator: "\n").count
        usleep(1_000_000)
        let later = try service.run(["events", "tail", "--agent-id", "survivor", "--lines", "100000"])
        #expect(later.stdout.split(separator: "\n").count > lastID, "no new events after the restart")
        #expect(later.stdout.contains("\"class_uid\":4001"), "connect attempts are not monitored after the restart")
        let t = try service.run(["sandbox", "terminate", "--agent-id", "survivor", "--force"])
        #expect(t.code == 0, "\(t.stderr)")
    }

    @Test func auditVerifyNamesTheAlteredRecord() throws {
        let service = try TestService()
        defer { service.tearDown() }
        try service.start()
        for agent in ["audit-a", "audit-b"] {
            #expect(try service.run(["sandbox", "create", "--agent-id", agent]).code == 0)
            #expect(try service.run(["sandbox", "terminate", "--agent-id", agent, "--force"]).code == 0)
        }
        let ok = try service.run(["audit", "verify"])
        #expect(ok.code == 0 && ok.stdout.contains("intact"), "\(ok)")
        service.stop()
        let sqlite = Process()
        sqlite.executableURL = URL(fileURLWithPath: "/usr/bin/sqlite3")
        // The store's trigger refuses updates; someone with write access to the file can drop it first.
        sqlite.arguments = [service.database, "DROP TRIGGER audit_log_no_update; UPDATE audit_log SET details_json = '{\"tampered\":true}' WHERE seq = 3;"]
        try sqlite.run()
        sqlite.waitUntilExit()
        let broken = try service.run(["audit", "verify", "--database", service.database])
        #expect(broken.code == 1)
        #expect(broken.stdout.contains("record 3"), "\(broken.stdout)")
    }

    @Test func classificationsGetTheirMultipliedLimitsAndNetwork() throws {
        let service = try TestService()
        defer { service.tearDown() }
        try service.start()
        #expect(try service.run(["sandbox", "create", "--agent-id", "lim-u", "--classification", "UNCLASSIFIED"]).code == 0)
        let s = try service.run(["sandbox", "create", "--agent-id", "lim-s", "--classification", "SECRET", "--isolation-level", "process"])
        #expect(s.code == 0, "\(s.stderr)")
        func limits(_ agent: String) throws -> (cpu: Int, memory: UInt64, pids: Int) {
            let r = try service.run(["sandbox", "export", "--agent-id", agent, "--output", "\(agent).json"], in: service.root)
            let o = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: service.root + "/\(agent).json"))) as? [String: Any]
            let id = o?["sandboxID"] as? String ?? ""
            #expect(r.code == 0)
            func read(_ path: String) -> String { ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines) }
            let v2 = "/sys/fs/cgroup/unified/alcub3/\(id)"
            if FileManager.default.fileExists(atPath: v2 + "/cpu.max") {
                return (Int(read(v2 + "/cpu.max").split(separator: " ")[0]) ?? -1, UInt64(read(v2 + "/memory.max")) ?? 0, Int(read(v2 + "/pids.max")) ?? -1)
            }
            return (Int(read("/sys/fs/cgroup/cpu/alcub3/\(id)/cpu.cfs_quota_us")) ?? -1,
                    UInt64(read("/sys/fs/cgroup/memory/alcub3/\(id)/memory.limit_in_bytes")) ?? 0,
                    Int(read("/sys/fs/cgroup/pids/alcub3/\(id)/pids.max")) ?? -1)
        }
        let u = try limits("lim-u"), secret = try limits("lim-s")
        #expect(u.cpu == 200_000)            // 2.0 cores x 1.0
        #expect(secret.cpu == 60_000)        // 1.0 core x 0.6
        #expect(u.memory / 4096 == 4_000_000_000 / 4096)   // 4GB x 1.0 (the kernel rounds to pages)
        #expect(secret.memory / 4096 == 1_200_000_000 / 4096)  // 2GB x 0.6
        #expect(u.pids > 0 && secret.pids > 0)
        // UNCLASSIFIED shares the host network; SECRET (classified_network) gets its own namespace.
        let netU = try service.run(["sandbox", "exec", "--agent-id", "lim-u", "--", "/usr/bin/python3", "-c", "import socket; print(len(socket.if_nameindex()) > 1)"])
        let netS = try service.run(["sandbox", "exec", "--agent-id", "lim-s", "--", "/usr/bin/python3", "-c", "import socket; print([n for _, n in socket.if_nameindex()])"])
        #expect(netU.stdout == "True\n", "\(netU)")
        #expect(netS.stdout == "['lo']\n", "\(netS)")
    }

    /// intranet and classified_network are enforced by cgroup BPF: allowed
    /// destinations connect, others get EPERM, and the refusal is an event.
    /// Escape attempts in a sandbox the service holds become stored alerts,
    /// shown by `events tail` in place: from the agent itself (the init's
    /// supervisor) and from a command run with `sandbox exec` (its own).
    @Test func escapeAttemptsBecomeStoredFindings() throws {
        let service = try TestService()
        defer { service.tearDown() }
        try service.start()
        let attacker = EscapeSuiteTests.attacker
        let created = try service.run(["sandbox", "create", "--agent-id", "esc-1", "--verbose", "--", "/bin/sh", "-c",
                                       "\(attacker) bpf ld-preload; sleep 60"], in: service.root)
        #expect(created.code == 0, "\(created.stderr)")
        // --verbose says what holds the sandbox, and what stands in for a refused BPF-LSM.
        #expect(created.stderr.contains("enforcement: seccomp") && created.stderr.contains("escape syscalls to the supervisor"))
        #expect(created.stderr.contains("enforcement: Landlock  -> ABI"), "\(created.stderr)")
        #expect(created.stderr.contains("enforcement: BPF-LSM  -> available")
                || created.stderr.contains("seccomp, Landlock and cgroup BPF carry the policy"), "\(created.stderr)")
        let exec = try service.run(["sandbox", "exec", "--agent-id", "esc-1", "--", attacker, "mount", "keyctl"])
        #expect(exec.code == 0, "\(exec.stdout) \(exec.stderr)")
        usleep(300_000)
        let tail = try service.run(["events", "tail", "--agent-id", "esc-1", "--lines", "100000"])
        let findings = tail.stdout.split(separator: "\n").filter { $0.contains("\"class_uid\":2004") }
        for technique in ["bpf", "ld-preload", "mount", "keyctl"] {
            #expect(findings.contains { $0.contains("\"technique\":\"\(technique)\"") }, "no stored finding for \(technique)")
        }
        #expect(try service.run(["sandbox", "terminate", "--agent-id", "esc-1", "--force"]).code == 0)
    }

    /// on_violation: freeze stops the whole sandbox at the first escape
    /// attempt, until thaw; the response is audited and stored. (One attempt:
    /// a later one after the thaw would freeze it again, as it should.)
    @Test func aFreezingPolicyFreezesUntilThaw() throws {
        let service = try TestService()
        defer { service.tearDown() }
        try service.start()
        let (created, record) = try service.create("frz", unclassified: #"on_violation: "freeze""#,
                                                   "\(EscapeSuiteTests.attacker) io-uring; sleep 0.5; echo after > after.txt; sleep 60")
        #expect(created.code == 0, "\(created.stderr)")
        let id = record?["sandboxID"] as? String ?? ""
        let events = "/sys/fs/cgroup/unified/alcub3/\(id)/cgroup.events"
        // The agent works in its private workspace, seen from here through its init.
        let after = "/proc/\(record?["initPID"] as? Int ?? 0)/root/workspace/after.txt"
        usleep(1_500_000)
        #expect(((try? String(contentsOfFile: events, encoding: .utf8)) ?? "").contains("frozen 1"), "not frozen")
        #expect(!FileManager.default.fileExists(atPath: after), "the sandbox ran on after the attempt")
        let tail = try service.run(["events", "tail", "--agent-id", "frz", "--lines", "1000"])
        #expect(tail.stdout.contains("\"record\":\"response\"") && tail.stdout.contains("\"response\":\"freeze\""), "\(tail.stdout.suffix(800))")
        let thawed = try service.run(["sandbox", "thaw", "--agent-id", "frz"])
        #expect(thawed.code == 0, "\(thawed.stderr)")
        usleep(1_000_000)
        #expect(FileManager.default.fileExists(atPath: after), "still frozen after thaw")
        let again = try service.run(["sandbox", "thaw", "--agent-id", "frz"])
        #expect(again.code == 64 && again.stderr.contains("not frozen"), "\(again.stderr)")
        #expect(try service.run(["sandbox", "terminate", "--agent-id", "frz"]).code == 0)
    }

    /// The agent's workspace is private and size-capped: a disk filler gets
    /// ENOSPC there (reported), the host's disk and directory are untouched.
    @Test func thePrivateWorkspaceIsCapped() throws {
        let service = try TestService()
        defer { service.tearDown() }
        try service.start()
        let (created, record) = try service.create("ws", unclassified: #"workspace_size: "16MB""#,
                                                   "pwd > where.txt; head -c 40000000 /dev/zero > big; echo $? > /tmp/status.txt; sleep 60")
        #expect(created.code == 0, "\(created.stderr)")
        let root = "/proc/\(record?["initPID"] as? Int ?? 0)/root"
        let workspace = root + "/workspace"
        usleep(1_000_000)
        func read(_ name: String) -> String {
            ((try? String(contentsOfFile: workspace + "/" + name, encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
        }
        #expect(read("where.txt") == "/workspace")
        // head: No space left on device (the status goes to /tmp: the workspace is full).
        let status = ((try? String(contentsOfFile: root + "/tmp/status.txt", encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(status == "1", "the write did not fail: '\(status)'")
        let size = ((try? FileManager.default.attributesOfItem(atPath: workspace + "/big"))?[.size] as? Int) ?? -1
        #expect(size > 0 && size <= 16_000_000, "\(size)")
        #expect(!FileManager.default.fileExists(atPath: service.root + "/big"))
        let tail = try service.run(["events", "tail", "--agent-id", "ws", "--lines", "1000"])
        #expect(tail.stdout.contains("\"technique\":\"disk-filler\""), "no disk-filler finding")
        #expect(try service.run(["sandbox", "terminate", "--agent-id", "ws", "--force"]).code == 0)
    }

    /// A signed baseline of the sandbox's workspace; validation is clean until
    /// something changes inside, then names each change; a baseline edited by
    /// hand or made for another agent is refused.
    @Test func integrityBaselineAndValidation() throws {
        let service = try TestService()
        defer { service.tearDown() }
        try service.start()
        let setup = "mkdir -p src && echo one > src/a.txt && echo two > src/b.txt && echo three > c.txt; sleep 60"
        #expect(try service.run(["sandbox", "create", "--agent-id", "int-1", "--", "/bin/sh", "-c", setup]).code == 0)
        #expect(try service.run(["sandbox", "create", "--agent-id", "int-2", "--", "/bin/sh", "-c", "sleep 60"]).code == 0)
        usleep(300_000)
        let made = try service.run(["integrity", "baseline", "--agent-id", "int-1", "--output", "b1.json"], in: service.root)
        #expect(made.code == 0 && made.stdout.contains("written to b1.json"), "\(made.stderr)")
        // The baseline keeps the behaviour window: the syscalls the sandbox made, by name.
        let signed = (try? JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: service.root + "/b1.json")))) as? [String: Any]
        let behaviour = (signed?["baseline"] as? [String: Any])?["behaviour"] as? [String: Any]
        let syscalls = behaviour?["syscalls"] as? [String: Any] ?? [:]
        #expect(syscalls["execve"] != nil && syscalls.count > 10, "\(syscalls.keys.sorted())")
        let clean = try service.run(["integrity", "debug-validate", "--agent-id", "int-1", "--baseline", "b1.json", "--trace"],
                                    in: service.root)
        #expect(clean.code == 0 && clean.stdout.contains("VALID") && clean.stdout.contains(" us  read and hash /workspace again"),
                "\(clean.stdout) \(clean.stderr)")
        // A second baseline only deliberately.
        let again = try service.run(["integrity", "baseline", "--agent-id", "int-1"])
        #expect(again.code == 73 && again.stderr.contains("pass --update"), "\(again.stderr)")
        #expect(try service.run(["integrity", "baseline", "--agent-id", "int-1", "--update", "--output", "b2.json"], in: service.root).code == 0)
        let listed = try service.run(["integrity", "baseline", "--list", "--agent-id", "int-1", "--format", "json"])
        let baselines = (try? JSONSerialization.jsonObject(with: Data(listed.stdout.utf8))) as? [[String: Any]] ?? []
        #expect(baselines.count == 2 && baselines.allSatisfy { $0["agentID"] as? String == "int-1" }, "\(listed.stdout)")

        let change = "echo changed > src/a.txt && chmod 700 src/b.txt && rm c.txt && echo new > d.txt"
        #expect(try service.run(["sandbox", "exec", "--agent-id", "int-1", "--", "/bin/sh", "-c", change]).code == 0)
        let dirty = try service.run(["sandbox", "validate", "--agent-id", "int-1", "--baseline", "b1.json", "--format", "json"],
                                    in: service.root)
        #expect(dirty.code == 1, "\(dirty.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(dirty.stdout.utf8)) as? [String: Any])
        let dimensions = report["dimensions"] as? [[String: Any]] ?? []
        let findings = (dimensions.first?["findings"] as? [[String: Any]] ?? []).map { "\($0["change"] ?? "") \($0["path"] ?? "")" }
        #expect(Set(findings) == ["content /workspace/src/a.txt", "permissions /workspace/src/b.txt", "deleted /workspace/c.txt",
                                  "created /workspace/d.txt"], "\(findings)")

        // Tampered (one hash changed by hand) and foreign-agent baselines are refused.
        var text = try String(contentsOfFile: service.root + "/b1.json", encoding: .utf8)
        let hash = try #require(text.range(of: #""hash" : "[0-9a-f]{64}""#, options: .regularExpression))
        text.replaceSubrange(hash, with: "\"hash\" : \"" + String(repeating: "0", count: 64) + "\"")
        try text.write(toFile: service.root + "/tampered.json", atomically: true, encoding: .utf8)
        let tampered = try service.run(["integrity", "validate", "--agent-id", "int-1", "--baseline", "tampered.json"], in: service.root)
        #expect(tampered.code == 68 && tampered.stderr.contains("tampered"), "\(tampered.stderr)")
        let foreign = try service.run(["integrity", "validate", "--agent-id", "int-2", "--baseline", "b1.json"], in: service.root)
        #expect(foreign.code == 68 && foreign.stderr.contains("baseline of agent 'int-1', not 'int-2'"), "\(foreign.stderr)")
        try "{\"baseline\": ".write(toFile: service.root + "/cut.json", atomically: true, encoding: .utf8)
        let cut = try service.run(["integrity", "validate", "--agent-id", "int-1", "--baseline", "cut.json"], in: service.root)
        #expect(cut.code == 68 && cut.stderr.contains("not an alcub3 baseline"), "\(cut.stderr)")
    }

    /// Once a sandbox has a baseline, the service validates it every
    /// check_interval from the paths file-write telemetry marked dirty, and
    /// stores each change as an alert, once.
    @Test func theServiceValidatesFromFileEvents() throws {
        let service = try TestService(configuration: TestService.quickIntegrityChecks)
        defer { service.tearDown() }
        try service.start()
        let script = "echo one > a.txt; echo two > b.txt; sleep 1.5; echo changed > a.txt; chmod 700 b.txt; sleep 60"
        #expect(try service.run(["sandbox", "create", "--agent-id", "watch-1", "--", "/bin/sh", "-c", script]).code == 0)
        usleep(500_000)
        #expect(try service.run(["integrity", "baseline", "--agent-id", "watch-1", "--output", "w.json"], in: service.root).code == 0)
        usleep(3_500_000)  // the change at 1.5 s, then a cycle (1 s)
        let tail = try service.run(["events", "tail", "--agent-id", "watch-1", "--kind", "alert", "--lines", "100"])
        let findings = tail.stdout.split(separator: "\n").filter { $0.contains("\"class_uid\":2004") }
        #expect(findings.contains { $0.contains("integrity-content") && $0.contains("/workspace/a.txt") && $0.contains("\"found_by\":\"event\"") },
                "\(tail.stdout.prefix(1500))")
        #expect(findings.contains { $0.contains("integrity-permissions") && $0.contains("/workspace/b.txt") })
        #expect(findings.contains { $0.contains("\"cause\":\"") && $0.contains("by pid") }, "no cause recorded")
        let monitor = try service.run(["sandbox", "monitor", "--agent-id", "watch-1", "--count", "1", "--format", "json"])
        #expect(monitor.stdout.contains("unresolved changes after"), "\(monitor.stdout.prefix(800))")
        #expect(findings.filter { $0.contains("integrity-content") }.count == 1, "reported more than once")
        #expect(try service.run(["sandbox", "terminate", "--agent-id", "watch-1", "--force"]).code == 0)
    }

    /// The baseline also keeps each process's executable memory and the
    /// sandbox's behaviour: code changed in a running process and a program
    /// never run before are both found.
    @Test func memoryAndBehaviourAreValidated() throws {
        let service = try TestService()
        defer { service.tearDown() }
        try service.start()
        let (created, record) = try service.create("mem-1", unclassified: "pids_limit: 64", "sleep 1000 & while :; do sleep 0.2; done")
        #expect(created.code == 0, "\(created.stderr)")
        let initPID = record?["initPID"] as? Int ?? 0
        usleep(600_000)
        #expect(try service.run(["integrity", "baseline", "--agent-id", "mem-1", "--output", "m.json"], in: service.root).code == 0)
        let clean = try service.run(["integrity", "validate", "--agent-id", "mem-1", "--baseline", "m.json", "--format", "json"],
                                    in: service.root)
        #expect(clean.code == 0, "\(clean.stdout)")

        // One byte of the init's code (the last of its first executable mapping) changed from outside.
        let maps = try String(contentsOfFile: "/proc/\(initPID)/maps", encoding: .utf8)
        let text = try #require(maps.split(separator: "\n").first { $0.split(separator: " ")[1].contains("x") })
        let end = try #require(UInt64(text.split(separator: " ")[0].split(separator: "-")[1], radix: 16))
        let mem = open("/proc/\(initPID)/mem", O_RDWR)
        #expect(mem >= 0)
        var byte: UInt8 = 0
        #expect(pread(mem, &byte, 1, off_t(end - 1)) == 1)
        byte ^= 0xff
        #expect(pwrite(mem, &byte, 1, off_t(end - 1)) == 1)
        close(mem)
        #expect(try service.run(["sandbox", "exec", "--agent-id", "mem-1", "--", "/usr/bin/python3", "-c", "pass"]).code == 0)
        // A program the baseline knows (sleep), started again with a library preloaded.
        #expect(try service.run(["sandbox", "exec", "--agent-id", "mem-1", "--", "/bin/sh", "-c",
                                 "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libz.so.1 sleep 5 > /dev/null 2>&1 &"]).code == 0)
        usleep(300_000)

        let dirty = try service.run(["integrity", "validate", "--agent-id", "mem-1", "--baseline", "m.json", "--format", "json"],
                                    in: service.root)
        #expect(dirty.code == 1, "\(dirty.stdout) \(dirty.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(dirty.stdout.utf8)) as? [String: Any])
        let dimensions = Dictionary(uniqueKeysWithValues: (report["dimensions"] as? [[String: Any]] ?? []).map { ($0["name"] as? String ?? "", $0) })
        let memory = (dimensions["memory"]?["findings"] as? [[String: Any]] ?? []).compactMap { $0["cause"] as? String }
        #expect(memory.contains { $0.hasPrefix("codeModified in pid \(initPID)") }, "\(memory)")
        #expect(memory.contains { $0.hasPrefix("libraryInjected") }, "no injected library found: \(memory)")
        let behaviour = (dimensions["behaviour"]?["findings"] as? [[String: Any]] ?? []).map { "\($0["new"] ?? "") \($0["path"] ?? "")" }
        #expect(behaviour.contains("new program /usr/bin/python3"), "\(behaviour)")
        #expect(try service.run(["sandbox", "terminate", "--agent-id", "mem-1", "--force"]).code == 0)
    }

    /// Records of a sandbox's first milliseconds (before the service has
    /// registered it) are held and stored, not lost.
    @Test func theFirstRecordsOfASandboxAreKept() throws {
        let service = try TestService()
        defer { service.tearDown() }
        try service.start()
        let (created, _) = try service.create("early", unclassified: "pids_limit: 64", "echo early > first.txt; exec sleep 60")
        #expect(created.code == 0, "\(created.stderr)")
        // The sandbox is quiet from here on: nothing but the service itself may
        // bring the held records to the store.
        var tail = try service.run(["events", "tail", "--agent-id", "early", "--lines", "1000"])
        for _ in 0..<50 where !tail.stdout.contains("/workspace/first.txt") {
            usleep(100_000)
            tail = try service.run(["events", "tail", "--agent-id", "early", "--lines", "1000"])
        }
        #expect(tail.stdout.contains("/workspace/first.txt"), "the first write was lost: \(tail.stdout.prefix(1200)) \(tail.stderr)")
        #expect(tail.stdout.contains("\"name\":\"sh\""), "the first exec was lost")
        #expect(try service.run(["sandbox", "terminate", "--agent-id", "early", "--force"]).code == 0)
    }

    @Test func networkClassesAreEnforcedInTheKernel() throws {
        let service = try TestService()
        defer { service.tearDown() }
        try service.start()
        let host = try HostListener(address: 0x7f00_0001)       // 127.0.0.1
        let other = try HostListener(address: 0x7f00_0002)      // 127.0.0.2
        let connect = { (ip: String, port: UInt16) in
            ["--", "/usr/bin/python3", "-c", "import socket,sys; s=socket.socket(); s.settimeout(2); sys.exit(s.connect_ex((\"\(ip)\", \(port))))"]
        }
        // CONFIDENTIAL: intranet, the private and loopback ranges.
        #expect(try service.run(["sandbox", "create", "--agent-id", "net-c", "--classification", "CONFIDENTIAL",
                                 "--isolation-level", "process"]).code == 0)
        #expect(try service.run(["sandbox", "exec", "--agent-id", "net-c"] + connect("127.0.0.1", host.port)).code == 0)
        // SECRET with one listed network and port: everything else is refused.
        try """
            sandbox_configuration:
              default_policies:
                SECRET: {allowed_destinations: ["127.0.0.2/32"], allowed_ports: [\(other.port)], on_violation: "alert"}
            """.write(toFile: service.root + "/listed.yaml", atomically: true, encoding: .utf8)
        let created = try service.run(["sandbox", "create", "--agent-id", "net-s", "--classification", "SECRET",
                                       "--isolation-level", "process", "--policy-file", "listed.yaml"], in: service.root)
        #expect(created.code == 0, "\(created.stderr)")
        #expect(try service.run(["sandbox", "exec", "--agent-id", "net-s"] + connect("127.0.0.2", other.port)).code == 0)
        #expect(try service.run(["sandbox", "exec", "--agent-id", "net-s"] + connect("127.0.0.1", host.port)).code == 1)  // EPERM
        #expect(try service.run(["sandbox", "exec", "--agent-id", "net-s"] + connect("127.0.0.2", host.port)).code == 1)  // port not listed
        #expect(other.accepted == 1)
        // Changed live: 127.0.0.1 on the host listener's port, from the next connect on.
        let bad = try service.run(["sandbox", "policy", "set", "--agent-id", "net-s", "--allowed-destination", "127.0.0.300/32"])
        #expect(bad.code == 68 && bad.stderr.contains("127.0.0.300"), "\(bad.stderr)")
        let badPort = try service.run(["sandbox", "policy", "set", "--agent-id", "net-s", "--allowed-destination", "127.0.0.1/32",
                                       "--allowed-port", "70000"])
        #expect(badPort.code == 68 && badPort.stderr.contains("70000"), "\(badPort.stderr)")
        // The refused changes left the running policy as it was.
        #expect(try service.run(["sandbox", "exec", "--agent-id", "net-s"] + connect("127.0.0.2", other.port)).code == 0)
        let set = try service.run(["sandbox", "policy", "set", "--agent-id", "net-s", "--allowed-destination", "127.0.0.1/32",
                                   "--allowed-port", String(host.port)])
        #expect(set.code == 0, "\(set.stderr)")
        #expect(try service.run(["sandbox", "exec", "--agent-id", "net-s"] + connect("127.0.0.1", host.port)).code == 0)
        #expect(try service.run(["sandbox", "exec", "--agent-id", "net-s"] + connect("127.0.0.2", other.port)).code == 1)
        usleep(300_000)
        let events = try service.run(["events", "tail", "--agent-id", "net-s", "--kind", "network"])
        #expect(events.stdout.contains("\"status_code\":\"EPERM\"") && events.stdout.contains("\"ip\":\"127.0.0.1\""),
                "\(events.stdout.prefix(600))")
    }

    @Test func badInputIsRefusedWithOneLine() throws {
        let service = try TestService()
        defer { service.tearDown() }
        try service.start()
        let cases: [([String], Int32, String)] = [
            (["sandbox", "create", "--agent-id", "x", "--classification", "COSMIC"], 65, "unknown classification 'COSMIC'"),
            (["sandbox", "create", "--agent-id", "x", "--isolation-level", "cloud"], 64, "unknown isolation level 'cloud'"),
            (["sandbox", "create", "--agent-id", "../x"], 66, "invalid agent id"),
            (["sandbox", "create", "--agent-id", "x", "--policy-file", "/nonexistent.yaml"], 68, "policy file not found"),
            (["sandbox", "exec", "--agent-id", "nobody-here", "--", "true"], 72, "no running sandbox"),
            (["sandbox", "list", "--status", "sleeping"], 64, "unknown status 'sleeping'"),
        ]
        for (arguments, code, message) in cases {
            let r = try service.run(arguments)
            #expect(r.code == code, "\(arguments): \(r.stderr)")
            #expect(r.stderr.contains(message), "\(arguments): \(r.stderr)")
        }
        // Policy files: located errors, the nearest valid key, units.
        let files: [(String, String, String)] = [
            ("typo.yaml", "sandbox_configuration:\n  default_policies:\n    SECRET: {memroy_limit: \"1GB\"}\n",
             "typo.yaml:3:14: unknown key 'memroy_limit' in sandbox_configuration.default_policies.SECRET; did you mean 'memory_limit'?"),
            ("bad.yaml", "sandbox_configuration:\n  default_policies:\n    SECRET: {memory_limit: \"1GB\"\n", "bad.yaml:4:1: malformed YAML"),
            ("zero.yaml", "sandbox_configuration:\n  default_policies:\n    UNCLASSIFIED: {cpu_limit: \"0\"}\n", "cpu_limit: '0' is zero"),
            ("neg.yaml", "sandbox_configuration:\n  default_policies:\n    UNCLASSIFIED: {memory_limit: \"-1GB\"}\n", "memory_limit"),
            ("junk.yaml", "sandbox_configuration:\n  default_policies:\n    UNCLASSIFIED: {memory_limit: \"lots\"}\n", "memory_limit"),
        ]
        for (name, text, message) in files {
            try text.write(toFile: service.root + "/" + name, atomically: true, encoding: .utf8)
            let r = try service.run(["sandbox", "create", "--agent-id", "p", "--policy-file", name], in: service.root)
            #expect(r.code == 68, "\(name): \(r.stderr)")
            #expect(r.stderr.contains(message) && r.stderr.split(separator: "\n").count == 1, "\(name): \(r.stderr)")
        }
        try "sandbox_configuration:\n  default_policies:\n    UNCLASSIFIED: {memory_limit: \"512Mi\"}\n"
            .write(toFile: service.root + "/mi.yaml", atomically: true, encoding: .utf8)
        let dry = try service.run(["sandbox", "create", "--agent-id", "p", "--policy-file", "mi.yaml", "--dry-run"], in: service.root)
        #expect(dry.code == 0 && dry.stdout.contains("\"memoryBytes\" : 536870912"), "\(dry.stdout.prefix(400))")
        let list = try service.run(["sandbox", "list", "--status", "all", "--format", "json"])
        #expect(list.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "[\n\n]" || list.stdout.contains("[]"), "\(list.stdout)")
        // A user that is not root (nor in the configured group) is refused.
        let nobody = try service.run(["sandbox", "list"], autoStart: false, as: 65534)
        #expect(nobody.code == 77 || nobody.code == 69, "\(nobody)")
        #expect(nobody.stderr.contains("not allowed") || nobody.stderr.contains("may not use"), "\(nobody.stderr)")
    }
}

/// A TCP listener on the host's loopback, outside every sandbox, counting accepts.
final class HostListener: @unchecked Sendable {
    let fd: Int32
    let port: UInt16
    var accepted: Int { acceptedCount }
    private var acceptedCount = 0

    init(address: UInt32 = 0x7f00_0001) throws {
        let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = address.bigEndian
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(s, 8)
        var bound = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &bound) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(s, $0, &length) } }
        fd = s
        port = UInt16(bigEndian: bound.sin_port)
        Thread.detachNewThread { [self] in
            while true {
                let c = accept(fd, nil, nil)
                if c < 0 { return }
                acceptedCount += 1
                close(c)
            }
        }
    }

    deinit { shutdown(fd, Int32(SHUT_RDWR)); close(fd) }
}
