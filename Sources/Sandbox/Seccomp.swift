#if canImport(Glibc)
import Glibc
#endif
import CAlcub3
import CSeccomp
import Foundation
import KernelSupport
import Policy

/// A compiled seccomp filter: classic BPF instructions ready for
/// seccomp(SECCOMP_SET_MODE_FILTER) in the child.
public struct SeccompProgram: Sendable {
    /// Raw `struct sock_filter` array (8 bytes per instruction).
    public let instructions: [UInt64]
    /// Some rule answers SCMP_ACT_NOTIFY: the filter is installed with a
    /// listener, which the sandbox's supervisor must hold (without one the
    /// kernel fails those syscalls with ENOSYS: closed, never open).
    public let usesNotify: Bool
    /// SECCOMP_FILTER_FLAG_LOG: the kernel logs every action but allow.
    public let logDenials: Bool
    /// The profile compiled, for `sandbox export --seccomp` and for telling
    /// a refused syscall from one that failed on its own.
    public let profile: SeccompProfile
}

extension SeccompProfile {
    /// clone(2) flags that create namespaces. clone is allowed only without
    /// them; clone3 passes its flags in memory seccomp cannot read, so it is
    /// answered ENOSYS and libc falls back to clone.
    public static let namespaceCloneFlags: [(name: String, bit: UInt64)] = [
        ("CLONE_NEWNS", 0x0002_0000), ("CLONE_NEWCGROUP", 0x0200_0000), ("CLONE_NEWUTS", 0x0400_0000),
        ("CLONE_NEWIPC", 0x0800_0000), ("CLONE_NEWUSER", 0x1000_0000), ("CLONE_NEWPID", 0x2000_0000),
        ("CLONE_NEWNET", 0x4000_0000), ("CLONE_NEWTIME", 0x0000_0080),
    ]
    static var namespaceCloneMask: UInt64 { namespaceCloneFlags.reduce(0) { $0 | $1.bit } }

    /// Syscalls sandbox escapes are made of. Never in an agent's allow-list;
    /// under supervision each attempt goes to the supervisor, which refuses
    /// it with EPERM and reports it with its arguments (DESIGN: user-notify
    /// only denies or emulates). Unsupervised they get the default EPERM.
    public static let escapeSyscalls: [String] = [
        "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount",
        "fspick", "mount_setattr", "unshare", "setns", "bpf", "perf_event_open", "keyctl", "add_key",
        "request_key", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load",
        "kexec_file_load", "init_module", "finit_module", "delete_module", "open_by_handle_at",
        "name_to_handle_at", "ptrace", "process_vm_readv", "process_vm_writev", "memfd_create", "memfd_secret",
        "reboot", "swapon", "swapoff", "syslog", "iopl", "ioperm", "acct", "setuid", "setgid", "setreuid",
        "setregid", "setresuid", "setresgid", "setgroups", "setfsuid", "setfsgid", "capset", "quotactl",
        "pidfd_getfd", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "vhangup",
    ]

    /// The aligned power-of-two blocks that exactly cover `range`, each as a
    /// mask and the value the masked argument equals.
    static func prefixBlocks(_ range: ClosedRange<UInt64>) -> [(mask: UInt64, value: UInt64)] {
        var blocks: [(mask: UInt64, value: UInt64)] = []
        var start = range.lowerBound
        while true {
            // The largest block aligned at `start` that stays inside the range.
            var bits = start == 0 ? 64 : start.trailingZeroBitCount
            while bits > 0 {
                let span = bits == 64 ? UInt64.max : (UInt64(1) << bits) - 1
                if span <= range.upperBound - start { break }
                bits -= 1
            }
            let span = bits == 64 ? UInt64.max : (UInt64(1) << bits) - 1
            blocks.append((mask: ~span, value: start))
            if span >= range.upperBound - start { return blocks }
            start += span + 1
        }
    }

    /// Whether this kernel has PR_SET_MDWE (6.3+); without it the filter stands in.
    public static let mdweAvailable = alcub3_mdwe_available() == 0

    /// The terminal requests that inject input: <asm-generic/ioctls.h>.
    public static let tiocsti: UInt64 = 0x5412
    public static let tioclinux: UInt64 = 0x541C

    /// Escape syscalls with a harmless form programs use (see `forSandbox`).
    public static let effectiveIDCalls: Set<String> = ["setresuid", "setresgid"]

    /// What the sandbox's own init and the step from it to the command need
    /// once the filter is on (it is installed before the command is cloned).
    /// A profile that refuses any of them would lock the sandbox out of its init.
    public static let initRequirements: [String] = [
        "read", "write", "close", "close_range", "clone", "wait4", "rt_sigaction", "rt_sigreturn",
        "rt_sigprocmask", "kill", "pause", "prctl", "execve", "exit", "exit_group",
    ]

