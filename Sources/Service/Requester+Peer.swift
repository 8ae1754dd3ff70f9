import KernelSupport
import Store

extension Requester {
    /// A control socket client: the kernel's SO_PEERCRED credentials, and the
    /// cgroup the process was in when its request was read (a sandbox's cgroup is
    /// `/alcub3/<sandbox id>`). An unreadable cgroup (the process has gone) is
    /// recorded as unknown, not as "not sandboxed".
    public init(peer: PeerCredentials) {
        // The v2 line of /proc/<pid>/cgroup (the control socket has already refused sandboxed peers).
        let cgroup = (try? FileIO.read("/proc/\(peer.pid)/cgroup"))?.split(separator: "\n")
            .first { $0.hasPrefix("0::") }.map { String($0.dropFirst(3)) }
        let sandbox = cgroup.flatMap(Self.sandboxID(inCgroup:))
        self.init(channel: .socket, uid: peer.uid, gid: peer.gid, pid: peer.pid, cgroup: cgroup,
                  sandboxed: cgroup.map { _ in sandbox != nil }, sandboxID: sandbox)
    }

    /// The sandbox a cgroup v2 path belongs to: "sb-..." of "/alcub3/sb-.../...";
    /// "" for "/alcub3" itself; nil outside alcub3's tree.
    static func sandboxID(inCgroup path: String) -> String? {
        let parts = path.split(separator: "/", omittingEmptySubsequences: true)
        guard parts.first == "alcub3" else { return nil }
        return parts.count > 1 ? String(parts[1]) : ""
    }
}
