#if canImport(Glibc)
import Glibc
#endif
import CLibBPF
import Foundation
import KernelSupport
import Policy
import Sandbox
import Synchronization
import Telemetry

/// What the cgroup programs enforce for one sandbox: destinations allowed
/// (longest prefix wins), those refused inside them, and the ports (empty: all).
public struct NetworkRules: Sendable, Equatable {
    public var networks: [CIDR]
    public var ports: [UInt16]
    /// Refused whatever the class: the cloud metadata service, which hands out
    /// the host's credentials (AWS, GCP, Azure: 169.254.169.254; AWS IPv6: fd00:ec2::254).
    public var denied: [CIDR] = NetworkRules.metadataService
    /// bind only to loopback: a sandbox that may not reach every network may
    /// not offer a service to it either.
    public var bindLoopbackOnly = true

    public static let metadataService = [try! CIDR("169.254.169.254/32"), try! CIDR("fd00:ec2::254/128")]

    public init(networks: [CIDR], ports: [UInt16]) {
        self.networks = networks
        self.ports = ports
    }
}


/// Enforces a sandbox's network destinations with cgroup BPF (bpf/netpolicy.bpf.c):
/// connect and sendmsg to anything outside its networks and ports fail with
/// EPERM before a packet leaves. Rules live in maps, so they change without
/// restarting the sandbox.
public final class NetworkEnforcer: Sendable {
    private let object: BPFObject
    private let sandboxes: BPFMap
    private let networks: BPFMap
    private let ports: BPFMap
    private let pinDirectory: String?
    private let links = Mutex<[UInt64: [BPFLink]]>([:])

    static let programs = ["alcub3_net_connect4", "alcub3_net_connect6", "alcub3_net_sendmsg4", "alcub3_net_sendmsg6",
                           "alcub3_net_bind4", "alcub3_net_bind6"]
    static let maps = ["netpolicy_sandboxes", "netpolicy_networks", "netpolicy_ports"]

    /// - Parameter pinDirectory: the service's: maps and links are pinned there,
    ///   so sandboxes stay enforced while the service is down, and a restarted
    ///   service reuses the same maps (and so keeps changing the same rules).
    public init(rootLevel: UInt32, pinDirectory: String? = nil) throws {
        let object = try BPFObject(name: "netpolicy", image: BPFObjectBytes.decoded(BPFObjectBytes.netpolicy))
        try object.setReadOnlyGlobal("alcub3_root_level", to: rootLevel)
        if let pinDirectory {
            for name in Self.maps {
                let fd = bpf_obj_get(pinDirectory + "/maps/" + name)
                if fd >= 0 {
                    try object.reuseMap(name, fd: fd)
                    close(fd)
                }
            }
        }
        try object.load()
        if let pinDirectory {
            try BPFFilesystem.ensureMounted()
            for sub in ["", "/maps", "/links"] where mkdir(pinDirectory + sub, 0o700) != 0 && errno != EEXIST {
                throw SystemError(errno: errno, call: "mkdir", context: pinDirectory + sub)
            }
            for name in Self.maps where !FileManager.default.fileExists(atPath: pinDirectory + "/maps/" + name) {
                try object.pinMap(name, at: pinDirectory + "/maps/" + name)
            }
        }
        self.object = object
        self.pinDirectory = pinDirectory
        sandboxes = BPFMap(fd: try object.mapFD("netpolicy_sandboxes"), name: "netpolicy_sandboxes")
        networks = BPFMap(fd: try object.mapFD("netpolicy_networks"), name: "netpolicy_networks")
        ports = BPFMap(fd: try object.mapFD("netpolicy_ports"), name: "netpolicy_ports")
    }

    /// The kernel form of a policy: networks and ports, or nil when the
    /// policy needs no cgroup program (any destination, or no network at all,
    /// which a network namespace gives).
    public static func rules(for policy: NetworkPolicy) -> NetworkRules? {
        switch policy {
        case .none: return nil
        case .any:
            var rules = NetworkRules(networks: [try! CIDR("0.0.0.0/0"), try! CIDR("::/0")], ports: [])
            rules.bindLoopbackOnly = false
            return rules
        case .privateAndLoopback: return NetworkRules(networks: NetworkPolicy.privateAndLoopbackRanges, ports: [])
        case .listed(let cidrs, let ports): return cidrs.isEmpty ? nil : NetworkRules(networks: cidrs, ports: ports)
        }
    }

