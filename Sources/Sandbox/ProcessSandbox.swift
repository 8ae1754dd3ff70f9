#if canImport(Glibc)
import Glibc
#endif
import CAlcub3
import KernelSupport
import Synchronization
import Policy

/// Namespaces a process-level sandbox gets. User namespaces are left out: the
/// sandbox runs as uid 0 and privileges are removed by dropping every capability
/// (securebits keep uid 0 from regaining them), Landlock, no_new_privs and seccomp.
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
    public var executable: String?         // resolved absolute path; nil: the init alone, waiting
    public var arguments: [String]         // argv, argv[0] included
    public var environment: [String]
    public var workingDirectory: String?
    public var hostname: String
    public var namespaces: NamespaceSet
    public var seccomp: SeccompProgram?
    public var dieWithParent: Bool
    /// Paths the sandbox must not see (an empty read-only tmpfs is mounted over each).
    public var hiddenPaths: [String] = []
    /// v1 cgroup.procs files the process joins (hybrid hosts: cpu, memory, pids).
    public var v1ProcsFiles: [String] = []
    /// Where the init writes its command's exit status (for a supervisor that may restart).
    public var statusFile: String?
    /// Every mount read-only except `writablePaths` (bound at their own paths)
    /// and a private /tmp: the host's files, cgroupfs, sysfs and /proc/sys
    /// cannot be changed from inside.
    public var readOnlyRoot = false
    public var writablePaths: [String] = []
    /// With `readOnlyRoot`: the agent's private workspace, a tmpfs of `bytes`
    /// at `path` (the mount point is created on the host if missing, empty).
    /// Full means ENOSPC inside; the host's disk is never filled.
    public var workspace: (path: String, bytes: UInt64)?
    /// Capabilities the command keeps ("CAP_NET_BIND_SERVICE"); every other one
    /// is dropped from all five sets, and uid 0 gains none back through execve.
    public var keepCapabilities: [String] = []
    /// Landlock: read and execute everywhere, write only beneath `writablePaths`,
    /// the private /tmp (with `readOnlyRoot`) and the common character devices;
    /// no signal or abstract Unix socket reaches a process outside the sandbox
    /// (ABI 6). Follows `readOnlyRoot` unless set. On a kernel without Landlock
    /// the sandbox starts unconfined by it: `SandboxedProcess.landlockABI` says so.
    public var landlock: Bool {
        get { landlockSetting ?? readOnlyRoot }
        set { landlockSetting = newValue }
    }
    private var landlockSetting: Bool?
    /// TCP ports under Landlock (ABI 4, with `landlock` on); nil leaves the
    /// network to the namespaces and cgroup programs.
    public var landlockNetwork: LandlockNetwork?
    /// Descriptors for the command's stdin, stdout, stderr; nil inherits.
    public var stdio: (Int32, Int32, Int32)?
    /// A private /dev (null, zero, full, random, urandom, tty, a new devpts,
    /// a private /dev/shm of `shmBytes`) instead of the host's; needs the mount namespace.
    public var minimalDev = false
    public var shmBytes: UInt64 = 64 << 20
    /// stdin is a pty alcub3 relays: the command makes it its controlling terminal.
    public var controllingTerminal = false
    /// PR_SET_MDWE: writable memory never becomes executable (off for the `jit` capability).
    public var denyWriteExecute = false
    /// The sandbox's user namespace (its root an unprivileged host uid); nil:
    /// the agent is uid 0 without capabilities. A command joining a running
    /// sandbox joins its init's namespace whatever this says.
    public var userNamespace: UserNamespace?
    /// `writablePaths[0]` as a copy-on-write overlay whose changes go to this
    /// workspace's size-capped tmpfs (applied by the caller after the run).
    public var copyOnWrite: CopyOnWriteWorkspace?

    public init(executable: String?, arguments: [String], environment: [String], workingDirectory: String?,
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

extension ProcessSpec {
    /// What every process-level sandbox gets from its policy, whoever starts
    /// it (`run` or the service): a private /dev with the read-only view,
    /// write-xor-execute memory unless the policy has `jit`, and a user
    /// namespace of its own. Returns the warning when the kernel refuses the
    /// namespace (below TOP_SECRET, which refuses the sandbox instead).
    public mutating func harden(for policy: SandboxPolicy) throws -> String? {
        minimalDev = readOnlyRoot
        denyWriteExecute = !policy.capabilities.contains(.jit)
        let (namespace, warning) = try UserNamespace.forSandbox(policy, writable: writablePaths.first)
        userNamespace = namespace
        return warning
    }
}

/// TCP ports a Landlock-confined sandbox may use: a nil list leaves that
/// direction unrestricted, an empty one refuses it (EACCES). UDP is not covered.
public struct LandlockNetwork: Sendable, Equatable {
    public var allowedConnectPorts: [UInt16]?
    public var allowedBindPorts: [UInt16]?

    public init(allowedConnectPorts: [UInt16]? = nil, allowedBindPorts: [UInt16]? = nil) {
        self.allowedConnectPorts = allowedConnectPorts
        self.allowedBindPorts = allowedBindPorts
    }
}

/// What confines a sandbox's processes beyond namespaces and seccomp. A
/// command started inside a running sandbox gets its sandbox's, whatever its
/// own spec says: it must not be less confined than the agent.
struct Confinement: Sendable {
    let keepCapabilities: [String]
    let landlock: Bool
    let readOnlyRoot: Bool
    let writablePaths: [String]
    let workspace: (path: String, bytes: UInt64)?
    let landlockNetwork: LandlockNetwork?
    let denyWriteExecute: Bool

    init(_ spec: ProcessSpec) {
        keepCapabilities = spec.keepCapabilities
        landlock = spec.landlock
        readOnlyRoot = spec.readOnlyRoot
        writablePaths = spec.writablePaths
        workspace = spec.workspace
        landlockNetwork = spec.landlockNetwork
        denyWriteExecute = spec.denyWriteExecute
    }

    /// (A joined command does not mount the workspace again: it sees the init's.)
    func apply(to spec: inout ProcessSpec) {
        spec.keepCapabilities = keepCapabilities
        spec.landlock = landlock
        spec.readOnlyRoot = readOnlyRoot
        spec.writablePaths = writablePaths
        spec.workspace = workspace
        spec.landlockNetwork = landlockNetwork
        spec.denyWriteExecute = denyWriteExecute
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
    let pidfd: OwnedDescriptor
    /// The Landlock ABI the process is confined with; nil when Landlock was
    /// not asked for, the kernel lacks it, or the process was adopted (unknown).
    public let landlockABI: Int?
    /// nil for an adopted process: its spec is not known here.
    let confinement: Confinement?
    /// The listener of the sandbox's seccomp filter when it has notify rules,
    /// until `takeSeccompListener()` hands it to a `SeccompSupervisor`.
    private let listener: Mutex<OwnedDescriptor?>

    /// The seccomp listener, once: its taker is its only holder, so when the
    /// taker closes it the notified syscalls fail with ENOSYS (closed, never open).
    public func takeSeccompListener() -> OwnedDescriptor? {
        listener.withLock { held in
            defer { held = nil }
            return held
        }
    }

    /// Adopts a running sandbox init that is not our child (after a service restart).
    public init(adopting pid: Int32) throws {
        let fd = try syscallChecked("pidfd_open", "pid \(pid)") { alcub3_pidfd_open(pid) }
        self.pid = pid
        self.pidfd = OwnedDescriptor(fd)
        self.landlockABI = nil
        self.confinement = nil
        self.listener = Mutex(nil)
    }

    /// The pidfd becomes readable when the process ends (child or not).
    public var descriptor: Int32 { pidfd.raw }

    /// True while the process runs (polls the pidfd without blocking).
    public var isRunning: Bool {
        var p = pollfd(fd: pidfd.raw, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, 0) == 0
    }

    private static let stepNames: [Int32: String] = [
        1: "clone3", 2: "making mounts private", 3: "mounting /proc", 4: "setting the hostname",
        5: "bringing up loopback", 6: "changing directory", 7: "setting no_new_privs",
        8: "installing the seccomp filter", 9: "exec", 10: "joining v1 cgroups", 12: "hiding a path",
        13: "joining the sandbox's namespaces", 14: "making the system view read-only",
        15: "applying Landlock", 16: "dropping capabilities", 17: "mounting the private workspace",
        18: "making the private /dev", 19: "entering the user namespace", 20: "starting a new session",
        21: "refusing write-then-execute memory (PR_SET_MDWE)",
        22: "idmapping the writable directory (its filesystem may not support idmapped mounts)",
        23: "mounting the copy-on-write view of the working directory",
    ]

    /// Starts a new sandbox: its init (and the command, when there is one).
    public convenience init(spec: ProcessSpec, cgroup: SandboxCgroup) throws {
        try self.init(spec: spec, cgroup: cgroup, into: nil)
    }

    /// Starts a command inside the running sandbox whose init is `sandboxInit`,
    /// with the sandbox's capabilities and Landlock rules when it started them.
    public convenience init(spec: ProcessSpec, cgroup: SandboxCgroup, joining sandboxInit: SandboxedProcess) throws {
        var spec = spec
        sandboxInit.confinement?.apply(to: &spec)
        spec.userNamespace = nil
        try self.init(spec: spec, cgroup: cgroup, into: sandboxInit.pidfd.raw,
                      joiningUserNamespace: try Self.userNamespace(of: sandboxInit.pid))
    }

    /// The user namespace of a running sandbox's init when it is not ours
    /// (known from the kernel, so an adopted sandbox's too).
    static func userNamespace(of pid: Int32) throws -> OwnedDescriptor? {
        let theirs = try OwnedDescriptor(path: "/proc/\(pid)/ns/user", flags: O_RDONLY)
        var a = stat(), b = stat()
        guard fstat(theirs.raw, &a) == 0, stat("/proc/self/ns/user", &b) == 0 else {
            throw SystemError(errno: errno, call: "stat", context: "/proc/\(pid)/ns/user")
        }
        return a.st_ino == b.st_ino && a.st_dev == b.st_dev ? nil : theirs
    }

    private init(spec: ProcessSpec, cgroup: SandboxCgroup, into target: Int32?,
                 joiningUserNamespace: OwnedDescriptor? = nil) throws {
        let keepCapabilities = try LinuxCapabilities.mask(spec.keepCapabilities)
        let cgroupFD = try cgroup.openDirectory()
        let v1 = try spec.v1ProcsFiles.map { try OwnedDescriptor(path: $0, flags: O_WRONLY) }
        let status = try spec.statusFile.map { try OwnedDescriptor(path: $0, flags: O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600) }
        precondition(v1.count <= 7, "at most 7 v1 controllers")
        var cStrings = CStringArena()
        defer { cStrings.free() }
        let argv = cStrings.array(spec.arguments)
        let envp = cStrings.array(spec.environment)
        let hidden = cStrings.array(spec.hiddenPaths)
        let writable = cStrings.array(spec.writablePaths)
        precondition(spec.writablePaths.count <= 8, "at most 8 writable paths")
        var pid: pid_t = 0
        var pidfd: Int32 = -1
        var step: Int32 = 0
        var err: Int32 = 0
        var landlockABI: Int32 = 0
        var listener: Int32 = -1
        let filter = spec.seccomp?.instructions ?? []
        let rc: Int32 = filter.withUnsafeBytes { filterBytes in
            var config = alcub3_spawn_config()
            config.path = cStrings.string(spec.executable)
            config.argv = UnsafePointer(argv)
            config.envp = UnsafePointer(envp)
            config.cwd = cStrings.string(spec.workingDirectory)
            config.hostname = cStrings.string(spec.hostname)
            config.cgroup_fd = cgroupFD.raw
            var fds = [Int32](repeating: -1, count: 8)
            for (i, fd) in v1.enumerated() { fds[i] = fd.raw }
            config.v1_procs_fds = (fds[0], fds[1], fds[2], fds[3], fds[4], fds[5], fds[6], fds[7])
            config.namespaces = spec.namespaces.rawValue
            if spec.seccomp != nil {
                config.filter = filterBytes.baseAddress?.assumingMemoryBound(to: sock_filter.self)
                config.filter_len = UInt16(filter.count)
                config.filter_log = spec.seccomp!.logDenials ? 1 : 0
                config.filter_notify = spec.seccomp!.usesNotify ? 1 : 0
            }
            config.stdin_fd = spec.stdio?.0 ?? -1
            config.stdout_fd = spec.stdio?.1 ?? -1
            config.stderr_fd = spec.stdio?.2 ?? -1
            config.die_with_parent = spec.dieWithParent ? 1 : 0
            config.hidden_paths = UnsafeRawPointer(hidden).assumingMemoryBound(to: UnsafePointer<CChar>?.self)
            config.status_fd = status?.raw ?? -1
            config.read_only_root = spec.readOnlyRoot ? 1 : 0
            config.writable_paths = UnsafeRawPointer(writable).assumingMemoryBound(to: UnsafePointer<CChar>?.self)
            config.keep_capabilities = keepCapabilities
            if spec.readOnlyRoot, let workspace = spec.workspace {
                config.workspace = cStrings.string(workspace.path)
                config.workspace_bytes = workspace.bytes
            }
            config.minimal_dev = spec.minimalDev && spec.namespaces.contains(.mount) ? 1 : 0
            config.shm_bytes = spec.shmBytes
            config.controlling_tty = spec.controllingTerminal ? 1 : 0
            config.deny_write_execute = spec.denyWriteExecute ? 1 : 0
            config.userns_fd = joiningUserNamespace?.raw ?? spec.userNamespace?.namespace.raw ?? -1
            config.userns_root = spec.userNamespace?.hostRoot ?? 0
            config.idmap_userns_fd = spec.userNamespace?.idmapDescriptor ?? -1
            config.keep_fd = spec.userNamespace?.lock.raw ?? -1
            config.overlay_dir = joiningUserNamespace == nil && target == nil ? cStrings.string(spec.copyOnWrite?.root) : nil
            config.landlock = spec.landlock ? 1 : 0
            if let ports = spec.landlockNetwork?.allowedConnectPorts {
                config.landlock_connect = 1
                config.connect_ports = cStrings.ports(ports)
                config.connect_ports_count = Int32(ports.count)
            }
            if let ports = spec.landlockNetwork?.allowedBindPorts {
                config.landlock_bind = 1
                config.bind_ports = cStrings.ports(ports)
                config.bind_ports_count = Int32(ports.count)
            }
            return withUnsafeMutablePointer(to: &listener) { listenerOut in
                config.seccomp_listener = listenerOut
                if let target {
                    return alcub3_spawn_into(&config, target, &pid, &pidfd, &step, &err, &landlockABI)
                }
                return alcub3_spawn(&config, &pid, &pidfd, &step, &err, &landlockABI)
            }
        }
        if rc != 0 {
            let stepName = Self.stepNames[step] ?? "step \(step)"
            let subject = spec.executable ?? "sandbox init"
            let error = SystemError(errno: err, call: stepName, context: subject)
            if step == 9 && err == ENOENT { throw SandboxError.commandNotFound(subject) }
            if step == 9 && (err == EACCES || err == ENOEXEC) { throw SandboxError.commandNotExecutable(subject) }
            throw SandboxError.childSetupFailed(step: stepName, error: error)
        }
        self.pid = pid
        self.pidfd = OwnedDescriptor(pidfd)
        self.landlockABI = landlockABI > 0 ? Int(landlockABI) : nil
        self.confinement = Confinement(spec)
        self.listener = Mutex(listener >= 0 ? OwnedDescriptor(listener) : nil)
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

/// C strings and port lists for one spawn, freed together.
struct CStringArena {
    private var allocations: [UnsafeMutableRawPointer] = []

    mutating func string(_ s: String?) -> UnsafePointer<CChar>? {
        guard let s, let copy = strdup(s) else { return nil }
        allocations.append(UnsafeMutableRawPointer(copy))
        return UnsafePointer(copy)
    }

    /// A NULL-terminated array of C strings.
    mutating func array(_ items: [String]) -> UnsafeMutablePointer<UnsafeMutablePointer<CChar>?> {
        let array = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: items.count + 1)
        for (i, item) in items.enumerated() { array[i] = strdup(item); allocations.append(UnsafeMutableRawPointer(array[i]!)) }
        array[items.count] = nil
        allocations.append(UnsafeMutableRawPointer(array))
        return array
    }

    mutating func ports(_ ports: [UInt16]) -> UnsafePointer<UInt16> {
        let copy = UnsafeMutablePointer<UInt16>.allocate(capacity: max(ports.count, 1))
        copy.initialize(from: ports, count: ports.count)
        allocations.append(UnsafeMutableRawPointer(copy))
        return UnsafePointer(copy)
    }

    func free() { allocations.forEach { Glibc.free($0) } }
}
