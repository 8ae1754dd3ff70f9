#if canImport(Glibc)
import Glibc
#endif
import CAlcub3
import CSeccomp
import KernelSupport

/// A compiled seccomp filter: classic BPF instructions ready for
/// seccomp(SECCOMP_SET_MODE_FILTER) in the child.
public struct SeccompProgram: Sendable {
    /// Raw `struct sock_filter` array (8 bytes per instruction).
    public let instructions: [UInt64]
    public let deniedSyscalls: [String]
}

public enum SeccompProfile {
    /// Syscalls an agent never needs and that sandbox escapes are made of
    /// (the default of issue 4's stricter profile starts from this list).
    public static let defaultDenied: [String] = [
        "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig",
        "fsmount", "fspick", "mount_setattr", "unshare", "setns", "bpf", "perf_event_open", "keyctl",
        "add_key", "request_key", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
        "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
        "open_by_handle_at", "name_to_handle_at", "ptrace", "process_vm_writev", "reboot", "swapon",
        "swapoff", "acct", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "iopl", "ioperm",
        "quotactl", "lookup_dcookie", "syslog", "vhangup", "nfsservctl", "uselib", "personality",
    ]

    /// clone(2) flags that create namespaces; clone with any of them is refused
    /// like unshare is. clone3 passes its flags in memory seccomp cannot read, so
    /// it gets ENOSYS and libc falls back to clone.
    static let namespaceCloneFlags: [UInt64] = [
        0x0002_0000, // CLONE_NEWNS
        0x0200_0000, // CLONE_NEWCGROUP
        0x0400_0000, // CLONE_NEWUTS
        0x0800_0000, // CLONE_NEWIPC
        0x1000_0000, // CLONE_NEWUSER
        0x2000_0000, // CLONE_NEWPID
        0x4000_0000, // CLONE_NEWNET
        0x0000_0080, // CLONE_NEWTIME
    ]

    static func errnoAction(_ code: Int32) -> UInt32 { 0x0005_0000 | (UInt32(code) & 0xffff) }

    /// Default allow, the listed syscalls refused with EPERM.
    public static func compile(denying names: [String] = defaultDenied) throws -> SeccompProgram {
        guard let ctx = seccomp_init(0x7fff_0000 /* SCMP_ACT_ALLOW */) else {
            throw SystemError(errno: ENOMEM, call: "seccomp_init")
        }
        defer { seccomp_release(ctx) }
        var denied: [String] = []
        for name in names {
            let nr = seccomp_syscall_resolve_name(name)
            if nr < 0 { continue } // not a syscall on this architecture
            try negativeErrnoChecked("seccomp_rule_add", name) {
                seccomp_rule_add_array(ctx, errnoAction(EPERM), nr, 0, nil)
            }
            denied.append(name)
        }
        let clone = seccomp_syscall_resolve_name("clone")
        for flag in namespaceCloneFlags {
            var cmp = scmp_arg_cmp(arg: 0, op: SCMP_CMP_MASKED_EQ, datum_a: flag, datum_b: flag)
            try negativeErrnoChecked("seccomp_rule_add", "clone") {
                seccomp_rule_add_array(ctx, errnoAction(EPERM), clone, 1, &cmp)
            }
        }
        try negativeErrnoChecked("seccomp_rule_add", "clone3") {
            seccomp_rule_add_array(ctx, errnoAction(ENOSYS), seccomp_syscall_resolve_name("clone3"), 0, nil)
        }
        return SeccompProgram(instructions: try export(ctx), deniedSyscalls: denied + ["clone(CLONE_NEW*)", "clone3"])
    }

    /// libseccomp 2.5 exports only to a file descriptor: go through a memfd.
    private static func export(_ ctx: scmp_filter_ctx) throws -> [UInt64] {
        let fd = OwnedDescriptor(try syscallChecked("memfd_create", "seccomp") { alcub3_memfd_create("alcub3-seccomp") })
        try negativeErrnoChecked("seccomp_export_bpf") { seccomp_export_bpf(ctx, fd.raw) }
        let size = lseek(fd.raw, 0, SEEK_END)
        precondition(size > 0 && size % 8 == 0, "seccomp_export_bpf wrote \(size) bytes")
        var program = [UInt64](repeating: 0, count: Int(size) / 8)
        let read = program.withUnsafeMutableBytes { pread(fd.raw, $0.baseAddress, $0.count, 0) }
        guard read == size else { throw SystemError(errno: EIO, call: "pread", context: "seccomp export") }
        return program
    }
}

/// x86_64 syscall numbers and names, from libseccomp's table.
public enum SyscallNames {
    public static let table: [Int: String] = {
        var names: [Int: String] = [:]
        for nr in 0..<512 {
            if let cName = seccomp_syscall_resolve_num_arch(UInt32(SCMP_ARCH_NATIVE), Int32(nr)) {
                names[nr] = String(cString: cName)
                free(cName)
            }
        }
        return names
    }()

    public static func name(_ nr: Int) -> String { table[nr] ?? "syscall_\(nr)" }
}
