import Foundation
import KernelSupport
import Policy
import Synchronization
import Testing
@testable import Sandbox

/// The user-notify supervisor on the real kernel: an escape syscall waits in
/// the kernel until the supervisor refuses it with EPERM and reports it; with
/// no supervisor it fails with ENOSYS, never succeeds; ordinary work under the
/// same filter never reaches the supervisor.
@Suite(.serialized, .enabled(if: runsAsRoot, "needs root: cgroups, namespaces and seccomp listeners"))
struct SeccompSupervisorTests {
    static let filter: SeccompProgram = {
        let profile = SeccompProfile.forSandbox(allowedSyscalls: Capability.allowedSyscalls(for: Capability.allCases),
                                                supervised: true)
        return try! SeccompCompiler.compile(profile)
    }()

    /// Waits for one line on stdin (the go-ahead), then tries the mount.
    static let mountScript = """
        import ctypes, errno, sys
        sys.stdin.readline()
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)
        print('mount', 'ok' if rc == 0 else errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno()))
        """

    /// Notices a supervisor reported, collected across its thread.
    final class Notices: Sendable {
        private let list = Mutex<[SeccompNotice]>([])
        func append(_ notice: SeccompNotice) { list.withLock { $0.append(notice) } }
        var all: [SeccompNotice] { list.withLock { $0 } }
    }

    /// Runs python3 with `script` under the supervised filter. `handOver`
    /// receives the sandbox's seccomp listener before the script is let go
    /// (a line on its stdin) and returns what to do once it has ended.
    func python(_ script: String, directory: String = "/",
                handOver: (OwnedDescriptor) throws -> () -> Void) throws -> SandboxOutput {
        let sandbox = try TestCgroup("seccomp-supervisor")
        var spec = TestCgroup.spec(["/usr/bin/python3", "-c", script], namespaces: [.mount, .pid, .ipc, .uts, .cgroup])
        spec.seccomp = Self.filter
        spec.workingDirectory = directory
        var input: [Int32] = [-1, -1], output: [Int32] = [-1, -1]
        try syscallChecked("pipe") { pipe(&input) }
        try syscallChecked("pipe") { pipe(&output) }
        let reader = FileHandle(fileDescriptor: output[0], closeOnDealloc: true)
        let process: SandboxedProcess
        do {
            // The child has its copies; ours would hold off EOF.
            defer { close(input[0]); close(output[1]) }
            spec.stdio = (input[0], output[1], output[1])
            process = try SandboxedProcess(spec: spec, cgroup: sandbox.cgroup)
        }
        // Passed on directly: a reference kept here would keep the listener open.
        let finish = try handOver(try #require(process.takeSeccompListener(), "a supervised filter comes with a listener"))
        #expect(process.takeSeccompListener() == nil, "the listener is handed over once")
        let line = Array("go\n".utf8)
        #expect(write(input[1], line, line.count) == line.count)
        close(input[1])
        let text = String(decoding: reader.readDataToEndOfFile(), as: UTF8.self)
        let status = process.wait()
        finish()
        withExtendedLifetime(sandbox) {}  // its cgroup, until the sandbox has ended
        return SandboxOutput(status: status, output: text, landlockABI: process.landlockABI)
    }

    @Test func anEscapeSyscallIsRefusedWithEPERMAndReportedWithItsArguments() throws {
        let notices = Notices()
        let result = try python(Self.mountScript) { listener in
            let supervisor = try SeccompSupervisor(listener: listener, label: "test") { notices.append($0) }
            supervisor.start()
            // stop() returns after the last notice was handed on.
            return { supervisor.stop() }
        }
        #expect(result.status == .exited(0), "python failed: \(result.output)")
        #expect(result.output == "mount EPERM\n")
        let mounts = notices.all.filter { $0.syscall == "mount" }
        #expect(mounts.count == 1, "notices: \(notices.all.map(\.call))")
        let notice = try #require(mounts.first)
        #expect(notice.call.contains("\"tmpfs\"") && notice.call.contains("\"/tmp\""), "call: \(notice.call)")
        #expect(notice.errno == EPERM)
        #expect(notice.pid > 0 && notice.receivedAt > 0)
        #expect(notice.answerNanos > 0)
    }

    @Test func withoutASupervisorTheSyscallFailsWithENOSYS() throws {
        // The listener closed before the attempt, no supervisor ever started.
        let closed = try python(Self.mountScript) { listener in
            _ = listener  // dropped: closed on return
            return {}
        }
        #expect(closed.status == .exited(0), "python failed: \(closed.output)")
        #expect(closed.output == "mount ENOSYS\n")

        // A supervisor that has stopped (it closes the listener as it ends).
        let notices = Notices()
        let stopped = try python(Self.mountScript) { listener in
            let supervisor = try SeccompSupervisor(listener: listener, label: "test") { notices.append($0) }
            supervisor.start()
            supervisor.stop()
            return {}
        }
        #expect(stopped.status == .exited(0), "python failed: \(stopped.output)")
        #expect(stopped.output == "mount ENOSYS\n")
        #expect(notices.all.isEmpty)
    }

    @Test func ordinaryWorkUnderASupervisedFilterNeverReachesTheSupervisor() throws {
        let directory = try makeTemporaryDirectory("supervised-work")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let script = """
            import subprocess, sys, threading
            sys.stdin.readline()
            t = threading.Thread(target=lambda: None); t.start(); t.join(); print('thread ok')
            print('child', subprocess.run(['/bin/sh', '-c', 'echo hi > from-child.txt']).returncode)
            open('written.txt', 'w').write('x'); print('write ok')
            """
        let notices = Notices()
        let result = try python(script, directory: directory) { listener in
            let supervisor = try SeccompSupervisor(listener: listener, label: "test") { notices.append($0) }
            supervisor.start()
            return { supervisor.stop() }
        }
        #expect(result.status == .exited(0), "python failed: \(result.output)")
        #expect(result.output == "thread ok\nchild 0\nwrite ok\n")
        #expect(FileManager.default.fileExists(atPath: directory + "/written.txt"))
        #expect(FileManager.default.fileExists(atPath: directory + "/from-child.txt"))
        #expect(notices.all.isEmpty, "ordinary work reached the supervisor: \(notices.all.map(\.call))")
    }
}
