#if canImport(Glibc)
import Glibc
#endif
import Crypto
import Foundation
import KernelSupport

/// The network of a container whose policy reaches beyond the sandbox: a
/// network namespace (made with `ip netns add`, handed to runc by path) with a
/// veth pair, the host end addressed, a default route through it and the
/// container's address masqueraded on the way out. Where the container may
/// connect is decided by the cgroup BPF programs on the sandbox cgroup
/// (connect4/6, sendmsg4/6), which hold the container's cgroup beneath it
/// whatever its network namespace.
///
/// Everything is named after the sandbox id (netns `alcub3-<id>`, host veth
/// `a3<12 hex>`, iptables comments `alcub3:<id>`), so `remove(sandboxID:)`
/// needs no other state and works after a service restart.
public struct ContainerNetwork: Sendable, Equatable {
    /// Container links are /30s out of this range: host .1, container .2.
    public static let subnetPrefix: (UInt8, UInt8) = (10, 213)
    static let slots = 16384
    static let claimDirectory = "/run/alcub3/net"

    public let sandboxID: String
    public let slot: Int

    public var namespaceName: String { Self.namespaceName(sandboxID) }
    public var namespacePath: String { "/run/netns/" + namespaceName }
    public var hostInterface: String { Self.hostInterface(sandboxID) }
    public var hostAddress: String { address(1) }
    public var containerAddress: String { address(2) }

    private func address(_ host: Int) -> String {
        let base = slot * 4
        return "\(Self.subnetPrefix.0).\(Self.subnetPrefix.1).\(base / 256).\(base % 256 + host)"
    }

    static func namespaceName(_ id: String) -> String { "alcub3-" + id }

    /// Interface names have at most 15 bytes: "a3" and 12 hex digits of the id's hash.
    static func hostInterface(_ id: String) -> String {
        "a3" + SHA256.hash(data: Data(id.utf8)).prefix(6).map { String(format: "%02x", $0) }.joined()
    }

    /// Makes the namespace, the veth pair, the route and the NAT rule. On a
    /// failure, what was made is removed.
    public static func create(sandboxID: String) throws -> ContainerNetwork {
        guard let ip = HostCommand.locate("ip"), let iptables = HostCommand.locate("iptables") else {
            throw SandboxError.unsupportedHost("a container with network access needs ip (iproute2) and iptables")
        }
        let slot = try claimSlot(sandboxID)
        let network = ContainerNetwork(sandboxID: sandboxID, slot: slot)
        do {
            try network.check(HostCommand.run([ip, "netns", "add", network.namespaceName]), "ip netns add")
            let ns = network.namespaceName, host = network.hostInterface
            // Two ip processes in all: one batch on the host's side, one inside the namespace.
            let hostSide = """
                link add \(host) type veth peer name eth0 netns \(ns)
                addr add \(network.hostAddress)/30 dev \(host)
                link set \(host) up

                """
            let inside = """
                link set lo up
                addr add \(network.containerAddress)/30 dev eth0
                link set eth0 up
                route add default via \(network.hostAddress)

                """
            try network.check(HostCommand.run([ip, "-batch", "-"], input: hostSide), "ip (host side)")
            try network.check(HostCommand.run([ip, "-n", ns, "-batch", "-"], input: inside), "ip (container side)")
            // Forwarding is what lets the container's packets leave at all; like
            // Docker, alcub3 turns it on and leaves it on.
            if (try? FileIO.read("/proc/sys/net/ipv4/ip_forward"))?.hasPrefix("1") != true {
                try FileIO.write("1", to: "/proc/sys/net/ipv4/ip_forward")
            }
            let comment = ["-m", "comment", "--comment", "alcub3:" + sandboxID]
            try network.check(HostCommand.run([iptables, "-w", "-t", "nat", "-A", "POSTROUTING", "-s", network.containerAddress + "/32",
                                               "!", "-o", host, "-j", "MASQUERADE"] + comment), "iptables (NAT)")
            try network.check(HostCommand.run([iptables, "-w", "-I", "FORWARD", "-i", host, "-j", "ACCEPT"] + comment), "iptables (forward)")
            try network.check(HostCommand.run([iptables, "-w", "-I", "FORWARD", "-o", host, "-m", "conntrack", "--ctstate",
                                               "RELATED,ESTABLISHED", "-j", "ACCEPT"] + comment), "iptables (forward)")
        } catch {
            Self.remove(sandboxID: sandboxID)
            throw error
        }
        return network
    }

