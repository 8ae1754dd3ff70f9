import Analysis
#if canImport(Glibc)
import Glibc
#endif
import Enforcement
import Foundation
import KernelSupport
import Policy
import Sandbox
import Store
import Telemetry

/// The behavioural analyzer's settings, from `behavioral_analysis` in the configuration.
public struct BehaviourSettings: Sendable {
    public var enabled = true
    public var observationSeconds = 300.0
    public var windowSeconds = 10.0
    public var sensitivity = Analysis.Sensitivity.high

    public init() {}

    public init(_ configured: BehavioralAnalysis) {
        func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }
        enabled = configured.enabled
        observationSeconds = seconds(configured.observationWindow)
        windowSeconds = seconds(configured.analysisWindow)
        sensitivity = Analysis.Sensitivity(rawValue: configured.sensitivity.rawValue) ?? .high
    }

    /// An analyzer for one sandbox: writes under `workspace` (and the
    /// temporary directories) are never "outside the workspace".
    public func analyzer(agentID: String, workspace: String?, profile: AgentProfile?) -> BehavioralAnalyzer {
        let settings = BehavioralAnalyzer.Settings(
            agentID: agentID, observationSeconds: observationSeconds, windowSeconds: windowSeconds, sensitivity: sensitivity,
            workspacePrefixes: [workspace, "/tmp/", "/var/tmp/", "/dev/"].compactMap { $0 }, names: { SyscallNames.name(Int($0)) })
        return BehavioralAnalyzer(settings: settings, profile: profile)
    }
}

/// A sandbox's profile choice at creation: a profile to start from (a known
/// agent: no observation window), and where to save the one it learns.
public struct ProfileChoice: Sendable {
    public var loaded: AgentProfile?
    public var target: ProfileTarget?

    public init(loaded: AgentProfile?, target: ProfileTarget?) {
        self.loaded = loaded
        self.target = target
    }
}

/// Where a learned profile is saved: a directory held open since the request
/// (so the path cannot be swapped for another directory meanwhile) and a new
/// file in it, made with O_EXCL and O_NOFOLLOW so that nothing planted there
/// is followed. For a peer that is not root, the directory must still be
/// writable by it, an existing file is never replaced and the file is its own.
public final class ProfileTarget: Sendable {
    let directory: OwnedDescriptor
    let name: String
    public let path: String
    let peer: PeerCredentials?

    init(directory: OwnedDescriptor, name: String, path: String, peer: PeerCredentials?) {
        self.directory = directory
        self.name = name
        self.path = path
        self.peer = peer
    }

    func save(_ profile: AgentProfile) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let data = try encoder.encode(profile)
        if let peer {
            var st = stat()
            guard fstat(directory.raw, &st) == 0, PeerAccess(peer: peer).allows(st, PeerAccess.write | PeerAccess.search) else {
                throw SystemError(errno: EACCES, call: "save profile", context: "\(path): uid \(peer.uid) may no longer write its directory")
            }
        }
        let temporary = ".\(name).tmp-\(UInt32.random(in: 0...UInt32.max))"
        let file = OwnedDescriptor(try syscallChecked("openat", path) {
            openat(directory.raw, temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        })
        defer { unlinkat(directory.raw, temporary, 0) }
        guard data.withUnsafeBytes({ FileIO.writeAll(file.raw, $0) }) else { throw SystemError(errno: errno, call: "write", context: path) }
        if let peer { try syscallChecked("fchown", path) { fchown(file.raw, peer.uid, peer.gid) } }
        if linkat(directory.raw, temporary, directory.raw, name, 0) != 0 {
            // Root's profile replaces an older one, as before; a member's never replaces a file.
            guard errno == EEXIST, peer == nil else { throw SystemError(errno: errno, call: "linkat", context: path) }
            try syscallChecked("renameat", path) { renameat(directory.raw, temporary, directory.raw, name) }
        }
    }
}

extension SandboxManager {
    func makeAnalyzer(agentID: String, workspace: String?, profile: ProfileChoice?) -> BehavioralAnalyzer? {
        guard behaviourSettings.enabled else { return nil }
        return behaviourSettings.analyzer(agentID: agentID, workspace: workspace, profile: profile?.loaded)
    }

    /// Closes an analysis window of every analysed sandbox, every `windowSeconds`.
    func startBehaviourWindows() {
        guard behaviourSettings.enabled else { return }
        let interval = behaviourSettings.windowSeconds
        Thread.detachNewThread { [self] in
            while true {
                usleep(UInt32(min(max(interval, 0.1), 3600) * 1e6))
                for sandbox in liveSandboxes { closeWindow(of: sandbox) }
            }
        }
    }

