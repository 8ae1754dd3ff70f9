#if canImport(Glibc)
import Glibc
#endif
import KernelSupport

/// bpffs at /sys/fs/bpf, where pinned maps and links outlive their process.
public enum BPFFilesystem {
    public static let mountPoint = "/sys/fs/bpf"
    /// From /proc/self/mountinfo (statfs is not exported to Swift's Glibc module).
    public static func isMounted() -> Bool {
        let text = (try? FileIO.read("/proc/self/mountinfo")) ?? ""
        return text.split(separator: "\n").contains { line in
            let halves = line.split(separator: " - ", maxSplits: 1)
            let fields = halves.first?.split(separator: " ") ?? []
            return halves.count == 2 && fields.count > 4 && fields[4] == mountPoint && halves[1].hasPrefix("bpf ")
        }
    }

    /// Mounts bpffs when the host has not (some minimal systems do not).
    public static func ensureMounted() throws {
        if isMounted() { return }
        try syscallChecked("mount bpffs", mountPoint) { mount("bpf", mountPoint, "bpf", 0, nil) }
    }
}
