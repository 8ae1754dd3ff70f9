/// The escape techniques alcub3 refuses and reports, by id. The same ids name
/// the attempts of the escape suite (escape/alcub3-escape.c) and the alerts
/// the detector raises; docs/security.md lists them with how each is refused.
public struct EscapeTechnique: Sendable, Hashable {
    public let id: String
    public let name: String
    /// MITRE ATT&CK (Containers matrix where one fits, else Enterprise).
    public let mitre: String?

    public static let all: [EscapeTechnique] = [
        .init(id: "mount", name: "Mount a filesystem", mitre: "T1611"),
        .init(id: "cgroup-release-agent", name: "cgroup v1 release_agent (CVE-2022-0492)", mitre: "T1611"),
        .init(id: "userns-unshare", name: "New namespaces to regain capabilities", mitre: "T1611"),
        .init(id: "setns-host", name: "Join the host's namespaces", mitre: "T1611"),
        .init(id: "proc-root-traversal", name: "Reach the host through /proc/PID/root", mitre: "T1611"),
        .init(id: "open-by-handle", name: "open_by_handle_at (shocker)", mitre: "T1611"),
        .init(id: "core-pattern", name: "Write kernel.core_pattern", mitre: "T1611"),
        .init(id: "sysrq", name: "Write sysrq", mitre: "T1529"),
        .init(id: "kernel-module", name: "Load a kernel module", mitre: "T1547.006"),
        .init(id: "bpf", name: "Load BPF programs", mitre: "T1014"),
        .init(id: "perf-event", name: "perf_event_open", mitre: nil),
        .init(id: "ptrace-outside", name: "ptrace a process", mitre: "T1055.008"),
        .init(id: "proc-mem-outside", name: "Write /proc/PID/mem", mitre: "T1055.009"),
        .init(id: "process-vm-writev", name: "process_vm_writev / readv", mitre: "T1055"),
        .init(id: "keyctl", name: "Kernel keyrings", mitre: "T1555"),
        .init(id: "userfaultfd", name: "userfaultfd", mitre: "T1068"),
        .init(id: "io-uring", name: "io_uring", mitre: "T1068"),
        .init(id: "raw-socket", name: "Raw or packet socket", mitre: "T1040"),
        .init(id: "cloud-metadata", name: "Cloud metadata address", mitre: "T1552.005"),
        .init(id: "network-policy", name: "Connect to a destination the policy refuses", mitre: "T1041"),
        .init(id: "runtime-socket", name: "Container runtime or alcub3 socket", mitre: "T1610"),
        .init(id: "write-outside-workspace", name: "Write outside the workspace", mitre: "T1565.001"),
        .init(id: "ld-preload", name: "Write /etc/ld.so.preload", mitre: "T1574.006"),
        .init(id: "mknod-block", name: "Create a device node", mitre: "T1006"),
        .init(id: "double-chroot", name: "chroot escape", mitre: "T1611"),
        .init(id: "setuid-root", name: "Change identity or capabilities", mitre: "T1548"),
        .init(id: "memfd-exec", name: "Fileless exec through memfd", mitre: "T1620"),
        .init(id: "wx-mapping", name: "Writable and executable memory", mitre: "T1055"),
        .init(id: "kernel-control", name: "Host control syscalls (reboot, kexec, swap, clock, syslog)", mitre: "T1529"),
        .init(id: "fork-bomb", name: "Fork bomb", mitre: "T1499"),
        .init(id: "memory-hog", name: "Memory exhaustion", mitre: "T1499"),
        .init(id: "disk-filler", name: "Disk exhaustion", mitre: "T1499"),
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
        default: return "kernel-control"
        }
    }

    /// A refused write (or create) at `path`: the technique its place names.
    public static func technique(refusedWriteAt path: String) -> String {
        if path == "/etc/ld.so.preload" { return "ld-preload" }
        if path.hasSuffix("/release_agent") || path.hasSuffix("/notify_on_release") { return "cgroup-release-agent" }
        if path == "/proc/sys/kernel/core_pattern" { return "core-pattern" }
        if path == "/proc/sysrq-trigger" || path == "/proc/sys/kernel/sysrq" { return "sysrq" }
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
