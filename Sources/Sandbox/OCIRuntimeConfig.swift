import Foundation
import Policy

/// The OCI runtime config (config.json) of a container sandbox, made from its
/// policy. Pure: the tests read it without starting anything.
public struct OCIRuntimeConfig: Sendable {
    public var sandboxID: String
    public var policy: SandboxPolicy
    public var arguments: [String]
    public var environment: [String]
    public var workingDirectory: String
    /// The container's cgroup, relative to the cgroup2 mount: a child of the
    /// sandbox's, so telemetry's cgroup filter and the cgroup BPF network
    /// programs (both on the sandbox cgroup) hold it.
    public var cgroupsPath: String
    /// A network namespace alcub3 made (with a veth into it); nil: a new one
    /// with only its loopback.
    public var networkNamespacePath: String?
    /// The seccomp profile in OCI form (`SeccompProfile.jsonData()`).
    public var seccomp: Data
    /// A resolv.conf in the bundle, shown read-only at /etc/resolv.conf (a
    /// container with a network: the host's resolvers it can reach); nil: the image's.
    public var resolvConf: String?
    /// The host uid (and gid) of the container's root: runc makes a user
    /// namespace mapping 0-65535 inside to it and the 65,535 after it. nil:
    /// no user namespace (root without capabilities).
    public var userNamespaceRoot: UInt32?
    /// A sysfs of the container's network namespace that alcub3 mounted (with
    /// a user namespace and a veth); nil: runc mounts one.
    public var sysfs: String?

    public init(sandboxID: String, policy: SandboxPolicy, arguments: [String], environment: [String], workingDirectory: String,
                cgroupsPath: String, networkNamespacePath: String?, seccomp: Data) {
        self.sandboxID = sandboxID
        self.policy = policy
        self.arguments = arguments
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.cgroupsPath = cgroupsPath
        self.networkNamespacePath = networkNamespacePath
        self.seccomp = seccomp
    }

    /// runc's own defaults (`runc spec`), plus /sys/devices/virtual/powercap (energy counters: a side channel).
    public static let maskedPaths = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                                     "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                                     "/sys/firmware", "/sys/devices/virtual/powercap"]
    public static let readonlyPaths = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
    /// A private /tmp, like the process level's.
    public static let tmpBytes: UInt64 = 256 << 20

    /// The host's resolv.conf for a container behind a veth: its nameserver
    /// lines but those on loopback (the host's own stub resolver, which the
    /// container's network namespace cannot reach), with its search and
    /// options lines; nil when no nameserver is left.
    public static func containerResolvConf(fromHost text: String) -> String? {
        var kept: [String] = [], servers = 0
        for line in text.split(separator: "\n").map({ $0.trimmingCharacters(in: .whitespaces) }) {
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard let first = words.first else { continue }
            switch first {
            case "nameserver" where words.count >= 2:
                let server = String(words[1])
                if server.hasPrefix("127.") || server == "::1" || server == "0.0.0.0" { continue }
                kept.append("nameserver \(server)")
                servers += 1
            case "search", "domain", "options":
                kept.append(words.joined(separator: " "))
            default:
                continue
            }
        }
        return servers == 0 ? nil : "# made by alcub3 from the host's /etc/resolv.conf\n" + kept.joined(separator: "\n") + "\n"
    }

    public func object() throws -> [String: Any] {
        let seccompObject = try JSONSerialization.jsonObject(with: seccomp)
        var namespaces: [[String: Any]] = [["type": "pid"], ["type": "ipc"], ["type": "uts"], ["type": "mount"], ["type": "cgroup"]]
        namespaces.append(networkNamespacePath.map { ["type": "network", "path": $0] } ?? ["type": "network"])
        if userNamespaceRoot != nil { namespaces.append(["type": "user"]) }
        let noCapabilities: [String] = []
        let limits = ResourceLimits(cpuCores: policy.cpuLimit, memoryBytes: policy.memoryLimitBytes, pids: policy.pidsLimit)
        var mounts: [[String: Any]] = [
            ["destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]],
            ["destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]],
            ["destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]],
            ["destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]],
            ["destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]],
            // sysfs can be mounted in a user namespace only with a network namespace it owns;
            // alcub3's veth namespace is the host's, so alcub3 mounts that namespace's sysfs in the bundle.
            sysfs.map { ["destination": "/sys", "type": "bind", "source": $0, "options": ["bind", "nosuid", "noexec", "nodev", "ro"]] }
                ?? ["destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]],
            ["destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]],
            // The writable areas: size-capped tmpfs, so a full one is ENOSPC inside and never the host's disk.
            ["destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", "size=\(Self.tmpBytes)"]],
            ["destination": policy.filesystem.workspace, "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=755", "size=\(policy.filesystem.workspaceBytes)"]],
        ]
        if let resolvConf {
            mounts.append(["destination": "/etc/resolv.conf", "type": "bind", "source": resolvConf, "options": ["bind", "ro", "nosuid", "nodev", "noexec"]])
        }
        // Extra host paths the policy shows read-only (a model, a dataset).
        for path in policy.filesystem.readOnlyPaths {
            mounts.append(["destination": path, "type": "bind", "source": path, "options": ["rbind", "ro", "nosuid", "nodev"]])
        }
        return [
            "ociVersion": "1.0.2",
            "process": [
                "terminal": false,
                "user": ["uid": 0, "gid": 0],
                "args": arguments,
                "env": environment,
                "cwd": workingDirectory,
                // uid 0 without privilege, as at the process level: every set empty.
                "capabilities": ["bounding": noCapabilities, "effective": noCapabilities, "inheritable": noCapabilities,
                                 "permitted": noCapabilities, "ambient": noCapabilities],
                "rlimits": [["type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024],
                            ["type": "RLIMIT_CORE", "hard": 0, "soft": 0]],
                "noNewPrivileges": true,
            ] as [String: Any],
            "root": ["path": "rootfs", "readonly": policy.filesystem.readOnlySystem],
            "hostname": sandboxID,
            "mounts": mounts,
            "annotations": ["org.alcub3.sandbox": sandboxID, "org.alcub3.classification": policy.classification.rawValue],
            "linux": [
                "cgroupsPath": cgroupsPath,
                "namespaces": namespaces,
                "resources": [
                    "devices": [["allow": false, "access": "rwm"]],
                    "memory": ["limit": limits.memoryBytes],
                    "cpu": ["quota": limits.cpuQuotaMicroseconds, "period": ResourceLimits.cpuPeriodMicroseconds],
                    "pids": ["limit": limits.pids],
                ] as [String: Any],
                "seccomp": seccompObject,
                "maskedPaths": Self.maskedPaths,
                "readonlyPaths": Self.readonlyPaths,
                "rootfsPropagation": "private",
            ].merging(userNamespaceRoot.map { root -> [String: Any] in
                let mapping: [[String: Any]] = [["containerID": 0, "hostID": Int(root), "size": Int(UserNamespace.slotSize)]]
                return ["uidMappings": mapping, "gidMappings": mapping]
            } ?? [:]) { a, _ in a } as [String: Any],
        ]
    }

    /// config.json's bytes (sorted keys, so the same policy gives the same file).
    public func jsonData() throws -> Data {
        try JSONSerialization.data(withJSONObject: try object(), options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
    }
}
