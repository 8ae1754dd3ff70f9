import Foundation
import Testing

/// The busybox OCI image of scripts/build-test-image.sh (cached under .build/images).
enum ContainerImage {
    static let directory = packageRoot.appendingPathComponent(".build/images").path
    static let digest: String = {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = [packageRoot.appendingPathComponent("scripts/build-test-image.sh").path, directory]
        let out = Pipe()
        p.standardOutput = out
        try? p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return text.trimmingCharacters(in: .whitespacesAndNewlines)
    }()
    static var layout: String { _ = digest; return directory + "/busybox" }
    static var tar: String { _ = digest; return directory + "/busybox.tar" }

    /// A copy of the layout with one byte of its layer flipped; returns (layout, layer digest).
    static func tampered(in dir: String) throws -> String {
        let copy = dir + "/tampered"
        try? FileManager.default.removeItem(atPath: copy)
        try FileManager.default.copyItem(atPath: layout, toPath: copy)
        let blobs = copy + "/blobs/sha256"
        let layer = try FileManager.default.contentsOfDirectory(atPath: blobs).max {
            (try? FileManager.default.attributesOfItem(atPath: blobs + "/" + $0)[.size] as? Int ?? 0) ?? 0
                < (try? FileManager.default.attributesOfItem(atPath: blobs + "/" + $1)[.size] as? Int ?? 0) ?? 0
        }!
        let handle = try #require(FileHandle(forUpdatingAtPath: blobs + "/" + layer))
        try handle.seek(toOffset: 2048)
        let byte = try #require(try handle.read(upToCount: 1)?.first)
        try handle.seek(toOffset: 2048)
        try handle.write(contentsOf: [byte ^ 0x01])
        try handle.close()
        return copy
    }
}

/// What a container sandbox could leave: runc state, bundles, network
/// namespaces, veths, and the cgroups runc makes (a sandbox's `container`
/// child, and the v1 hierarchies only runc uses). Other sandboxes' own
/// cgroups (tests running beside these) are not counted.
func containerLeftovers() -> [String] {
    var found: [String] = []
    for dir in ["/run/runc", "/run/alcub3/containers", "/run/netns"] {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where name.hasPrefix("sb-") || name.hasPrefix("alcub3-") {
            found.append(dir + "/" + name)
        }
    }
    for name in (try? FileManager.default.contentsOfDirectory(atPath: "/sys/class/net")) ?? [] where name.hasPrefix("a3") {
        found.append("veth " + name)
    }
    for mount in ["cpu", "memory", "pids", "cpuset", "devices", "freezer", "blkio", "systemd", "unified"] {
        let dir = "/sys/fs/cgroup/\(mount)/alcub3"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where name.hasPrefix("sb-") {
            let runcOnly = ["cpuset", "devices", "freezer", "blkio", "systemd"].contains(mount)
            if runcOnly || FileManager.default.fileExists(atPath: dir + "/" + name + "/container") { found.append(dir + "/" + name) }
        }
    }
    return found
}

@Suite(.serialized, .enabled(if: isRoot, "needs root: BPF, cgroups, namespaces and runc"))
struct ContainerRunTests {
    @Test func echoInAContainerPassesOutputAndExitCodeThrough() throws {
        let before = HostState.baseline()
        let r = try alcub3(["run", "--isolation-level", "container", "--image", ContainerImage.layout,
                            "--image-digest", ContainerImage.digest, "--classification", "TOP_SECRET", "--format", "json",
                            "--", "sh", "-c", "echo hello from the container; exit 7"])
        #expect(r.code == 7, "\(r.stderr)")
        // With --format json the container's output is on stderr, the records alone on stdout.
        #expect(r.stderr.contains("hello from the container\n"), "\(r.stderr.prefix(300))")
        // Events of the command inside, with the sandbox's id; none of runc's set-up.
        let lines = r.jsonLines
        let summary = try #require(lines.last)
        let sandbox = try #require(summary["sandbox_id"] as? String)
        let execs = lines.filter { ($0["activity_name"] as? String) == "Launch" }
        #expect(!execs.isEmpty && execs.allSatisfy { $0["sandbox_id"] as? String == sandbox }, "\(execs.prefix(2))")
        #expect((summary["alerts"] as? [String: Any])?.isEmpty ?? true, "runc's set-up was reported: \(summary)")
        #expect(HostState.settled(like: before))
        #expect(containerLeftovers().isEmpty, "\(containerLeftovers())")
    }

