import Analysis
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import KernelSupport
import Enforcement
import Logging
import Policy
import Sandbox
import Store
import Telemetry

/// One sandbox the service holds: its kernel objects and its view of events.
final class LiveSandbox: @unchecked Sendable {
    // @unchecked: `processes`, `eventCounts` and `syscalls` are touched only by
    // the event pipeline's task; the rest is immutable after creation.
    let record: SandboxRecord
    let policy: SandboxPolicy
    let cgroup: SandboxCgroup
    let initProcess: SandboxedProcess
    let limits: AppliedLimits
    let encoder: OCSFEncoder
    var processes = ProcessTable()
    var syscalls: UInt64 = 0
    /// Syscalls by number since the pipeline last handed them to `behaviour`.
    var pendingSyscalls = [UInt64](repeating: 0, count: 1024)
    /// Set once after creation, stopped by `finish`: the seccomp supervisor
    /// (nil when the filter has no notify rules, or after a service restart:
    /// the listener died with the old service, so escape syscalls fail ENOSYS)
    /// and the watcher of the cgroup limits.
    var supervisor: SeccompSupervisor?
    var resources: ResourceWatcher?
    /// What the sandbox did since it started or since its last baseline.
    let behaviour = BehaviourRecorder()
    /// The behavioural analyzer (nil when behavioral_analysis is off), the
    /// file its learned profile is saved to, and the syscalls the event
    /// pipeline gathers for it during one batch.
    var analyzer: BehavioralAnalyzer?
    var profileTarget: ProfileTarget?
    /// Copies the agent's stdout and stderr into output.log under the quota (nil for an older sandbox).
    var output: OutputCopier?
    var pendingRecords: [SyscallRecord] = []
    private let responded = NSLock()
    private var hasResponded = false

    /// True the first time: a sandbox is frozen or ended once per violation burst.
    func respondOnce() -> Bool {
        responded.withLock {
            defer { hasResponded = true }
            return !hasResponded
        }
    }

    func resetResponse() { responded.withLock { hasResponded = false } }

    init(record: SandboxRecord, policy: SandboxPolicy, cgroup: SandboxCgroup, initProcess: SandboxedProcess,
         limits: AppliedLimits) {
        self.record = record
        self.policy = policy
        self.cgroup = cgroup
        self.initProcess = initProcess
        self.limits = limits
        self.encoder = OCSFEncoder(sandboxID: record.sandboxID, agentID: record.agentID, clock: WallClock())
    }
}

/// What `sandbox create` needs, already validated by the caller's parsing.
public struct CreateRequest: Sendable {
    public var agentID: String
    public var policy: SandboxPolicy
    public var limits: ResourceLimits
    public var command: [String]
    /// The client's directory: the agent's working directory only with
    /// `shareWorkingDirectory`; otherwise the agent works in its private,
    /// size-capped workspace.
    public var workingDirectory: String
    public var shareWorkingDirectory = false
    public var environment: [String]
    /// A behaviour profile to start from and where to save the learned one.
    public var profile: ProfileChoice?
    /// Container level: the image (a root filesystem, an OCI image layout or a
    /// tar of one) and the manifest digest it must have (else the allow-list).
    public var image: String?
    public var imageDigest: ImageDigest?
    /// Who asked (the socket peer), for the audit log.
    public var requester = Requester.service

    public init(agentID: String, policy: SandboxPolicy, limits: ResourceLimits, command: [String],
                workingDirectory: String, environment: [String]) {
        self.agentID = agentID
        self.policy = policy
        self.limits = limits
        self.command = command
        self.workingDirectory = workingDirectory
        self.environment = environment
    }
}

/// A step of creation, timed, with the kernel's answer (for `debug-create`).
public struct CreationStep: Codable, Sendable {
    public var step: String
    public var microseconds: Int
    public var result: String
}

/// The service's sandboxes: creation, commands inside them, termination,
/// adoption after a restart, and the event pipeline into the store.
public final class SandboxManager: @unchecked Sendable {
    // @unchecked: `live` is guarded by `lock`; everything else is immutable.
    let configuration: ServiceSettings
    let store: EventStore
    let monitor: TelemetryMonitor
    let network: NetworkEnforcer
    /// The sandboxes with a filesystem baseline, validated every check_interval.
    let integrityWatch = IntegrityWatch()
    /// Escape indicators of one sandbox close in time: one escape finding.
    let correlator = EscapeCorrelator()
    /// From behavioral_analysis in the configuration (set before the first sandbox).
    var behaviourSettings = BehaviourSettings()
    /// integrity_monitoring.anomaly_threshold: how far (Jensen-Shannon) a
    /// sandbox's syscall mix may move from its baseline's. Set by the daemon.
    var anomalyThreshold = 0.8
    /// The BPF-LSM programs, where the kernel allows them (set by the daemon at start; nil when refused).
    var lsm: LSMEnforcer?
    /// The cgroup device filter (set by the daemon at start, pinned with the network programs' links).
    var devices: DeviceFilter?
    let layout: CgroupLayout
    let log: Logger
    private let lock = NSLock()
    /// By agent id: reserved while its sandbox is created (a second create of
    /// the id fails at once), live once it runs.
    private var agents: [String: Registration] = [:]
    private enum Registration {
        case reserved
        case live(LiveSandbox)

        var sandbox: LiveSandbox? { if case .live(let sandbox) = self { sandbox } else { nil } }
    }
    private var byCgroup: [UInt64: LiveSandbox] = [:]
    /// Cgroups watched by the BPF programs whose sandbox is not registered yet.
    private var creating: Set<UInt64> = []