    private func check(_ status: HostCommand.Status, _ what: String) throws {
        guard status.code == 0 else {
            throw SandboxError.unsupportedHost("\(what) failed for sandbox \(sandboxID): \(status.output.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
    }

    /// Removes the NAT and forward rules, the veth pair, the namespace and the
    /// address claim of a sandbox. Idempotent: what is already gone is skipped.
    public static func remove(sandboxID: String) {
        if let iptables = HostCommand.locate("iptables") {
            for table in ["nat", "filter"] {
                let rules = HostCommand.run([iptables, "-w", "-t", table, "-S"]).output
                for rule in rules.split(separator: "\n") where rule.contains("alcub3:\(sandboxID)") && rule.hasPrefix("-A ") {
                    let words = shellWords(String(rule.dropFirst(3)))
                    _ = HostCommand.run([iptables, "-w", "-t", table, "-D"] + words)
                }
            }
        }
        if let ip = HostCommand.locate("ip") {
            if FileIO.exists("/sys/class/net/" + hostInterface(sandboxID)) {
                _ = HostCommand.run([ip, "link", "del", hostInterface(sandboxID)])
            }
            if FileIO.exists("/run/netns/" + namespaceName(sandboxID)) {
                _ = HostCommand.run([ip, "netns", "del", namespaceName(sandboxID)])
            }
        }
        releaseSlots(of: sandboxID)
    }

    /// True while anything of the sandbox's network is on the host (for the tests).
    public static func leftovers(sandboxID: String) -> [String] {
        var found: [String] = []
        if FileIO.exists("/sys/class/net/" + hostInterface(sandboxID)) { found.append("veth " + hostInterface(sandboxID)) }
        if FileIO.exists("/run/netns/" + namespaceName(sandboxID)) { found.append("netns " + namespaceName(sandboxID)) }
        if let iptables = HostCommand.locate("iptables") {
            for table in ["nat", "filter"] where HostCommand.run([iptables, "-w", "-t", table, "-S"]).output.contains("alcub3:\(sandboxID)") {
                found.append("iptables \(table) rules")
            }
        }
        return found
    }

    /// iptables -S quotes a comment with spaces; ours have none, but keep quotes right.
    static func shellWords(_ line: String) -> [String] {
        var words: [String] = [], current = "", quoted = false
        for c in line {
            if c == "\"" { quoted.toggle(); continue }
            if c == " " && !quoted {
                if !current.isEmpty { words.append(current); current = "" }
                continue
            }
            current.append(c)
        }
        if !current.isEmpty { words.append(current) }
        return words
    }

    /// A free /30: a file per slot made with O_EXCL holds the sandbox id. A
    /// claim whose sandbox has no namespace any more is stale (its owner was
    /// killed) and is taken over.
    static func claimSlot(_ sandboxID: String) throws -> Int {
        try AgentLock.makeDirectories(claimDirectory)
        let start = Int(SHA256.hash(data: Data(sandboxID.utf8)).prefix(2).reduce(0) { $0 << 8 | Int($1) }) % slots
        for offset in 0..<slots {
            let slot = (start + offset) % slots
            let path = "\(claimDirectory)/\(slot)"
            let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            if fd >= 0 {
                _ = sandboxID.withCString { write(fd, $0, strlen($0)) }
                close(fd)
                return slot
            }
            guard errno == EEXIST else { throw SystemError(errno: errno, call: "open", context: path) }
            let owner = ((try? FileIO.read(path)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
            if !owner.isEmpty && owner != sandboxID && !FileIO.exists("/run/netns/" + namespaceName(owner)) {
                // Stale: removed and tried again in this same pass (O_EXCL decides between racers).
                unlink(path)
                let again = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
                if again >= 0 {
                    _ = sandboxID.withCString { write(again, $0, strlen($0)) }
                    close(again)
                    return slot
                }
            }
        }
        throw SandboxError.unsupportedHost("no free container network address in \(subnetPrefix.0).\(subnetPrefix.1).0.0/16")
    }

    static func releaseSlots(of sandboxID: String) {
        guard let dir = opendir(claimDirectory) else { return }
        var mine: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name != "." && name != ".." else { continue }
            let path = claimDirectory + "/" + name
            if (try? FileIO.read(path))?.trimmingCharacters(in: .whitespacesAndNewlines) == sandboxID { mine.append(path) }
        }
        closedir(dir)
        mine.forEach { unlink($0) }
    }
}
