#if canImport(Glibc)
import Glibc
#endif
import KernelSupport

/// Guards alcub3's parent cgroup: every live sandbox owner holds a shared flock
/// on /run/alcub3/cgroup.lock, and the parent directory is removed only by
/// whoever can take the lock exclusively (no sandbox left anywhere), so an
/// ending run never pulls the parent from under a starting one.
public final class CgroupParentLock: Sendable {
    public static let path = "/run/alcub3/cgroup.lock"
    private let descriptor: OwnedDescriptor
    private let layout: CgroupLayout

    public init(layout: CgroupLayout) throws {
        self.layout = layout
        try AgentLock.makeDirectories("/run/alcub3")
        descriptor = try OwnedDescriptor(path: Self.path, flags: O_RDWR | O_CREAT, mode: 0o600)
        try syscallChecked("flock", Self.path) { flock(descriptor.raw, LOCK_SH) }
        if mkdir(layout.alcub3Root, 0o755) != 0 && errno != EEXIST {
            throw SystemError(errno: errno, call: "mkdir", context: layout.alcub3Root)
        }
    }

    public func releaseAndRemoveParentIfUnused() {
        if flock(descriptor.raw, LOCK_EX | LOCK_NB) == 0 {
            SandboxCgroup.removeRootIfEmpty(layout: layout)
        }
        flock(descriptor.raw, LOCK_UN)
    }
}
