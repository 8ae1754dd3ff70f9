import Foundation
import Policy
import Store
import Testing
@testable import Service

@Suite struct RequesterTests {
    @Test func theSandboxOfACgroupPath() {
        #expect(Requester.sandboxID(inCgroup: "/alcub3/sb-0123456789ab") == "sb-0123456789ab")
        #expect(Requester.sandboxID(inCgroup: "/alcub3/sb-0123456789ab/agent") == "sb-0123456789ab")
        #expect(Requester.sandboxID(inCgroup: "/alcub3") == "")
        #expect(Requester.sandboxID(inCgroup: "/user.slice/alcub3/sb-1") == nil)
        #expect(Requester.sandboxID(inCgroup: "/alcub3x/sb-1") == nil)
        #expect(Requester.sandboxID(inCgroup: "/") == nil)
    }

    /// This process as a peer: its own credentials and cgroup; a peer that has
    /// gone is "unknown", never "not sandboxed".
    @Test func aPeerIsRecordedAsTheKernelGivesIt() {
        let me = Requester(peer: PeerCredentials(pid: getpid(), uid: getuid(), gid: getgid()))
        #expect(me.channel == .socket && me.pid == getpid() && me.uid == getuid() && me.cgroup != nil)
        #expect(me.sandboxed == (me.cgroup.map { $0 == "/alcub3" || $0.hasPrefix("/alcub3/") }))
        let gone = Requester(peer: PeerCredentials(pid: Int32.max, uid: 0, gid: 0))
        #expect(gone.cgroup == nil && gone.sandboxed == nil && gone.actor == "uid 0 pid \(Int32.max) (cgroup unknown)")
        let inside = Requester(channel: .socket, uid: 0, gid: 0, pid: 9, cgroup: "/alcub3/sb-1", sandboxed: true, sandboxID: "sb-1")
        #expect(inside.actor == "uid 0 pid 9 in sandbox sb-1")
    }

    /// M2/M3: every service location is hidden, the baseline key too when the
    /// operator keeps it elsewhere.
    @Test func theServiceHidesItsKeysAndDirectories() throws {
        var settings = ServiceSettings(socketPath: "/run/x/alcub3.sock", stateDirectory: "/var/lib/x", pinDirectory: "/sys/fs/bpf/x")
        #expect(settings.hiddenPaths == ["/run/x", "/var/lib/x", "/sys/fs/bpf/x"])
        #expect(settings.auditKeyPath == "/var/lib/x/audit.key")
        settings.baselineKeyPath = "/etc/alcub3/baseline.key"
        #expect(settings.hiddenPaths.contains("/etc/alcub3/baseline.key"))
        let configured = try PolicyConfiguration.shipped.merging(PolicyOverrides.parse("service:\n  baseline_key: /etc/k/baseline.key\n", source: "t"))
        let hidden = ServiceSettings.hiddenPaths(of: configured)
        for path in ["/run/alcub3", "/var/lib/alcub3", "/sys/fs/bpf/alcub3", "/etc/k/baseline.key"] { #expect(hidden.contains(path), "\(hidden)") }
    }
}
