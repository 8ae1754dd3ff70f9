import Foundation
import KernelSupport
import Policy
import Sandbox
import Store

/// Process-level sandbox creation: a sandbox running /bin/true, created and
/// removed, against bubblewrap and unshare with comparable isolation.
func creationSection(layout: CgroupLayout) throws -> String {
    let seccomp = try SeccompCompiler.compile(.forSandbox(allowedSyscalls: Capability.allowedSyscalls(for: Capability.allCases), supervised: false))
    let creationRuns = 40
    func timeAlcub3Sandbox() throws -> Double {
        let start = DispatchTime.now().uptimeNanoseconds
        let cgroup = try SandboxCgroup(layout: layout, name: "bench-create")
        let limits = try cgroup.apply(ResourceLimits(cpuCores: 1, memoryBytes: 1 << 30, pids: 256))
        var spec = ProcessSpec(executable: "/bin/true", arguments: ["/bin/true"], environment: [], workingDirectory: "/",
                               hostname: "bench", namespaces: [.mount, .pid, .ipc, .uts, .cgroup, .network],
                               seccomp: seccomp, dieWithParent: true)
        spec.v1ProcsFiles = limits.v1ProcsFiles
        // What bubblewrap's options below give too: a user namespace (alcub3's: a reserved
        // uid slot, the agent an unprivileged host uid), a read-only view, a private /dev.
        spec.userNamespace = try UserNamespace(owner: nil)
        spec.readOnlyRoot = true
        spec.minimalDev = true
        spec.denyWriteExecute = true
        _ = try SandboxedProcess(spec: spec, cgroup: cgroup).wait()
        try cgroup.destroy()
        SandboxCgroup.removeV1(limits)
        return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
    }
    // Interleaved: one of each per iteration, so drift hits all three alike.
    var createTimes: [String: [Double]] = [:]
    _ = try timeAlcub3Sandbox()  // warm-up
    for _ in 0..<creationRuns {
        createTimes["alcub3", default: []].append(try timeAlcub3Sandbox())
        createTimes["bwrap", default: []].append(timeSpawn(["/usr/bin/bwrap", "--unshare-all", "--die-with-parent", "--cap-drop", "ALL",
                                                            "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "/bin/true"]))
        createTimes["unshare", default: []].append(timeSpawn(["/usr/bin/unshare", "--mount", "--pid", "--fork", "--ipc", "--uts", "--net",
                                                              "--cgroup", "--mount-proc", "/bin/true"]))
    }
    let createAlcub3 = median(createTimes["alcub3"]!)
    let createBwrap = median(createTimes["bwrap"]!)
    let createUnshare = median(createTimes["unshare"]!)
    let creationRatio = median(zip(createTimes["alcub3"]!, createTimes["bwrap"]!).map { $0 / $1 })
    let unshareRatio = median(zip(createTimes["unshare"]!, createTimes["bwrap"]!).map { $0 / $1 })
    log(String(format: "creation: alcub3 %.2f ms, bwrap %.2f ms, unshare %.2f ms", createAlcub3, createBwrap, createUnshare))
    return String(format: """
        ## Process-level sandbox creation (`/bin/true` inside; %d interleaved iterations, medians; ratio: median of per-iteration ratios)

        | tool | isolation | ms | vs bubblewrap |
        |---|---|---:|---:|
        | alcub3 (library path: cgroup with cpu/memory/pids limits, a user namespace in a reserved uid slot, pid/mnt/ipc/uts/cgroup/net namespaces, read-only view, private /dev and /tmp, Landlock, seccomp, MDWE, init; removed after) | user, pid, mnt, ipc, uts, cgroup, net | %.2f | %.2fx (target <= 1.3x: %@) |
        | bubblewrap `--unshare-all --cap-drop ALL --ro-bind / / --proc --dev` | user, pid, mnt, ipc, uts, cgroup, net | %.2f | 1.00x |
        | `unshare --mount --pid --fork --ipc --uts --net --cgroup --mount-proc` | pid, mnt, ipc, uts, cgroup, net | %.2f | %.2fx |

        """, creationRuns, createAlcub3, creationRatio, ok(creationRatio <= 1.3), createBwrap, createUnshare, unshareRatio)
}

/// Events into the store.
func storeSection() throws -> String {
    let storeDir = NSTemporaryDirectory() + "alcub3-bench-store-\(getpid())"
    try FileManager.default.createDirectory(atPath: storeDir, withIntermediateDirectories: true)
    let storeRate = try EventStore.benchmarkInsert(path: storeDir + "/bench.db", events: 300_000, batch: 4096)
    try? FileManager.default.removeItem(atPath: storeDir)
    log(String(format: "store: %.0f events/s, %.0f bytes/event", storeRate.eventsPerSecond, storeRate.bytesPerEvent))
    return String(format: """
        ## Events into the store (SQLite, WAL, batches of 4096, ~400-byte OCSF rows)

        %.0f events/s sustained over 300,000 events (%.0f bytes per event on disk); target >= 100,000 events/s: %@.

        """, storeRate.eventsPerSecond, storeRate.bytesPerEvent, ok(storeRate.eventsPerSecond >= 100_000))
}

/// Service memory with 1 and with 20 idle sandboxes.
func memorySection(alcub3: String) throws -> String {
    func rssKiB(_ pid: pid_t) -> Int {
        let status = (try? FileIO.read("/proc/\(pid)/status")) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
    }
    let root = NSTemporaryDirectory() + "alcub3-bench-svc-\(getpid())"
    setenv("ALCUB3_SOCKET", root + "/alcub3.sock", 1)
    setenv("ALCUB3_STATE_DIR", root + "/state", 1)
    setenv("ALCUB3_PIN_DIR", "/sys/fs/bpf/alcub3-bench-\(getpid())", 1)
    setenv("ALCUB3_METRICS", "off", 1)
    setenv("ALCUB3_NO_AUTOSTART", "1", 1)
    defer { for name in ["ALCUB3_SOCKET", "ALCUB3_STATE_DIR", "ALCUB3_PIN_DIR", "ALCUB3_METRICS", "ALCUB3_NO_AUTOSTART"] { unsetenv(name) } }
    try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    var daemonPID: pid_t = 0
    let dArgs: [UnsafeMutablePointer<CChar>?] = [strdup(alcub3), strdup("daemon"), nil]
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    posix_spawn_file_actions_addopen(&actions, 2, root + "/daemon.log", O_WRONLY | O_CREAT, 0o600)
    posix_spawn(&daemonPID, alcub3, &actions, nil, dArgs, environ)
    func cli(_ args: [String]) -> Double { timeSpawn([alcub3] + args) }
    var waited = 0
    while !FileManager.default.fileExists(atPath: root + "/alcub3.sock") && waited < 200 {
        usleep(50_000)
        waited += 1
    }
    usleep(300_000)
    let idle = rssKiB(daemonPID)
    _ = cli(["sandbox", "create", "--agent-id", "mem-0"])
    usleep(300_000)
    let one = rssKiB(daemonPID)
    for i in 1..<20 { _ = cli(["sandbox", "create", "--agent-id", "mem-\(i)"]) }
    usleep(500_000)
    let twenty = rssKiB(daemonPID)
    var createViaService: [Double] = []
    for i in 0..<10 {
        createViaService.append(cli(["sandbox", "create", "--agent-id", "svc-\(i)"]))
    }
    for i in 0..<20 { _ = cli(["sandbox", "terminate", "--force", "--agent-id", "mem-\(i)"]) }
    for i in 0..<10 { _ = cli(["sandbox", "terminate", "--force", "--agent-id", "svc-\(i)"]) }
    kill(daemonPID, SIGTERM)
    var st: Int32 = 0
    waitpid(daemonPID, &st, 0)
    try? FileManager.default.removeItem(atPath: root)
    let perSandbox = Double(twenty - one) / 19.0 / 1024.0
    return String(format: """
        ## Service memory (resident set of `alcub3 daemon`, release build)

        | sandboxes | RSS | target |
        |---|---:|---|
        | 0 | %.1f MiB | |
        | 1 idle | %.1f MiB | |
        | 20 idle | %.1f MiB | |
        | per extra sandbox | %.2f MiB | < 20 MB: %@ |

        `alcub3 sandbox create` through the service (CLI process included, median of 10): %.1f ms.

        """, Double(idle) / 1024, Double(one) / 1024, Double(twenty) / 1024, perSandbox,
        ok(perSandbox < 19.07), median(createViaService))
}