    /// Sets the sandbox's rules (replacing earlier ones) and attaches the
    /// programs to its cgroup once.
    public func apply(_ policy: NetworkPolicy, to cgroup: SandboxCgroup) throws {
        guard let rules = Self.rules(for: policy) else { return }
        try setRules(rules, sandboxCgroupID: cgroup.id)
        let attached = links.withLock { $0[cgroup.id] != nil }
        if attached { return }
        let directory = try cgroup.openDirectory()
        var made: [BPFLink] = []
        for program in Self.programs {
            let link = try object.attachCgroup(program, cgroupFD: directory.raw)
            if let pinDirectory { try link.pin(at: "\(pinDirectory)/links/\(cgroup.name)-\(program)") }
            made.append(link)
        }
        links.withLock { $0[cgroup.id] = made }
    }

    /// Replaces the rules of a sandbox whose programs are attached (live).
    public func setRules(_ rules: NetworkRules, sandboxCgroupID: UInt64) throws {
        clearRules(sandboxCgroupID: sandboxCgroupID)
        // Longest prefix wins: a refused /32 inside an allowed /0 stays refused.
        for (cidr, allow) in rules.networks.map({ ($0, UInt8(1)) }) + rules.denied.map({ ($0, UInt8(0)) }) {
            var key = [UInt8](repeating: 0, count: 28)
            let prefix = UInt32(64 + (cidr.isIPv4 ? 96 + cidr.prefixLength : cidr.prefixLength))
            withUnsafeBytes(of: prefix.littleEndian) { key.replaceSubrange(0..<4, with: $0) }
            withUnsafeBytes(of: sandboxCgroupID) { key.replaceSubrange(4..<12, with: $0) }
            let address = cidr.isIPv4 ? [UInt8](repeating: 0, count: 10) + [0xff, 0xff] + cidr.address : cidr.address
            key.replaceSubrange(12..<28, with: address)
            var value = allow
            let rc = key.withUnsafeBytes { bpf_map_update_elem(networks.fd, $0.baseAddress, &value, UInt64(BPF_ANY)) }
            if rc < 0 { throw BPFError(errno: -rc, operation: "bpf_map_update_elem", subject: "netpolicy_networks \(cidr)") }
        }
        for port in rules.ports {
            try ports.update(key: PortKey(cgid: sandboxCgroupID, port: port), value: UInt8(1))
        }
        let flags: UInt32 = (rules.ports.isEmpty ? 1 : 0) | (rules.bindLoopbackOnly ? 2 : 0)
        try sandboxes.update(key: sandboxCgroupID, value: SandboxRule(flags: flags))
    }

    /// Removes a pin directory (when no sandbox is left to enforce).
    public static func removePins(_ dir: String) {
        for sub in ["/links", "/maps"] {
            for name in (try? FileManager.default.contentsOfDirectory(atPath: dir + sub)) ?? [] { unlink(dir + sub + "/" + name) }
            rmdir(dir + sub)
        }
        rmdir(dir)
    }

    /// Removes a sandbox's rules and detaches (and unpins) its programs.
    public func remove(_ cgroup: SandboxCgroup) {
        clearRules(sandboxCgroupID: cgroup.id)
        sandboxes.delete(key: cgroup.id)
        if let pinDirectory {
            for program in Self.programs { unlink("\(pinDirectory)/links/\(cgroup.name)-\(program)") }
        }
        _ = links.withLock { $0.removeValue(forKey: cgroup.id) }
    }

    private func clearRules(sandboxCgroupID: UInt64) {
        // Neither map can be scanned by prefix: walk the keys, drop this sandbox's.
        let id = withUnsafeBytes(of: sandboxCgroupID) { Array($0) }
        for key in Self.keys(of: networks.fd, size: 28) where key[4..<12].elementsEqual(id) {
            _ = key.withUnsafeBytes { bpf_map_delete_elem(networks.fd, $0.baseAddress) }
        }
        for key in Self.keys(of: ports.fd, size: MemoryLayout<PortKey>.size) where key[0..<8].elementsEqual(id) {
            _ = key.withUnsafeBytes { bpf_map_delete_elem(ports.fd, $0.baseAddress) }
        }
    }

    static func keys(of fd: Int32, size: Int) -> [[UInt8]] {
        var result: [[UInt8]] = []
        var next = [UInt8](repeating: 0, count: size)
        var status = next.withUnsafeMutableBytes { bpf_map_get_next_key(fd, nil, $0.baseAddress) }
        while status == 0 {
            result.append(next)
            let key = next
            status = key.withUnsafeBytes { k in next.withUnsafeMutableBytes { bpf_map_get_next_key(fd, k.baseAddress, $0.baseAddress) } }
        }
        return result
    }
}

struct SandboxRule: BitwiseCopyable {
    var flags: UInt32
    var pad: UInt32 = 0
}

struct PortKey: BitwiseCopyable {
    var cgid: UInt64
    var port: UInt16
    var pad: (UInt16, UInt16, UInt16) = (0, 0, 0)
}
