import Foundation
import KernelSupport
import Testing
@testable import Sandbox

@Suite struct CapabilityNameTests {
    @Test func namesBecomeBits() throws {
        #expect(LinuxCapabilities.names.count == 41 && LinuxCapabilities.names[21] == "CAP_SYS_ADMIN")
        #expect(try LinuxCapabilities.mask([]) == 0)
        #expect(try LinuxCapabilities.mask(["CAP_NET_BIND_SERVICE"]) == 1 << 10)
        #expect(try LinuxCapabilities.mask(["net_raw", "CAP_CHOWN"]) == 1 << 13 | 1)
        #expect(LinuxCapabilities.names(in: 0x400) == ["CAP_NET_BIND_SERVICE"])
    }

    @Test func anUnknownNameIsRefusedByName() {
        #expect {
            try LinuxCapabilities.mask(["CAP_CHOWN", "CAP_TELEPORT"])
        } throws: { "\($0)".contains("'CAP_TELEPORT'") }
    }
}

/// The capability sets of a process, from /proc/<pid>/status.
struct CapabilitySets: Equatable {
    var inheritable: UInt64 = 0, permitted: UInt64 = 0, effective: UInt64 = 0, bounding: UInt64 = 0, ambient: UInt64 = 0

    /// Reads the Cap* lines printed by `grep ^Cap`, one block per process, in order.
    static func parse(_ text: String) -> [CapabilitySets] {
        var all: [CapabilitySets] = []
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, let value = UInt64(parts[1], radix: 16) else { continue }
            if parts[0] == "CapInh" { all.append(CapabilitySets()) }
            guard !all.isEmpty else { continue }
            switch parts[0] {
            case "CapInh": all[all.count - 1].inheritable = value
            case "CapPrm": all[all.count - 1].permitted = value
            case "CapEff": all[all.count - 1].effective = value
            case "CapBnd": all[all.count - 1].bounding = value
            case "CapAmb": all[all.count - 1].ambient = value
            default: break
            }
        }
        return all
    }
}

@Suite(.serialized, .enabled(if: runsAsRoot, "needs root: cgroups, namespaces, capabilities and Landlock"))
struct CapabilityKernelTests {
    /// The command's sets, then its init's (pid 1 of the sandbox), and the uid it runs as.
    static let readSets = ["/bin/sh", "-c", "grep -h '^Cap' /proc/self/status /proc/1/status; id -u"]

    @Test func aSandboxRunsAsUidZeroWithNoCapability() throws {
        let sandbox = try TestCgroup("caps")
        let run = try sandbox.run(Self.readSets)
        #expect(run.status == .exited(0), "\(run.output)")
        let sets = CapabilitySets.parse(run.output)
        #expect(sets.count == 2, "\(run.output)")
        #expect(sets.allSatisfy { $0 == CapabilitySets() }, "command and init: \(run.output)")
        #expect(run.output.split(separator: "\n").last == "0")
    }

    @Test func keptCapabilitiesAreExactlyThoseAsked() throws {
        let sandbox = try TestCgroup("caps")
        let run = try sandbox.run(Self.readSets) { $0.keepCapabilities = ["CAP_NET_BIND_SERVICE"] }
        #expect(run.status == .exited(0), "\(run.output)")
        let bit: UInt64 = 1 << 10
        let sets = CapabilitySets.parse(run.output)
        #expect(sets.first == CapabilitySets(inheritable: bit, permitted: bit, effective: bit, bounding: bit, ambient: bit),
                "\(run.output)")
    }

    /// What the bit is for: a port below 1024, in the sandbox's own network namespace.
    @Test func bindingAPrivilegedPortNeedsTheKeptCapability() throws {
        let sandbox = try TestCgroup("caps")
        let script = "import socket; s = socket.socket(); s.bind(('127.0.0.1', 80)); print('bound')"
        let namespaces: NamespaceSet = [.mount, .pid, .ipc, .uts, .cgroup, .network]
        let refused = try sandbox.python(script, namespaces: namespaces)
        #expect(refused.status == .exited(1) && refused.output.contains("PermissionError"), "\(refused.output)")
        let kept = try sandbox.python(script, namespaces: namespaces) { $0.keepCapabilities = ["CAP_NET_BIND_SERVICE"] }
        #expect(kept.status == .exited(0) && kept.output.contains("bound"), "\(kept.output)")
    }

    /// Root without CAP_SETUID cannot become another user either (SECBIT_NO_SETUID_FIXUP
    /// and NOROOT are locked: no way back).
    @Test func theSecurebitsAreLocked() throws {
        let sandbox = try TestCgroup("caps")
        let script = """
            import ctypes, os
            libc = ctypes.CDLL(None, use_errno=True)
            print(libc.prctl(27, 0, 0, 0, 0))  # PR_GET_SECUREBITS
            print(libc.prctl(28, 0, 0, 0, 0), ctypes.get_errno())  # PR_SET_SECUREBITS 0
            try:
                os.setuid(1000)
            except PermissionError:
                print("setuid refused")
            """
        let run = try sandbox.python(script)
        #expect(run.output.split(separator: "\n") == ["47", "-1 1", "setuid refused"], "\(run.output)")
    }

    @Test func anUnknownCapabilityIsAThrownErrorNamingIt() throws {
        let sandbox = try TestCgroup("caps")
        #expect {
            _ = try sandbox.run(["/bin/true"]) { $0.keepCapabilities = ["CAP_NET_BIND_SERVICE", "CAP_FLY"] }
        } throws: { error in
            guard case SandboxError.unknownCapability("CAP_FLY") = error else { return false }
            return "\(error)".contains("CAP_FLY")
        }
    }

    /// A command started inside a running sandbox (setns) gets no capability either.
    @Test func aCommandJoiningASandboxHasNoCapability() throws {
        let sandbox = try TestCgroup("caps")
        var spec = TestCgroup.spec(["/bin/true"], namespaces: [.mount, .pid, .ipc, .uts, .cgroup])
        spec.executable = nil  // the init alone, waiting
        let initProcess = try SandboxedProcess(spec: spec, cgroup: sandbox.cgroup)
        defer {
            initProcess.signal(SIGKILL)
            _ = initProcess.wait()
        }
        let run = try sandbox.run(["/bin/sh", "-c", "grep -h '^Cap' /proc/self/status"], joining: initProcess)
        #expect(run.status == .exited(0), "\(run.output)")
        let sets = CapabilitySets.parse(run.output)
        #expect(sets == [CapabilitySets()], "\(run.output)")
    }
}