    /// The filter of a sandbox from its policy's syscall allow-list: default
    /// deny with EPERM (logged by the kernel), the allow-list allowed, with
    /// argument conditions where an allowed call has a dangerous form:
    /// clone with namespace flags, writable-and-executable memory, raw and
    /// packet sockets, device nodes. With `supervised`, escape syscalls and
    /// those dangerous forms go to the supervisor (SCMP_ACT_NOTIFY) to be
    /// refused and reported with their arguments.
    /// `refuseExecGain`: the stand-in for PR_SET_MDWE on kernels without it:
    /// mprotect never adds PROT_EXEC, and mmap maps executable memory only
    /// from a file (the loader's way), never anonymous.
    public static func forSandbox(allowedSyscalls: [String], supervised: Bool, refuseExecGain: Bool = false) -> SeccompProfile {
        let allowed = Set(allowedSyscalls).union(initRequirements)
        let report: Action = supervised ? .notify : .errno(EPERM)
        var rules: [Rule] = []
        let w = UInt64(PROT_WRITE), x = UInt64(PROT_EXEC)
        let guarded: Set<String> = ["clone", "mmap", "mprotect", "pkey_mprotect", "socket", "ioctl"]
        rules.append(Rule(names: allowed.subtracting(guarded).sorted(), action: .allow, comment: "the policy's allow-list"))

        // clone: threads and processes, never new namespaces.
        rules.append(Rule(names: ["clone"], action: .allow,
                          conditions: [Condition(index: 0, value: namespaceCloneMask, valueTwo: 0, op: .maskedEqual)],
                          comment: "clone without namespace flags"))
        for flag in namespaceCloneFlags {
            rules.append(Rule(names: ["clone"], action: report,
                              conditions: [Condition(index: 0, value: flag.bit, valueTwo: flag.bit, op: .maskedEqual)],
                              comment: "clone(\(flag.name))"))
        }
        rules.append(Rule(names: ["clone3"], action: .errno(ENOSYS), comment: "flags in memory: libc falls back to clone"))

        // ioctl: everything but the two requests that type into a terminal
        // (TIOCSTI pushes input, TIOCLINUX's paste does the same on a VT). The
        // kernel reads the request as a 32-bit int, so upper bits cannot hide
        // one: the refusals compare the low half, and the allowed ranges
        // require upper bits clear (or all set, a sign-extended request
        // >= 0x80000000, which is neither).
        if allowed.contains("ioctl") {
            // libseccomp takes one comparison per argument in a rule, so each
            // allowed range is a set of masked-equal prefix blocks.
            let low = UInt64(0xffff_ffff)
            let ranges: [ClosedRange<UInt64>] = [0...(Self.tiocsti - 1), (Self.tiocsti + 1)...(Self.tioclinux - 1),
                                                 (Self.tioclinux + 1)...low, (~low | 0x8000_0000)...UInt64.max]
            for range in ranges {
                for block in Self.prefixBlocks(range) {
                    rules.append(Rule(names: ["ioctl"], action: .allow,
                                      conditions: [Condition(index: 1, value: block.mask, valueTwo: block.value, op: .maskedEqual)],
                                      comment: "ioctl requests other than TIOCSTI and TIOCLINUX"))
                }
            }
            for (name, request) in [("TIOCSTI", Self.tiocsti), ("TIOCLINUX", Self.tioclinux)] {
                rules.append(Rule(names: ["ioctl"], action: report,
                                  conditions: [Condition(index: 1, value: low, valueTwo: request, op: .maskedEqual)],
                                  comment: "ioctl(\(name)): typing into a terminal"))
            }
        }

        // Memory: W^X. Writable or executable, never both (prot is argument 2).
        for call in ["mmap", "mprotect", "pkey_mprotect"] where allowed.contains(call) {
            if refuseExecGain && call == "mmap" {
                let anonymous = UInt64(MAP_ANONYMOUS)
                rules.append(Rule(names: [call], action: .allow,
                                  conditions: [Condition(index: 2, value: w | x, valueTwo: x, op: .maskedEqual),
                                               Condition(index: 3, value: anonymous, valueTwo: 0, op: .maskedEqual)],
                                  comment: "mmap of a file, executable (no MDWE: never anonymous executable memory)"))
                rules.append(Rule(names: [call], action: report,
                                  conditions: [Condition(index: 2, value: w | x, valueTwo: x, op: .maskedEqual),
                                               Condition(index: 3, value: anonymous, valueTwo: anonymous, op: .maskedEqual)],
                                  comment: "mmap of anonymous executable memory (no MDWE)"))
            } else if refuseExecGain {
                rules.append(Rule(names: [call], action: report,
                                  conditions: [Condition(index: 2, value: w | x, valueTwo: x, op: .maskedEqual)],
                                  comment: "\(call) adding PROT_EXEC (no MDWE)"))
            }
            for prot in refuseExecGain ? [0, w] : [0, w, x] {
                rules.append(Rule(names: [call], action: .allow,
                                  conditions: [Condition(index: 2, value: w | x, valueTwo: prot, op: .maskedEqual)],
                                  comment: "\(call) without PROT_WRITE|PROT_EXEC together"))
            }
            rules.append(Rule(names: [call], action: report,
                              conditions: [Condition(index: 2, value: w | x, valueTwo: w | x, op: .maskedEqual)],
                              comment: "\(call) writable and executable"))
        }

        // Sockets: stream, datagram and seqpacket, and raw netlink (how libc
        // lists interfaces; changing them needs CAP_NET_ADMIN, which no sandbox
        // has). Raw IP and packet sockets are refused. (No SCMP_CMP_NE here:
        // libseccomp 2.5 builds a wrong tree when an NE rule overlaps an EQ one.)
        let raw = UInt64(SOCK_RAW.rawValue)
        if allowed.contains("socket") {
            for type in [UInt64(SOCK_STREAM.rawValue), UInt64(SOCK_DGRAM.rawValue), UInt64(SOCK_SEQPACKET.rawValue)] {
                rules.append(Rule(names: ["socket"], action: .allow,
                                  conditions: [Condition(index: 1, value: 0xf, valueTwo: type, op: .maskedEqual)],
                                  comment: "socket: stream, datagram, seqpacket"))
            }
            rules.append(Rule(names: ["socket"], action: .allow,
                              conditions: [Condition(index: 0, value: UInt64(AF_NETLINK), op: .equal),
                                           Condition(index: 1, value: 0xf, valueTwo: raw, op: .maskedEqual)],
                              comment: "netlink"))
        }
        for family in [AF_INET, AF_INET6, AF_PACKET] {
            rules.append(Rule(names: ["socket"], action: report,
                              conditions: [Condition(index: 0, value: UInt64(family), op: .equal),
                                           Condition(index: 1, value: 0xf, valueTwo: raw, op: .maskedEqual)],
                              comment: "raw IP or packet socket"))
        }

        // Device nodes (mode is argument 1 of mknod, 2 of mknodat).
        for (call, index) in [("mknod", 1), ("mknodat", 2)] {
            for (kind, bits) in [("block", UInt64(S_IFBLK)), ("character", UInt64(S_IFCHR))] {
                rules.append(Rule(names: [call], action: report,
                                  conditions: [Condition(index: index, value: UInt64(S_IFMT), valueTwo: bits, op: .maskedEqual)],
                                  comment: "\(call) of a \(kind) device"))
            }
        }
        // setresuid(-1, id, -1) and setresgid(-1, id, -1) are how glibc's seteuid,
        // setegid and posix_spawn (GNU make's) set one id: without CAP_SETUID or
        // CAP_SETGID the kernel lets them take only an id the process already has,
        // so they are allowed. Any other form gets the default EPERM, and
        // telemetry's credential record reports it (EscapeDetector).
        let oneID = 0xffff_ffff as UInt64
        for call in Self.effectiveIDCalls where !allowed.contains(call) {
            rules.append(Rule(names: [call], action: .allow,
                              conditions: [Condition(index: 0, value: oneID, valueTwo: oneID, op: .maskedEqual),
                                           Condition(index: 2, value: oneID, valueTwo: oneID, op: .maskedEqual)],
                              comment: "\(call)(-1, id, -1): the effective id only, to one the process has"))
        }
        let escapes = escapeSyscalls.filter { !allowed.contains($0) && !Self.effectiveIDCalls.contains($0) }
        rules.append(Rule(names: escapes, action: report, comment: "escape syscalls: refused and reported"))
        return SeccompProfile(defaultAction: .errno(EPERM), rules: rules, logDenials: true)
    }

