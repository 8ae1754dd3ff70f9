import Foundation
import KernelSupport
import Sandbox
import Store
import Telemetry

/// One look at a sandbox for `sandbox monitor`: state, resource use, event
/// counts (the CLI turns two snapshots into rates), drops, latest alerts.
struct MonitorSnapshot: Codable {
    var agentID: String
    var sandboxID: String
    var state: String
    var takenNs: Int64
    var cpuUsageNs: UInt64?
    var memoryBytes: UInt64?
    var pids: Int
    var eventsByKind: [String: Int]
    var syscalls: UInt64
    var kernelDropped: UInt64
    var streamDropped: Int
    var latestAlerts: [String]
    var integrity: String

    static func take(manager: SandboxManager, agentID: String) throws -> MonitorSnapshot {
        guard let record = try manager.store.sandbox(agentID: agentID) else {
            throw ServiceFailure(Alcub3Exit.notFound, "no sandbox has agent id '\(agentID)'")
        }
        let live = manager.sandbox(agentID: agentID)
        var counts: [String: Int] = [:]
        for row in try manager.store.eventCounts(sandboxID: record.sandboxID) { counts[row.kind] = row.events }
        let alerts = try manager.store.alerts(AlertFilter(sandboxID: record.sandboxID, limit: 5)).map(\.json)
        return MonitorSnapshot(
            agentID: agentID, sandboxID: record.sandboxID, state: record.state.rawValue, takenNs: WallClock.nowUnixNanos(),
            cpuUsageNs: live.flatMap { usage($0, v2: "cpu.stat", v1: "cpuacct", file: "cpuacct.usage", key: "usage_usec", scale: 1000) },
            memoryBytes: live.flatMap { usage($0, v2: "memory.current", v1: "memory", file: "memory.usage_in_bytes", key: nil, scale: 1) },
            pids: live?.cgroup.processes().count ?? 0,
            eventsByKind: counts, syscalls: live?.syscalls ?? 0,
            kernelDropped: manager.monitor.counters().dropped,
            streamDropped: 0, latestAlerts: alerts,
            integrity: live.map { manager.integrityWatch.status(cgroupID: $0.cgroup.id) } ?? "sandbox not running")
    }

    /// Reads a usage figure from the v2 file when the controller is there, else from v1.
    static func usage(_ sandbox: LiveSandbox, v2: String, v1: String, file: String, key: String?, scale: UInt64) -> UInt64? {
        if let text = try? FileIO.read(sandbox.cgroup.path + "/" + v2) {
            if let key {
                let line = text.split(separator: "\n").first { $0.hasPrefix(key + " ") }
                return line.flatMap { UInt64($0.split(separator: " ")[1]) }.map { $0 * scale }
            }
            return UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        guard let mount = sandbox.cgroup.layout.v1Controllers[v1] else { return nil }
        let path = mount + "/alcub3/" + sandbox.record.sandboxID + "/" + file
        return (try? FileIO.read(path)).flatMap { UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }
}