    func closeWindow(of sandbox: LiveSandbox) {
        guard let analyzer = sandbox.analyzer else { return }
        let cpu = MonitorSnapshot.usage(sandbox, v2: "cpu.stat", v1: "cpuacct", file: "cpuacct.usage", key: "usage_usec", scale: 1000)
        switch analyzer.closeWindow(cpuSeconds: cpu.map { Double($0) / 1e9 }) {
        case .learning:
            return
        case .learned(let profile):
            learned(profile, in: sandbox)
        case .scored(let window):
            storeWindow(window, of: sandbox)
            if window.alert { raise(window, in: sandbox) }
        }
    }

    private func learned(_ profile: AgentProfile, in sandbox: LiveSandbox) {
        var saved: String?
        if let target = sandbox.profileTarget {
            do {
                try target.save(profile)
                saved = target.path
            } catch {
                log.error("could not save the behaviour profile of \(sandbox.record.agentID): \(error)")
            }
        }
        let summary: [String: Any] = [
            "record": "behaviour_profile", "sandbox_id": sandbox.record.sandboxID, "agent_id": sandbox.record.agentID,
            "time_dt": WallClock.iso8601(unixNanos: WallClock.nowUnixNanos()), "observed_seconds": profile.observedSeconds,
            "trained_syscalls": profile.model.trainedSyscalls, "sequences": profile.model.sequences,
            "programs": profile.programs.count, "destinations": profile.destinations.count, "saved_to": saved ?? "",
        ]
        append(summary, kind: "alcub3", classUID: nil, to: sandbox)
        try? store.appendAudit(.service, action: "behaviour.learned", subject: sandbox.record.sandboxID,
                               details: ServiceJSON.encode(["agent_id": sandbox.record.agentID, "saved_to": saved ?? "",
                                                            "trained_syscalls": String(profile.model.trainedSyscalls)]))
        log.info("learned the behaviour of \(sandbox.record.agentID)",
                 metadata: ["syscalls": "\(profile.model.trainedSyscalls)", "profile": "\(saved ?? "not saved")"])
    }

    /// Every window is kept (compactly) so `events tail` and the report show the score over time.
    private func storeWindow(_ window: BehaviourWindow, of sandbox: LiveSandbox) {
        append([
            "record": "behaviour_window", "sandbox_id": sandbox.record.sandboxID, "agent_id": sandbox.record.agentID,
            "time_dt": WallClock.iso8601(unixNanos: Int64(window.end * 1e9)), "window": window.index,
            "syscalls": window.syscalls, "anomaly": window.anomaly, "risk": window.risk, "alert": window.alert,
            "reasons": window.reasons,
        ], kind: "alcub3", classUID: nil, to: sandbox)
    }

    /// An alerting window as an OCSF Detection Finding, stored as an alert and an event.
    private func raise(_ window: BehaviourWindow, in sandbox: LiveSandbox) {
        let nanos = Int64(window.end * 1e9)
        let finding = BehaviourFinding(window: window, sandboxID: sandbox.record.sandboxID, agentID: sandbox.record.agentID)
        let json = OCSFEncoder.jsonLine(finding.ocsf)
        do {
            _ = try store.appendAlert(AlertRecord(timeNs: nanos, sandboxID: sandbox.record.sandboxID, agentID: sandbox.record.agentID,
                                                  severityID: finding.severity.rawValue, technique: BehaviourFinding.technique, json: json))
            try store.appendEvents([StoredEvent(timeNs: nanos, sandboxID: sandbox.record.sandboxID, agentID: sandbox.record.agentID,
                                                kind: "alert", classUID: 2004, json: json)])
        } catch {
            log.error("could not store a behaviour alert of \(sandbox.record.sandboxID): \(error)")
        }
        log.warning("behaviour unlike the profile", metadata: ["sandbox": "\(sandbox.record.sandboxID)",
                                                                "risk": "\(window.risk)", "reasons": "\(window.reasons.prefix(3))"])
    }

    private func append(_ object: [String: Any], kind: String, classUID: Int?, to sandbox: LiveSandbox) {
        let now = WallClock.nowUnixNanos()
        try? store.appendEvents([StoredEvent(timeNs: now, sandboxID: sandbox.record.sandboxID, agentID: sandbox.record.agentID,
                                             kind: kind, json: OCSFEncoder.jsonLine(object))])
    }