    /// Refuses a profile that would stop the sandbox's init before the
    /// command runs: every syscall in `initRequirements` must be allowed
    /// without conditions (by a rule, or by an allowing default).
    public func checkInitRequirements() throws {
        // An allowing rule with conditions counts: the init's own calls take the
        // plain forms (clone with SIGCHLD alone).
        let allowing: (SeccompProfile.Action) -> Bool = { $0 == .allow || $0 == .log }
        var given = Set<String>()
        for rule in rules where allowing(rule.action) { given.formUnion(rule.names) }
        var refused: [String] = []
        for name in Self.initRequirements {
            let overridden = rules.contains { $0.names.contains(name) && !allowing($0.action) && $0.conditions.isEmpty }
            if overridden || (!allowing(defaultAction) && !given.contains(name)) { refused.append(name) }
        }
        if !refused.isEmpty {
            throw PolicyError(.invalidValue, "the profile refuses \(refused.joined(separator: ", ")), which the sandbox's "
                              + "init needs to start the command; allow them (SCMP_ACT_ALLOW, no args)")
        }
    }
}

/// Turns a profile into a classic BPF program with libseccomp.
public enum SeccompCompiler {
    static func action(_ action: SeccompProfile.Action) -> UInt32 {
        switch action {
        case .allow: return 0x7fff_0000
        case .log: return 0x7ffc_0000
        case .notify: return 0x7fc0_0000
        case .trap: return 0x0003_0000
        case .killThread: return 0x0000_0000
        case .killProcess: return 0x8000_0000
        case .errno(let code): return 0x0005_0000 | (UInt32(code) & 0xffff)
        case .trace(let code): return 0x7ff0_0000 | (UInt32(code) & 0xffff)
        }
    }

