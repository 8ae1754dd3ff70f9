import Foundation
import KernelSupport
import Testing
@testable import Sandbox

@Suite struct LandlockSpecTests {
    @Test func landlockFollowsTheReadOnlyViewUnlessSet() {
        var spec = TestCgroup.spec(["/bin/true"], namespaces: [.mount])
        #expect(!spec.landlock)
        spec.readOnlyRoot = true
        #expect(spec.landlock)
        spec.landlock = false
        #expect(!spec.landlock && spec.readOnlyRoot)
        spec.readOnlyRoot = false
        spec.landlock = true
        #expect(spec.landlock)
    }
}

/// Landlock on the real kernel (ABI 7 on the project machines). Each refusal
/// is checked against a run without Landlock, so the test shows Landlock
/// refused it, not the mounts, the namespaces or missing capabilities.
@Suite(.serialized, .enabled(if: runsAsRoot, "needs root: cgroups, namespaces, capabilities and Landlock"))
struct LandlockKernelTests {
    let abi = (try? Landlock.abi()) ?? 0

    /// The sandboxes' usual view: read-only mounts, a writable workspace and private /tmp.
    @Test func theWorkspaceTmpAndDevicesStayWritable() throws {
        try #require(abi >= 1, "the kernel has no Landlock (alcub3_landlock_abi: \(abi))")
        let workspace = try makeTemporaryDirectory("workspace")
        defer { try? FileManager.default.removeItem(atPath: workspace) }
        let sandbox = try TestCgroup("landlock")
        let script = """
            set -e
            echo agent > \(workspace)/out.txt; mkdir \(workspace)/d; mv \(workspace)/out.txt \(workspace)/d/
            echo scratch > /tmp/x; rm /tmp/x
            echo quiet > /dev/null; head -c 4 /dev/urandom | wc -c; cat /etc/hostname >/dev/null
            echo done
            """
        let run = try sandbox.run(["/bin/sh", "-c", script]) {
            $0.readOnlyRoot = true
            $0.writablePaths = [workspace]
        }
        #expect(run.status == .exited(0) && run.output.hasSuffix("4\ndone\n"), "\(run.output)")
        #expect(run.landlockABI == abi)
        #expect(try String(contentsOfFile: workspace + "/d/out.txt", encoding: .utf8) == "agent\n")
    }

    /// Landlock without the read-only mounts: a directory the mounts leave
    /// writable, but not listed, refuses new files with EACCES.
    @Test func anUnlistedDirectoryIsRefusedByLandlockItself() throws {
        try #require(abi >= 1, "the kernel has no Landlock")
        let workspace = try makeTemporaryDirectory("workspace")
        let elsewhere = try makeTemporaryDirectory("elsewhere")
        defer {
            try? FileManager.default.removeItem(atPath: workspace)
            try? FileManager.default.removeItem(atPath: elsewhere)
        }
        let sandbox = try TestCgroup("landlock")
        let script = """
            import errno
            def create(path):
                try:
                    open(path, "w").write("x")
                    return "written"
                except OSError as e:
                    return errno.errorcode[e.errno]
            print(create("\(workspace)/a"), create("\(elsewhere)/b"))
            """
        let confined = try sandbox.python(script) {
            $0.landlock = true
            $0.writablePaths = [workspace]
        }
        #expect(confined.output == "written EACCES\n", "\(confined.output)")
        #expect(confined.landlockABI == abi)
        #expect(!FileManager.default.fileExists(atPath: elsewhere + "/b"))
        // The same sandbox without Landlock writes both: the refusal was Landlock's.
        let unconfined = try sandbox.python(script) { $0.writablePaths = [workspace] }
        #expect(unconfined.output == "written written\n", "\(unconfined.output)")
        #expect(unconfined.landlockABI == nil)
    }

    /// TCP ports (ABI 4), in the sandbox's own network namespace with loopback up.
    @Test func onlyListedTCPPortsConnectAndBind() throws {
        try #require(abi >= 4, "Landlock ABI \(abi) has no network rules")
        let sandbox = try TestCgroup("landlock")
        let script = """
            import errno, socket
            def try_(f):
                try:
                    f()
                    return "ok"
                except OSError as e:
                    return errno.errorcode[e.errno]
            listeners = []
            def listen(port):
                s = socket.socket(); s.bind(("127.0.0.1", port)); s.listen(); listeners.append(s)
            def connect(port):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            print(try_(lambda: listen(8001)), try_(lambda: listen(8002)), try_(lambda: listen(8003)))
            print(try_(lambda: connect(8001)), try_(lambda: connect(8002)))
            """
        let namespaces: NamespaceSet = [.mount, .pid, .ipc, .uts, .cgroup, .network]
        let confined = try sandbox.python(script, namespaces: namespaces) {
            $0.landlock = true
            $0.landlockNetwork = LandlockNetwork(allowedConnectPorts: [8001], allowedBindPorts: [8001, 8002])
        }
        #expect(confined.output == "ok ok EACCES\nok EACCES\n", "\(confined.output)")
        // Only connect handled: binding is free again.
        let connectOnly = try sandbox.python(script, namespaces: namespaces) {
            $0.landlock = true
            $0.landlockNetwork = LandlockNetwork(allowedConnectPorts: [8002])
        }
        #expect(connectOnly.output == "ok ok ok\nEACCES ok\n", "\(connectOnly.output)")
        let unconfined = try sandbox.python(script, namespaces: namespaces)
        #expect(unconfined.output == "ok ok ok\nok ok\n", "\(unconfined.output)")
    }

