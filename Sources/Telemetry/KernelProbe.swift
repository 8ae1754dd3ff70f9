import CAlcub3
import CLibBPF
import Foundation
import KernelSupport

/// Asks the kernel, one feature at a time, what it allows: each BPF program
/// type alcub3 uses is loaded for real (a two-instruction program) and
/// refused ones are reported with their errno.
public enum KernelProbe {
    public struct Result: Sendable, Codable {
        public var name: String
        public var available: Bool
        public var detail: String
        public var errno: String?
        public var fallback: String?

        public init(name: String, available: Bool, detail: String, errno: String?, fallback: String?) {
            self.name = name
            self.available = available
            self.detail = detail
            self.errno = errno
            self.fallback = fallback
        }
    }

    /// `r0 = 0; exit`: the smallest program any verifier accepts.
    private static let returnZero: [bpf_insn] = {
        var mov = bpf_insn()
        mov.code = UInt8(BPF_ALU64 | BPF_MOV | BPF_K)
        mov.imm = 0
        var exit = bpf_insn()
        exit.code = UInt8(BPF_JMP | BPF_EXIT)
        return [mov, exit]
    }()

    /// Loads a trivial program of `type`; returns 0 or -errno.
    static func loadProgram(type: bpf_prog_type, attachType: bpf_attach_type? = nil, attachBTFID: UInt32 = 0) -> Int32 {
        var opts = bpf_prog_load_opts()
        opts.sz = MemoryLayout<bpf_prog_load_opts>.size
        if let attachType { opts.expected_attach_type = attachType }
        opts.attach_btf_id = attachBTFID
        let fd = returnZero.withUnsafeBufferPointer { insns in
            bpf_prog_load(type, "alcub3_probe", "GPL", insns.baseAddress, insns.count, &opts)
        }
        if fd >= 0 { close(fd); return 0 }
        return fd
    }

    static func vmlinuxBTFID(_ name: String, kind: UInt32 = 12 /* BTF_KIND_FUNC */) -> UInt32? {
        guard let btf = btf__load_vmlinux_btf() else { return nil }
        defer { btf__free(btf) }
        let id = btf__find_by_name_kind(btf, name, kind)
        return id > 0 ? UInt32(id) : nil
    }

    static func errnoText(_ code: Int32) -> String { SystemError.name(of: code) }

    /// BPF-LSM: whether an lsm/file_open program loads here.
    public static func bpfLSM() -> Result {
        let fallback = "seccomp, Landlock and cgroup BPF carry the policy"
        guard let id = vmlinuxBTFID("bpf_lsm_file_open") else {
            return Result(name: "bpf lsm (BPF-LSM)", available: false, detail: "kernel has no BPF-LSM hooks in BTF",
                          errno: nil, fallback: fallback)
        }
        let code = loadProgram(type: BPF_PROG_TYPE_LSM, attachType: BPF_LSM_MAC, attachBTFID: id)
        return code == 0
            ? Result(name: "bpf lsm (BPF-LSM)", available: true, detail: "loads", errno: nil, fallback: nil)
            : Result(name: "bpf lsm (BPF-LSM)", available: false, detail: "refused at load", errno: errnoText(-code), fallback: fallback)
    }

    public static func bpfProgramTypes() -> [Result] {
        func probe(_ name: String, _ code: Int32, fallback: String? = nil) -> Result {
            code == 0
                ? Result(name: name, available: true, detail: "loads", errno: nil, fallback: nil)
                : Result(name: name, available: false, detail: "refused at load", errno: errnoText(-code), fallback: fallback)
        }
        var results: [Result] = [
            probe("bpf tracepoint", loadProgram(type: BPF_PROG_TYPE_TRACEPOINT)),
            probe("bpf raw_tracepoint", loadProgram(type: BPF_PROG_TYPE_RAW_TRACEPOINT)),
        ]
        if let id = vmlinuxBTFID("btf_trace_sched_process_exec", kind: 8 /* BTF_KIND_TYPEDEF */) {
            results.append(probe("bpf tp_btf", loadProgram(type: BPF_PROG_TYPE_TRACING, attachType: BPF_TRACE_RAW_TP, attachBTFID: id)))
        } else {
            results.append(Result(name: "bpf tp_btf", available: false, detail: "no btf_trace_sched_process_exec in vmlinux BTF", errno: nil, fallback: nil))
        }
        for (name, attach) in [("connect4", BPF_CGROUP_INET4_CONNECT), ("connect6", BPF_CGROUP_INET6_CONNECT),
                               ("sendmsg4", BPF_CGROUP_UDP4_SENDMSG), ("sendmsg6", BPF_CGROUP_UDP6_SENDMSG),
                               ("bind4", BPF_CGROUP_INET4_BIND)] {
            results.append(probe("bpf cgroup/\(name)", loadProgram(type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR, attachType: attach)))
        }
        results.append(probe("bpf cgroup_skb", loadProgram(type: BPF_PROG_TYPE_CGROUP_SKB, attachType: BPF_CGROUP_INET_EGRESS)))
        results.append(probe("bpf cgroup/dev", loadProgram(type: BPF_PROG_TYPE_CGROUP_DEVICE, attachType: BPF_CGROUP_DEVICE)))
        results.append(bpfLSM())
        if let id = vmlinuxBTFID("do_unlinkat") {
            results.append(probe("bpf fentry", loadProgram(type: BPF_PROG_TYPE_TRACING, attachType: BPF_TRACE_FENTRY, attachBTFID: id),
                                 fallback: "tracepoints and raw tracepoints"))
        }
        return results
    }

