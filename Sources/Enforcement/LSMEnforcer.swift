#if canImport(Glibc)
import Glibc
#endif
import CAlcub3
import CLibBPF
import KernelSupport
import Policy
import Telemetry

/// The BPF-LSM programs of bpf/lsm.bpf.c, loaded and attached where the
/// kernel allows BPF-LSM. On hosts that refuse it (EPERM under lockdown, as
/// on these machines) `init` throws and seccomp, Landlock and cgroup BPF
/// carry the policy alone; `make test-lsm` checks the programs in a guest
/// kernel that allows them.
public final class LSMEnforcer: Sendable {
    private let object: BPFObject
    private let sandboxes: BPFMap

    /// What every sandbox gets: fileless exec, the metadata address, ptrace
    /// and signals across its boundary, mounts, kernel module and file
    /// loading, and bpf() refused in the kernel. (Set after the sandbox's
    /// init has made its mounts: the init runs inside the cgroup.)
    public static let defaultFlags = UInt32(ALCUB3_LSM_NO_FILELESS_EXEC | ALCUB3_LSM_DENY_NETWORKS | ALCUB3_LSM_CONFINE_PTRACE
        | ALCUB3_LSM_NO_MOUNT | ALCUB3_LSM_NO_KERNEL_LOAD | ALCUB3_LSM_NO_BPF | ALCUB3_LSM_CONFINE_SIGNALS)

    /// Loads the object and attaches every lsm/ program; throws the kernel's refusal.
    public init(rootLevel: UInt32) throws {
        let object = try BPFObject(name: "lsm", image: BPFObjectBytes.decoded(BPFObjectBytes.lsm))
        try object.setReadOnlyGlobal("alcub3_root_level", to: rootLevel)
        try object.load()
        for program in object.programs where program.section.hasPrefix("lsm/") { try object.attach(program.name) }
        self.object = object
        sandboxes = BPFMap(fd: try object.mapFD("lsm_sandboxes"), name: "lsm_sandboxes")
        // The metadata service, refused to every sandbox (cgroup id 0 in the key: all of them).
        let nets = try object.mapFD("lsm_nets")
        for cidr in NetworkRules.metadataService {
            var key = [UInt8](repeating: 0, count: 28)
            let prefix = UInt32(64 + (cidr.isIPv4 ? 96 + cidr.prefixLength : cidr.prefixLength))
            withUnsafeBytes(of: prefix) { key.replaceSubrange(0..<4, with: $0) }
            let address = cidr.isIPv4 ? [UInt8](repeating: 0, count: 10) + [0xff, 0xff] + cidr.address : cidr.address
            key.replaceSubrange(12..<28, with: address)
            var refuse: UInt8 = 1
            let rc = key.withUnsafeBytes { bpf_map_update_elem(nets, $0.baseAddress, &refuse, UInt64(BPF_ANY)) }
            if rc < 0 { throw BPFError(errno: -rc, operation: "bpf_map_update_elem", subject: "lsm_nets \(cidr)") }
        }
    }

    /// The sandbox's processes are held by the LSM programs from now on.
    public func confine(sandboxCgroupID: UInt64, flags: UInt32 = LSMEnforcer.defaultFlags) throws {
        try sandboxes.update(key: sandboxCgroupID, value: alcub3_lsm_sandbox(flags: flags, _pad: 0))
    }

    public func release(sandboxCgroupID: UInt64) { sandboxes.delete(key: sandboxCgroupID) }
}
