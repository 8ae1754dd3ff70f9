import Foundation
import Synchronization
import Testing

/// Regression tests for the service findings of the security audit
/// (reviews/security-audit.md): H1, H7, M4, M6, L1, L4, L5. Each performs
/// the audit's reproduction against a private test service.
@Suite(.serialized, .enabled(if: isRoot, "needs root: BPF, cgroups and namespaces"))
struct ServiceHardeningTests {
    /// A unique agent id: other people run sandboxes on this host meanwhile.
    static func agent(_ name: String) -> String { "\(name)-\(String(UInt32.random(in: 0...UInt32.max), radix: 36))" }

    /// Waits for `condition` up to `seconds`; true once it holds.
    static func eventually(_ seconds: Double, _ condition: () throws -> Bool) rethrows -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        repeat {
            if try condition() { return true }
            usleep(20_000)
        } while Date() < deadline
        return try condition()
    }

    /// Sends one raw request line as `uid` (with its primary group only, as the
    /// audit's `setpriv ... cli.py`); the service's reply lines.
    static func raw(_ service: TestService, _ request: [String: Any], as uid: UInt32) throws -> [[String: Any]] {
        let json = String(decoding: try JSONSerialization.data(withJSONObject: request), as: UTF8.self)
        let script = """
            import os, socket, sys
            s = socket.socket(socket.AF_UNIX); s.connect(os.environ["ALCUB3_SOCKET"])
            s.sendall(sys.argv[1].encode() + b"\\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk: break
                data += chunk
            sys.stdout.write(data.decode())
            """
        let r = try command(["/usr/bin/setpriv", "--reuid=\(uid)", "--regid=\(uid)", "--clear-groups", "/usr/bin/python3", "-c", script, json],
                            environment: service.environment)
        return r.stdout.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    static func command(_ arguments: [String], environment: [String: String], in directory: String? = nil) throws -> Result {
        try runProgram(arguments[0], Array(arguments.dropFirst()), environment: environment, in: directory)
    }

    static func connect(_ path: String) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        return rc == 0 ? fd : -1
    }

    /// The daemon's CPU time so far (user + system), in seconds.
    static func cpuSeconds(_ pid: pid_t) -> Double {
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        let fields = stat.split(separator: ")").last?.split(separator: " ") ?? []
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    // MARK: H1

    /// The audit's `race`, inside a real sandbox (`alcub3 run`) whose working
    /// directory holds the test service's socket: connect, fork a keeper that
    /// holds the socket, the connecting process exits at once and is reaped,
    /// then the keeper sends ping. Every try must be refused.
    @Test func aSandboxedPeerThatExitsAfterConnectingIsRefused() throws {
        let service = try TestService()
        defer { service.tearDown() }
        try service.start()
        let race = """
            import os, socket, sys
            path, tries = sys.argv[1], int(sys.argv[2])
            for i in range(tries):
                go_r, go_w = os.pipe()
                done_r, done_w = os.pipe()
                connector = os.fork()
                if connector == 0:
                    s = socket.socket(socket.AF_UNIX); s.connect(path)
                    if os.fork() == 0:
                        os.close(go_w); os.close(done_r)
                        os.read(go_r, 1)      # EOF once the connector is reaped and the parent let go
                        data = b""
                        try:
                            s.sendall(b'{"op":"ping"}\\n')
                        except OSError:
                            pass                  # refused and closed before the request: the reason is still to read
                        try:
                            while not data.endswith(b"\\n"):
                                chunk = s.recv(65536)
                                if not chunk: break
                                data += chunk
                        except OSError as e:
                            data += repr(e).encode()
                        print(("ALLOWED " if b'"result"' in data else "REFUSED ") + data.decode(errors="replace").strip(), flush=True)
                        os._exit(0)
                    os._exit(0)               # the connecting process exits at once
                os.waitpid(connector, 0)      # and is reaped
                os.close(go_r); os.close(go_w); os.close(done_w)
                os.read(done_r, 1)            # the keeper has printed
                os.close(done_r)
            """
        try race.write(toFile: service.root + "/race.py", atomically: true, encoding: .utf8)
        // `alcub3 run` with the plain environment: the socket is reachable only as part of the sandbox's working directory.
        var environment = ProcessInfo.processInfo.environment
        for name in ["ALCUB3_SOCKET", "ALCUB3_STATE_DIR", "ALCUB3_PIN_DIR", "ALCUB3_CONFIG"] { environment[name] = nil }
        // The sandbox's own defences already keep the socket out of reach (the agent is not host
        // root; a socket inside its copy-on-write working directory does not connect). This test
        // is of the service's check alone: the socket is made reachable, as a lax mode or a
        // misconfigured path would, bound at a path the sandbox sees and open to every uid.
        let exposed = "/run/alcub3-h1-\(getpid()).sock"
        FileManager.default.createFile(atPath: exposed, contents: nil)
        defer { _ = umount2(exposed, Int32(MNT_DETACH)); unlink(exposed) }
        try #require(mount(service.root + "/run/alcub3.sock", exposed, nil, UInt(MS_BIND), nil) == 0, "bind: errno \(errno)")
        chmod(exposed, 0o666)
        let tries = 40
        let r = try Self.command(["/usr/bin/timeout", "120", binary, "run", "--agent-id", Self.agent("h1-race"), "--",
                                  "/usr/bin/python3", service.root + "/race.py", exposed, String(tries)],
                                 environment: environment, in: service.root)
        let lines = r.stdout.split(separator: "\n").filter { $0.hasPrefix("ALLOWED") || $0.hasPrefix("REFUSED") }
        #expect(lines.count == tries, "\(r.code) \(r.stdout.suffix(600)) \(r.stderr.suffix(600))")
        #expect(!lines.contains { $0.hasPrefix("ALLOWED") }, "\(lines.filter { $0.hasPrefix("ALLOWED") }.count) of \(tries) allowed")
        #expect(lines.contains { $0.contains("\"code\":77") || $0.contains("\"code\": 77") }, "\(lines.prefix(3))")
        // A plain root client on the host still works.
        #expect(try service.run(["sandbox", "list"]).code == 0)
    }

    /// Peers in another mount or pid namespace (a container, a sandbox) are refused, root or not.
    @Test func aPeerInAnotherNamespaceIsRefused() throws {
        let service = try TestService()
        defer { service.tearDown() }
        try service.start()
        for flags in [["-m"], ["-p", "-f"]] {
            let r = try Self.command(["/usr/bin/unshare"] + flags + [binary, "sandbox", "list"], environment: service.environment)
            #expect(r.code == 77 && r.stderr.contains("namespace"), "unshare \(flags): \(r.code) \(r.stderr)")
        }
        #expect(try service.run(["sandbox", "list"]).code == 0)
    }

    // MARK: H7

    /// uid 65534 with the socket group (nogroup) tries each of the audit's
    /// reproductions; each is refused with a clear line, nothing is written
    /// outside and no sandbox is made. What a member may do still works.
    @Test func socketGroupMembersAreNotRootEquivalent() throws {
        let service = try TestService(configuration: "service:\n  socket_group: \"nogroup\"\n")
        defer { service.tearDown() }
        try service.start()
        let root = service.root
        chmod(root, 0o755)
        let secret = root + "/secret"
        try FileManager.default.createDirectory(atPath: secret, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        try "root-only-secret\n".write(toFile: secret + "/secret.txt", atomically: true, encoding: .utf8)
        let rootTar = root + "/root-image.tar"
        FileManager.default.createFile(atPath: rootTar, contents: Data("x".utf8), attributes: [.posixPermissions: 0o600])
        let member: UInt32 = 65534
        func expectRefused(_ request: [String: Any], _ words: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
            let replies = try Self.raw(service, request, as: member)
            let last = replies.last ?? [:]
            #expect(last["type"] as? String == "error" && last["code"] as? Int == 77, "\(request["op"] ?? ""): \(replies)",
                    sourceLocation: sourceLocation)
            #expect((last["message"] as? String ?? "").contains(words), "\(last)", sourceLocation: sourceLocation)
        }
        let escape = ["/bin/sh", "-c", "id > \(secret)/pwned.txt"]
        // The member can use the socket at all.
        #expect(try Self.raw(service, ["op": "ping"], as: member).last?["type"] as? String == "result")
        // Any host directory shared writable.
        try expectRefused(["op": "create", "agentID": Self.agent("grp-esc"), "workingDirectory": secret, "shareWorkingDirectory": true,
                           "command": escape], "may not write and search")
        // hidden_paths: [] (and any other policy of its own).
        try expectRefused(["op": "create", "agentID": Self.agent("grp-hid"), "command": ["/bin/true"],
                           "policyYAML": ["sandbox_configuration:\n  default_policies:\n    UNCLASSIFIED:\n      hidden_paths: []\n"]],
                          "may not give policy files")
        try expectRefused(["op": "create", "agentID": Self.agent("grp-cap"), "capabilities": ["CAP_SYS_ADMIN"]], "capabilities")
        try expectRefused(["op": "create", "agentID": Self.agent("grp-iso"), "classification": "SECRET", "isolation": "process"],
                          "isolation level")
        // A profile written by root where the member may not write, or read where it may not read.
        try expectRefused(["op": "create", "agentID": Self.agent("grp-prof"), "profilePath": secret + "/profile.json"], "may not write and search")
        try expectRefused(["op": "create", "agentID": Self.agent("grp-prof2"), "profilePath": "/etc/alcub3-h7-profile.json"], "may not write")
        try expectRefused(["op": "create", "agentID": Self.agent("grp-prof3"), "profilePath": rootTar], "may not read")
        // Any image path: a root filesystem ("/") or a file only root may read.
        try expectRefused(["op": "create", "agentID": Self.agent("grp-img"), "isolation": "container", "image": "/"], "only root may give")
        try expectRefused(["op": "create", "agentID": Self.agent("grp-img2"), "isolation": "container", "image": rootTar], "may not read")
        try expectRefused(["op": "import", "agentID": Self.agent("grp-imp"), "policyJSON": "{}"], "only root may")
        // A directory the member owns, but in a directory it can change: it could be swapped before the bind.
        let home = root + "/member-home", project = home + "/project"
        for dir in [home, project] {
            // 0777: the agent is uid 0 without CAP_DAC_OVERRIDE, so it writes the member's directory as "other".
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o777])
            chown(dir, member, member)
        }
        try expectRefused(["op": "create", "agentID": Self.agent("grp-swap"), "workingDirectory": project, "shareWorkingDirectory": true,
                           "command": ["/bin/true"]], "can rename entries of \(home)")
        #expect(!FileManager.default.fileExists(atPath: secret + "/pwned.txt"))
        #expect(!FileManager.default.fileExists(atPath: secret + "/profile.json"))
        #expect(!FileManager.default.fileExists(atPath: "/etc/alcub3-h7-profile.json"))
        let list = try service.run(["sandbox", "list", "--status", "all", "--format", "json"])
        #expect(!list.stdout.contains("grp-"), "\(list.stdout)")

        // Allowed: a directory the member may write whose parents only root can change; a profile in it, owned by the member.
        let agent = Self.agent("grp-ok")
        let created = try Self.raw(service, ["op": "create", "agentID": agent, "workingDirectory": home, "shareWorkingDirectory": true,
                                             "profilePath": home + "/learned.json",
                                             "command": ["/bin/sh", "-c", "echo from-the-sandbox > shared.txt; /bin/sleep 60"]], as: member)
        #expect(created.last?["type"] as? String == "result", "\(created)")
        #expect(Self.eventually(5) { FileManager.default.fileExists(atPath: home + "/shared.txt") })
        #expect(try service.run(["sandbox", "terminate", "--agent-id", agent, "--force"]).code == 0)
        // A member may not change a running sandbox's network policy either.
        try expectRefused(["op": "policy-set", "agentID": agent, "destinations": ["0.0.0.0/0"]], "only root may")
    }

    // MARK: M4

    /// `head -c ... /dev/zero` as the agent: output.log keeps the quota and a
    /// line saying so, one disk-filler finding is stored, and an agent that
    /// keeps its stdout open is terminated without waiting.
    @Test func sandboxOutputIsCappedAtTheQuota() throws {
        let service = try TestService(configuration: "service:\n  output_limit: \"1MiB\"\n")
        defer { service.tearDown() }
        try service.start()
        let quota = 1 << 20
        func create(_ agent: String, _ script: String) throws -> String {
            let r = try service.run(["sandbox", "create", "--agent-id", agent, "--format", "json", "--", "/bin/sh", "-c", script])
            #expect(r.code == 0, "\(r.stderr)")
            let record = (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8))) as? [String: Any]
            return service.environment["ALCUB3_STATE_DIR"]! + "/sandboxes/" + (record?["sandboxID"] as? String ?? "?") + "/output.log"
        }
        func size(_ path: String) -> Int { ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int) ?? -1 }
        let filler = Self.agent("out-fill")
        let log = try create(filler, "head -c 60000000 /dev/zero; echo finished > /tmp/done")
        #expect(try service.stoppedRecord(agentID: filler, seconds: 30) != nil, "the filler did not end")
        let text = (try? Data(contentsOf: URL(fileURLWithPath: log))) ?? Data()
        #expect(size(log) > quota && size(log) < quota + 200, "output.log is \(size(log)) bytes")
        #expect(String(decoding: text.suffix(200), as: UTF8.self).contains("output quota of \(quota) bytes reached"))
        let alerts = try service.run(["events", "tail", "--agent-id", filler, "--kind", "alert", "--lines", "100"])
        let findings = alerts.stdout.split(separator: "\n").filter { $0.contains("\"technique\":\"disk-filler\"") && $0.contains("output quota") }
        #expect(findings.count == 1, "\(alerts.stdout.prefix(800))")

        // The agent never closes its stdout: the copier stops with the sandbox.
        let holder = Self.agent("out-hold")
        let held = try create(holder, "head -c 3000000 /dev/zero; exec sleep 1000")
        #expect(Self.eventually(10) { size(held) > quota }, "nothing copied while the agent holds its stdout open")
        #expect(try service.run(["sandbox", "list"]).code == 0)
        let start = Date()
        #expect(try service.run(["sandbox", "terminate", "--agent-id", holder, "--force"]).code == 0)
        #expect(Date().timeIntervalSince(start) < 8)
    }

    // MARK: M6

    /// One idle client connected to the metrics endpoint does not stall a scrape.
    @Test func anIdleMetricsClientDoesNotStallScrapes() throws {
        let port = UInt16(21000 + getpid() % 9000)
        let service = try TestService(metricsPort: port)
        defer { service.tearDown() }
        try service.start()
        let idle = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(idle) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(idle, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        #expect(connected == 0)
        let scrape = try Self.command(["/usr/bin/curl", "-s", "--max-time", "5", "http://127.0.0.1:\(port)/metrics"],
                                      environment: ProcessInfo.processInfo.environment)
        #expect(scrape.code == 0 && scrape.stdout.contains("alcub3_sandboxes{state=\"running\"}"), "curl \(scrape.code): \(scrape.stdout.prefix(200))")
        #expect(scrape.stdout.contains("alcub3_alerts "))
        // The idle client itself is let go after the request deadline.
        var timeout = timeval(tv_sec: 6, tv_usec: 0)
        setsockopt(idle, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var byte: UInt8 = 0
        #expect(recv(idle, &byte, 1, 0) == 0, "the idle client was not closed")
    }

    // MARK: L1

    /// A 4 MiB line without a newline is dropped quickly (buffered reads), and
    /// a connection that sends nothing is closed after the request timeout.
    @Test func controlSocketDropsLongLinesAndIdleClients() throws {
        let service = try TestService()
        defer { service.tearDown() }
        try service.start()
        let socketPath = service.environment["ALCUB3_SOCKET"]!
        let cpuBefore = Self.cpuSeconds(service.pid)
        let fd = Self.connect(socketPath)
        #expect(fd >= 0)
        var line = [UInt8](repeating: UInt8(ascii: "a"), count: (4 << 20) + 1)
        var offset = 0
        while offset < line.count {
            let n = line.withUnsafeMutableBytes { send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { break }  // the service closed it
            offset += n
        }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var byte: UInt8 = 0
        let closed = recv(fd, &byte, 1, 0)
        #expect(closed == 0 || (closed < 0 && errno == ECONNRESET), "the long line was not dropped: \(closed) errno \(errno)")
        close(fd)
        let spent = Self.cpuSeconds(service.pid) - cpuBefore
        #expect(spent < 1.0, "the service spent \(spent) s of CPU on a 4 MiB line")

        let idle = Self.connect(socketPath)
        defer { close(idle) }
        var longer = timeval(tv_sec: 15, tv_usec: 0)
        setsockopt(idle, SOL_SOCKET, SO_RCVTIMEO, &longer, socklen_t(MemoryLayout<timeval>.size))
        let start = Date()
        #expect(recv(idle, &byte, 1, 0) == 0, "the idle connection was not closed")
        #expect(Date().timeIntervalSince(start) < 10)
        #expect(try service.run(["sandbox", "list"]).code == 0)
    }

    // MARK: L4, L5

    /// Every sandbox init is reaped: after creates and terminates (and a
    /// sandbox that ends by itself) no zombie child of the service is left.
    @Test func noZombieInitsAreLeft() throws {
        let service = try TestService()
        defer { service.tearDown() }
        try service.start()
        // Many processes: the init, pid 1 of the sandbox's pid namespace, reaps them all as it dies, after the
        // cgroup looks empty; terminate's finish then sees it still running (the audit's zombies).
        let crowd = "for i in $(seq 40); do /bin/sleep 1000 & done; wait"
        for i in 0..<6 {
            let agent = Self.agent("zomb\(i)")
            #expect(try service.run(["sandbox", "create", "--agent-id", agent, "--", "/bin/sh", "-c", crowd]).code == 0)
            #expect(try service.run(["sandbox", "terminate", "--agent-id", agent] + (i % 2 == 0 ? ["--force"] : ["--grace", "1"])).code == 0)
        }
        let quick = Self.agent("zomb-self")
        #expect(try service.run(["sandbox", "create", "--agent-id", quick, "--", "/bin/true"]).code == 0)
        #expect(try service.stoppedRecord(agentID: quick, seconds: 10) != nil)
        func zombies() -> [String] {
            ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).filter { Int32($0) != nil }.compactMap { pid in
                guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                      let fields = stat.split(separator: ")").last?.split(separator: " "), fields.count > 2 else { return nil }
                return fields[0] == "Z" && Int32(fields[1]) == service.pid ? pid : nil
            }
        }
        #expect(Self.eventually(5) { zombies().isEmpty }, "zombie children of the service: \(zombies())")
    }

    /// Four concurrent creates of one agent id: one sandbox, three agent-in-use
    /// refusals (exit 73), and nothing left of the refused ones.
    @Test func concurrentCreatesOfOneAgentIDReserveIt() throws {
        let service = try TestService()
        defer { service.tearDown() }
        try service.start()
        let agent = Self.agent("race")
        let results = Mutex<[Result]>([])
        DispatchQueue.concurrentPerform(iterations: 4) { _ in
            let r = (try? service.run(["sandbox", "create", "--agent-id", agent, "--", "/bin/sleep", "60"]))
                ?? Result(code: -1, stdout: "", stderr: "could not run")
            results.withLock { $0.append(r) }
        }
        let all = results.withLock { $0 }
        #expect(all.filter { $0.code == 0 }.count == 1, "\(all.map { "\($0.code) \($0.stderr)" })")
        #expect(all.filter { $0.code == 73 && $0.stderr.contains("already in use") }.count == 3, "\(all.map { "\($0.code) \($0.stderr)" })")
        let states = (try? FileManager.default.contentsOfDirectory(atPath: service.environment["ALCUB3_STATE_DIR"]! + "/sandboxes")) ?? []
        #expect(states.count == 1, "state directories: \(states)")
        let layoutRoots = ["/sys/fs/cgroup/unified/alcub3", "/sys/fs/cgroup/alcub3"]
        let list = try service.run(["sandbox", "list", "--status", "all", "--format", "json"])
        let records = (try? JSONSerialization.jsonObject(with: Data(list.stdout.utf8))) as? [[String: Any]] ?? []
        #expect(records.count == 1, "\(list.stdout)")
        let winner = records.first?["sandboxID"] as? String ?? ""
        #expect(states == [winner])
        #expect(layoutRoots.contains { FileManager.default.fileExists(atPath: $0 + "/" + winner) })
        #expect(try service.run(["sandbox", "terminate", "--agent-id", agent, "--force"]).code == 0)
    }
}