    public static func ringBuffer() -> Result {
        var opts = bpf_map_create_opts()
        opts.sz = MemoryLayout<bpf_map_create_opts>.size
        let fd = bpf_map_create(BPF_MAP_TYPE_RINGBUF, "alcub3_probe", 0, 0, 4096, &opts)
        if fd >= 0 {
            close(fd)
            return Result(name: "bpf ring buffer", available: true, detail: "map created", errno: nil, fallback: nil)
        }
        return Result(name: "bpf ring buffer", available: false, detail: "refused", errno: errnoText(-fd), fallback: nil)
    }

    public static func btf() -> Result {
        let present = FileManager.default.fileExists(atPath: "/sys/kernel/btf/vmlinux")
        return Result(name: "BTF (/sys/kernel/btf/vmlinux)", available: present,
                      detail: present ? "present: CO-RE relocations resolve" : "missing: CO-RE programs cannot load",
                      errno: nil, fallback: nil)
    }

    public static func landlock() -> Result {
        let abi = alcub3_landlock_abi()
        return abi > 0
            ? Result(name: "Landlock", available: true, detail: "ABI \(abi)", errno: nil, fallback: nil)
            : Result(name: "Landlock", available: false, detail: "unavailable", errno: errnoText(-abi), fallback: "seccomp and mount namespaces")
    }

    public static func seccompUserNotify() -> Result {
        let rc = alcub3_seccomp_user_notify_available()
        return rc == 0
            ? Result(name: "seccomp user-notify", available: true, detail: "SECCOMP_RET_USER_NOTIF available", errno: nil, fallback: nil)
            : Result(name: "seccomp user-notify", available: false, detail: "unavailable", errno: errnoText(-rc), fallback: "plain seccomp filters (deny only)")
    }

    public static func memoryDenyWriteExecute() -> Result {
        let rc = alcub3_mdwe_available()
        return rc == 0
            ? Result(name: "memory-deny-write-execute", available: true, detail: "PR_SET_MDWE (writable memory never becomes executable)",
                     errno: nil, fallback: nil)
            : Result(name: "memory-deny-write-execute", available: false, detail: "PR_SET_MDWE unavailable (Linux 6.3+)",
                     errno: errnoText(-rc), fallback: "seccomp: no mprotect adding PROT_EXEC, no anonymous executable mmap")
    }

    /// A user namespace mapped to alcub3's uid range (the agent is never host root).
    public static func userNamespaces() -> Result {
        let fd = alcub3_userns_create(0, 0x7000_0000, 0, 0x7000_0000, 1)
        if fd >= 0 { close(fd) }
        return fd >= 0
            ? Result(name: "user namespaces", available: true, detail: "the agent is an unprivileged host uid (0x70000000 + slot)",
                     errno: nil, fallback: nil)
            : Result(name: "user namespaces", available: false, detail: "refused", errno: errnoText(-fd),
                     fallback: "the agent runs as uid 0 without capabilities; TOP_SECRET refuses to start")
    }

    public static func kvm() -> Result {
        let rc = alcub3_kvm_probe()
        if rc < 0 {
            return Result(name: "KVM", available: false, detail: "/dev/kvm unusable", errno: errnoText(-rc),
                          fallback: "QEMU TCG (software emulation)")
        }
        // A PVM host accepts KVM_CREATE_VM yet cannot run an ordinary guest kernel (DESIGN.md).
        let cpuinfo = (try? FileIO.read("/proc/cpuinfo")) ?? ""
        if cpuinfo.contains("hypervisor") && !cpuinfo.contains(" vmx") && !cpuinfo.contains(" svm") {
            return Result(name: "KVM", available: false,
                          detail: "/dev/kvm answers (API \(rc)) but the CPU has no vmx/svm: nested guests run fully emulated",
                          errno: nil, fallback: "QEMU TCG (software emulation)")
        }
        return Result(name: "KVM", available: true, detail: "API version \(rc), VM created", errno: nil, fallback: nil)
    }

    public static func tool(_ name: String, versionArguments: [String]) -> Result {
        let paths = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"].map { "\($0)/\(name)" }
        guard let path = paths.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            return Result(name: name, available: false, detail: "not installed", errno: nil, fallback: nil)
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = versionArguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        do {
            try process.run()
            process.waitUntilExit()
        } catch {
            return Result(name: name, available: false, detail: "\(path) does not run: \(error)", errno: nil, fallback: nil)
        }
        let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let first = text.split(separator: "\n").first.map(String.init) ?? ""
        return Result(name: name, available: true, detail: "\(path): \(first)", errno: nil, fallback: nil)
    }
}
