import Foundation
import KernelSupport
import Policy
import Sandbox
import Synchronization
import Testing
@testable import Telemetry

/// Integration tests run as root against the real kernel. Under CI=true a
/// missing privilege is a failure, not a skip.
let isRoot = geteuid() == 0
let rootRequired: String = {
    if !isRoot && ProcessInfo.processInfo.environment["CI"] == "true" {
        fatalError("integration tests need root in CI")
    }
    return "needs root: BPF, cgroups and namespaces (the kernel refuses them to uid \(geteuid()))"
}()

/// Collects everything a subscription delivers until the stream ends.
final class Collected: Sendable {
    private let storage = Mutex<[TelemetryEvent]>([])
    var events: [TelemetryEvent] { storage.withLock { $0 } }
    func append(_ batch: [TelemetryEvent]) { storage.withLock { $0 += batch } }
}

/// One sandbox with telemetry: run a command in it, get every event back.
struct SandboxRun {
    let events: [TelemetryEvent]
    let status: Sandbox.ExitStatus
    let cgroupID: UInt64
    let counters: KernelCounters
    let subscriberDropped: Int

    var fileEvents: [FileEvent] { events.compactMap { if case .file(let f) = $0 { f } else { nil } } }
    var networkEvents: [NetworkEvent] { events.compactMap { if case .network(let n) = $0 { n } else { nil } } }
    var processEvents: [ProcessEvent] { events.compactMap { if case .process(let p) = $0 { p } else { nil } } }
    var syscallEvents: [SyscallEvent] { events.compactMap { if case .syscall(let s) = $0 { s } else { nil } } }
    var execs: [(filename: String, args: [String])] {
        processEvents.compactMap { if case .exec(let f, let a, _, _, _) = $0.activity { (f, a) } else { nil } }
    }

    /// Runs `arguments` in a fresh sandbox; `outside` runs meanwhile outside every sandbox.
    /// The command has no capability but `keepCapabilities`.
    static func run(_ arguments: [String], policy: SandboxPolicy = .builtIn(.unclassified),
                    workingDirectory: String? = nil, keepCapabilities: [String] = [], extraSyscalls: [String] = [],
                    outside: (() -> Void)? = nil) throws -> SandboxRun {
        let layout = try CgroupLayout.detect()
        let parent = try CgroupParentLock(layout: layout)
        defer { parent.releaseAndRemoveParentIfUnused() }
        let monitor = try TelemetryMonitor(rootCgroupID: try FileIO.inode(of: layout.alcub3Root), rootLevel: layout.alcub3RootLevel)
        let cgroup = try SandboxCgroup(layout: layout, name: "test-" + String(UInt32.random(in: 0...UInt32.max), radix: 16))
        defer { try? cgroup.destroy() }
        try monitor.watch(sandboxCgroupID: cgroup.id, options: .init(syscalls: policy.traceSyscalls))
        let subscription = monitor.hub.subscribe()
        let collected = Collected()
        let done = DispatchSemaphore(value: 0)
        Task.detached {
            for await batch in subscription.events { collected.append(batch) }
            done.signal()
        }
        try monitor.start()
        outside?()
        let executable = try CommandResolver.resolve(arguments[0])
        let process = try SandboxedProcess(
            spec: ProcessSpec(executable: executable, arguments: arguments,
                              environment: ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp"],
                              workingDirectory: workingDirectory, hostname: "test",
                              namespaces: NamespaceSet.forPolicy(policy),
                              seccomp: try SeccompCompiler.compile(.forSandbox(allowedSyscalls: policy.allowedSyscalls + extraSyscalls, supervised: false)),
                              dieWithParent: true).keeping(keepCapabilities),
            cgroup: cgroup)
        let status = process.wait()
        try cgroup.destroy()
        monitor.stop()
        done.wait()
        return SandboxRun(events: collected.events, status: status, cgroupID: cgroup.id,
                          counters: monitor.counters(), subscriberDropped: subscription.dropped)
    }
}

extension ProcessSpec {
    func keeping(_ capabilities: [String]) -> ProcessSpec {
        var spec = self
        spec.keepCapabilities = capabilities
        return spec
    }
}

func temporaryDirectory() throws -> String {
    let path = NSTemporaryDirectory() + "alcub3-test-" + UUID().uuidString
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}
