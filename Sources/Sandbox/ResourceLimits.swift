#if canImport(Glibc)
import Glibc
#endif
import KernelSupport

/// cpu, memory and pids limits of one sandbox.
public struct ResourceLimits: Sendable, Codable, Equatable {
    public var cpuCores: Double
    public var memoryBytes: UInt64
    public var pids: Int

    public init(cpuCores: Double, memoryBytes: UInt64, pids: Int) {
        self.cpuCores = cpuCores
        self.memoryBytes = memoryBytes
        self.pids = pids
    }

    /// CFS bandwidth: quota per 100 ms period (both files of v1, one line of v2's cpu.max).
    public static let cpuPeriodMicroseconds = 100_000
    public var cpuQuotaMicroseconds: Int { max(1000, Int((cpuCores * Double(Self.cpuPeriodMicroseconds)).rounded())) }
}

/// Where each limit went: a cgroup v2 controller when the host's cgroup2 tree
/// has it, else the v1 hierarchy (hybrid hosts).
public struct AppliedLimits: Sendable, Codable, Equatable {
    /// Files that show the limits, for `debug-create` and the tests.
    public var files: [String: String]
    /// v1 cgroup.procs files a process must join to be limited.
    public var v1ProcsFiles: [String]
    /// v1 directories to remove with the sandbox.
    public var v1Directories: [String]

    public init(files: [String: String] = [:], v1ProcsFiles: [String] = [], v1Directories: [String] = []) {
        self.files = files
        self.v1ProcsFiles = v1ProcsFiles
        self.v1Directories = v1Directories
    }
}

extension SandboxCgroup {
    /// Controllers the cgroup2 tree offers at alcub3's parent.
    func unifiedControllers() -> Set<String> {
        let text = (try? FileIO.read(layout.unifiedRoot + "/cgroup.controllers")) ?? ""
        return Set(text.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
    }

    /// Applies the limits; on a failure, what was made for them is removed.
    public func apply(_ limits: ResourceLimits) throws -> AppliedLimits {
        var applied = AppliedLimits(files: [:], v1ProcsFiles: [], v1Directories: [])
        let v2 = unifiedControllers()
        do {
            // v2: controllers must be enabled in every ancestor's subtree_control.
            let wanted = ["cpu", "memory", "pids"].filter { v2.contains($0) }
            if !wanted.isEmpty {
                let enable = wanted.map { "+" + $0 }.joined(separator: " ")
                try FileIO.write(enable, to: layout.unifiedRoot + "/cgroup.subtree_control")
                try FileIO.write(enable, to: layout.alcub3Root + "/cgroup.subtree_control")
            }
            func set(_ controller: String, v2File: String, v2Value: String, v1: [(String, String)]) throws {
                if v2.contains(controller) {
                    try FileIO.write(v2Value, to: path + "/" + v2File)
                    applied.files[path + "/" + v2File] = v2Value
                    return
                }
                guard let mount = layout.v1Controllers[controller] else {
                    throw SandboxError.unsupportedHost("no \(controller) controller in cgroup v2 or v1")
                }
                let dir = mount + "/alcub3/" + name
                try AgentLock.makeDirectories(dir)
                applied.v1Directories.append(dir)
                for (file, value) in v1 {
                    try FileIO.write(value, to: dir + "/" + file)
                    applied.files[dir + "/" + file] = value
                }
                applied.v1ProcsFiles.append(dir + "/cgroup.procs")
            }
            let quota = String(limits.cpuQuotaMicroseconds), period = String(ResourceLimits.cpuPeriodMicroseconds)
            try set("cpu", v2File: "cpu.max", v2Value: "\(quota) \(period)",
                    v1: [("cpu.cfs_period_us", period), ("cpu.cfs_quota_us", quota)])
            try set("memory", v2File: "memory.max", v2Value: String(limits.memoryBytes),
                    v1: [("memory.limit_in_bytes", String(limits.memoryBytes))])
            try set("pids", v2File: "pids.max", v2Value: String(limits.pids),
                    v1: [("pids.max", String(limits.pids))])
            // cpu usage for `sandbox monitor`: cpuacct is its own v1 hierarchy on some hosts.
            if !v2.contains("cpu"), let mount = layout.v1Controllers["cpuacct"], mount != layout.v1Controllers["cpu"] {
                let dir = mount + "/alcub3/" + name
                try AgentLock.makeDirectories(dir)
                applied.v1Directories.append(dir)
                applied.v1ProcsFiles.append(dir + "/cgroup.procs")
            }
        } catch {
            for dir in applied.v1Directories.reversed() { rmdir(dir) }
            throw error
        }
        return applied
    }

    /// Removes the v1 directories (empty once the sandbox's processes are gone).
    public static func removeV1(_ applied: AppliedLimits) {
        for dir in applied.v1Directories {
            var tries = 0
            while rmdir(dir) != 0 && errno == EBUSY && tries < 500 {
                usleep(2000)
                tries += 1
            }
        }
    }
}
