/// Where an escape attempt aims: the boundary the detector's layer watches.
public enum EscapeLayer: String, Sendable, CaseIterable {
    /// The agent's own processes: namespaces, credentials, capabilities, ptrace, memory, fileless code.
    case process
    /// The sandbox's boundary with the host: cgroups, /proc and /sys control files, mounts, runtime sockets, network.
    case container
    /// The VMM on the host and the guest's channel (vm and hardware levels).
    case vm
    /// The virtual TPM and measured boot (hardware level).
    case hardware
}

/// OCSF severity (severity_id 2-5).
public enum FindingSeverity: Int, Sendable, Comparable, CaseIterable {
    case low = 2, medium = 3, high = 4, critical = 5

    public var name: String {
        switch self {
        case .low: "Low"
        case .medium: "Medium"
        case .high: "High"
        case .critical: "Critical"
        }
    }
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}

/// The layers of the MAESTRO threat model for agentic AI (Cloud Security
/// Alliance, 2025) an alert belongs to; docs/security.md has the table.
public enum MaestroLayer: String, Sendable, CaseIterable {
    case foundationModels = "L1 Foundation Models"
    case dataOperations = "L2 Data Operations"
    case agentFrameworks = "L3 Agent Frameworks"
    case deploymentInfrastructure = "L4 Deployment and Infrastructure"
    case evaluationObservability = "L5 Evaluation and Observability"
    case securityCompliance = "L6 Security and Compliance"
    case agentEcosystem = "L7 Agent Ecosystem"
}

/// The escape techniques alcub3 refuses and reports, by id. The same ids name
/// the attempts of the escape suite (escape/alcub3-escape.c) and the alerts
/// the detector raises; docs/security.md lists them with how each is refused.
public struct EscapeTechnique: Sendable, Hashable {
    public let id: String
    public let name: String
    /// MITRE ATT&CK (Containers matrix where one fits, else Enterprise).
    public let mitre: String?
    public let layer: EscapeLayer
    public let severity: FindingSeverity
    /// How sure a single indicator of this technique is to be an attack, not a
    /// tool's mistake (0-1): correlated indicators combine theirs.
    public let confidence: Double
    public let maestro: MaestroLayer

    init(_ id: String, _ name: String, mitre: String?, _ layer: EscapeLayer, _ severity: FindingSeverity,
         confidence: Double, maestro: MaestroLayer = .deploymentInfrastructure) {
        self.id = id
        self.name = name
        self.mitre = mitre
        self.layer = layer
        self.severity = severity
        self.confidence = confidence
        self.maestro = maestro
    }