    @Test func aTarOfTheLayoutWithNetworkAccessRuns() throws {
        // UNCLASSIFIED reaches the internet: a veth pair into the container's namespace.
        let r = try alcub3(["run", "--isolation", "container", "--image", ContainerImage.tar, "--image-digest", ContainerImage.digest,
                            "--", "sh", "-c", "ls /sys/class/net | tr '\\n' ' '"])
        #expect(r.code == 0, "\(r.stderr)")
        #expect(r.stdout.contains("eth0 lo"), "\(r.stdout.prefix(200))")
        #expect(r.stderr.contains("container isolation: runc"))
        #expect(containerLeftovers().isEmpty, "\(containerLeftovers())")
    }

    /// SIGKILL gives `alcub3 run` no chance to clean up: the next container
    /// start removes what the dead run left once its command has ended.
    @Test func aKilledRunLeavesNothingTheNextRunDoesNotRemove() throws {
        var pid: pid_t = 0
        let arguments: [String] = [binary, "run", "--isolation-level", "container", "--image", ContainerImage.layout,
                                                    "--image-digest", ContainerImage.digest, "--", "sleep", "1"]
        let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        #expect(posix_spawn(&pid, binary, &actions, nil, argv, environ) == 0)
        for _ in 0..<100 where containerLeftovers().allSatisfy({ !$0.hasPrefix("/run/runc/") }) { usleep(20_000) }
        #expect(!containerLeftovers().isEmpty)
        kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        usleep(1_500_000)  // the container's `sleep 1` ends on its own
        let next = try alcub3(["run", "--isolation-level", "container", "--image", ContainerImage.layout,
                               "--image-digest", ContainerImage.digest, "--classification", "TOP_SECRET", "--", "true"])
        #expect(next.code == 0, "\(next.stderr)")
        #expect(containerLeftovers().isEmpty, "\(containerLeftovers())")
    }

    @Test func badImagesAreRefusedBeforeStartAndLeaveNothing() throws {
        let dir = NSTemporaryDirectory() + "alcub3-badimg-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let before = HostState.baseline()
        let tampered = try ContainerImage.tampered(in: dir)
        let cases: [([String], Int32, String)] = [
            (["--image", tampered, "--image-digest", ContainerImage.digest], 74, "Container image failed security validation:"),
            (["--image", dir + "/missing"], 74, "container image not found"),
            (["--image", dir], 74, "no oci-layout file"),
            (["--image", ContainerImage.layout], 74, "not pinned"),
            (["--image", ContainerImage.layout, "--image-digest", "sha256:12"], 64, "is not a digest"),
            ([], 64, "needs an image"),
            (["--image", ContainerImage.layout, "--image-digest", ContainerImage.digest, "--", "no-such-program"], 127, "not in the image"),
        ]
        for (arguments, code, message) in cases {
            let command = arguments.contains("--") ? [] : ["--", "echo", "never"]
            let r = try alcub3(["run", "--isolation-level", "container"] + arguments + command)
            #expect(r.code == code, "\(arguments): \(r.stderr)")
            #expect(r.stderr.contains(message), "\(arguments): \(r.stderr)")
            #expect(!r.stdout.contains("never"))
        }
        let tamperedRun = try alcub3(["run", "--isolation-level", "container", "--image", tampered, "--image-digest", ContainerImage.digest,
                                      "--", "echo", "never"])
        // Both digests are named: the manifest's for the layer and what the file hashes to.
        let digests = Set(tamperedRun.stderr.components(separatedBy: "sha256:").dropFirst().map { String($0.prefix(64)) })
        #expect(digests.count == 2, "\(tamperedRun.stderr)")
        #expect(HostState.settled(like: before))
        #expect(containerLeftovers().isEmpty, "\(containerLeftovers())")
    }
}