    /// The live view's data (`integrity monitor-behavior`, `debug-behavior`).
    func behaviourSnapshot(agentID: String, detailed: Bool) throws -> BehavioralAnalyzer.Snapshot {
        guard let sandbox = sandbox(agentID: agentID) else {
            throw ServiceFailure(Alcub3Exit.notFound, "no running sandbox has agent id '\(agentID)'")
        }
        guard let analyzer = sandbox.analyzer else {
            throw ServiceFailure(Alcub3Exit.notFound, "behavioural analysis is off for '\(agentID)' (behavioral_analysis.enabled: false)")
        }
        return analyzer.snapshot(windows: detailed ? 120 : 60, detailed: detailed)
    }
}

extension LiveSandbox {
    /// What the analyzer takes from one event (syscalls go through `pendingRecords`, in batches).
    func observeBehaviour(_ event: TelemetryEvent) {
        guard let analyzer, let observation = BehaviourFeed.observation(for: event, processes: processes) else { return }
        analyzer.observe(observation)
    }
}

/// Telemetry events as the behavioural analyzer takes them (the service and `alcub3 run`).
public enum BehaviourFeed {
    /// `processes` must already have seen `event` (an exec's parent is named from it).
    public static func observation(for event: TelemetryEvent, processes: ProcessTable) -> BehaviourObservation? {
        switch event {
        case .process(let p):
            switch p.activity {
            case .exec(let filename, _, let parent, _, let name):
                return .exec(pid: p.origin.pid, program: filename, name: name, parentName: processes[parent]?.name)
            case .exit:
                return .threadExit(tid: p.origin.tid)
            default:
                return nil
            }
        case .network(let n) where n.operation == .connect || n.operation == .sendto || n.operation == .sendmsg:
            guard n.remote.ip != nil || n.remote.unixPath != nil else { return nil }
            return .connect(pid: n.origin.pid, destination: n.remote.description)
        case .file(let f):
            switch f.operation {
            case .read: return .read(pid: f.origin.pid, path: f.path, refused: f.result < 0)
            case .chmod where f.result >= 0: return .chmod(pid: f.origin.pid, path: f.path, mode: f.mode)
            case .open, .truncate, .mkdir, .link, .symlink, .rename:
                return f.result >= 0 ? .write(pid: f.origin.pid, path: f.secondPath ?? f.path) : nil
            default:
                return nil
            }
        case .syscall(let s) where !s.isEntry && s.number >= 0:
            return nil  // syscalls go in batches: `record(for:)`
        default:
            return nil
        }
    }

    /// A completed syscall as the analyzer's sequence input.
    @inline(__always)
    public static func record(for s: SyscallEvent) -> SyscallRecord? {
        guard !s.isEntry, s.number >= 0, s.number < 1024 else { return nil }
        return SyscallRecord(pid: s.origin.pid, tid: s.origin.tid, number: UInt16(s.number))
    }
}

/// An alerting analysis window as an OCSF Detection Finding (class 2004).
public struct BehaviourFinding {
    public static let technique = "behaviour-anomaly"
    public let window: BehaviourWindow
    public let sandboxID: String
    public let agentID: String

    public init(window: BehaviourWindow, sandboxID: String, agentID: String) {
        self.window = window
        self.sandboxID = sandboxID
        self.agentID = agentID
    }

    public var severity: FindingSeverity { window.risk >= 0.9 ? .high : .medium }

    public var ocsf: [String: Any] {
        let nanos = Int64(window.end * 1e9)
        return OCSFEncoder.detectionFinding(sandboxID: sandboxID, agentID: agentID, unixNanos: nanos,
                                            severityID: severity.rawValue, severity: severity.name).merging([
            "confidence_score": Int((window.risk * 100).rounded()),
            "finding_info": ["title": "Behaviour unlike the agent's profile", "uid": Self.technique, "types": ["behavioural anomaly"],
                             "attacks": Set(window.indicators.map(\.kind.mitre)).sorted().map { ["technique": ["uid": $0]] }],
            "message": "\(Self.technique): " + window.reasons.prefix(3).joined(separator: "; "),
            "evidences": window.processes.prefix(5).map { p in
                ["actor": ["process": ["pid": Int(p.pid), "name": p.program]],
                 "data": ["anomaly": p.anomaly, "risk": p.risk, "reasons": p.reasons]] as [String: Any]
            },
            "unmapped": ["technique": Self.technique, "maestro_layer": window.maestroLayer, "window": window.index,
                         "anomaly": window.anomaly, "risk": window.risk, "peak_bits": window.peak, "threshold_bits": window.threshold,
                         "sensitivity": window.sensitivity.rawValue, "reasons": window.reasons, "rare_sequences": window.rareSequences,
                         "indicators": window.indicators.map { ["kind": $0.kind.rawValue, "pid": Int($0.pid), "detail": $0.detail] },
                         "lead_pid": Int(window.processes.first?.pid ?? 0)] as [String: Any],
        ]) { shared, _ in shared }
    }
}
