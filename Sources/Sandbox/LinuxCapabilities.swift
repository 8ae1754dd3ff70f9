/// Linux capabilities by name (capabilities(7)), for `ProcessSpec.keepCapabilities`:
/// a sandboxed process keeps uid 0 but none of these unless it asks.
public enum LinuxCapabilities {
    /// Indexed by capability number, as in <linux/capability.h> (CAP_LAST_CAP is 40).
    public static let names: [String] = [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
        "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
        "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
        "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
        "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
    ]

    /// The bit mask of the named capabilities ("CAP_NET_BIND_SERVICE"; case and
    /// the CAP_ prefix are optional). An unknown name throws, naming it.
    public static func mask(_ requested: [String]) throws -> UInt64 {
        try requested.reduce(0) { mask, name in
            let upper = name.uppercased()
            let full = upper.hasPrefix("CAP_") ? upper : "CAP_" + upper
            guard let bit = names.firstIndex(of: full) else { throw SandboxError.unknownCapability(name) }
            return mask | (1 << UInt64(bit))
        }
    }

    /// The names of the bits set in a mask (a CapEff line of /proc/<pid>/status, say).
    public static func names(in mask: UInt64) -> [String] {
        (0..<64).filter { mask & (1 << UInt64($0)) != 0 }.map { $0 < names.count ? names[$0] : "CAP_\($0)" }
    }
}
