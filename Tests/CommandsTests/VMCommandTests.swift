import Foundation
import Testing

/// The vm guest image of scripts/build-guest.sh, built once for every test here (.build/guest).
enum VMGuest {
    static let directory: String = {
        let dir = packageRoot.appendingPathComponent(".build/guest").path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = [packageRoot.appendingPathComponent("scripts/build-guest.sh").path, dir]
        p.standardOutput = FileHandle.nullDevice
        try? p.run()
        p.waitUntilExit()
        return dir
    }()
}

extension VMGuest {
    /// A copy of the guest image (hard links: replace a file, never write into it); the caller removes the directory.
    static func copy() throws -> String {
        let copy = NSTemporaryDirectory() + "alcub3-guest-" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
        try FileManager.default.createDirectory(atPath: copy, withIntermediateDirectories: true)
        for file in ["MANIFEST", "vmlinux", "initramfs.cpio", "initramfs-python.cpio"] {
            try FileManager.default.linkItem(atPath: directory + "/" + file, toPath: copy + "/" + file)
        }
        return copy
    }

    /// Replaces `file` with a private copy whose byte at `offset` is flipped.
    static func flipByte(at offset: Int, of file: String) throws {
        var bytes = try Data(contentsOf: URL(fileURLWithPath: file))
        bytes[offset] ^= 0x01
        try FileManager.default.removeItem(atPath: file)
        try bytes.write(to: URL(fileURLWithPath: file))
    }

    /// A copy of the guest image whose initramfs `name` has the byte at
    /// `offset` flipped; the caller removes the directory. The default
    /// policies have the python capability, so they boot initramfs-python.cpio.
    static func copyWithInitramfsByteFlipped(at offset: Int, name: String = "initramfs-python.cpio") throws -> String {
        let copy = try copy()
        try flipByte(at: offset, of: copy + "/" + name)
        return copy
    }
}

extension VMGuest {
    /// A copy of the guest image whose initramfs-python.cpio holds no /init
    /// (the kernel panics before the agent's HELLO, every boot), its manifest
    /// saying so, so the image check passes; the caller removes the directory.
    static func copyWithoutInit() throws -> String {
        let copy = NSTemporaryDirectory() + "alcub3-guest-" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
        try FileManager.default.createDirectory(atPath: copy + "/root/dev", withIntermediateDirectories: true)
        try FileManager.default.linkItem(atPath: directory + "/vmlinux", toPath: copy + "/vmlinux")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", "cd \(copy)/root && find . | cpio -o -H newc --quiet > ../initramfs-python.cpio && cd .. && "
                       + "grep -v 'initramfs-python.cpio$' \(directory)/MANIFEST > MANIFEST && sha256sum initramfs-python.cpio >> MANIFEST"]
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw CocoaError(.fileWriteUnknown) }
        return copy
    }
}

/// `alcub3` with extra environment variables.
func alcub3(_ arguments: [String], environment extra: [String: String]) throws -> Result {
    try runProgram(binary, arguments, environment: ProcessInfo.processInfo.environment.merging(extra) { $1 })
}

/// What a vm sandbox could leave: its directory under /run/alcub3/vms (socket,
/// console log) and QEMU processes started from one.
func vmLeftovers() -> [String] {
    let dirs = ((try? FileManager.default.contentsOfDirectory(atPath: "/run/alcub3/vms")) ?? []).map { "/run/alcub3/vms/" + $0 }
    let qemus = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap(Int32.init).filter { pid in
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
        return String(decoding: data, as: UTF8.self).contains("/run/alcub3/vms/")
    }
    return dirs + qemus.map { "qemu pid \($0)" }
}