@Suite(.serialized, .enabled(if: isRoot, "needs root: BPF, cgroups, namespaces and runc"))
struct ContainerServiceTests {
    @Test func aContainerSandboxIsCreatedMonitoredAndRemoved() throws {
        let service = try TestService()
        defer { service.tearDown() }
        let before = HostState.baseline()
        try service.start()
        let created = try service.run(["sandbox", "create", "--agent-id", "ctr-1", "--classification", "CONFIDENTIAL",
                                       "--isolation-level", "container", "--image", ContainerImage.layout,
                                       "--image-digest", ContainerImage.digest, "--verbose", "--format", "json",
                                       "--", "sh", "-c", "echo started > /tmp/alcub3-started; while true; do cat /tmp/alcub3-started >/dev/null; sleep 0.2; done"])
        #expect(created.code == 0, "create: \(created.stderr)")
        #expect(created.stderr.contains("runc create") && created.stderr.contains("validate the image"), "\(created.stderr)")
        let record = try #require(try JSONSerialization.jsonObject(with: Data(created.stdout.utf8)) as? [String: Any])
        #expect(record["isolation"] as? String == "container")
        let sandboxID = try #require(record["sandboxID"] as? String)
        let initPID = try #require(record["initPID"] as? Int)
        // The container's processes are in a child of the sandbox's cgroup.
        let cgroup = try String(contentsOfFile: "/proc/\(initPID)/cgroup", encoding: .utf8)
        #expect(cgroup.contains("0::/alcub3/\(sandboxID)/container"), "\(cgroup)")

        // Events from inside arrive in the store with the sandbox's id.
        var events = ""
        for _ in 0..<50 {
            events = try service.run(["events", "tail", "--agent-id", "ctr-1", "--lines", "500"]).stdout
            if events.contains("alcub3-started") { break }
            usleep(100_000)
        }
        #expect(events.contains("alcub3-started"), "\(events.prefix(500))")
        #expect(events.contains(sandboxID))
        // runc's own set-up (unshare, setuid with every capability) happens before telemetry is armed.
        let alerts = try service.run(["events", "tail", "--agent-id", "ctr-1", "--kind", "alert"]).stdout
        #expect(alerts.isEmpty, "runc's set-up was reported: \(alerts.prefix(500))")

        // exec joins the container: its files, its hostname, its network namespace.
        let exec = try service.run(["sandbox", "exec", "--agent-id", "ctr-1", "--", "sh", "-c",
                                    "cat /tmp/alcub3-started; hostname; ls /sys/class/net | tr '\\n' ' '; exit 4"])
        #expect(exec.code == 4 && exec.stdout == "started\n\(sandboxID)\neth0 lo ", "\(exec)")

        let terminated = try service.run(["sandbox", "terminate", "--agent-id", "ctr-1", "--grace", "1"])
        #expect(terminated.code == 0, "\(terminated.stderr)")
        #expect(kill(Int32(initPID), 0) != 0)
        #expect(containerLeftovers().isEmpty, "\(containerLeftovers())")

        // A failed start (a tampered image) leaves nothing either.
        let tampered = try ContainerImage.tampered(in: service.root)
        let refused = try service.run(["sandbox", "create", "--agent-id", "ctr-2", "--isolation-level", "container",
                                       "--image", tampered, "--image-digest", ContainerImage.digest, "--", "echo", "never"])
        #expect(refused.code == 74 && refused.stderr.contains("Container image failed security validation:"), "\(refused.stderr)")
        #expect(containerLeftovers().isEmpty, "\(containerLeftovers())")
        service.stop()
        #expect(HostState.settled(like: before), "left behind after terminate and stop")
    }

    /// A container outlives a killed service, and its exit code too: its
    /// keeper, not the service, is its init's parent, and writes the code for
    /// the service that adopts the sandbox after a restart.
    @Test func aContainersExitCodeSurvivesAServiceRestart() throws {
        let service = try TestService()
        defer { service.tearDown() }
        let before = HostState.baseline()
        try service.start()
        let created = try service.run(["sandbox", "create", "--agent-id", "ctr-restart", "--isolation-level", "container",
                                       "--image", ContainerImage.layout, "--image-digest", ContainerImage.digest,
                                       "--", "sh", "-c", "sleep 4; exit 6"])
        #expect(created.code == 0, "create: \(created.stderr)")
        service.kill9()
        usleep(500_000)
        try service.start()
        let stopped = try service.stoppedRecord(agentID: "ctr-restart", seconds: 15)
        #expect(stopped?["exitCode"] as? Int == 6, "\(String(describing: stopped))")
        #expect(containerLeftovers().isEmpty, "\(containerLeftovers())")
        service.stop()
        #expect(HostState.settled(like: before), "left behind after the restart")
    }
}