    public static let all: [EscapeTechnique] = [
        // The process layer.
        .init("userns-unshare", "New namespaces to regain capabilities", mitre: "T1611", .process, .high, confidence: 0.9),
        .init("setns-host", "Join the host's namespaces", mitre: "T1611", .process, .critical, confidence: 0.95),
        .init("open-by-handle", "open_by_handle_at (shocker)", mitre: "T1611", .process, .critical, confidence: 0.95),
        .init("kernel-module", "Load a kernel module", mitre: "T1547.006", .process, .critical, confidence: 0.95),
        .init("bpf", "Load BPF programs", mitre: "T1014", .process, .high, confidence: 0.8, maestro: .evaluationObservability),
        .init("perf-event", "perf_event_open", mitre: nil, .process, .medium, confidence: 0.6, maestro: .evaluationObservability),
        .init("ptrace-outside", "ptrace a process", mitre: "T1055.008", .process, .high, confidence: 0.8),
        .init("proc-mem-outside", "Write /proc/PID/mem", mitre: "T1055.009", .process, .high, confidence: 0.9),
        .init("process-vm-writev", "process_vm_writev / readv", mitre: "T1055", .process, .high, confidence: 0.8),
        .init("keyctl", "Kernel keyrings", mitre: "T1555", .process, .medium, confidence: 0.6, maestro: .securityCompliance),
        .init("userfaultfd", "userfaultfd", mitre: "T1068", .process, .medium, confidence: 0.7),
        .init("io-uring", "io_uring", mitre: "T1068", .process, .medium, confidence: 0.6),
        .init("raw-socket", "Raw or packet socket", mitre: "T1040", .process, .medium, confidence: 0.7, maestro: .agentEcosystem),
        .init("setuid-root", "Change identity or capabilities", mitre: "T1548", .process, .high, confidence: 0.8),
        .init("memfd-exec", "Fileless exec through memfd", mitre: "T1620", .process, .high, confidence: 0.8),
        .init("wx-mapping", "Writable and executable memory", mitre: "T1055", .process, .medium, confidence: 0.6),
        .init("kernel-control", "Host control syscalls (reboot, kexec, swap, clock, syslog)", mitre: "T1529", .process, .high,
              confidence: 0.8),
        .init("mknod-block", "Create a device node", mitre: "T1006", .process, .high, confidence: 0.9),
        .init("terminal-injection", "Type into a terminal (TIOCSTI, TIOCLINUX)", mitre: "T1059", .process, .critical,
              confidence: 0.95),
        .init("fork-bomb", "Fork bomb", mitre: "T1499", .process, .medium, confidence: 0.7),
        .init("memory-hog", "Memory exhaustion", mitre: "T1499", .process, .medium, confidence: 0.6),
        .init("disk-filler", "Disk exhaustion", mitre: "T1499", .process, .low, confidence: 0.5),
        // The container layer: the boundary with the host.
        .init("mount", "Mount a filesystem", mitre: "T1611", .container, .high, confidence: 0.9),
        .init("cgroup-release-agent", "cgroup v1 release_agent (CVE-2022-0492)", mitre: "T1611", .container, .critical, confidence: 0.95),
        .init("cgroup-escape", "Move out of the sandbox's cgroup or change its control files", mitre: "T1611", .container, .critical,
              confidence: 0.9),
        .init("proc-control", "Write a kernel setting under /proc/sys (modprobe, hotplug, ...)", mitre: "T1611", .container, .critical,
              confidence: 0.9),
        .init("proc-root-traversal", "Reach the host through /proc/PID/root", mitre: "T1611", .container, .critical, confidence: 0.9),
        .init("core-pattern", "Write kernel.core_pattern", mitre: "T1611", .container, .critical, confidence: 0.95),
        .init("sysrq", "Write sysrq", mitre: "T1529", .container, .high, confidence: 0.9),
        .init("double-chroot", "chroot escape", mitre: "T1611", .container, .high, confidence: 0.9),
        .init("runtime-socket", "Container runtime or alcub3 socket", mitre: "T1610", .container, .critical, confidence: 0.9),
        // T1006 Direct Volume Access (a host disk or loop device read raw, past hidden paths); a console or VT read is T1611's.
        .init("device-access", "Open or create a host device (disk, loop, console, kmsg)", mitre: "T1006", .container, .high,
              confidence: 0.8),
        .init("write-outside-workspace", "Write outside the workspace", mitre: "T1565.001", .container, .medium, confidence: 0.5),
        .init("ld-preload", "Write /etc/ld.so.preload", mitre: "T1574.006", .container, .high, confidence: 0.9),
        .init("cloud-metadata", "Cloud metadata address", mitre: "T1552.005", .container, .high, confidence: 0.9,
              maestro: .securityCompliance),
        .init("network-policy", "Connect to a destination the policy refuses", mitre: "T1041", .container, .medium, confidence: 0.6,
              maestro: .agentEcosystem),
        // The vm layer (vm and hardware isolation levels).
        .init("vmm-anomaly", "The VMM process did what a VMM never does (exec, a connect, a write outside its files)",
              mitre: "T1611", .vm, .critical, confidence: 0.9),
        .init("guest-channel", "The guest's telemetry channel sent a malformed record or went silent", mitre: "T1562.006",
              .vm, .high, confidence: 0.6, maestro: .evaluationObservability),
        // The hardware layer.
        .init("measured-boot-mismatch", "A guest image's measurement differs from its baseline", mitre: "T1542", .hardware,
              .critical, confidence: 0.95, maestro: .securityCompliance),
        .init("tpm-failure", "The virtual TPM could not be started or answered wrongly", mitre: "T1542", .hardware, .high,
              confidence: 0.7, maestro: .securityCompliance),
    ]

