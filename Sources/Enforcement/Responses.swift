#if canImport(Glibc)
import Glibc
#endif
import KernelSupport
import Policy
import Sandbox

/// The kernel side of a policy's `on_violation` response.
public enum SandboxResponse {
    /// Freezes (or thaws) every process of the sandbox with the cgroup v2
    /// freezer, and waits until the kernel says it is done (cgroup.events).
    public static func setFrozen(_ frozen: Bool, _ cgroup: SandboxCgroup) throws {
        try FileIO.write(frozen ? "1" : "0", to: cgroup.path + "/cgroup.freeze")
        for _ in 0..<500 where isFrozen(cgroup) != frozen { usleep(2000) }
    }

    /// True once every process of the sandbox is frozen.
    public static func isFrozen(_ cgroup: SandboxCgroup) -> Bool {
        guard let events = try? FileIO.read(cgroup.path + "/cgroup.events") else { return false }
        return events.split(separator: "\n").contains("frozen 1")
    }

    /// SIGKILL to one process, if it still belongs to the sandbox (its pid
    /// may have been reused since the finding).
    @discardableResult
    public static func killProcess(_ pid: Int32, in cgroup: SandboxCgroup) -> Bool {
        guard pid > 0, cgroup.processes().contains(pid) else { return false }
        return kill(pid, SIGKILL) == 0
    }

    /// What `response` does to the sandbox for `finding`, in words for the audit log.
    public static func describe(_ response: ViolationResponse, _ finding: EscapeFinding) -> String {
        switch response {
        case .alert: return "alert only"
        case .deny: return "killed process \(finding.pid) after \(finding.technique.id)"
        case .kill: return "ended the sandbox after \(finding.technique.id)"
        case .freeze: return "froze the sandbox after \(finding.technique.id); alcub3 sandbox thaw or terminate"
        }
    }
}
