import ArgumentParser
import Enforcement
import Foundation
import KernelSupport
import Service
import Sandbox
import Telemetry

struct DoctorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Probe the kernel and host: what works, what is refused (with errno), which fallback alcub3 uses.")

    @Option(help: "table or json.")
    var format: OutputFormat = .table

    func run() throws {
        var results: [KernelProbe.Result] = [KernelProbe.btf()]
        results += KernelProbe.bpfProgramTypes()
        results.append(DeviceFilter.probe())
        results.append(KernelProbe.ringBuffer())
        results.append(Self.telemetrySelfTest())
        results.append(Self.telemetryDrops())
        results.append(Self.service())
        results += Self.cgroupResults()
        results.append(KernelProbe.landlock())
        results.append(KernelProbe.seccompUserNotify())
        results.append(KernelProbe.userNamespaces())
        results.append(KernelProbe.memoryDenyWriteExecute())
        results.append(KernelProbe.kvm())
        results += Self.vmResults()
        results.append(KernelProbe.tool("runc", versionArguments: ["--version"]))
        results.append(KernelProbe.tool("qemu-system-x86_64", versionArguments: ["--version"]))
        results.append(KernelProbe.tool("swtpm", versionArguments: ["--version"]))

        switch format {
        case .json:
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
            let data = try encoder.encode(["checks": results])
            print(String(decoding: data, as: UTF8.self))
        case .table:
            for r in results {
                let mark = r.available ? "ok     " : "REFUSED"
                var line = "\(mark)  \(r.name.padding(toLength: 30, withPad: " ", startingAt: 0)) \(r.detail)"
                if let e = r.errno { line += " (\(e))" }
                if let f = r.fallback, !r.available { line += "; fallback: \(f)" }
                print(line)
            }
        }
    }

    static func cgroupResults() -> [KernelProbe.Result] {
        guard let layout = try? CgroupLayout.detect() else {
            return [.init(name: "cgroup v2", available: false, detail: "no cgroup2 mount", errno: nil, fallback: nil)]
        }
        let controllers = (try? FileIO.read(layout.unifiedRoot + "/cgroup.controllers"))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        var results: [KernelProbe.Result] = [
            .init(name: "cgroup v2", available: true,
                  detail: "\(layout.unifiedRoot) (\(layout.isHybrid ? "hybrid" : "unified")); controllers: \(controllers.isEmpty ? "none" : controllers)",
                  errno: nil, fallback: nil),
        ]
        if layout.isHybrid {
            let v1 = layout.v1Controllers.keys.sorted().joined(separator: ", ")
            results.append(.init(name: "cgroup v1 controllers", available: true,
                                 detail: "\(v1): limits go through v1, sandbox identity through the v2 tree",
                                 errno: nil, fallback: nil))
        }
        let kill = FileIO.exists(layout.unifiedRoot + "/cgroup.kill") || FileIO.exists(layout.unifiedRoot + "/init.scope/cgroup.kill")
            || kernelAtLeast(5, 14)
        results.append(.init(name: "cgroup.kill", available: kill, detail: kill ? "kernel >= 5.14" : "missing",
                             errno: nil, fallback: kill ? nil : "SIGKILL to each pid"))
        return results
    }

    /// Loads and attaches the real telemetry programs, then detaches them.
    static func telemetrySelfTest() -> KernelProbe.Result {
        guard geteuid() == 0 else {
            return .init(name: "telemetry programs", available: false, detail: "not checked: needs root", errno: nil, fallback: nil)
        }
        do {
            let layout = try CgroupLayout.detect()
            let parent = try CgroupParentLock(layout: layout)
            defer { parent.releaseAndRemoveParentIfUnused() }
            let monitor = try TelemetryMonitor(rootCgroupID: try FileIO.inode(of: layout.alcub3Root),
                                               rootLevel: layout.alcub3RootLevel)
            let c = monitor.counters()
            return .init(name: "telemetry programs", available: true,
                         detail: "load and attach; kernel counters: \(c.seen) seen, \(c.dropped) dropped",
                         errno: nil, fallback: nil)
        } catch let e as BPFError {
            return .init(name: "telemetry programs", available: false, detail: e.description, errno: SystemError.name(of: e.errno), fallback: nil)
        } catch {
            return .init(name: "telemetry programs", available: false, detail: "\(error)", errno: nil, fallback: nil)
        }
    }

    /// Records lost by earlier runs since boot: drops are never silent.
    static func telemetryDrops() -> KernelProbe.Result {
        guard let stats = TelemetryStatistics.load() else {
            return .init(name: "telemetry drops", available: true, detail: "no run recorded since boot", errno: nil, fallback: nil)
        }
        let lost = stats.kernelDropped + stats.streamDropped
        let last = stats.lastRun.map { "last run (\(stats.lastRunAt ?? "?")): \($0.dropped) of \($0.seen) kernel records dropped, \(stats.lastRunStreamDropped) dropped in the stream; " } ?? ""
        let warning = lost > 0 ? "WARNING: records were lost; " : ""
        return .init(name: "telemetry drops", available: true,
                     detail: warning + last + "since boot: \(stats.runs) runs, \(stats.kernelDropped) of \(stats.seen) kernel records dropped, \(stats.streamDropped) in the stream",
                     errno: nil, fallback: nil)
    }

    /// The service: does it answer, and what do its pinned programs count (live drops).
    static func service() -> KernelProbe.Result {
        let settings = ServiceAccess.configuration
        let answering = ServiceClient.isListening(settings.socketPath)
        var detail = answering ? "answering on \(settings.socketPath)" : "not running (\(settings.socketPath)); commands start it"
        if let pinned = TelemetryMonitor.pinnedCounters(settings.pinDirectory) {
            let c = pinned.counters
            detail += "; pinned programs in \(settings.pinDirectory) watch \(pinned.sandboxes) sandboxes: \(c.seen) records seen, \(c.submitted) submitted, \(c.dropped) dropped"
            if c.dropped > 0 { detail = "WARNING: records were lost; " + detail }
        }
        return .init(name: "alcub3 service", available: answering, detail: detail, errno: nil,
                     fallback: answering ? nil : "alcub3 run works without it")
    }

    static func kernelAtLeast(_ major: Int, _ minor: Int) -> Bool {
        var u = utsname()
        uname(&u)
        let release = withUnsafeBytes(of: u.release) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        let parts = release.split(separator: ".").prefix(2).compactMap { Int($0.prefix(while: \.isNumber)) }
        guard parts.count == 2 else { return false }
        return parts[0] > major || (parts[0] == major && parts[1] >= minor)
    }
}