    func isCreating(cgroupID: UInt64) -> Bool { lock.withLock { creating.contains(cgroupID) } }

    public init(configuration: ServiceSettings, store: EventStore, monitor: TelemetryMonitor,
                network: NetworkEnforcer, layout: CgroupLayout, log: Logger) throws {
        self.configuration = configuration
        self.store = store
        self.monitor = monitor
        self.network = network
        self.layout = layout
        self.log = log
    }

    /// The filter of a sandbox: its policy's seccomp profile when it names one,
    /// else its syscall allow-list with everything else EPERM. A bad profile is
    /// a policy error (exit 68) naming what is wrong.
    static func seccompProgram(for policy: SandboxPolicy) throws -> SeccompProgram {
        do {
            return try SeccompCompiler.compile(try SeccompProfile.effective(for: policy, supervised: userNotifyWorks))
        } catch let error as PolicyError {
            throw ServiceFailure(Alcub3Exit.invalidPolicy, error.description)
        }
    }

    /// BPF-LSM, probed once (refused on hosts in lockdown).
    static let bpfLSM = KernelProbe.bpfLSM()

    /// What holds the sandbox, for `create --verbose` and `debug-create`:
    /// each mechanism, and what stands in for one the kernel refuses.
    func enforcementSummary(spec: ProcessSpec, process: SandboxedProcess) -> [(String, String)] {
        let seccomp = spec.seccomp.map { program in
            "\(program.profile.rules.count) rules, default \(program.profile.defaultAction.ociName)"
                + (program.logDenials ? " (logged)" : "")
                + (program.usesNotify ? ", escape syscalls to the supervisor" : ", no supervisor (user-notify unavailable)")
        } ?? "none"
        let lsm = self.lsm != nil
            ? "loaded: mounts, module and kernel file loading, bpf(), fileless exec, the metadata address, ptrace and signals across the boundary refused in the kernel"
            : Self.bpfLSM.available ? "available but not loaded (see the service's log)"
            : "refused (\(Self.bpfLSM.errno ?? Self.bpfLSM.detail)): \(Self.bpfLSM.fallback ?? "")"
        return [
            ("enforcement: seccomp", seccomp),
            ("enforcement: Landlock", process.landlockABI.map { "ABI \($0): filesystem, TCP ports, scopes" } ?? "not applied (kernel without Landlock, or off)"),
            ("enforcement: capabilities", spec.keepCapabilities.isEmpty ? "all dropped; uid 0 without privilege" : "kept \(spec.keepCapabilities)"),
            ("enforcement: BPF-LSM", lsm),
        ]
    }

    private func report(_ lines: [(String, String)], to steps: ((CreationStep) -> Void)?) {
        for (name, result) in lines { steps?(CreationStep(step: name, microseconds: 0, result: result)) }
    }

    /// Seccomp user-notify, probed once: without it escape syscalls get plain EPERM, unreported.
    static let userNotifyWorks = KernelProbe.seccompUserNotify().available

    /// A finding about a live sandbox: stored as an alert (OCSF Detection
    /// Finding) and as an event, so `events tail` shows it in place.
    func raise(_ finding: EscapeFinding, in sandbox: LiveSandbox, processes: ProcessTable) {
        store(finding, in: sandbox, processes: processes)
        respond(to: finding, in: sandbox)
        if let escape = correlator.add(finding) {
            store(escape, in: sandbox, processes: processes)
            respond(to: escape, in: sandbox)
        }
    }

    private func store(_ finding: EscapeFinding, in sandbox: LiveSandbox, processes: ProcessTable) {
        let object = finding.ocsf(encoder: sandbox.encoder, processes: processes)
        let json = OCSFEncoder.jsonLine(object)
        let time = sandbox.encoder.clock.unixNanos(boot: finding.observedNanos)
        do {
            _ = try store.appendAlert(AlertRecord(timeNs: time, sandboxID: sandbox.record.sandboxID, agentID: sandbox.record.agentID,
                                                  severityID: finding.severity.rawValue,
                                                  technique: finding.indicators.isEmpty ? finding.technique.id : "escape", json: json))
            try store.appendEvents([StoredEvent(timeNs: time, sandboxID: sandbox.record.sandboxID, agentID: sandbox.record.agentID,
                                                kind: "alert", classUID: 2004, json: json)])
        } catch {
            log.error("could not store a finding (\(finding.technique.id)) of \(sandbox.record.sandboxID): \(error)")
        }
        log.warning(finding.indicators.isEmpty ? "escape attempt" : "escape: correlated attempts",
                    metadata: ["sandbox": "\(sandbox.record.sandboxID)", "technique": "\(finding.technique.id)",
                               "evidence": "\(finding.evidence)", "confidence": "\(finding.confidence)"])
    }