    /// Scoping (ABI 6): the sandbox cannot signal a process outside it. Without
    /// a pid namespace the outside pid is visible, and without Landlock the
    /// signal is allowed (same uid, no capability needed), so EPERM is Landlock's.
    @Test func aSignalToAProcessOutsideIsRefused() throws {
        try #require(abi >= 6, "Landlock ABI \(abi) has no scopes")
        let outside = try OutsideProcess(["/bin/sleep", "30"])
        let sandbox = try TestCgroup("landlock")
        func script(signal: Int32) -> String {
            """
            import errno, os
            try:
                os.kill(\(outside.pid), \(signal))
                print("signalled")
            except OSError as e:
                print(errno.errorcode[e.errno])
            """
        }
        let confined = try sandbox.python(script(signal: SIGTERM), namespaces: [.mount]) { $0.landlock = true }
        #expect(confined.output == "EPERM\n", "\(confined.output)")
        #expect(outside.isAlive)
        // Signal 0 asks the same permission without killing.
        let unconfined = try sandbox.python(script(signal: 0), namespaces: [.mount])
        #expect(unconfined.output == "signalled\n", "\(unconfined.output)")
    }

    /// Scoping (ABI 6): an abstract Unix socket of a process outside, in the
    /// same network namespace, cannot be reached.
    @Test func anAbstractSocketOutsideIsUnreachable() throws {
        try #require(abi >= 6, "Landlock ABI \(abi) has no scopes")
        let name = "alcub3-landlock-test-\(getpid())"
        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(name.utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { path in
            for (i, byte) in bytes.enumerated() { path[i + 1] = byte }  // path[0] == 0: abstract
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + 1 + bytes.count)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) } }
        try #require(bound == 0 && listen(listener, 8) == 0)
        let sandbox = try TestCgroup("landlock")
        let script = """
            import errno, socket
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect("\\0\(name)")
                print("connected")
            except OSError as e:
                print(errno.errorcode[e.errno])
            """
        let confined = try sandbox.python(script, namespaces: [.mount, .pid]) { $0.landlock = true }
        #expect(confined.output == "EPERM\n", "\(confined.output)")
        let unconfined = try sandbox.python(script, namespaces: [.mount, .pid])
        #expect(unconfined.output == "connected\n", "\(unconfined.output)")
    }

    /// A rule Landlock cannot take is a failed start naming the step, not a sandbox without it.
    @Test func aFailedRuleFailsTheStart() throws {
        try #require(abi >= 1, "the kernel has no Landlock")
        let sandbox = try TestCgroup("landlock")
        #expect {
            _ = try sandbox.run(["/bin/true"], namespaces: [.mount]) {
                $0.landlock = true
                $0.writablePaths = ["/nonexistent-alcub3-workspace"]
            }
        } throws: { error in
            guard case SandboxError.childSetupFailed(let step, let cause) = error else { return false }
            return step == "applying Landlock" && cause.errno == ENOENT
        }
    }

    /// The init keeps working under Landlock: it reaps and writes its status
    /// file (opened before the domain began), and a command started inside the
    /// running sandbox gets the sandbox's rules.
    @Test func theInitAndJoiningCommandsLiveUnderTheSameRules() throws {
        try #require(abi >= 1, "the kernel has no Landlock")
        let workspace = try makeTemporaryDirectory("workspace")
        let state = try makeTemporaryDirectory("state")
        defer {
            try? FileManager.default.removeItem(atPath: workspace)
            try? FileManager.default.removeItem(atPath: state)
        }
        let sandbox = try TestCgroup("landlock")
        var spec = TestCgroup.spec(["/bin/sleep", "30"], namespaces: [.mount, .pid, .ipc, .uts, .cgroup])
        spec.readOnlyRoot = true
        spec.writablePaths = [workspace]
        spec.statusFile = state + "/exit_status"
        let initProcess = try SandboxedProcess(spec: spec, cgroup: sandbox.cgroup)
        #expect(initProcess.landlockABI == abi)
        // The joining spec says nothing of Landlock: the sandbox's rules apply anyway.
        let joined = try sandbox.run(["/bin/sh", "-c", "echo in > \(workspace)/joined; echo out > /tmp/t && echo tmp; (echo x > /etc/alcub3-test) 2>&1; grep ^CapEff /proc/self/status"],
                                     joining: initProcess)
        #expect(joined.status == .exited(0), "\(joined.output)")
        #expect(joined.output.contains("tmp\n") && joined.output.contains("CapEff:\t0000000000000000"), "\(joined.output)")
        #expect(joined.output.contains("Read-only file system") || joined.output.contains("Permission denied"), "\(joined.output)")
        #expect(FileManager.default.fileExists(atPath: workspace + "/joined"))
        initProcess.signal(SIGTERM)  // forwarded to sleep by the init
        #expect(initProcess.wait() == .exited(128 + SIGTERM))
        #expect(try String(contentsOfFile: state + "/exit_status", encoding: .utf8) == "\(128 + SIGTERM)\n")
    }
}
