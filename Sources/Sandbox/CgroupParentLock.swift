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
        // Alone (no live owner anywhere): empty sandbox cgroups are leftovers of
        // an owner that was killed (SIGKILL gives no chance to clean up). Sandboxes
        // with processes are kept: a restarted service re-adopts them.
        if flock(descriptor.raw, LOCK_EX | LOCK_NB) == 0 {
            ContainerSandbox.removeOrphans(layout: layout)  // before their cgroups go: runc's live beneath them
            Self.removeEmptySandboxes(layout: layout)
        }
        try syscallChecked("flock", Self.path) { flock(descriptor.raw, LOCK_SH) }
        if mkdir(layout.alcub3Root, 0o755) != 0 && errno != EEXIST {
            throw SystemError(errno: errno, call: "mkdir", context: layout.alcub3Root)
        }
    }

    static func removeEmptySandboxes(layout: CgroupLayout) {
        removeEmptySandboxes(under: layout.alcub3Root)
        // v1 hierarchies (hybrid hosts) hold the limits of the same sandboxes.
        for mount in Set(layout.v1Controllers.values) {
            removeEmptySandboxes(under: mount + "/alcub3")
            rmdir(mount + "/alcub3")
        }
    }

    static func removeEmptySandboxes(under root: String) {
        guard let dir = opendir(root) else { return }
        var names: [String] = []
        while let entry = readdir(dir) {
            guard entry.pointee.d_type == UInt8(DT_DIR) else { continue }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        closedir(dir)
        for name in names {
            let path = root + "/" + name
            guard SandboxCgroup.processes(under: path).isEmpty else { continue }
            var dirs: [String] = []
            forEachDirectory(path) { dirs.append($0) }
            for sub in dirs.reversed() { rmdir(sub) }
        }
    }

    public func releaseAndRemoveParentIfUnused() {
        if flock(descriptor.raw, LOCK_EX | LOCK_NB) == 0 {
            SandboxCgroup.removeRootIfEmpty(layout: layout)
        }
        flock(descriptor.raw, LOCK_UN)
    }
}