    /// The policy's `on_violation` beyond the alert: kill the process, end or
    /// freeze the sandbox (once). Each response is audited and stored as an event.
    private func respond(to finding: EscapeFinding, in sandbox: LiveSandbox) {
        let response = sandbox.policy.onViolation
        switch response {
        case .alert:
            return
        case .deny:
            guard SandboxResponse.killProcess(finding.pid, in: sandbox.cgroup) else { return }
        case .kill, .freeze:
            guard sandbox.respondOnce() else { return }
            if response == .freeze {
                do {
                    try SandboxResponse.setFrozen(true, sandbox.cgroup)
                } catch {
                    log.error("could not freeze \(sandbox.record.sandboxID): \(error)")
                    return
                }
            } else {
                DispatchQueue.global().async { [self] in
                    _ = try? finish(sandbox, reason: "killed by its policy after \(finding.technique.id)")
                }
            }
        }
        let what = SandboxResponse.describe(response, finding)
        try? store.appendAudit(.service, action: "response.\(response.rawValue)", subject: sandbox.record.sandboxID,
                               details: ServiceJSON.encode(["technique": finding.technique.id, "evidence": finding.evidence,
                                                            "action": what]))
        let now = WallClock.nowUnixNanos()
        let json = OCSFEncoder.jsonLine(["record": "response", "sandbox_id": sandbox.record.sandboxID,
                                         "agent_id": sandbox.record.agentID, "time_dt": WallClock.iso8601(unixNanos: now),
                                         "response": response.rawValue, "technique": finding.technique.id, "action": what])
        try? store.appendEvents([StoredEvent(timeNs: now, sandboxID: sandbox.record.sandboxID, agentID: sandbox.record.agentID,
                                             kind: "alcub3", json: json)])
        log.warning("response to a violation", metadata: ["sandbox": "\(sandbox.record.sandboxID)", "action": "\(what)"])
    }

    /// `sandbox policy set`: new allowed destinations and ports for a running
    /// sandbox, in force from its next connect or send (cgroup BPF map
    /// updates; nothing restarts). Everything is checked before anything
    /// changes, so a bad value leaves the running policy as it was. The stored
    /// policy (export, restart) follows; the change is audited.
    public func setNetwork(agentID: String, destinations: [String], ports: [Int], requester: Requester) throws -> SandboxRecord {
        guard let sandbox = sandbox(agentID: agentID) else {
            throw ServiceFailure(Alcub3Exit.notFound, "no running sandbox has agent id '\(agentID)'")
        }
        let cidrs: [CIDR], allowedPorts: [UInt16]
        do {
            cidrs = try destinations.map { try CIDR($0) }
            allowedPorts = try PolicyValue.ports(ports.map { try PolicyValue.port($0) })
        } catch let error as PolicyError {
            throw ServiceFailure(Alcub3Exit.invalidPolicy, error.description)
        }
        guard !cidrs.isEmpty else {
            throw ServiceFailure(Alcub3Exit.usage, "give at least one --allowed-destination (a network such as 10.1.0.0/16)")
        }
        guard var policy = try? JSONDecoder().decode(SandboxPolicy.self, from: Data(try currentRecord(sandbox).policyJSON.utf8)) else {
            throw ServiceFailure(Alcub3Exit.internalError, "the stored policy of \(sandbox.record.sandboxID) cannot be read")
        }
        guard policy.allowsNetwork else {
            throw ServiceFailure(Alcub3Exit.notAllowed, "sandbox of agent '\(agentID)' runs in its own network namespace "
                                 + "(network_access \(policy.networkAccess)): it has no route out to allow; create it with "
                                 + "classified_network destinations instead")
        }
        let network = NetworkPolicy.listed(cidrs: cidrs, ports: allowedPorts)
        do {
            try self.network.apply(network, to: sandbox.cgroup)
        } catch {
            throw ServiceFailure(Alcub3Exit.kernelRefused, "could not update the network policy of \(sandbox.record.sandboxID): \(error)")
        }
        policy.network = network
        policy.networkAccess = ["classified_network"]
        var record = try currentRecord(sandbox)
        record.policyJSON = ServiceJSON.encode(policy)
        try store.upsertSandbox(record)
        try? store.appendAudit(requester, action: "policy.set", subject: record.sandboxID,
                               details: ServiceJSON.encode(["agent_id": agentID, "allowed_destinations": cidrs.map(\.description).joined(separator: ","),
                                                            "allowed_ports": allowedPorts.map(String.init).joined(separator: ",")]))
        return record
    }

    private func currentRecord(_ sandbox: LiveSandbox) throws -> SandboxRecord {
        try store.sandbox(agentID: sandbox.record.agentID) ?? sandbox.record
    }

    /// `sandbox thaw`: a frozen sandbox runs again (audited).
    public func thaw(agentID: String, requester: Requester) throws -> SandboxRecord {
        guard let sandbox = sandbox(agentID: agentID) else {
            throw ServiceFailure(Alcub3Exit.notFound, "no running sandbox has agent id '\(agentID)'")
        }
        guard SandboxResponse.isFrozen(sandbox.cgroup) else {
            throw ServiceFailure(Alcub3Exit.usage, "sandbox of agent '\(agentID)' is not frozen")
        }
        do {
            try SandboxResponse.setFrozen(false, sandbox.cgroup)
        } catch {
            throw ServiceFailure(Alcub3Exit.kernelRefused, "could not thaw \(sandbox.record.sandboxID): \(error)")
        }
        sandbox.resetResponse()
        try? store.appendAudit(requester, action: "sandbox.thaw", subject: sandbox.record.sandboxID,
                               details: ServiceJSON.encode(["agent_id": agentID]))
        return sandbox.record
    }

