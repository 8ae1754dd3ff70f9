#if canImport(Glibc)
import Glibc
#endif
import CAlcub3
import KernelSupport
import Policy

/// Namespaces a process-level sandbox gets. User namespaces are left out: the
/// sandbox runs as root-owned and privileges are removed by no_new_privs and seccomp.
public struct NamespaceSet: OptionSet, Sendable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    // <linux/sched.h> values; Glibc's module does not export the CLONE_NEW* macros.
    public static let mount = NamespaceSet(rawValue: 0x0002_0000)
    public static let cgroup = NamespaceSet(rawValue: 0x0200_0000)
    public static let uts = NamespaceSet(rawValue: 0x0400_0000)
    public static let ipc = NamespaceSet(rawValue: 0x0800_0000)
    public static let pid = NamespaceSet(rawValue: 0x2000_0000)
    public static let network = NamespaceSet(rawValue: 0x4000_0000)

    public static func forPolicy(_ policy: SandboxPolicy) -> NamespaceSet {
        var set: NamespaceSet = [.mount, .pid, .ipc, .uts, .cgroup]
        if !policy.allowsNetwork { set.insert(.network) }
        return set
    }

    public var names: [String] {
        let all: [(NamespaceSet, String)] = [(.mount, "mnt"), (.pid, "pid"), (.ipc, "ipc"), (.uts, "uts"),
                                             (.cgroup, "cgroup"), (.network, "net")]
        return all.filter { contains($0.0) }.map(\.1)
    }
}

/// Everything needed to start one process-level sandbox.
public struct ProcessSpec: Sendable {
    public var executable: String          // resolved absolute path
    public var arguments: [String]         // argv, argv[0] included
    public var environment: [String]
    public var workingDirectory: String?
    public var hostname: String
    public var namespaces: NamespaceSet
    public var seccomp: SeccompProgram?
    public var dieWithParent: Bool

    public init(executable: String, arguments: [String], environment: [String], workingDirectory: String?,
                hostname: String, namespaces: NamespaceSet, seccomp: SeccompProgram?, dieWithParent: Bool) {
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.hostname = hostname
        self.namespaces = namespaces
        self.seccomp = seccomp
        self.dieWithParent = dieWithParent
    }
}

/// How a sandboxed process ended.
public enum ExitStatus: Sendable, Equatable {
    case exited(Int32)
    case signaled(Int32)

    /// The shell convention: the code, or 128 + the signal number.
    public var shellCode: Int32 {
        switch self {
        case .exited(let code): return code
        case .signaled(let signal): return 128 + signal
        }
    }
}

/// A running sandboxed process (the sandbox's init): started into its cgroup
/// and namespaces by clone3, owned through a pidfd.
public final class SandboxedProcess: Sendable {
    public let pid: Int32
    private let pidfd: OwnedDescriptor

    private static let stepNames: [Int32: String] = [
        1: "clone3", 2: "making mounts private", 3: "mounting /proc", 4: "setting the hostname",
        5: "bringing up loopback", 6: "changing directory", 7: "setting no_new_privs",
        8: "installing the seccomp filter", 9: "exec", 10: "joining v1 cgroups",
    ]

    public init(spec: ProcessSpec, cgroup: SandboxCgroup) throws {
        let cgroupFD = try cgroup.openDirectory()
        var argv = spec.arguments.map { strdup($0) } + [nil]
        var envp = spec.environment.map { strdup($0) } + [nil]
        let path = strdup(spec.executable)
        let cwd = spec.workingDirectory.map { strdup($0) } ?? nil
        let hostname = strdup(spec.hostname)
        defer {
            (argv + envp).forEach { free($0) }
            free(path); free(cwd); free(hostname)
        }
        var pid: pid_t = 0
        var pidfd: Int32 = -1
        var step: Int32 = 0
        var err: Int32 = 0
        let filter = spec.seccomp?.instructions ?? []
        let rc: Int32 = argv.withUnsafeMutableBufferPointer { argvBuffer in
            envp.withUnsafeMutableBufferPointer { envpBuffer in
                filter.withUnsafeBytes { filterBytes in
                    var config = alcub3_spawn_config()
                    config.path = UnsafePointer(path)
                    config.argv = UnsafePointer(argvBuffer.baseAddress)
                    config.envp = UnsafePointer(envpBuffer.baseAddress)
                    config.cwd = UnsafePointer(cwd)
                    config.hostname = UnsafePointer(hostname)
                    config.cgroup_fd = cgroupFD.raw
                    config.v1_procs_fds = (-1, -1, -1, -1, -1, -1, -1, -1)
                    config.namespaces = spec.namespaces.rawValue
                    if spec.seccomp != nil {
                        config.filter = filterBytes.baseAddress?.assumingMemoryBound(to: sock_filter.self)
                        config.filter_len = UInt16(filter.count)
                    }
                    config.stdin_fd = -1
                    config.stdout_fd = -1
                    config.stderr_fd = -1
                    config.die_with_parent = spec.dieWithParent ? 1 : 0
                    return alcub3_spawn(&config, &pid, &pidfd, &step, &err)
                }
            }
        }
        if rc != 0 {
            let stepName = Self.stepNames[step] ?? "step \(step)"
            let error = SystemError(errno: err, call: stepName, context: spec.executable)
            if step == 9 && (err == ENOENT) { throw SandboxError.commandNotFound(spec.executable) }
            if step == 9 && (err == EACCES || err == ENOEXEC) { throw SandboxError.commandNotExecutable(spec.executable) }
            throw SandboxError.childSetupFailed(step: stepName, error: error)
        }
        self.pid = pid
        self.pidfd = OwnedDescriptor(pidfd)
    }

    /// Blocks until the process ends and reaps it.
    public func wait() -> ExitStatus {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno == EINTR { continue }
            preconditionFailure("waitpid(\(pid)): errno \(errno)")
        }
        // WIFEXITED / WTERMSIG are macros; decode the wait status by hand.
        let signal = status & 0x7f
        return signal == 0 ? .exited((status >> 8) & 0xff) : .signaled(signal)
    }

    public func signal(_ sig: Int32) {
        _ = alcub3_pidfd_send_signal(pidfd.raw, sig)
    }
}