    public static func compile(_ profile: SeccompProfile) throws -> SeccompProgram {
        guard let ctx = seccomp_init(action(profile.defaultAction)) else {
            throw SystemError(errno: ENOMEM, call: "seccomp_init")
        }
        defer { seccomp_release(ctx) }
        var usesNotify = false
        var unconditional: [String: (rule: Int, action: SeccompProfile.Action)] = [:]
        for (i, rule) in profile.rules.enumerated() where rule.conditions.isEmpty {
            for name in rule.names {
                if let earlier = unconditional[name], earlier.action != rule.action {
                    throw PolicyError(.invalidValue, "syscalls[\(i)]: '\(name)' is given \(rule.action.ociName) here "
                                      + "and \(earlier.action.ociName) by syscalls[\(earlier.rule)]; a syscall has one action")
                }
                unconditional[name] = (i, rule.action)
            }
        }
        for (i, rule) in profile.rules.enumerated() {
            // A rule that repeats the default changes nothing (and libseccomp refuses it).
            if rule.action == profile.defaultAction { continue }
            var conditions = rule.conditions.map {
                scmp_arg_cmp(arg: UInt32($0.index), op: scmp_compare(rawValue: operatorCode($0.op)),
                             datum_a: $0.value, datum_b: $0.valueTwo)
            }
            for name in rule.names {
                let nr = seccomp_syscall_resolve_name(name)
                guard nr >= 0 else { continue } // exists only on other architectures
                let rc = conditions.withUnsafeMutableBufferPointer {
                    seccomp_rule_add_array(ctx, action(rule.action), nr, UInt32($0.count), $0.baseAddress)
                }
                if rc == -EEXIST {
                    throw PolicyError(.invalidValue, "syscalls[\(i)]: '\(name)' already has another action "
                                      + "for the same arguments in an earlier rule")
                }
                if rc < 0 {
                    throw PolicyError(.invalidValue, "syscalls[\(i)]: libseccomp refused the rule for '\(name)' "
                                      + "(\(SystemError.name(of: -rc)))")
                }
                if rule.action == .notify { usesNotify = true }
            }
        }
        return SeccompProgram(instructions: try export(ctx), usesNotify: usesNotify,
                              logDenials: profile.logDenials, profile: profile)
    }

    static func operatorCode(_ op: SeccompProfile.Condition.Operator) -> UInt32 {
        switch op {
        case .notEqual: return SCMP_CMP_NE.rawValue
        case .lessThan: return SCMP_CMP_LT.rawValue
        case .lessOrEqual: return SCMP_CMP_LE.rawValue
        case .equal: return SCMP_CMP_EQ.rawValue
        case .greaterOrEqual: return SCMP_CMP_GE.rawValue
        case .greaterThan: return SCMP_CMP_GT.rawValue
        case .maskedEqual: return SCMP_CMP_MASKED_EQ.rawValue
        }
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

extension SeccompProfile {
    /// The profile a sandbox under `policy` runs with: the one it names
    /// (checked so it cannot lock out the sandbox's init), else the filter made
    /// from its allow-list.
    public static func effective(for policy: SandboxPolicy, supervised: Bool) throws -> SeccompProfile {
        guard let text = policy.seccompProfile else {
            // Without PR_SET_MDWE in the kernel, the filter refuses the gain of exec instead (but for jit).
            return .forSandbox(allowedSyscalls: policy.allowedSyscalls, supervised: supervised,
                               refuseExecGain: !policy.capabilities.contains(.jit) && !mdweAvailable)
        }
        let profile = try SeccompProfile(json: Data(text.utf8), source: "seccomp profile")
        try profile.checkInitRequirements()
        return profile
    }
}
