import Foundation
import KernelSupport
import Policy
import Sandbox
import Testing
@testable import Telemetry

@Suite(.serialized, .enabled(if: isRoot, Comment(rawValue: rootRequired)))
struct TelemetryIntegrationTests {
    /// exec, a named file write and a TCP connect from inside a sandbox, each
    /// seen with the sandbox's cgroup id, the right path, address and result.
    @Test func execFileWriteAndConnectAreReported() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let python = """
            import socket
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
            open("port", "w").write(str(s.getsockname()[1]))
            c = socket.create_connection(("127.0.0.1", s.getsockname()[1]))
            a, _ = s.accept(); c.close(); a.close()
            """
        let run = try SandboxRun.run(
            ["/bin/sh", "-c", "echo hello > named-file.txt && /usr/bin/env true && python3 -c '\(python)'"],
            workingDirectory: dir)
        #expect(run.status == .exited(0))
        let port = UInt16(try String(contentsOfFile: dir + "/port", encoding: .utf8))!

        #expect(run.execs.contains { $0.filename == "/usr/bin/env" && $0.args == ["/usr/bin/env", "true"] })
        #expect(run.execs.contains { $0.filename.hasSuffix("python3") })

        let writes = run.fileEvents.filter { $0.operation == .open && $0.path == dir + "/named-file.txt" }
        #expect(writes.count == 1, "open for write of named-file.txt: \(run.fileEvents.map(\.path))")
        #expect(writes.first?.result ?? -1 >= 0)
        #expect(writes.allSatisfy { $0.origin.sandboxCgroupID == run.cgroupID })