    /// Starts the seccomp supervisor (if the filter has a listener) and the limits watcher.
    func startWatchers(_ sandbox: LiveSandbox) {
        if let listener = sandbox.initProcess.takeSeccompListener() {
            do {
                let supervisor = try SeccompSupervisor(listener: listener, label: sandbox.record.sandboxID) { [weak self, weak sandbox] notice in
                    guard let self, let sandbox else { return }
                    self.raise(EscapeDetector.finding(for: notice, sandboxCgroupID: sandbox.cgroup.id), in: sandbox, processes: ProcessTable())
                }
                supervisor.start()
                sandbox.supervisor = supervisor
            } catch {
                log.error("no seccomp supervisor for \(sandbox.record.sandboxID): \(error); its escape syscalls fail with ENOSYS, unreported")
            }
        }
        let limits = ResourceLimits(cpuCores: sandbox.policy.cpuLimit, memoryBytes: sandbox.policy.memoryLimitBytes,
                                    pids: sandbox.policy.pidsLimit)
        let root = "/proc/\(sandbox.initProcess.pid)/root"
        let capped = sandbox.policy.filesystem.readOnlySystem ? [root + "/tmp", root + sandbox.policy.filesystem.workspace] : []
        let resources = ResourceWatcher(cgroup: sandbox.cgroup, applied: sandbox.limits, limits: limits, capped: capped) { [weak self, weak sandbox] finding in
            guard let self, let sandbox else { return }
            self.raise(finding, in: sandbox, processes: ProcessTable())
        }
        resources.start()
        sandbox.resources = resources
        let output = OutputCopier(directory: configuration.sandboxDirectory(sandbox.record.sandboxID),
                                  quota: configuration.outputLimitBytes) { [weak self, weak sandbox] evidence in
            guard let self, let sandbox else { return }
            self.raise(EscapeFinding(technique: EscapeTechnique.named("disk-filler")!, sandboxCgroupID: sandbox.cgroup.id, pid: 0,
                                     evidence: evidence, refusedBy: "output quota (service.output_limit)", observedNanos: bootClockNanos()),
                       in: sandbox, processes: ProcessTable())
        }
        output?.start()
        sandbox.output = output
    }

    var liveSandboxes: [LiveSandbox] { lock.withLock { agents.values.compactMap(\.sandbox) } }

    func sandbox(agentID: String) -> LiveSandbox? { lock.withLock { agents[agentID]?.sandbox } }
    func sandbox(cgroupID: UInt64) -> LiveSandbox? { lock.withLock { byCgroup[cgroupID] } }

    // MARK: create