    public static func named(_ id: String) -> EscapeTechnique? { all.first { $0.id == id } }
}

/// Which technique a refused syscall is an attempt at, from the syscall and,
/// where they tell techniques apart, its arguments.
public enum EscapeClassifier {
    public static func technique(syscall: String, arguments: [UInt64], call: String) -> String {
        switch syscall {
        case "mount":
            return call.contains("\"cgroup\"") ? "cgroup-release-agent" : "mount"
        case "fsopen":
            return call.contains("\"cgroup\"") ? "cgroup-release-agent" : "mount"
        case "umount2", "pivot_root", "move_mount", "open_tree", "fsconfig", "fsmount", "fspick", "mount_setattr":
            return "mount"
        case "unshare", "clone": return "userns-unshare"
        case "setns": return "setns-host"
        case "open_by_handle_at", "name_to_handle_at": return "open-by-handle"
        case "init_module", "finit_module", "delete_module": return "kernel-module"
        case "bpf": return "bpf"
        case "perf_event_open": return "perf-event"
        case "ptrace", "pidfd_getfd": return "ptrace-outside"
        case "process_vm_readv", "process_vm_writev": return "process-vm-writev"
        case "keyctl", "add_key", "request_key": return "keyctl"
        case "userfaultfd": return "userfaultfd"
        case "io_uring_setup", "io_uring_enter", "io_uring_register": return "io-uring"
        case "socket": return "raw-socket"
        case "mknod", "mknodat": return "mknod-block"
        case "chroot": return "double-chroot"
        case "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups", "setfsuid", "setfsgid",
             "capset":
            return "setuid-root"
        case "memfd_create", "memfd_secret": return "memfd-exec"
        case "mmap", "mprotect", "pkey_mprotect": return "wx-mapping"
        case "ioctl": return "terminal-injection"
        default: return "kernel-control"
        }
    }

    /// A refused write (or create) at `path`: the technique its place names.
    public static func technique(refusedWriteAt path: String) -> String {
        if path == "/etc/ld.so.preload" { return "ld-preload" }
        if path.hasSuffix("/release_agent") || path.hasSuffix("/notify_on_release") { return "cgroup-release-agent" }
        if path == "/proc/sys/kernel/core_pattern" { return "core-pattern" }
        if path == "/proc/sysrq-trigger" || path == "/proc/sys/kernel/sysrq" { return "sysrq" }
        if path.hasPrefix("/proc/sys/") { return "proc-control" }
        if path.hasPrefix("/sys/fs/cgroup/") { return "cgroup-escape" }
        let parts = path.split(separator: "/")
        if parts.count >= 3, parts[0] == "proc", parts[1].allSatisfy(\.isNumber) || parts[1] == "self" {
            if parts[2] == "root" || parts[2] == "cwd" { return "proc-root-traversal" }
            if parts[2] == "mem" { return "proc-mem-outside" }
        }
        return "write-outside-workspace"
    }

    /// Unix socket paths of container runtimes and of alcub3's own service.
    public static let runtimeSockets: Set<String> = [
        "/run/docker.sock", "/var/run/docker.sock", "/run/containerd/containerd.sock",
        "/run/crio/crio.sock", "/run/podman/podman.sock", "/run/alcub3/alcub3.sock",
    ]

    /// The link-local address clouds serve instance metadata (and credentials) on.
    public static func isCloudMetadata(_ address: String) -> Bool {
        address == "169.254.169.254" || address == "fd00:ec2::254" || address == "::ffff:169.254.169.254"
    }
}
