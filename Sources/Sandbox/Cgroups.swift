#if canImport(Glibc)
import Glibc
#endif
import KernelSupport

/// Where the cgroup hierarchies are mounted on this host. alcub3 works on pure
/// cgroup v2 hosts (every modern distribution) and on hybrid ones, where a
/// cgroup2 tree without controllers sits beside the v1 controllers.
public struct CgroupLayout: Sendable, Equatable {
    /// Mount point of the cgroup2 hierarchy: /sys/fs/cgroup or /sys/fs/cgroup/unified.
    public let unifiedRoot: String
    /// v1 controller name -> mount point, empty on a pure v2 host.
    public let v1Controllers: [String: String]

    public var isHybrid: Bool { !v1Controllers.isEmpty }

    /// Parses /proc/self/mountinfo.
    public static func detect(mountinfo: String? = nil) throws -> CgroupLayout {
        let text = try mountinfo ?? FileIO.read("/proc/self/mountinfo")
        var unified: String?
        var v1: [String: String] = [:]
        for line in text.split(separator: "\n") {
            // mountinfo: ... mountpoint ... - fstype source superoptions
            let halves = line.split(separator: " - ", maxSplits: 1)
            guard halves.count == 2 else { continue }
            let left = halves[0].split(separator: " ")
            let right = halves[1].split(separator: " ")
            guard left.count >= 5, right.count >= 3 else { continue }
            let mountPoint = String(left[4])
            switch right[0] {
            case "cgroup2":
                if unified == nil { unified = mountPoint }
            case "cgroup":
                for option in right[2].split(separator: ",")
                where ["cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer", "blkio"].contains(option) {
                    v1[String(option)] = mountPoint
                }
            default: continue
            }
        }
        guard let unified else {
            throw SandboxError.unsupportedHost("no cgroup2 hierarchy is mounted; alcub3 needs cgroup v2 (alone or hybrid)")
        }
        return CgroupLayout(unifiedRoot: unified, v1Controllers: v1)
    }

    /// alcub3's parent cgroup in the cgroup2 tree; every sandbox is a direct child.
    public var alcub3Root: String { unifiedRoot + "/alcub3" }

    /// Level of the alcub3 parent in the cgroup2 hierarchy (its root is level 0).
    public var alcub3RootLevel: UInt32 { 1 }
}

/// One sandbox's cgroup (v2 directory, plus v1 directories on a hybrid host).
/// Created empty; `destroy` kills whatever is left inside and removes it.
public final class SandboxCgroup: Sendable {
    public let name: String
    public let path: String
    public let id: UInt64
    public let layout: CgroupLayout

    /// Creates `<alcub3Root>/<name>`. EEXIST means the name is taken.
    public init(layout: CgroupLayout, name: String) throws {
        let path = layout.alcub3Root + "/" + name
        if mkdir(layout.alcub3Root, 0o755) != 0 && errno != EEXIST {
            throw SystemError(errno: errno, call: "mkdir", context: layout.alcub3Root)
        }
        try syscallChecked("mkdir", path) { mkdir(path, 0o755) }
        do {
            self.id = try FileIO.inode(of: path)
        } catch {
            rmdir(path)
            throw error
        }
        self.layout = layout
        self.name = name
        self.path = path
    }

    /// An existing sandbox cgroup (a restarted service re-adopting its sandboxes).
    public init(existing name: String, layout: CgroupLayout) throws {
        let path = layout.alcub3Root + "/" + name
        self.id = try FileIO.inode(of: path)
        self.layout = layout
        self.name = name
        self.path = path
    }

    /// The cgroup2 directory fd that clone3(CLONE_INTO_CGROUP) takes.
    public func openDirectory() throws -> OwnedDescriptor {
        try OwnedDescriptor(path: path, flags: O_RDONLY | O_DIRECTORY)
    }

    /// Pids currently in the sandbox cgroup and its descendants.
    public func processes() -> [Int32] { Self.processes(under: path) }

    /// Pids in a cgroup directory and every cgroup below it (v1 or v2).
    static func processes(under path: String) -> [Int32] {
        var pids: [Int32] = []
        forEachDirectory(path) { dir in
            if let text = try? FileIO.read(dir + "/cgroup.procs") {
                pids += text.split(separator: "\n").compactMap { Int32($0) }
            }
        }
        return pids
    }

    /// Kills every process in the cgroup tree (cgroup.kill, 5.14+; SIGKILL to
    /// each pid where it is missing), waits until it is empty and removes it.
    public func destroy(timeoutMilliseconds: Int = 5000) throws {
        guard FileIO.exists(path) else { return }
        if (try? FileIO.write("1", to: path + "/cgroup.kill")) == nil {
            for pid in processes() { kill(pid, SIGKILL) }
        }
        var waited = 0
        while !processes().isEmpty && waited < timeoutMilliseconds {
            usleep(2000)
            waited += 2
        }
        // Children before parents: rmdir refuses a cgroup with sub-cgroups.
        var dirs: [String] = []
        forEachDirectory(path) { dirs.append($0) }
        for dir in dirs.reversed() {
            var tries = 0
            while rmdir(dir) != 0 && errno == EBUSY && tries < 500 {
                usleep(2000)
                tries += 1
            }
            if FileIO.exists(dir) {
                throw SystemError(errno: errno, call: "rmdir", context: dir)
            }
        }
    }

    /// Removes the alcub3 parent when no sandbox is left in it. EBUSY and
    /// ENOTEMPTY mean another sandbox still lives there, which is fine.
    public static func removeRootIfEmpty(layout: CgroupLayout) {
        rmdir(layout.alcub3Root)
        for mount in Set(layout.v1Controllers.values) { rmdir(mount + "/alcub3") }
        // runc makes alcub3/ in named hierarchies too (name=systemd) for container sandboxes.
        for mount in ContainerSandbox.v1Mounts() { rmdir(mount + "/alcub3") }
    }
}

/// Visits `root` and every directory below it, parents first.
func forEachDirectory(_ root: String, _ body: (String) -> Void) {
    body(root)
    guard let dir = opendir(root) else { return }
    defer { closedir(dir) }
    while let entry = readdir(dir) {
        guard entry.pointee.d_type == UInt8(DT_DIR) else { continue }
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
        }
        if name == "." || name == ".." { continue }
        forEachDirectory(root + "/" + name, body)
    }
}