@Suite(.serialized, .enabled(if: isRoot, "needs root: BPF, cgroups, QEMU"))
struct VMRunTests {
    /// One boot: output and exit code pass through, and an exec, a file write
    /// and a connect made inside the guest arrive in the stream with the sandbox's id.
    @Test func guestOutputExitCodeAndEventsPassThrough() throws {
        let before = HostState.baseline()
        let r = try alcub3(["run", "--isolation-level", "vm", "--guest-image", VMGuest.directory, "--format", "json", "--",
                            "sh", "-c", "echo hello from the guest; echo data > /root/written; nc 127.0.0.1 9 </dev/null; exit 7"])
        #expect(r.code == 7, "\(r.stderr)")
        // With --format json the guest's output is on stderr, the records alone on stdout.
        #expect(r.stderr.contains("hello from the guest\n"), "\(r.stderr.prefix(300))")
        let lines = r.jsonLines
        let summary = try #require(lines.last)
        let sandbox = try #require(summary["sandbox_id"] as? String)
        let ofSandbox = lines.filter { $0["sandbox_id"] as? String == sandbox }
        let json = ofSandbox.map { String(decoding: try! JSONSerialization.data(withJSONObject: $0, options: .withoutEscapingSlashes), as: UTF8.self) }
        #expect(json.contains { $0.contains("\"Launch\"") && $0.contains("echo hello from the guest") }, "no exec of the guest's sh")
        #expect(json.contains { $0.contains("/root/written") }, "no file write in the guest")
        #expect(json.contains { $0.contains("127.0.0.1") && $0.contains("\"port\":9") }, "no connect in the guest")
        // QEMU's own start is watched by the host, and raises nothing.
        #expect(json.contains { $0.contains("qemu-system-x86_64") })
        #expect((summary["alerts"] as? [String: Any])?.isEmpty ?? true, "\(summary)")
        #expect(vmLeftovers().isEmpty, "\(vmLeftovers())")
        #expect(!FileManager.default.fileExists(atPath: "/sys/fs/cgroup/unified/alcub3/\(sandbox)")
                && !FileManager.default.fileExists(atPath: "/sys/fs/cgroup/alcub3/\(sandbox)"), "the sandbox's cgroup is left")
        _ = before
    }

    /// A guest that never boots in time: one line with the console's last
    /// lines, QEMU killed, nothing left.
    @Test func bootTimeoutLeavesNothing() throws {
        let before = HostState.baseline()
        let r = try alcub3(["run", "--isolation-level", "vm", "--guest-image", VMGuest.directory, "--boot-timeout", "0.5", "--", "true"])
        #expect(r.code == 76, "\(r.stderr)")
        #expect(r.stderr.contains("did not boot within 0 s") || r.stderr.contains("did not boot within"), "\(r.stderr)")
        #expect(r.stderr.contains("console's last lines"))
        #expect(vmLeftovers().isEmpty, "\(vmLeftovers())")
        #expect(HostState.settled(like: before), "left behind after a failed start")
    }

    /// An initramfs changed after it was built is refused before QEMU starts.
    @Test func alteredInitramfsIsRefused() throws {
        let copy = try VMGuest.copyWithInitramfsByteFlipped(at: 4096)
        defer { try? FileManager.default.removeItem(atPath: copy) }
        let before = HostState.baseline()
        let r = try alcub3(["run", "--isolation-level", "vm", "--guest-image", copy, "--", "true"])
        #expect(r.code == 74, "\(r.stderr)")
        #expect(r.stderr.contains("failed validation") && r.stderr.contains("initramfs-python.cpio"), "\(r.stderr)")
        #expect(vmLeftovers().isEmpty && HostState.settled(like: before))
    }

    /// The guest's network is QEMU's user-mode network, whose host side (QEMU's
    /// sockets, in the sandbox cgroup) the cgroup network policy decides. With
    /// the default policy (internet) the guest reaches a listener on the host's
    /// loopback (10.0.2.2 in the guest); the policy's python runtime is in the
    /// guest. With classified_network listing 192.0.2.0/24 only, the same
    /// connect is refused and reported; the listener sees nothing.
    @Test func guestNetworkFollowsThePolicyAndPythonRunsInTheGuest() throws {
        let before = HostState.baseline()
        let listener = try HostListener()
        let script = "ls /sys/class/net; python3 -c 'import json, ssl, sqlite3; print(json.dumps({\"py\": 3}))'; "
            + "echo hi | nc -w 5 10.0.2.2 \(listener.port); echo nc=$?"
        let open = try alcub3(["run", "--isolation-level", "vm", "--guest-image", VMGuest.directory, "--", "sh", "-c", script])
        #expect(open.code == 0, "\(open.stderr.suffix(600))")
        #expect(open.stdout.contains("eth0") && open.stdout.contains("{\"py\": 3}") && open.stdout.contains("nc=0"), "\(open.stdout.suffix(600))")
        #expect(open.stderr.contains("python runtime, user-mode network"), "\(open.stderr.prefix(400))")
        #expect(listener.accepted == 1, "the guest's connection did not reach the host's listener")

        let listed = badProfile("sandbox_configuration:\n  default_policies:\n    UNCLASSIFIED:\n      network_access: [\"classified_network\"]\n"
                                + "      allowed_destinations: [\"192.0.2.0/24\"]\n")
        let refused = try alcub3(["run", "--isolation-level", "vm", "--guest-image", VMGuest.directory, "--policy-file", listed, "--format", "json",
                                  "--", "sh", "-c", "echo hi | nc -w 5 10.0.2.2 \(listener.port); echo nc=$?"])
        #expect(refused.code == 0 && refused.stderr.contains("nc=1"), "\(refused.stderr.suffix(600))")  // the guest's output (json)
        #expect(refused.stdout.contains("network-policy") && refused.stdout.contains("127.0.0.1:\(listener.port) refused with EPERM"),
                "no network-policy finding: \(refused.stdout.suffix(800))")
        #expect(listener.accepted == 1, "a refused connection reached the host")
        #expect(vmLeftovers().isEmpty && HostState.settled(like: before), "\(vmLeftovers())")
    }

    /// A guest kernel that panics before the agent's HELLO (nothing of the
    /// command ran) is booted again, three boots in all; then one error with
    /// the console's words, and nothing left.
    @Test func aGuestKernelPanicIsBootedAgainThenReported() throws {
        let copy = try VMGuest.copyWithoutInit()
        defer { try? FileManager.default.removeItem(atPath: copy) }
        let before = HostState.baseline()
        let r = try alcub3(["run", "--isolation-level", "vm", "--guest-image", copy, "--boot-timeout", "30", "--", "true"])
        #expect(r.code == 76, "\(r.stderr.suffix(600))")
        let retries = r.stderr.components(separatedBy: "the guest kernel panicked while booting (nothing ran); booting it again").count - 1
        #expect(retries == 2, "\(r.stderr.suffix(800))")
        #expect(r.stderr.contains("Kernel panic"), "the console's words are not in the error: \(r.stderr.suffix(600))")
        #expect(vmLeftovers().isEmpty && HostState.settled(like: before), "\(vmLeftovers())")
    }

    /// Without the network capability, or at an air-gapped class, the guest has no network device.
    @Test func anAirGappedGuestHasNoNetworkDevice() throws {
        let airGapped = badProfile("sandbox_configuration:\n  default_policies:\n    UNCLASSIFIED:\n      network_access: [\"air_gapped_only\"]\n"
                                   + "      capabilities: [filesystem_write, subprocess]\n")
        let r = try alcub3(["run", "--isolation-level", "vm", "--guest-image", VMGuest.directory, "--policy-file", airGapped,
                            "--format", "json", "--", "sh", "-c", "ls /sys/class/net; ls /usr/bin/python3 2>/dev/null || echo no python"])
        #expect(r.code == 0, "\(r.stderr.suffix(600))")
        let output = r.stderr.split(separator: "\n").map(String.init)
            .filter { ["lo", "eth0", "no python", "/usr/bin/python3"].contains($0) }
        #expect(output == ["lo", "no python"], "\(r.stderr.suffix(600))")
        #expect(vmLeftovers().isEmpty)
    }

    /// Bad input: one clear line each, nothing started, nothing left.
    @Test func badInputGivesOneLine() throws {
        let before = HostState.baseline()
        let guest = ["--guest-image", VMGuest.directory]
        let noQEMU = try alcub3(["run", "--isolation-level", "vm"] + guest + ["--", "true"], environment: ["ALCUB3_QEMU": "/nonexistent/qemu"])
        #expect(noQEMU.code == 76 && noQEMU.stderr.contains("needs QEMU"), "\(noQEMU.stderr)")
        // A VMM that ends at once (here /bin/false in QEMU's place): started in the sandbox cgroup, then everything removed.
        let early = try alcub3(["run", "--isolation-level", "vm"] + guest + ["--", "true"], environment: ["ALCUB3_QEMU": "/bin/false"])
        #expect(early.code == 76 && early.stderr.contains("QEMU ended before the guest started"), "\(early.stderr)")
        let memory = badProfile("sandbox_configuration:\n  default_policies:\n    UNCLASSIFIED:\n      memory_limit: \"900GB\"\n")
        let big = try alcub3(["run", "--isolation-level", "vm", "--policy-file", memory] + guest + ["--", "true"])
        #expect(big.code == 76 && big.stderr.contains("the host has only"), "\(big.stderr)")
        let cpus = badProfile("sandbox_configuration:\n  default_policies:\n    UNCLASSIFIED:\n      cpu_limit: \"64\"\n")
        let many = try alcub3(["run", "--isolation-level", "vm", "--policy-file", cpus] + guest + ["--", "true"])
        #expect(many.code == 76 && many.stderr.contains("vCPUs"), "\(many.stderr)")
        let missing = try alcub3(["run", "--isolation-level", "vm", "--guest-image", "/nonexistent/guest", "--", "true"])
        #expect(missing.code == 76 && missing.stderr.contains("no vm guest image"), "\(missing.stderr)")
        for r in [noQEMU, big, many, missing] {  // (`early` also prints the host's records of /bin/false's start)
            #expect(r.stderr.split(separator: "\n").count == 1, "more than one line: \(r.stderr)")
        }
        #expect(vmLeftovers().isEmpty && HostState.settled(like: before))
    }

    /// Through the service: the guest's exec, file write and connect appear in
    /// `events tail` for that sandbox; its output and exit code are recorded.
    @Test func serviceVMSandboxEventsInEventsTail() throws {
        setenv("ALCUB3_GUEST_DIR", VMGuest.directory, 1)
        let service = try TestService()
        defer { service.tearDown() }
        let before = HostState.baseline()
        try service.start()
        let created = try service.run(["sandbox", "create", "--agent-id", "vm-1", "--isolation-level", "vm", "--",
                                       "sh", "-c", "echo from the guest; echo data > /root/written; nc 127.0.0.1 9 </dev/null; exit 5"])
        #expect(created.code == 0, "create: \(created.stderr)")
        var tail = ""
        for _ in 0..<300 {
            tail = try service.run(["events", "tail", "--agent-id", "vm-1", "--lines", "5000"]).stdout
            if tail.contains("\"port\":9") && tail.contains("/root/written") { break }
            usleep(100_000)
        }
        #expect(tail.contains("\"Launch\"") && tail.contains("echo from the guest"), "no exec of the guest's sh")
        #expect(tail.contains("/root/written"), "no file write from the guest")
        #expect(tail.contains("127.0.0.1") && tail.contains("\"port\":9"), "no connect from the guest")
        let stopped = try service.stoppedRecord(agentID: "vm-1", seconds: 30)
        #expect(stopped?["exitCode"] as? Int == 5, "\(String(describing: stopped))")
        service.stop()
        #expect(vmLeftovers().isEmpty, "\(vmLeftovers())")
        #expect(HostState.settled(like: before), "left behind after the sandbox ended")
    }

    /// A vm sandbox's integrity baseline: the guest's files as the guest agent
    /// read them (/root, where the command works) and what it booted. A file
    /// the command changes afterwards, and the image changed on disk since the
    /// boot, are found by validation.
    @Test func aVMSandboxBaselineCoversTheGuestsFilesAndItsBoot() throws {
        let image = try VMGuest.copy()
        defer { try? FileManager.default.removeItem(atPath: image); setenv("ALCUB3_GUEST_DIR", VMGuest.directory, 1) }
        setenv("ALCUB3_GUEST_DIR", image, 1)
        let service = try TestService()
        defer { service.tearDown() }
        let before = HostState.baseline()
        try service.start()
        let script = "mkdir -p /root/work && echo one > /root/work/a && ln -s a /root/work/link; sleep 12; echo two > /root/work/a; sleep 60"
        let created = try service.run(["sandbox", "create", "--agent-id", "vm-int", "--isolation-level", "vm", "--", "sh", "-c", script])
        #expect(created.code == 0, "create: \(created.stderr)")
        usleep(1_500_000)
        let made = try service.run(["integrity", "baseline", "--agent-id", "vm-int", "--output", "vm.json"], in: service.root)
        #expect(made.code == 0, "\(made.stderr)")
        let signed = (try? JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: service.root + "/vm.json")))) as? [String: Any]
        let baseline = signed?["baseline"] as? [String: Any] ?? [:]
        let paths = (baseline["entries"] as? [[String: Any]] ?? []).compactMap { $0["path"] as? String }
        #expect(baseline["root"] as? String == "/root" && Set(paths).isSuperset(of: ["", "work", "work/a", "work/link"]), "\(paths)")
        let boot = baseline["boot"] as? [String: Any] ?? [:]
        #expect((boot["initramfsPath"] as? String)?.hasSuffix("/initramfs-python.cpio") == true
                && (boot["commandLine"] as? String)?.contains("alcub3.net=user") == true, "\(boot)")
        let clean = try service.run(["integrity", "validate", "--agent-id", "vm-int", "--baseline", "vm.json", "--format", "json"], in: service.root)
        #expect(clean.code == 0, "\(clean.stdout) \(clean.stderr)")

        // The command rewrites /root/work/a after 12 s; the image is changed on disk meanwhile.
        try VMGuest.flipByte(at: 4096, of: image + "/initramfs-python.cpio")
        var findings: [String] = []
        for _ in 0..<60 {
            let dirty = try service.run(["integrity", "validate", "--agent-id", "vm-int", "--baseline", "vm.json", "--format", "json"], in: service.root)
            let report = (try? JSONSerialization.jsonObject(with: Data(dirty.stdout.utf8))) as? [String: Any] ?? [:]
            findings = (report["dimensions"] as? [[String: Any]] ?? []).flatMap { dimension in
                (dimension["findings"] as? [[String: Any]] ?? []).map { "\(dimension["name"] ?? "") \($0["change"] ?? "") \($0["path"] ?? "")" }
            }
            if findings.contains("filesystem content /root/work/a") { break }
            usleep(500_000)
        }
        #expect(findings.contains("filesystem content /root/work/a"), "\(findings)")
        #expect(findings.contains { $0.hasPrefix("boot content ") && $0.hasSuffix("/initramfs-python.cpio") }, "\(findings)")
        #expect(try service.run(["sandbox", "terminate", "--agent-id", "vm-int"]).code == 0)
        service.stop()
        #expect(vmLeftovers().isEmpty && HostState.settled(like: before), "\(vmLeftovers())")
    }

    /// A service restart (kill -9, then a new service) does not end a vm
    /// sandbox: QEMU reconnects to the new service's channel, which takes it
    /// over; the guest's output and events after the restart arrive, its exit
    /// code is recorded, and nothing is left after it ends.
    @Test func aRestartedServiceTakesARunningGuestOver() throws {
        setenv("ALCUB3_GUEST_DIR", VMGuest.directory, 1)
        let service = try TestService()
        defer { service.tearDown() }
        let before = HostState.baseline()
        try service.start()
        let script = "for i in $(seq 1 24); do echo tick $i; sleep 0.5; done; echo done > /root/after-restart; exit 4"
        let created = try service.run(["sandbox", "create", "--agent-id", "vm-adopt", "--isolation-level", "vm", "--", "sh", "-c", script])
        #expect(created.code == 0, "create: \(created.stderr)")
        let sandboxID = try #require(created.stdout.split(separator: " ").first { $0.hasPrefix("sb-") }.map(String.init), "\(created.stdout)")
        usleep(2_000_000)
        service.kill9()
        usleep(1_500_000)
        try service.start()
        let stopped = try service.stoppedRecord(agentID: "vm-adopt", seconds: 60)
        #expect(stopped?["exitCode"] as? Int == 4, "\(String(describing: stopped)) \(service.log().suffix(1500))")
        let output = (try? String(contentsOfFile: service.root + "/state/sandboxes/\(sandboxID)/output.log", encoding: .utf8)) ?? ""
        let ticks = output.split(separator: "\n").filter { $0.hasPrefix("tick ") }.count
        print("vm takeover: \(ticks) of 24 output lines kept across the restart")
        #expect(output.contains("tick 24\n"), "\(output)")
        let tail = try service.run(["events", "tail", "--agent-id", "vm-adopt", "--lines", "20000"]).stdout
        #expect(tail.contains("/root/after-restart"), "no event of the guest after the restart")
        #expect(tail.contains("monitoring_gap"), "no record of the gap")
        service.stop()
        #expect(vmLeftovers().isEmpty && HostState.settled(like: before), "\(vmLeftovers())")
    }

    /// `sandbox exec` in a vm sandbox runs the command in the guest, beside the
    /// agent's: its output and exit code come back, its events are the
    /// sandbox's, a missing command is 127.
    @Test func sandboxExecRunsInTheGuest() throws {
        setenv("ALCUB3_GUEST_DIR", VMGuest.directory, 1)
        let service = try TestService()
        defer { service.tearDown() }
        let before = HostState.baseline()
        try service.start()
        let created = try service.run(["sandbox", "create", "--agent-id", "vm-exec", "--isolation-level", "vm", "--", "sleep", "120"])
        #expect(created.code == 0, "create: \(created.stderr)")
        let r = try service.run(["sandbox", "exec", "--agent-id", "vm-exec", "--", "sh", "-c",
                                 "echo from the guest exec; python3 -c 'print(6 * 7)'; echo to stderr >&2; cat /proc/1/comm; exit 3"])
        #expect(r.code == 3, "\(r.stderr)")
        #expect(r.stdout == "from the guest exec\n42\ninit\n", "\(r.stdout)")
        #expect(r.stderr.contains("to stderr"), "\(r.stderr)")
        let missing = try service.run(["sandbox", "exec", "--agent-id", "vm-exec", "--", "no-such-command"])
        #expect(missing.code == 127 && missing.stderr.contains("no-such-command"), "\(missing.stderr)")
        var tail = ""
        for _ in 0..<100 {
            tail = try service.run(["events", "tail", "--agent-id", "vm-exec", "--lines", "5000"]).stdout
            if tail.contains("echo from the guest exec") { break }
            usleep(100_000)
        }
        #expect(tail.contains("echo from the guest exec"), "the exec'ed command's events are not the sandbox's")
        #expect(try service.run(["sandbox", "terminate", "--agent-id", "vm-exec", "--force"]).code == 0)
        service.stop()
        #expect(vmLeftovers().isEmpty && HostState.settled(like: before), "\(vmLeftovers())")
    }

    /// Through the service too: a guest kernel that panics before HELLO is
    /// booted three times, then create fails with the panic line; nothing is left.
    @Test func theServiceBootsAPanickingGuestAgainThenFails() throws {
        let copy = try VMGuest.copyWithoutInit()
        defer { try? FileManager.default.removeItem(atPath: copy); setenv("ALCUB3_GUEST_DIR", VMGuest.directory, 1) }
        setenv("ALCUB3_GUEST_DIR", copy, 1)
        let service = try TestService()
        defer { service.tearDown() }
        let before = HostState.baseline()
        try service.start()
        let r = try service.run(["sandbox", "create", "--agent-id", "vm-panic", "--isolation-level", "vm", "--verbose", "--", "true"])
        #expect(r.code == 76 && r.stderr.contains("the guest kernel panicked before the guest agent started: Kernel panic"), "\(r.stderr)")
        let retries = (r.stdout + r.stderr).components(separatedBy: "the guest kernel panicked while booting (nothing ran)").count - 1
        #expect(retries == 2, "\(r.stdout.suffix(1500))")
        let list = try service.run(["sandbox", "list", "--status", "all", "--format", "json"])
        #expect(!list.stdout.contains("\"vm-panic\"") || list.stdout.contains("failed"), "\(list.stdout.prefix(400))")
        service.stop()
        #expect(vmLeftovers().isEmpty && HostState.settled(like: before), "\(vmLeftovers())")
    }
}
