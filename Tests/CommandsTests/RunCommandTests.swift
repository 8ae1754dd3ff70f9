import Foundation
import Testing

/// `alcub3 run` as a user runs it: the built binary, real kernel, real output.
let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
let binary = packageRoot.appendingPathComponent(".build/debug/alcub3").path
let isRoot = geteuid() == 0

struct Result {
    let code: Int32
    let stdout: String
    let stderr: String
    /// JSON objects on either stream: alcub3's records (stdout) and, with
    /// --format json, the agent's own output (stderr), as the escape attacker prints.
    var jsonLines: [[String: Any]] {
        (stdout + "\n" + stderr).split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }
}

func alcub3(_ arguments: [String], in directory: String? = nil) throws -> Result {
    try runProgram(binary, arguments, in: directory)
}

/// Runs a program to its end and returns its exit code and output: the one
/// runner of the command tests. stdin is /dev/null, so a run never finds a
/// terminal (and never relays one) whoever starts the tests.
func runProgram(_ executable: String, _ arguments: [String], environment: [String: String]? = nil,
                in directory: String? = nil) throws -> Result {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: executable)
    p.arguments = arguments
    if let environment { p.environment = environment }
    if let directory { p.currentDirectoryURL = URL(fileURLWithPath: directory) }
    p.standardInput = FileHandle.nullDevice
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return Result(code: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
}

/// A file holding `text`, for the bad-input cases (in the temporary directory, named by its content).
func badProfile(_ text: String) -> String {
    let path = NSTemporaryDirectory() + "alcub3-bad-\(UInt64(bitPattern: Int64(text.hashValue)))"
    try? text.write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

/// What a run could leave behind: sandbox cgroups and alcub3's BPF programs.
struct HostState: Equatable {
    let sandboxCgroups: [String]
    let bpfPrograms: Int

    /// The kernel frees a closed program shortly after its last fd goes (RCU):
    /// give it up to 3 s to match `expected`.
    /// The state before a test: programs of an earlier test may still be being freed.
    static func baseline() -> HostState {
        var state = now()
        for _ in 0..<60 {
            if state.bpfPrograms == 0 { break }
            usleep(50_000)
            state = now()
        }
        return state
    }

    static func settled(like expected: HostState) -> Bool {
        for _ in 0..<60 {
            if now() == expected { return true }
            usleep(50_000)
        }
        return now() == expected
    }

    static func now() -> HostState {
        let root = ["/sys/fs/cgroup/unified/alcub3", "/sys/fs/cgroup/alcub3"].first { FileManager.default.fileExists(atPath: $0) }
        let cgroups = root.flatMap { try? FileManager.default.contentsOfDirectory(atPath: $0) }?
            .filter { !$0.hasPrefix("cgroup.") && !$0.contains(".") } ?? []
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/sbin/bpftool")
        p.arguments = ["prog", "show"]
        let out = Pipe()
        p.standardOutput = out
        try? p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return HostState(sandboxCgroups: cgroups.sorted(),
                         bpfPrograms: text.split(separator: "\n").filter { $0.contains(" name alcub3_") }.count)
    }
}

/// `alcub3 run --agent-id AGENT -- sleep 30` in the background, returned once
/// its sandbox is up (it announces itself on stderr).
func startSleepingRun(agent: String) throws -> (Process, Pipe) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: binary)
    process.arguments = ["run", "--agent-id", agent, "--", "sleep", "30"]
    let err = Pipe()
    process.standardOutput = FileHandle.nullDevice
    process.standardError = err
    try process.run()
    let announcement = String(decoding: err.fileHandleForReading.availableData, as: UTF8.self)
    #expect(announcement.contains("agent \(agent)"))
    return (process, err)
}