        let connects = run.networkEvents.filter { $0.operation == .connect }
        #expect(connects.contains { $0.remote.ip == "127.0.0.1" && $0.remote.port == port && $0.result == 0 && $0.proto == 6 },
                "connects: \(connects.map { "\($0.remote) -> \($0.result)" })")
        #expect(run.networkEvents.contains { $0.operation == .listen && $0.local.port == port })
        #expect(run.networkEvents.contains { $0.operation == .accept && $0.result >= 0 })
        #expect(run.events.allSatisfy { $0.sandboxCgroupID == nil || $0.sandboxCgroupID == run.cgroupID })
        #expect(run.counters.dropped == 0)
    }

    /// The same actions by a process outside every sandbox produce nothing:
    /// the filter is in the kernel, not in Swift.
    @Test func processesOutsideEverySandboxAreNotReported() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var outsidePID: Int32 = 0
        let run = try SandboxRun.run(["/bin/true"]) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/sh")
            p.arguments = ["-c", "echo hello > \(dir)/outside.txt; python3 -c 'import socket; s=socket.socket(); s.bind((\"127.0.0.1\",0)); s.listen(1); socket.create_connection(s.getsockname()).close()'"]
            try? p.run()
            p.waitUntilExit()
            outsidePID = p.processIdentifier
        }
        #expect(FileManager.default.fileExists(atPath: dir + "/outside.txt"))
        #expect(outsidePID > 0)
        #expect(!run.fileEvents.contains { $0.path.contains("outside.txt") })
        #expect(!run.events.contains { event in
            switch event {
            case .file(let f): return f.origin.pid == outsidePID
            case .process(let p): return p.origin.pid == outsidePID
            case .network(let n): return n.origin.pid == outsidePID
            case .syscall(let s): return s.origin.pid == outsidePID
            default: return false
            }
        })
        #expect(run.networkEvents.isEmpty)
        #expect(run.execs.map(\.filename) == ["/bin/true"])
    }

    /// N getppid calls give at least N syscall records for getppid, none dropped.
    @Test func syscallCountsMatchWhatTheCommandDid() throws {
        let n = 200_000
        let run = try SandboxRun.run(["python3", "-c", "import os\nfor _ in range(\(n)): os.getppid()"])
        #expect(run.status == .exited(0))
        let getppid = run.syscallEvents.filter { $0.number == 110 && !$0.isEntry }.count
        #expect(getppid >= n, "getppid records: \(getppid)")
        #expect(getppid < n + 100)
        #expect(run.counters.dropped == 0)
        #expect(run.subscriberDropped == 0)
        #expect(!run.events.contains { if case .drops = $0 { true } else { false } })
    }

    /// Descendant processes, and a task in a sub-cgroup of the sandbox, still
    /// belong to the sandbox.
    @Test func descendantsBelongToTheirSandbox() throws {
        let run = try SandboxRun.run(["/bin/sh", "-c", "/bin/sh -c '/bin/sh -c \"/usr/bin/env true\"'"])
        #expect(run.execs.contains { $0.filename == "/usr/bin/env" })
        let forks = run.processEvents.filter { if case .fork = $0.activity { true } else { false } }
        #expect(forks.count >= 2)
        let exits = run.processEvents.filter { if case .exit(_, _, false, _) = $0.activity { true } else { false } }
        #expect(exits.count >= 3)
    }

    /// A policy without network gives the sandbox its own network namespace:
    /// only loopback, up, and a connect inside it is reported like any other.
    @Test func policyWithoutNetworkGetsItsOwnNamespace() throws {
        var policy = SandboxPolicy.builtIn(.topSecret)
        policy.isolation = .process
        policy.capabilities.append(.network)  // sockets allowed; the namespace is what keeps it in
        #expect(!policy.allowsNetwork)
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let python = """
            import socket
            open("ifaces", "w").write(",".join(n for _, n in socket.if_nameindex()))
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
            socket.create_connection(s.getsockname()).close()
            """
        let run = try SandboxRun.run(["python3", "-c", python], policy: policy, workingDirectory: dir)
        #expect(run.status == .exited(0))
        #expect(try String(contentsOfFile: dir + "/ifaces", encoding: .utf8) == "lo")
        #expect(run.networkEvents.contains { $0.operation == .connect && $0.remote.ip == "127.0.0.1" && $0.result == 0 })
    }

    /// Every file-changing syscall family, with absolute paths resolved in the kernel.
    @Test func fileOperationsAreReportedWithAbsolutePaths() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let script = "mkdir d && echo abc > d/a && mv d/a d/b && ln -s b d/c && ln d/b d/h && chmod 600 d/b "
            + "&& chown 1:1 d/b && truncate -s 1 d/b && rm d/c d/h d/b && rmdir d"
        // Giving the file away and then writing it (mode 600) takes capabilities a sandbox has only when asked.
        let run = try SandboxRun.run(["/bin/sh", "-c", script], workingDirectory: dir,
                                     keepCapabilities: ["CAP_CHOWN", "CAP_DAC_OVERRIDE"])
        #expect(run.status == .exited(0))
        let seen = Set(run.fileEvents.map { "\($0.operation.rawValue) \($0.path)\($0.secondPath.map { " -> " + $0 } ?? "")" })
        for expected in ["mkdir \(dir)/d", "open \(dir)/d/a", "rename \(dir)/d/a -> \(dir)/d/b",
                         "symlink b -> \(dir)/d/c", "link \(dir)/d/b -> \(dir)/d/h", "chmod \(dir)/d/b",
                         "chown \(dir)/d/b", "unlink \(dir)/d/c", "unlink \(dir)/d/b", "rmdir \(dir)/d"] {
            #expect(seen.contains(expected), "missing '\(expected)' in \(seen.sorted())")
        }
        #expect(run.fileEvents.contains { $0.operation == .truncate || ($0.operation == .open && $0.path == dir + "/d/b") })
        #expect(run.events.contains { if case .writeVolume(let w) = $0 { w.totalBytes == 4 } else { false } })
    }

    /// A sandbox's first read of each file is reported, repeats are not (the
    /// kernel remembers what each sandbox read), and a refused read is.
    @Test func firstReadsOfEachFileAreReportedOnce() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "a".write(toFile: dir + "/once", atomically: false, encoding: .utf8)
        try "b".write(toFile: dir + "/often", atomically: false, encoding: .utf8)
        try "c".write(toFile: dir + "/secret", atomically: false, encoding: .utf8)
        chmod(dir + "/secret", 0o000)  // unreadable without CAP_DAC_OVERRIDE, which a sandbox has not
        let script = "open('once').read()\nfor _ in range(200): open('often').read()\n"
            + "try: open('secret').read()\nexcept PermissionError: pass\nopen('new-file', 'w').write('x')"
        let run = try SandboxRun.run(["python3", "-c", script], workingDirectory: dir)
        #expect(run.status == .exited(0))
        let reads = run.fileEvents.filter { $0.operation == .read }
        #expect(reads.filter { $0.path == dir + "/once" }.count == 1, "\(reads.map(\.path))")
        #expect(reads.filter { $0.path == dir + "/often" }.count == 1, "the 199 repeats must stay in the kernel")
        #expect(reads.contains { $0.path == dir + "/secret" && $0.result == -Int64(EACCES) }, "the refused read is reported")
        #expect(!reads.contains { $0.path == dir + "/new-file" }, "a write is not a read")
        #expect(run.fileEvents.contains { $0.operation == .open && $0.path == dir + "/new-file" })
    }

    /// Credential changes carry the credentials after the call.
    @Test func credentialChangesAreReported() throws {
        let run = try SandboxRun.run(["python3", "-c", "import os; os.setgid(65534); os.setuid(65534)"],
                                     keepCapabilities: ["CAP_SETGID", "CAP_SETUID"], extraSyscalls: ["setuid", "setgid"])
        #expect(run.status == .exited(0))
        let changes = run.processEvents.compactMap { event -> (Int32, Int64, UInt32, UInt32)? in
            if case .credentialChange(let nr, let result, let uid, _, let gid, _, _, _) = event.activity { return (nr, result, uid, gid) }
            return nil
        }
        #expect(changes.contains { $0.0 == 105 && $0.1 == 0 && $0.2 == 65534 }, "\(changes)")  // setuid
        #expect(changes.contains { $0.0 == 106 && $0.1 == 0 && $0.3 == 65534 }, "\(changes)")  // setgid
    }

    /// Exit status and signals pass through the sandbox's init.
    @Test func exitCodesAndSignalsPassThrough() throws {
        #expect(try SandboxRun.run(["/bin/sh", "-c", "exit 7"]).status.shellCode == 7)
        #expect(try SandboxRun.run(["/bin/sh", "-c", "kill -TERM $$"]).status.shellCode == 143)
    }

    /// The default seccomp filter refuses namespace creation, and the refusal is visible.
    @Test func defaultFilterRefusesUnshare() throws {
        let run = try SandboxRun.run(["python3", "-c", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nif libc.unshare(0x10000000) != 0 and ctypes.get_errno() == 1: raise SystemExit(3)"])
        #expect(run.status == .exited(3))
        #expect(run.syscallEvents.contains { $0.number == 272 && $0.returnValue == -1 })  // unshare -> -EPERM
    }
}
