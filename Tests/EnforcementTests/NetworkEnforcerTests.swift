import Foundation
import KernelSupport
import Policy
import Sandbox
import Testing
@testable import Enforcement

@Suite struct NetworkRuleTests {
    @Test func policiesBecomeKernelRules() throws {
        let internet = try #require(NetworkEnforcer.rules(for: .any))
        #expect(internet.networks.map(\.description) == ["0.0.0.0/0", "::/0"])
        #expect(internet.denied.map(\.description) == ["169.254.169.254/32", "fd00:ec2::254/128"])
        #expect(NetworkEnforcer.rules(for: .none) == nil)
        let intranet = try #require(NetworkEnforcer.rules(for: .privateAndLoopback))
        #expect(intranet.networks == NetworkPolicy.privateAndLoopbackRanges && intranet.ports.isEmpty)
        #expect(intranet.denied == NetworkRules.metadataService)
        let listed = try #require(NetworkEnforcer.rules(for: .listed(cidrs: [try CIDR("10.1.0.0/16")], ports: [443])))
        #expect(listed.networks.map(\.description) == ["10.1.0.0/16"] && listed.ports == [443])
        #expect(NetworkEnforcer.rules(for: .listed(cidrs: [], ports: [443])) == nil)
    }
}

/// The programs on a real cgroup: a listed destination connects, others get EPERM.
@Suite(.serialized, .enabled(if: geteuid() == 0, "needs root: cgroup BPF programs"))
struct NetworkEnforcerKernelTests {
    func connect(in cgroup: SandboxCgroup, to ip: String, port: UInt16) throws -> Int32 {
        try python("import socket,sys; s=socket.socket(); s.settimeout(2); sys.exit(s.connect_ex((\"\(ip)\", \(port))))", in: cgroup)
    }

    @Test func listedDestinationsOnlyAndLiveChanges() throws {
        let layout = try CgroupLayout.detect()
        let parent = try CgroupParentLock(layout: layout)
        defer { parent.releaseAndRemoveParentIfUnused() }
        let cgroup = try SandboxCgroup(layout: layout, name: "nettest-\(getpid())")
        defer { try? cgroup.destroy() }
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(listener, 8)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) } }
        let port = UInt16(bigEndian: addr.sin_port)

        let enforcer = try NetworkEnforcer(rootLevel: layout.alcub3RootLevel)
        defer { enforcer.remove(cgroup) }
        try enforcer.apply(.listed(cidrs: [try CIDR("127.0.0.2/32")], ports: []), to: cgroup)
        #expect(try connect(in: cgroup, to: "127.0.0.1", port: port) == 1)  // EPERM
        // Live: allow 127.0.0.0/8, on this port only.
        try enforcer.setRules(NetworkRules(networks: [try CIDR("127.0.0.0/8")], ports: [port]), sandboxCgroupID: cgroup.id)
        #expect(try connect(in: cgroup, to: "127.0.0.1", port: port) == 0)
        #expect(try connect(in: cgroup, to: "127.0.0.1", port: port &+ 1) == 1)
        // A process outside the cgroup is not affected.
        let outside = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(outside) }
        var target = addr
        let rc = withUnsafePointer(to: &target) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(outside, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        #expect(rc == 0)
    }

    /// Runs python `script` in the cgroup (no namespaces); its exit code.
    func python(_ script: String, in cgroup: SandboxCgroup) throws -> Int32 {
        let process = try SandboxedProcess(
            spec: ProcessSpec(executable: "/usr/bin/python3", arguments: ["/usr/bin/python3", "-c", script], environment: [],
                              workingDirectory: "/", hostname: "t", namespaces: [], seccomp: nil, dieWithParent: true),
            cgroup: cgroup)
        return process.wait().shellCode
    }

    /// IPv6 and IPv4-mapped destinations meet the same rules; outside `internet`,
    /// a sandbox may listen on loopback only.
    @Test func ipv6MappedAddressesAndBind() throws {
        let layout = try CgroupLayout.detect()
        let parent = try CgroupParentLock(layout: layout)
        defer { parent.releaseAndRemoveParentIfUnused() }
        let cgroup = try SandboxCgroup(layout: layout, name: "net6-\(getpid())")
        defer { try? cgroup.destroy() }
        let enforcer = try NetworkEnforcer(rootLevel: layout.alcub3RootLevel)
        defer { enforcer.remove(cgroup) }
        try enforcer.apply(.listed(cidrs: [try CIDR("127.0.0.0/8")], ports: []), to: cgroup)
        func connect6(_ address: String) -> String {
            "import socket,sys; s=socket.socket(socket.AF_INET6); s.settimeout(2); sys.exit(s.connect_ex(('\(address)', 9)))"
        }
        // 9 (discard) has no listener: an allowed connect gets ECONNREFUSED (111), a refused one EPERM (1).
        #expect(try python(connect6("::ffff:127.0.0.1"), in: cgroup) == 111)
        #expect(try python(connect6("::1"), in: cgroup) == 1)
        #expect(try python(connect6("::ffff:10.1.2.3"), in: cgroup) == 1)
        // UDP (DNS) is sendmsg: refused outside the listed networks.
        let udp = "import socket,sys\ntry:\n socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('10.9.9.9', 53))\nexcept OSError as e: sys.exit(e.errno)"
        #expect(try python(udp, in: cgroup) == 1)
        // bind: loopback yes, the wildcard (a service for the outside) no.
        let bind = { (address: String) in "import socket,sys\ntry:\n socket.socket().bind(('\(address)', 0))\nexcept OSError as e: sys.exit(e.errno)" }
        #expect(try python(bind("127.0.0.1"), in: cgroup) == 0)
        #expect(try python(bind("0.0.0.0"), in: cgroup) == 1)
        // internet: anything but the metadata address, and bind anywhere.
        try enforcer.apply(.any, to: cgroup)
        #expect(try python(bind("0.0.0.0"), in: cgroup) == 0)
        #expect(try python(connect6("::1"), in: cgroup) == 111)
        let metadata = "import socket,sys; s=socket.socket(); s.settimeout(2); sys.exit(s.connect_ex(('169.254.169.254', 80)))"
        #expect(try python(metadata, in: cgroup) == 1)
    }

}