@Suite(.serialized, .enabled(if: isRoot, "needs root: BPF, cgroups and namespaces"))
struct RunCommandTests {
    @Test func jsonStreamHasTheFileWriteAndTheExec() throws {
        let dir = NSTemporaryDirectory() + "alcub3-run-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try alcub3(["run", "--format", "json", "--", "sh", "-c", "echo x > out.txt"], in: dir)
        #expect(r.code == 0, "stderr: \(r.stderr)")
        let events = r.jsonLines
        let fileEvents = events.filter { $0["class_uid"] as? Int == 1001 }
        #expect(fileEvents.contains { (($0["file"] as? [String: Any])?["path"] as? String)?.hasSuffix("/out.txt") == true },
                "file events: \(fileEvents)")
        let execs = events.filter { $0["class_uid"] as? Int == 1007 && $0["activity_id"] as? Int == 1 }
        #expect(execs.contains { (($0["process"] as? [String: Any])?["name"] as? String) == "sh" })
        for event in events where event["class_uid"] != nil {
            #expect((event["sandbox_id"] as? String)?.hasPrefix("sb-") == true)
            #expect(event["agent_id"] as? String != nil)
            #expect((event["time_dt"] as? String)?.count == 30)  // 2026-11-29T04:24:01.123456789Z
            let actor = (event["actor"] as? [String: Any])?["process"] as? [String: Any]
            #expect(actor?["pid"] as? Int != nil && actor?["tid"] as? Int != nil)
        }
        #expect(events.last?["record"] as? String == "run_summary")
        #expect(FileManager.default.fileExists(atPath: dir + "/out.txt"))
    }

    @Test func exitCodesPassThrough() throws {
        #expect(try alcub3(["run", "--", "sh", "-c", "exit 42"]).code == 42)
        #expect(try alcub3(["run", "--", "sh", "-c", "kill -KILL $$"]).code == 137)
    }

    @Test(arguments: [
        (["run"], Int32(64), "no command"),
        (["run", "--"], Int32(64), "no command"),
        (["run", "--classification", "COSMIC", "--", "true"], Int32(65), "unknown classification 'COSMIC'"),
        (["run", "--agent-id", "a/b", "--", "true"], Int32(66), "invalid agent id"),
        (["run", "--agent-id", "..", "--", "true"], Int32(66), "invalid agent id"),
        (["run", "--agent-id", "bad\u{1}id", "--", "true"], Int32(66), "control character 0x01"),
        (["run", "--", "no-such-command-alcub3"], Int32(127), "command not found: no-such-command-alcub3"),
        // An option run does not know, before --, is a usage error, not a command to look up.
        (["run", "--allow-domain", "pypi.org", "--", "true"], Int32(64), "unknown option '--allow-domain'"),
        (["run", "-x", "true"], Int32(64), "unknown option '-x'"),
        (["run", "--", "--no-such-command"], Int32(127), "command not found: --no-such-command"),
        (["run", "--isolation-level", "sandbox", "--", "true"], Int32(64), "unknown isolation level 'sandbox'"),
        (["run", "--isolation-level", "hardware", "--boot-timeout", "0", "--", "true"], Int32(64), "--boot-timeout must be between 0 and 3600"),
        (["run", "--seccomp-profile", "/nonexistent/profile.json", "--", "true"], Int32(68), "cannot read the seccomp profile"),
        (["run", "--seccomp-profile", badProfile(#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdri"], "action": "SCMP_ACT_ERRNO"}]}"#),
          "--", "true"], Int32(68), "unknown syscall 'mkdri'; did you mean 'mkdir'?"),
        (["run", "--seccomp-profile", badProfile(#"{"defaultAction": "SCMP_ACT_BLOCK"}"#), "--", "true"], Int32(68),
         "unknown action 'SCMP_ACT_BLOCK'"),
        (["run", "--seccomp-profile", badProfile(#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["execve"], "action": "SCMP_ACT_ERRNO"}]}"#),
          "--", "true"], Int32(68), "refuses execve, which the sandbox's init needs"),
        (["run", "--policy-file", badProfile("sandbox_configuration:\n  default_policies:\n    UNCLASSIFIED: {allowed_destinations: [\"10.0.0.1/8\"]}\n"),
          "--", "true"], Int32(68), "did you mean 10.0.0.0/8?"),
        (["run", "--policy-file", badProfile("sandbox_configuration:\n  default_policies:\n    UNCLASSIFIED: {allowed_ports: [0]}\n"),
          "--", "true"], Int32(68), "port 0 is outside 1 to 65535"),
    ])
    func badInputGetsOneClearLineAndLeavesNothing(arguments: [String], code: Int32, message: String) throws {
        let before = HostState.baseline()
        let r = try alcub3(arguments)
        #expect(r.code == code, "stderr: \(r.stderr)")
        let lines = r.stderr.split(separator: "\n")
        #expect(lines.count <= 2, "stderr: \(r.stderr)")  // the error, and ArgumentParser's usage hint for usage errors
        #expect(r.stderr.contains(message), "stderr: \(r.stderr)")
        #expect(HostState.settled(like: before))
    }

    @Test func secondRunWithTheSameAgentIsRefused() throws {
        let before = HostState.baseline()
        let (first, firstErr) = try startSleepingRun(agent: "twice")
        let second = try alcub3(["run", "--agent-id", "twice", "--", "true"])
        #expect(second.code == 73)
        #expect(second.stderr.contains("agent id 'twice' is already in use"), "stderr: \(second.stderr)")
        kill(first.processIdentifier, SIGINT)
        first.waitUntilExit()
        let rest = String(decoding: firstErr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(first.terminationStatus == 130, "first run: \(rest)")
        #expect(HostState.settled(like: before))
    }

    @Test func nothingIsLeftAfterANormalRun() throws {
        let before = HostState.baseline()
        let r = try alcub3(["run", "--", "sh", "-c", "sleep 0.1 & sleep 0.1 & wait"])
        #expect(r.code == 0)
        #expect(HostState.settled(like: before))
        #expect(!FileManager.default.fileExists(atPath: "/run/alcub3/agents/twice.lock"))
    }

    /// kill -9 gives alcub3 no chance to clean up: the sandbox dies with it
    /// (its init has PR_SET_PDEATHSIG) and the next run removes the empty cgroup.
    @Test func aKilledRunLeavesNothingTheNextRunDoesNotRemove() throws {
        let before = HostState.baseline()
        let (victim, _) = try startSleepingRun(agent: "victim")
        kill(victim.processIdentifier, SIGKILL)
        victim.waitUntilExit()
        // The sandbox's processes die with their supervisor.
        var sleeping = true
        for _ in 0..<100 where sleeping {
            usleep(20_000)
            sleeping = HostState.now().sandboxCgroups.contains { name in
                let procs = (try? String(contentsOfFile: "/sys/fs/cgroup/unified/alcub3/\(name)/cgroup.procs", encoding: .utf8)) ?? ""
                return !procs.isEmpty
            }
        }
        #expect(!sleeping, "the sandbox outlived its killed supervisor")
        let next = try alcub3(["run", "--agent-id", "victim", "--", "true"])
        #expect(next.code == 0, "stderr: \(next.stderr)")
        #expect(HostState.settled(like: before))
    }

    /// The read-only system view: the working directory and a private /tmp are
    /// writable; host files, cgroupfs and /proc/sys are not.
    @Test func theSystemViewIsReadOnly() throws {
        let dir = NSTemporaryDirectory() + "alcub3-ro-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let marker = "alcub3-private-tmp-\(getpid())"
        let script = """
            echo a > workspace.txt || exit 10
            echo b > /tmp/\(marker) || exit 11
            echo c > /etc/alcub3-ro-test 2>/dev/null && exit 12
            echo 0 > /sys/fs/cgroup/unified/cgroup.procs 2>/dev/null && exit 13
            echo 0 > /proc/sys/kernel/sysrq 2>/dev/null && exit 14
            mkdir /usr/alcub3-ro-test 2>/dev/null && exit 15
            exit 0
            """
        let r = try alcub3(["run", "--", "sh", "-c", script], in: dir)
        #expect(r.code == 0, "exit \(r.code): \(r.stderr)")
        #expect(FileManager.default.fileExists(atPath: dir + "/workspace.txt"))
        #expect(!FileManager.default.fileExists(atPath: "/tmp/" + marker), "the sandbox's /tmp is the host's")
        #expect(!FileManager.default.fileExists(atPath: "/etc/alcub3-ro-test"))
    }

    /// The policy's hidden paths are empty inside; a program under one is refused
    /// before anything is made, with a line saying why.
    @Test func hiddenPathsAreEmptyInside() throws {
        let r = try alcub3(["run", "--format", "json", "--", "sh", "-c", "echo shadow=$(cat /etc/shadow | wc -c) root=$(ls -A /root | wc -l)"])
        #expect(r.code == 0, "\(r.stderr)")
        #expect(r.stderr.contains("shadow=0 root=0"), "\(r.stderr.prefix(300))")
        let program = "/root/.alcub3-hidden-test-\(getpid())"
        try "#!/bin/sh\necho should-not-run\n".write(toFile: program, atomically: true, encoding: .utf8)
        chmod(program, 0o755)
        defer { unlink(program) }
        let before = HostState.baseline()
        let hidden = try alcub3(["run", "--", program])
        #expect(hidden.code == 127)
        #expect(hidden.stderr.contains("which the sandbox cannot see (the policy hides /root)"), "\(hidden.stderr)")
        #expect(HostState.settled(like: before))
    }
}
