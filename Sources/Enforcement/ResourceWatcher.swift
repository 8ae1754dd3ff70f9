#if canImport(Glibc)
import Glibc
#endif
import Foundation
import KernelSupport
import Sandbox

/// Watches the limits that hold a sandbox's resources: the pids limit
/// refusing forks, the memory limit killing a process, the private /tmp
/// (a size-capped tmpfs) full. Each hit becomes a finding (fork-bomb,
/// memory-hog, disk-filler), at most one per technique per second. The
/// kernel counts these in cgroup files that have no event to wait on in v1,
/// so they are read every 10 ms: a few small reads, well inside the 50 ms
/// a finding may take.
public final class ResourceWatcher: @unchecked Sendable {
    private let pidsEvents: String?
    private let memoryEvents: String?
    private let capped: [String]
    private let limits: ResourceLimits
    private let onFinding: @Sendable (EscapeFinding) -> Void
    private let sandboxCgroupID: UInt64
    private var running = true
    private let lock = NSLock()
    private let finished = DispatchSemaphore(value: 0)
    private var started = false

    /// `capped`: the sandbox's size-capped tmpfs mounts as seen from the host
    /// (/proc/INIT/root/tmp, /proc/INIT/root/workspace); empty when it has none.
    public init(cgroup: SandboxCgroup, applied: AppliedLimits, limits: ResourceLimits, capped: [String],
                onFinding: @escaping @Sendable (EscapeFinding) -> Void) {
        func file(_ v2: String, v1Controller: String, v1: String) -> String? {
            if FileManager.default.fileExists(atPath: cgroup.path + "/" + v2) { return cgroup.path + "/" + v2 }
            return applied.v1Directories.first { $0.contains("/\(v1Controller)/") }.map { $0 + "/" + v1 }
        }
        pidsEvents = file("pids.events", v1Controller: "pids", v1: "pids.events")
        memoryEvents = file("memory.events", v1Controller: "memory", v1: "memory.oom_control")
        self.capped = capped
        self.limits = limits
        self.onFinding = onFinding
        self.sandboxCgroupID = cgroup.id
    }

    public func start() {
        started = true
        Thread.detachNewThread { [self] in
            var last = (pids: counter(pidsEvents, "max"), oom: counter(memoryEvents, "oom_kill"), full: Set<String>())
            var reported: [String: UInt64] = [:]
            func report(_ id: String, _ evidence: String, _ refusedBy: String) {
                let now = bootClockNanos()
                if let at = reported[id], now - at < 1_000_000_000 { return }
                reported[id] = now
                onFinding(EscapeFinding(technique: EscapeTechnique.named(id)!, sandboxCgroupID: sandboxCgroupID, pid: 0,
                                        evidence: evidence, refusedBy: refusedBy, observedNanos: now))
            }
            while lock.withLock({ running }) {
                let pids = counter(pidsEvents, "max")
                if pids > last.pids {
                    report("fork-bomb", "pids.max \(limits.pids) reached: \(pids) forks refused so far", "pids cgroup limit")
                }
                let oom = counter(memoryEvents, "oom_kill")
                if oom > last.oom {
                    report("memory-hog", "memory limit \(limits.memoryBytes >> 20) MiB: \(oom) processes killed so far",
                           "memory cgroup limit (OOM kill)")
                }
                let full = Set(capped.filter(isFull))
                for path in full.subtracting(last.full) {
                    let inside = "/" + (path.split(separator: "/").last.map(String.init) ?? "")
                    report("disk-filler", "the sandbox's \(inside) (a size-capped tmpfs) is full", "tmpfs size limit")
                }
                last = (pids, oom, full)
                usleep(10_000)
            }
            finished.signal()
        }
    }

    public func stop() {
        guard started else { return }
        lock.withLock { running = false }
        finished.wait()
        started = false
    }

    /// "max 3" in pids.events, "oom_kill 1" in memory.events or memory.oom_control,
    /// summed with the same file of the cgroups directly below: a container's
    /// limits are set again by runc on its own cgroup inside the sandbox's, and
    /// a limit met there counts there (on the v1 hierarchies of hybrid hosts).
    private func counter(_ path: String?, _ key: String) -> UInt64 {
        guard let path else { return 0 }
        let directory = PathText.parent(of: path), name = PathText.lastComponent(of: path)
        // Child cgroups are the directory's subdirectories (readdir's d_type: no stat of its many files, 100 times a second).
        var total = value(in: path, key)
        guard let dir = opendir(directory) else { return total }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            guard entry.pointee.d_type == UInt8(DT_DIR) else { continue }
            let child = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if child != "." && child != ".." { total += value(in: directory + "/" + child + "/" + name, key) }
        }
        return total
    }

    private func value(in path: String, _ key: String) -> UInt64 {
        guard let text = try? FileIO.read(path) else { return 0 }
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2, parts[0] == key { return UInt64(parts[1]) ?? 0 }
        }
        return 0
    }

    private func isFull(_ path: String) -> Bool {
        var fs = statvfs()
        guard statvfs(path, &fs) == 0, fs.f_blocks > 0 else { return false }
        return fs.f_bavail * 100 < fs.f_blocks  // under 1 % left
    }
}