    /// Creates and starts a sandbox. Every step is undone when a later one fails.
    public func create(_ request: CreateRequest, steps: ((CreationStep) -> Void)? = nil) throws -> SandboxRecord {
        let sandboxID = "sb-" + (0..<6).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        var undo: [() -> Void] = []
        func step<T>(_ name: String, _ body: () throws -> T) throws -> T {
            let start = DispatchTime.now().uptimeNanoseconds
            do {
                let value = try body()
                steps?(CreationStep(step: name, microseconds: Int((DispatchTime.now().uptimeNanoseconds - start) / 1000), result: "ok"))
                return value
            } catch {
                steps?(CreationStep(step: name, microseconds: Int((DispatchTime.now().uptimeNanoseconds - start) / 1000), result: "\(error)"))
                throw error
            }
        }
        do {
            // The agent id is reserved first: a concurrent create of it fails here, before any slow work.
            try lock.withLock {
                if agents[request.agentID] != nil {
                    throw ServiceFailure(Alcub3Exit.agentInUse, "agent id '\(request.agentID)' is already in use by a running sandbox")
                }
                agents[request.agentID] = .reserved
            }
            undo.append { [self] in lock.withLock { _ = agents.removeValue(forKey: request.agentID) } }  // undone last
            if let existing = try store.sandbox(agentID: request.agentID), existing.state.isActive {
                throw ServiceFailure(Alcub3Exit.agentInUse, "agent id '\(request.agentID)' is already in use by sandbox \(existing.sandboxID)")
            }
            let hidden = hiddenPaths() + request.policy.filesystem.hiddenPaths
            // A container's command is looked up in its image, once unpacked.
            let executable: String? = request.image != nil || request.policy.isolation.isVirtualMachine ? nil : try request.command.first.map { program in
                try step("resolve command \(program)") { try Self.resolve(program, hidden: hidden) }
            }
            let directory = configuration.sandboxDirectory(sandboxID)
            try step("make state directory \(directory)") {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                        attributes: [.posixPermissions: 0o700])
            }
            undo.append { try? FileManager.default.removeItem(atPath: directory) }
            let cgroup = try step("mkdir cgroup \(layout.alcub3Root)/\(sandboxID)") { try SandboxCgroup(layout: layout, name: sandboxID) }
            undo.append { try? cgroup.destroy() }
            let limits = try step("apply limits cpu \(request.limits.cpuCores) memory \(request.limits.memoryBytes) pids \(request.limits.pids)") {
                try cgroup.apply(request.limits)
            }
            undo.append { SandboxCgroup.removeV1(limits) }
            if let rules = NetworkEnforcer.rules(for: request.policy.network) {
                try step("attach cgroup/connect4,6 and sendmsg4,6 with \(rules.networks.count) networks, \(rules.ports.isEmpty ? "every port" : "\(rules.ports.count) ports")") {
                    try network.apply(request.policy.network, to: cgroup)
                }
                undo.append { [network] in network.remove(cgroup) }
            }
            if let devices {
                try step("attach cgroup/dev: only null, zero, full, random, urandom, tty, ptmx, pts") {
                    try devices.apply(to: cgroup, allowKVM: request.policy.isolation.isVirtualMachine)
                }
                undo.append { devices.remove(cgroup) }
            }
            // Its records are held by the pipeline until the sandbox is registered below.
            lock.withLock { _ = creating.insert(cgroup.id) }
            undo.append { [self] in lock.withLock { _ = creating.remove(cgroup.id) }; monitor.hub.wake() }
            // A container's cgroup is watched once runc has set it up (startContainer).
            if request.image == nil {
                try step("watch cgroup id \(cgroup.id) in the BPF sandboxes map") {
                    try monitor.watch(sandboxCgroupID: cgroup.id, options: .init(syscalls: request.policy.traceSyscalls))
                }
                undo.append { [monitor] in monitor.unwatch(sandboxCgroupID: cgroup.id) }
            }

            // The agent works in its private workspace unless the client shares its directory.
            let workingDirectory = request.shareWorkingDirectory || !request.policy.filesystem.readOnlySystem
                ? request.workingDirectory : request.policy.filesystem.workspace
            // stdout and stderr: a FIFO the service copies into output.log under a quota (OutputCopier).
            let outputFD = try OutputCopier.agentEnd(directory: directory)
            let devNull = try OwnedDescriptor(path: "/dev/null", flags: O_RDONLY)
            var spec = ProcessSpec(
                executable: executable, arguments: request.command, environment: request.environment,
                workingDirectory: workingDirectory, hostname: sandboxID,
                namespaces: NamespaceSet.forPolicy(request.policy),
                // Only the process level installs it (runc installs a container's; QEMU has -sandbox on).
                seccomp: request.image != nil || request.policy.isolation.isVirtualMachine ? nil
                    : try step("compile the seccomp filter from the policy's allow-list") { try SandboxManager.seccompProgram(for: request.policy) },
                dieWithParent: false)
            spec.hiddenPaths = hidden
            // The read-only system view: only the working directory (the agent's workspace) and a private /tmp are writable.
            spec.readOnlyRoot = request.policy.filesystem.readOnlySystem
            spec.writablePaths = request.shareWorkingDirectory ? [request.workingDirectory].filter { $0 != "/" } : []
            if request.policy.filesystem.readOnlySystem {
                spec.workspace = (request.policy.filesystem.workspace, request.policy.filesystem.workspaceBytes)
            }
            spec.v1ProcsFiles = limits.v1ProcsFiles
            if request.image == nil && !request.policy.isolation.isVirtualMachine {
                // A private /dev, W^X, and the agent never host root (ProcessSpec.harden).
                let warning = try step("make the sandbox's user namespace") { try spec.harden(for: request.policy) }
                if let warning { log.warning("\(warning)", metadata: ["sandbox": "\(sandboxID)"]) }
            }
            spec.statusFile = directory + "/exit_status"
            spec.stdio = (devNull.raw, outputFD.raw, outputFD.raw)
            let initProcess = try request.image.map { image in
                try startContainer(request, image: image, sandboxID: sandboxID, cgroup: cgroup,
                                   stdio: (devNull.raw, outputFD.raw, outputFD.raw), steps: steps, undo: &undo)
            } ?? (request.policy.isolation.isVirtualMachine  // QEMU in the cgroup, the command in its guest (SandboxManager+VM.swift)
                ? startVM(request, sandboxID: sandboxID, cgroup: cgroup, v1ProcsFiles: limits.v1ProcsFiles, output: outputFD.raw,
                          statusFile: directory + "/exit_status", steps: steps, undo: &undo)
                : step("clone3 into the cgroup with namespaces \(spec.namespaces.names.joined(separator: ","))") {
                    try SandboxedProcess(spec: spec, cgroup: cgroup)
                })
            let record = SandboxRecord(
                sandboxID: sandboxID, agentID: request.agentID, classification: request.policy.classification.rawValue,
                isolation: request.policy.isolation.rawValue, state: .running,
                policyJSON: ServiceJSON.encode(request.policy), commandJSON: ServiceJSON.encode(request.command),
                cgroupPath: cgroup.path, cgroupID: cgroup.id, initPID: initProcess.pid,
                createdNs: WallClock.nowUnixNanos(),
                detailsJSON: ServiceJSON.encode(SandboxDetails(limits: request.limits, applied: limits, workingDirectory: workingDirectory)))
            // The init has made its mounts: from here the LSM programs hold the sandbox too.
            if let lsm {
                try step("confine cgroup id \(cgroup.id) in the BPF-LSM programs") { try lsm.confine(sandboxCgroupID: cgroup.id) }
                undo.append { lsm.release(sandboxCgroupID: cgroup.id) }
            }
            if request.image == nil && !request.policy.isolation.isVirtualMachine { report(enforcementSummary(spec: spec, process: initProcess), to: steps) }
            try step("record the sandbox in the store") { try store.upsertSandbox(record) }
            let sandbox = LiveSandbox(record: record, policy: request.policy, cgroup: cgroup, initProcess: initProcess, limits: limits)
            sandbox.analyzer = makeAnalyzer(agentID: request.agentID,
                                            workspace: request.shareWorkingDirectory ? request.workingDirectory : request.policy.filesystem.workspace,
                                            profile: request.profile)
            sandbox.profileTarget = request.profile?.loaded == nil ? request.profile?.target : nil
            lock.withLock {
                agents[request.agentID] = .live(sandbox)
                byCgroup[cgroup.id] = sandbox
                creating.remove(cgroup.id)
            }
            monitor.hub.wake()  // the pipeline stores what it held for this sandbox now
            try? store.appendAudit(request.requester, action: "sandbox.create", subject: sandboxID,
                                   details: ServiceJSON.encode(Self.auditDetails(request, classification: record.classification)))
            startWatchers(sandbox)
            watchForExit(sandbox)
            log.info("created sandbox", metadata: ["sandbox": "\(sandboxID)", "agent": "\(request.agentID)", "pid": "\(initProcess.pid)"])
            return record
        } catch {
            for action in undo.reversed() { action() }
            // Refused creates are audited too: who tried what is the point.
            var details = Self.auditDetails(request, classification: request.policy.classification.rawValue)
            details["refused"] = "\(error)"
            try? store.appendAudit(request.requester, action: "sandbox.create_refused", subject: sandboxID,
                                   details: ServiceJSON.encode(details))
            throw error
        }
    }

    /// What an audit record of a create says besides who asked: what, and with which of the client's paths.
    private static func auditDetails(_ request: CreateRequest, classification: String) -> [String: String] {
        ["agent_id": request.agentID, "classification": classification, "isolation": request.policy.isolation.rawValue,
         "command": request.command.joined(separator: " "),
         "shared_directory": request.shareWorkingDirectory ? request.workingDirectory : "", "image": request.image ?? ""]
    }

    /// The program a command names, as the sandbox will see it; each refusal is one clear line.
    static func resolve(_ program: String, hidden: [String]) throws -> String {
        do {
            return try CommandResolver.resolve(program, hiddenPaths: hidden)
        } catch SandboxError.commandNotExecutable {
            throw ServiceFailure(Alcub3Exit.commandNotExecutable, "command is not executable: \(program)")
        } catch let error as SandboxError {
            if case .commandHidden = error { throw ServiceFailure(Alcub3Exit.commandNotFound, error.description) }
            throw ServiceFailure(Alcub3Exit.commandNotFound, "command not found: \(program)")
        }
    }

    /// The service's own files are invisible inside every sandbox.
    func hiddenPaths() -> [String] { configuration.hiddenPaths }

    // MARK: exec

    /// Runs a command inside a running sandbox; its output goes to `output` as it comes.
    public func exec(agentID: String, command: [String], workingDirectory: String?, environment: [String],
                     requester: Requester, output: (String, [UInt8]) -> Bool) throws -> Int32 {
        guard let sandbox = sandbox(agentID: agentID) else {
            throw ServiceFailure(Alcub3Exit.notFound, "no running sandbox has agent id '\(agentID)'")
        }
        guard let program = command.first else { throw ServiceFailure(Alcub3Exit.usage, "no command given") }
        // Recorded before it runs: a command that never ends is in the log too. Variable names only: values may be secrets.
        try? store.appendAudit(requester, action: "sandbox.exec", subject: sandbox.record.sandboxID,
                               details: ServiceJSON.encode(["agent_id": agentID, "command": command.joined(separator: " "),
                                                            "working_directory": workingDirectory ?? "",
                                                            "environment": environment.map { String($0.prefix { $0 != "=" }) }
                                                                .joined(separator: ",")]))
        // In a vm the command runs in the guest, beside the agent's (joining namespaces would put it beside QEMU).
        if Self.isVM(sandbox.record) { return try execInGuest(sandbox, command: command, environment: environment, output: output) }
        // In a container: the program, environment, namespaces and cgroups are the container's.
        let container = Self.isContainer(sandbox.record) ? try containerExecTarget(sandbox, program: program) : nil
        let executable = try container?.executable ?? Self.resolve(program, hidden: hiddenPaths() + sandbox.policy.filesystem.hiddenPaths)
        let (outRead, outWrite) = try Self.pipe()
        let (errRead, errWrite) = try Self.pipe()
        let devNull = try OwnedDescriptor(path: "/dev/null", flags: O_RDONLY)
        var spec = ProcessSpec(
            executable: executable, arguments: command, environment: container?.environment ?? environment,
            workingDirectory: workingDirectory ?? Self.details(of: sandbox)?.workingDirectory ?? "/", hostname: sandbox.record.sandboxID,
            namespaces: container?.namespaces ?? NamespaceSet.forPolicy(sandbox.policy), seccomp: try Self.seccompProgram(for: sandbox.policy),
            dieWithParent: false)
        spec.v1ProcsFiles = container?.v1ProcsFiles ?? sandbox.limits.v1ProcsFiles
        spec.stdio = (devNull.raw, outWrite, errWrite)
        // The sandbox's filesystem confinement (Landlock), also for an adopted sandbox whose init's spec is not known here.
        spec.readOnlyRoot = sandbox.policy.filesystem.readOnlySystem
        spec.writablePaths = [Self.details(of: sandbox)?.workingDirectory].compactMap { $0 }.filter { $0 != "/" }
        spec.denyWriteExecute = !sandbox.policy.capabilities.contains(.jit)
        let process: SandboxedProcess
        do {
            defer { close(outWrite); close(errWrite) }  // the child has its copies; ours would hold off EOF
            process = try SandboxedProcess(spec: spec, cgroup: container?.cgroup ?? sandbox.cgroup, joining: sandbox.initProcess)
        } catch SandboxError.commandNotFound(let c) {
            throw ServiceFailure(Alcub3Exit.commandNotFound, "command not found in the sandbox: \(c)")
        }
        // The command has its own filter and listener: a supervisor of its own,
        // which ends (closing the listener) when the command's processes do.
        if let listener = process.takeSeccompListener() {
            let supervisor = try? SeccompSupervisor(listener: listener, label: sandbox.record.sandboxID + "-exec") { [weak self, weak sandbox] notice in
                guard let self, let sandbox else { return }
                self.raise(EscapeDetector.finding(for: notice, sandboxCgroupID: sandbox.cgroup.id), in: sandbox, processes: ProcessTable())
            }
            supervisor?.start()
        }
        Self.pump([(outRead, "stdout"), (errRead, "stderr")], output: output)
        return process.wait().shellCode
    }

    static func details(of sandbox: LiveSandbox) -> SandboxDetails? {
        try? JSONDecoder().decode(SandboxDetails.self, from: Data((sandbox.record.detailsJSON ?? "").utf8))
    }

    /// A pipe: the read end owned, the write end raw (closed by the caller after the spawn).
    static func pipe() throws -> (OwnedDescriptor, Int32) {
        var fds: [Int32] = [-1, -1]
        try syscallChecked("pipe") { Glibc.pipe(&fds) }
        _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)  // pipe2 is not exported to Swift's Glibc module
        _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        return (OwnedDescriptor(fds[0]), fds[1])
    }

    /// Copies both pipes to `output` until both reach EOF.
    static func pump(_ readers: [(OwnedDescriptor, String)], output: (String, [UInt8]) -> Bool) {
        var open = readers
        var buffer = [UInt8](repeating: 0, count: 65536)
        while !open.isEmpty {
            var fds = open.map { pollfd(fd: $0.0.raw, events: Int16(POLLIN), revents: 0) }
            if poll(&fds, nfds_t(fds.count), -1) < 0 {
                if errno == EINTR { continue }
                return
            }
            var stillOpen: [(OwnedDescriptor, String)] = []
            for (i, reader) in open.enumerated() {
                if fds[i].revents == 0 { stillOpen.append(reader); continue }
                let n = buffer.withUnsafeMutableBytes { read(reader.0.raw, $0.baseAddress, $0.count) }
                if n > 0 {
                    _ = output(reader.1, Array(buffer[0..<n]))
                    stillOpen.append(reader)
                } else if n < 0 && errno == EINTR {
                    stillOpen.append(reader)
                }
            }
            open = stillOpen
        }
    }

    // MARK: terminate

    /// SIGTERM to every process, SIGKILL after the grace period (at once with
    /// force), then everything the sandbox had is removed.
    public func terminate(agentID: String, grace: Double, force: Bool, requester: Requester) throws -> SandboxRecord {
        guard let sandbox = sandbox(agentID: agentID) else {
            if let record = try store.sandbox(agentID: agentID), !record.state.isActive {
                throw ServiceFailure(Alcub3Exit.notFound, "sandbox of agent '\(agentID)' has already stopped (\(record.sandboxID))")
            }
            throw ServiceFailure(Alcub3Exit.notFound, "no running sandbox has agent id '\(agentID)'")
        }
        try? store.appendAudit(requester, action: "sandbox.terminate", subject: sandbox.record.sandboxID,
                               details: ServiceJSON.encode(["agent_id": agentID, "force": String(force), "grace_seconds": String(grace)]))
        // A frozen sandbox cannot act on SIGTERM: it is ended at once (cgroup.kill reaches frozen tasks).
        if !force && !SandboxResponse.isFrozen(sandbox.cgroup) {
            for pid in sandbox.cgroup.processes() { kill(pid, SIGTERM) }
            let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(grace * 1e9)
            while sandbox.initProcess.isRunning && DispatchTime.now().uptimeNanoseconds < deadline {
                if sandbox.cgroup.processes().allSatisfy({ $0 == sandbox.initProcess.pid }) { break }
                usleep(20_000)
            }
        }
        return try finish(sandbox, reason: force ? "terminated (force)" : "terminated")
    }

    /// Kills what is left, removes the kernel objects, records the end.
    @discardableResult
    func finish(_ sandbox: LiveSandbox, reason: String) throws -> SandboxRecord {
        let removed = lock.withLock { () -> Bool in
            guard agents[sandbox.record.agentID]?.sandbox === sandbox else { return false }
            agents[sandbox.record.agentID] = nil
            byCgroup[sandbox.record.cgroupID ?? 0] = nil
            return true
        }
        guard removed else { return try store.sandbox(agentID: sandbox.record.agentID) ?? sandbox.record }
        sandbox.resources?.stop()
        integrityWatch.unwatch(cgroupID: sandbox.cgroup.id)
        correlator.forget(sandboxCgroupID: sandbox.cgroup.id)
        lsm?.release(sandboxCgroupID: sandbox.cgroup.id)
        try? sandbox.cgroup.destroy()
        if Self.isContainer(sandbox.record) { finishContainer(sandbox) }
        if Self.isVM(sandbox.record) { finishVM(sandbox) }
        sandbox.output?.stop()  // after the cgroup and the guest: their last output is kept
        sandbox.supervisor?.stop()
        SandboxCgroup.removeV1(sandbox.limits)
        network.remove(sandbox.cgroup)
        devices?.remove(sandbox.cgroup)
        monitor.unwatch(sandboxCgroupID: sandbox.cgroup.id)
        var record = sandbox.record
        record.state = .stopped
        record.endedNs = WallClock.nowUnixNanos()
        let statusFile = configuration.sandboxDirectory(record.sandboxID) + "/exit_status"
        record.exitCode = (try? FileIO.read(statusFile)).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        try store.upsertSandbox(record)
        try? store.appendAudit(.service, action: "sandbox.stop", subject: record.sandboxID,
                               details: ServiceJSON.encode(["reason": reason, "exit_code": record.exitCode.map(String.init) ?? "none"]))
        log.info("sandbox ended", metadata: ["sandbox": "\(record.sandboxID)", "reason": "\(reason)"])
        return record
    }

    /// Reaps an init that has exited, through its pidfd (P_PIDFD): never
    /// another child that reused the pid. ECHILD for an adopted init (not our
    /// child) or a container's init finishContainer already reaped.
    private static func reap(_ process: SandboxedProcess) {
        var info = siginfo_t()
        while waitid(idtype_t(rawValue: 3) /* P_PIDFD */, id_t(process.descriptor), &info, WEXITED) < 0 && errno == EINTR {}
    }

    /// A sandbox whose init ends on its own (its command finished) is finished
    /// too. This thread is the one place an init is reaped, whether the sandbox
    /// ended by itself or by terminate (whose finish may see the init still dying).
    func watchForExit(_ sandbox: LiveSandbox) {
        Thread.detachNewThread { [self] in
            var p = pollfd(fd: sandbox.initProcess.descriptor, events: Int16(POLLIN), revents: 0)
            while poll(&p, 1, -1) < 0 && errno == EINTR {}
            _ = try? finish(sandbox, reason: "its init exited")
            Self.reap(sandbox.initProcess)
        }
    }

    // MARK: adoption after a restart

    /// Takes back the sandboxes the store says are running. One whose init is
    /// gone is closed with its recorded exit status; each adopted one gets a
    /// `monitoring_gap` record with the kernel's counters.
    public func adoptRunningSandboxes(serviceStartNs: Int64) throws -> [String] {
        var adopted: [String] = []
        let counters = monitor.counters()
        for record in try store.sandboxes(states: [.running, .creating]) {
            guard let pid = record.initPID, let cgroupID = record.cgroupID,
                  let policy = try? JSONDecoder().decode(SandboxPolicy.self, from: Data(record.policyJSON.utf8)),
                  let cgroup = try? SandboxCgroup(existing: record.sandboxID, layout: layout), cgroup.id == cgroupID,
                  cgroup.processes().contains(pid), let initProcess = try? SandboxedProcess(adopting: pid) else {
                var ended = record
                ended.state = .stopped
                ended.endedNs = WallClock.nowUnixNanos()
                ended.exitCode = (try? FileIO.read(configuration.sandboxDirectory(record.sandboxID) + "/exit_status"))
                    .flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
                try store.upsertSandbox(ended)
                if let cgroup = try? SandboxCgroup(existing: record.sandboxID, layout: layout) { try? cgroup.destroy(); devices?.remove(cgroup) }
                if Self.isContainer(record) { ContainerSandbox.remove(sandboxID: record.sandboxID, layout: layout) }
                if Self.isVM(record) { VMSandbox.remove(sandboxID: record.sandboxID) }
                continue
            }
            let details = try? JSONDecoder().decode(SandboxDetails.self, from: Data((record.detailsJSON ?? "").utf8))
            let sandbox = LiveSandbox(record: record, policy: policy, cgroup: cgroup, initProcess: initProcess,
                                      limits: details?.applied ?? AppliedLimits())
            try monitor.watch(sandboxCgroupID: cgroupID, options: .init(syscalls: policy.traceSyscalls))
            lock.withLock {
                agents[record.agentID] = .live(sandbox)
                byCgroup[cgroupID] = sandbox
            }
            startWatchers(sandbox)  // limits only: the seccomp listener ended with the old service
            if Self.isVM(record) {
                // The guest's channel is taken over; a guest that cannot be reached is ended (watchForExit finishes it).
                do { try adoptVM(sandbox) } catch {
                    log.warning("vm sandbox \(record.sandboxID) of \(record.agentID) cannot be taken over (\(error)); ending it")
                    try? FileIO.write("1", to: cgroup.path + "/cgroup.kill")
                }
            }
            // The LSM links are not pinned: they ended with the old service and hold the sandbox again from here.
            try? lsm?.confine(sandboxCgroupID: cgroupID)
            let last = try store.events(EventFilter(sandboxID: record.sandboxID, limit: 1, newest: true)).first
            let gap: [String: Any] = [
                "record": "monitoring_gap", "sandbox_id": record.sandboxID, "agent_id": record.agentID,
                "time_dt": WallClock.iso8601(unixNanos: serviceStartNs),
                "last_event_before_gap": last.map { WallClock.iso8601(unixNanos: $0.timeNs) } ?? "none",
                "service_restarted_at": WallClock.iso8601(unixNanos: serviceStartNs),
                "programs_adopted": monitor.adopted,
                "kernel": ["seen": counters.seen, "submitted": counters.submitted, "dropped": counters.dropped],
                "detail": "the service was not running; records the kernel kept in its ring buffers meanwhile follow, "
                    + "and kernel.dropped counts those it could not keep",
            ]
            try store.appendEvents([StoredEvent(timeNs: serviceStartNs, sandboxID: record.sandboxID, agentID: record.agentID,
                                                kind: "alcub3", json: OCSFEncoder.jsonLine(gap))])
            try? store.appendAudit(.service, action: "sandbox.adopt", subject: record.sandboxID,
                                   details: ServiceJSON.encode(["agent_id": record.agentID]))
            watchForExit(sandbox)
            adopted.append(record.agentID)
        }
        return adopted
    }
}

/// What the store keeps about a sandbox beyond its record's columns.
struct SandboxDetails: Codable {
    var limits: ResourceLimits
    var applied: AppliedLimits
    var workingDirectory: String
}
