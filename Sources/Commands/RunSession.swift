import Foundation
import Enforcement
import KernelSupport
import Policy
import Sandbox
import Synchronization
import Telemetry

/// `alcub3 run`: one sandbox in the foreground. Everything it creates (agent
/// lock, cgroup, BPF programs, the sandbox's processes) is undone on every way
/// out: normal exit, failure, Ctrl-C.
final class RunSession: @unchecked Sendable {
    // @unchecked: `interruptSignal` is written by the signal handler queue and
    // read after the child ended; the rest is set up before any concurrency.
    let agentID: String
    let sandboxID: String
    let policy: SandboxPolicy
    let executable: String
    let arguments: [String]
    let format: OutputFormat
    let printSyscalls: Bool
    let syscallEntry: Bool
    private let interruptLock = NSLock()
    private var interruptSignal: Int32?
    private var liveCgroup: SandboxCgroup?

    /// Work in a private, size-capped workspace instead of the caller's directory.
    var privateWorkspace = false
    /// What becomes of the agent's changes to the caller's directory (`--changes`).
    var changes: WorkspaceChanges = .apply
    /// The container level's image (`--image`) and the manifest digest it must have.
    var container: (image: String, digest: ImageDigest?)?
    /// The vm level: QEMU with the guest agent (RunSession+VM.swift).
    var vm: VMOptions?
    /// `--record-traces`: where each thread's syscall trace goes (TraceRecorder).
    var traceDirectory: String?
    /// `--profile`: the behavioural analyzer, learning or scoring (RunBehaviour).
    var behaviour: RunBehaviour?
    /// The agent's environment (AgentEnvironment: a minimal one, plus `--env`).
    var environment = AgentEnvironment.minimal()

    init(agentID: String, policy: SandboxPolicy, executable: String, arguments: [String],
         format: OutputFormat, printSyscalls: Bool, syscallEntry: Bool) {
        self.agentID = agentID
        self.sandboxID = "sb-" + Self.randomHex(6)
        self.policy = policy
        self.executable = executable
        self.arguments = arguments
        self.format = format
        self.printSyscalls = printSyscalls
        self.syscallEntry = syscallEntry
    }

    func run() async throws -> Int32 {
        // Handlers first: a Ctrl-C during set-up must still go through the clean-up below.
        let signals = installSignalHandlers()
        defer { signals.forEach { $0.cancel() } }

        let lock: AgentLock
        do {
            lock = try AgentLock(agentID: agentID)
        } catch SandboxError.agentInUse(let agent, let holder) {
            throw fail(Alcub3Exit.agentInUse, "agent id '\(agent)' is already in use by \(holder)")
        }
        defer { lock.release() }

        let layout = try kernelStep("reading the cgroup layout") { try CgroupLayout.detect() }
        let parent = try kernelStep("taking the cgroup parent lock") { try CgroupParentLock(layout: layout) }
        defer { parent.releaseAndRemoveParentIfUnused() }

        let rootID = try kernelStep("reading the alcub3 cgroup") { try FileIO.inode(of: layout.alcub3Root) }
        let monitor = try kernelStep("loading the BPF telemetry programs") {
            try TelemetryMonitor(rootCgroupID: rootID, rootLevel: layout.alcub3RootLevel)
        }
        let cgroup = try kernelStep("creating the sandbox cgroup") { try SandboxCgroup(layout: layout, name: sandboxID) }
        var cgroupRemoved = false
        defer { if !cgroupRemoved { try? cgroup.destroy() } }

        // Allowed destinations (intranet, classified networks) are enforced by cgroup BPF.
        let network = try NetworkEnforcer.rules(for: policy.network).map { _ in
            try kernelStep("loading the network policy programs") { try NetworkEnforcer(rootLevel: layout.alcub3RootLevel) }
        }
        if let network {
            try kernelStep("attaching the network policy to the sandbox cgroup") { try network.apply(policy.network, to: cgroup) }
        }
        defer { network?.remove(cgroup) }
        // Only a minimal /dev's devices open, whatever node the sandbox reaches (a host disk: EPERM, reported).
        let devices = try kernelStep("attaching the device filter to the sandbox cgroup") {
            let filter = try DeviceFilter(rootLevel: layout.alcub3RootLevel, eventsRingFD: monitor.eventsRingFD)
            try filter.apply(to: cgroup, allowKVM: policy.isolation.isVirtualMachine)
            return filter
        }
        defer { devices.remove(cgroup) }
        func watchSandbox() throws {
            try kernelStep("watching the sandbox cgroup") {
                try monitor.watch(sandboxCgroupID: cgroup.id,
                                  options: .init(syscalls: policy.traceSyscalls || traceDirectory != nil || behaviour != nil,
                                                syscallEntry: syscallEntry))
            }
        }
        // A container's cgroup is watched once runc has set it up (below): runc's
        // own unshare and setuid in it are not the agent's.
        if self.container == nil { try watchSandbox() }
        // Subscribe before the process starts, so its first exec is not missed.
        let subscription = monitor.hub.subscribe()
        behaviour?.start(hub: monitor.hub)
        // Traces get a subscriber of their own: the rendering never delays them.
        let recording = traceDirectory.map { directory in
            let traceSubscription = monitor.hub.subscribe()
            let task = Task { () -> TraceRecorder in
                var recorder = TraceRecorder(directory: directory)
                for await batch in traceSubscription.events { recorder.record(batch) }
                return recorder
            }
            return (subscription: traceSubscription, task: task)
        }
        try kernelStep("starting the ring buffer consumer") { try monitor.start() }
        defer { monitor.stop() }

        let encoder = OCSFEncoder(sandboxID: sandboxID, agentID: agentID, clock: WallClock())
        let (format, printSyscalls) = (self.format, self.printSyscalls)
        // The init's pid is known only once it runs; events wait for it so they can name it.
        let (initPID, initPIDKnown) = AsyncStream<Int32>.makeStream()
        defer { initPIDKnown.finish() }
        let renderer = EventRenderer(format: format, encoder: encoder, printSyscalls: printSyscalls)
        renderer.onFinding = Self.responder(policy.onViolation, cgroup: cgroup)
        renderer.supervised = self.container == nil  // runc installs a container's filter: no supervisor hears it
        monitor.hub.observe { batch in renderer.detect(batch) }
        let streaming = Task { () -> RunSummary in
            for await pid in initPID { renderer.seedInit(pid: pid) }
            for await batch in subscription.events { renderer.render(batch) }
            return renderer.finalSummary
        }

        // Limits: cpu, memory and pids from the policy (cgroup v2, or v1 beside it on hybrid hosts).
        let limits = ResourceLimits(cpuCores: policy.cpuLimit, memoryBytes: policy.memoryLimitBytes, pids: policy.pidsLimit)
        let applied = try kernelStep("applying the cgroup limits") { try cgroup.apply(limits) }
        defer { SandboxCgroup.removeV1(applied) }

        let namespaces = NamespaceSet.forPolicy(policy)
        let seccomp = try kernelStep("compiling the seccomp filter") {
            try SeccompCompiler.compile(try SeccompProfile.effective(for: policy, supervised: KernelProbe.seccompUserNotify().available))
        }
        var spec = ProcessSpec(
            executable: executable, arguments: arguments, environment: environment,
            workingDirectory: privateWorkspace ? policy.filesystem.workspace : FileManager.default.currentDirectoryPath,
            hostname: sandboxID,
            namespaces: namespaces, seccomp: seccomp, dieWithParent: true)
        // The read-only system view: the working directory and a private /tmp stay writable.
        spec.readOnlyRoot = policy.filesystem.readOnlySystem
        spec.hiddenPaths = policy.filesystem.hiddenPaths
        if privateWorkspace {
            spec.workspace = (policy.filesystem.workspace, policy.filesystem.workspaceBytes)
        } else {
            spec.writablePaths = [FileManager.default.currentDirectoryPath].filter { $0 != "/" }
        }
        spec.v1ProcsFiles = applied.v1ProcsFiles
        if self.container == nil && self.vm == nil {
            // A private /dev, W^X, and the agent never host root (ProcessSpec.harden).
            let warning = try kernelStep("making the sandbox's user namespace") { try spec.harden(for: policy) }
            if let warning, format == .table { Output.err("alcub3: warning: \(warning)\n") }
        }
        // The caller's directory as a copy-on-write view, bounded by workspace_size (applied after the run).
        let copyOnWrite: CopyOnWriteWorkspace? = try spec.readOnlyRoot && self.container == nil && self.vm == nil
            ? spec.writablePaths.first.map { directory in
                try kernelStep("preparing the copy-on-write workspace") {
                    try CopyOnWriteWorkspace(sandboxID: sandboxID, directory: directory, bytes: policy.filesystem.workspaceBytes,
                                             agentRoot: spec.userNamespace?.hostRoot ?? 0)
                }
            } : nil
        defer { copyOnWrite?.remove() }
        spec.copyOnWrite = copyOnWrite
        // The agent never holds the operator's terminal: its own pty, relayed (C1).
        // With --format json, stdout carries alcub3's records only; the agent's output goes to stderr.
        // (A container gets the same pty as its stdio; runc makes it a session of its own.)
        let terminal = self.vm == nil
            ? try kernelStep("making the agent's terminal") { try TerminalRelay.forOperator(output: format == .json ? 2 : 1) } : nil
        if let terminal {
            spec.stdio = terminal.stdio
            spec.controllingTerminal = terminal.relaysInput
        } else if format == .json {
            spec.stdio = (0, 2, 2)
        }
        if copyOnWrite != nil { spec.hiddenPaths.append(CopyOnWriteWorkspace.parent) }

        // Container level: the image validated and unpacked, the bundle written; runc runs it below.
        let container = try self.container.map {
            try prepareContainer(image: $0.image, digest: $0.digest, cgroup: cgroup, stdio: spec.stdio ?? (-1, -1, -1))
        }
        defer { if container != nil { ContainerSandbox.remove(sandboxID: sandboxID, layout: layout) } }
        // Vm level: the guest image checked, the host's limits checked, the channel's socket made; QEMU starts below.
        let vm: VMLaunch?
        do {
            vm = try self.vm.map { try prepareVM($0, quiet: format != .table) }
        } catch let failure as Failure where failure.code == Alcub3Exit.imageRefused && self.vm?.hardware == true {
            // The hardware layer's finding: an image that is not what was measured when it was built.
            renderer.render(EscapeFinding(technique: EscapeTechnique.named("measured-boot-mismatch")!, sandboxCgroupID: cgroup.id,
                                          pid: 0, evidence: failure.message, refusedBy: "measured boot (the guest was not started)",
                                          observedNanos: bootClockNanos()))
            renderer.drainFindings()
            throw failure
        }
        defer { if let vm { vm.hardware?.stop(); VMSandbox.remove(sandboxID: vm.sandbox.id) } }

        // From here a signal kills the sandbox; before, set-up stops at this check.
        if let sig = interruptLock.withLock({ () -> Int32? in
            liveCgroup = cgroup
            return interruptSignal
        }) {
            throw fail(128 + sig, "interrupted by signal \(sig) before the sandbox started")
        }
        let started = WallClock.nowUnixNanos()
        let process: SandboxedProcess
        do {
            process = try container?.create() ?? vm?.sandbox.start(cgroup: cgroup, v1ProcsFiles: applied.v1ProcsFiles)
                ?? SandboxedProcess(spec: spec, cgroup: cgroup)
        } catch SandboxError.commandNotFound(let c) {
            throw fail(Alcub3Exit.commandNotFound, "command not found: \(c)")
        } catch SandboxError.commandNotExecutable(let c) {
            throw fail(Alcub3Exit.commandNotExecutable, "command is not executable: \(c)")
        } catch {
            throw fail(Alcub3Exit.kernelRefused, "could not start the sandbox: \(error)")
        }
        terminal?.releaseSlave()
        terminal?.start()
        defer { terminal?.finish() }
        if let container {
            try watchSandbox()
            do { try container.start() } catch { throw fail(Alcub3Exit.kernelRefused, "could not start the container: \(error)") }
        }
        if container == nil { initPIDKnown.yield(process.pid) }  // a container's init is runc's, then the command
        initPIDKnown.finish()
        // Escape syscalls stop in the kernel until the supervisor refuses them
        // and reports them; it ends with the sandbox (or, if alcub3 dies first,
        // the kernel fails them with ENOSYS).
        let cgroupID = cgroup.id
        let supervisor = try process.takeSeccompListener().map { listener in
            try kernelStep("starting the seccomp supervisor") {
                try SeccompSupervisor(listener: listener, label: sandboxID) { notice in
                    renderer.render(EscapeDetector.finding(for: notice, sandboxCgroupID: cgroupID))
                }
            }
        }
        supervisor?.start()
        defer { supervisor?.stop() }
        let resources = ResourceWatcher(cgroup: cgroup, applied: applied, limits: limits,
                                        capped: spec.readOnlyRoot && container == nil ? ["/proc/\(process.pid)/root/tmp"]
                                            + (privateWorkspace ? ["/proc/\(process.pid)/root" + policy.filesystem.workspace] : [])
                                            + (copyOnWrite.map { [$0.root] } ?? []) : []) { finding in
            renderer.render(finding)
        }
        resources.start()
        defer { resources.stop() }
        if format == .table {
            Output.err(
                "alcub3: sandbox \(sandboxID) (agent \(agentID), \(policy.classification.rawValue), \(container.map(Self.describe) ?? vm.map(Self.describe) ?? "process isolation, namespaces \(namespaces.names.joined(separator: ","))")) pid \(process.pid)\n")
        }

        let status: ExitStatus
        if let vm {  // the guest's exit code, its output and events come over its channel
            status = try await serveVM(vm, process: process, cgroup: cgroup, hub: monitor.hub, v1ProcsFiles: applied.v1ProcsFiles,
                                       syscalls: policy.traceSyscalls || traceDirectory != nil || behaviour != nil) { renderer.render($0) }
        } else {
            status = await Self.waitInBackground(process)
        }
        // The init is gone; kill whatever it left (a pid namespace does that too,
        // but descendants in sub-cgroups or a sandbox without one would not).
        try? cgroup.destroy()
        cgroupRemoved = true
        terminal?.finish()
        monitor.stop()
        let counters = monitor.counters()
        monitor.unwatch(sandboxCgroupID: cgroup.id)
        let summary = await streaming.value
        if let behaviour {
            let line = await behaviour.finish()
            if format == .table { Output.err("alcub3: \(line)\n") }
        }

        if let copyOnWrite { try settleWorkspace(copyOnWrite) }
        TelemetryStatistics.record(counters, streamDropped: subscription.dropped)
        let interrupted = interruptLock.withLock { interruptSignal }
        let code = interrupted.map { 128 + $0 } ?? status.shellCode
        printSummary(summary, status: status, interruptedBy: interrupted, code: code,
                     counters: counters, subscriberDropped: subscription.dropped,
                     seconds: Double(WallClock.nowUnixNanos() - started) / 1e9)
        if let recording {
            try writeTraces(await recording.task.value, counters: counters,
                            streamDropped: recording.subscription.dropped, initPID: process.pid)
        }
        return code
    }

    /// The agent's changes to the caller's directory, once every process of
    /// the sandbox is gone: applied, shown and asked about, or discarded.
    private func settleWorkspace(_ workspace: CopyOnWriteWorkspace) throws {
        let found: CopyOnWriteWorkspace.Report
        do {
            found = try workspace.changes()
        } catch {
            throw fail(Alcub3Exit.kernelRefused, "reading the agent's changes in \(workspace.root)/upper: \(error)")
        }
        var mode = changes
        if mode == .review && found.total > 0 {
            Output.err("alcub3: the agent's changes: \(found.counts.added) added, \(found.counts.modified) modified, "
                       + "\(found.counts.deleted) deleted, \(found.counts.skipped) skipped\n")
            for change in found.listed.prefix(200) {
                Output.err("  \(change.kind.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0)) \(RunCommand.printable(change.path))"
                           + (change.note.map { " (\($0))" } ?? "") + "\n")
            }
            if found.total > 200 { Output.err("  ... and \(found.total - 200) more, not shown\n") }
            mode = OperatorTerminal.confirm("alcub3: apply these \(found.total) changes to \(workspace.directory)? [y/N] ") ? .apply : .discard
        }
        var applied = found
        if mode == .apply && found.total > 0 {
            var st = stat()
            _ = stat(workspace.directory, &st)
            do {
                applied = try workspace.apply(owner: (st.st_uid, st.st_gid))
            } catch {
                throw fail(Alcub3Exit.kernelRefused, "applying the agent's changes to \(workspace.directory): \(error); "
                           + "what was not applied is lost with the sandbox")
            }
        }
        let s = applied.counts
        let verb = found.total == 0 ? "no changes" : mode == .apply ? "applied" : "discarded"
        switch format {
        case .table:
            Output.err("alcub3: workspace \(workspace.directory): \(verb)"
                       + (found.total == 0 ? "" : ": \(s.added) added, \(s.modified) modified, \(s.deleted) deleted, \(s.bytes) bytes"
                          + (s.skipped > 0 ? ", \(s.skipped) skipped (not files, directories or symlinks)" : "")) + "\n")
        case .json:
            Output.out(OCSFEncoder.jsonLine([
                "record": "workspace_changes", "sandbox_id": sandboxID, "directory": workspace.directory, "outcome": verb,
                "added": s.added, "modified": s.modified, "deleted": s.deleted, "skipped": s.skipped, "bytes": Int(s.bytes),
                "paths": applied.listed.prefix(1000).map { ["path": $0.path, "change": $0.kind.rawValue] },
            ]) + "\n")
        }
    }

    /// A data set must not be silently incomplete: with any record lost on
    /// the way (kernel ring buffer full, a subscriber behind), none is written.
    private func writeTraces(_ recorder: TraceRecorder, counters: KernelCounters, streamDropped: Int, initPID: Int32) throws {
        guard counters.dropped == 0 && streamDropped == 0 else {
            throw fail(Alcub3Exit.tracesIncomplete,
                       "traces not written: \(counters.dropped) records dropped by the kernel (ring buffer full) and "
                       + "\(streamDropped) events by the trace recorder; run again on a less busy machine")
        }
        let (files, syscalls, skipped) = try recorder.write(excludingPID: initPID)
        if format == .table {
            Output.err("alcub3: \(files) traces (\(syscalls) syscalls) written to \(recorder.directory); "
                       + "\(skipped) threads with fewer than \(TraceRecorder.minimumSyscalls) syscalls skipped\n")
        }
    }

    /// The policy's `on_violation` beyond the printed alert: kill the process
    /// that tried, end the sandbox, or freeze it (once) until Ctrl-C ends it.
    static func responder(_ response: ViolationResponse, cgroup: SandboxCgroup) -> (@Sendable (EscapeFinding) -> Void)? {
        let once = Mutex(false)
        switch response {
        case .alert:
            return nil
        case .deny:
            return { finding in SandboxResponse.killProcess(finding.pid, in: cgroup) }
        case .kill, .freeze:
            return { finding in
                guard !once.withLock({ done in defer { done = true }; return done }) else { return }
                if response == .kill {
                    try? FileIO.write("1", to: cgroup.path + "/cgroup.kill")
                    Output.err("alcub3: sandbox ended by its policy (on_violation: kill) after \(finding.technique.id)\n")
                } else if (try? SandboxResponse.setFrozen(true, cgroup)) != nil {
                    Output.err("alcub3: sandbox frozen by its policy (on_violation: freeze) after \(finding.technique.id); "
                               + "Ctrl-C ends it\n")
                }
            }
        }
    }

    /// Ctrl-C, SIGTERM and SIGHUP end the sandbox; the normal exit path cleans up.
    private func installSignalHandlers() -> [DispatchSourceSignal] {
        [SIGINT, SIGTERM, SIGHUP].map { sig in
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { [self] in
                let cgroup = interruptLock.withLock { () -> SandboxCgroup? in
                    if interruptSignal == nil { interruptSignal = sig }
                    return liveCgroup
                }
                guard let cgroup else { return }
                try? FileIO.write("1", to: cgroup.path + "/cgroup.kill")
                for pid in cgroup.processes() { kill(pid, SIGKILL) }
            }
            source.resume()
            return source
        }
    }

    private static func waitInBackground(_ process: SandboxedProcess) async -> ExitStatus {
        await withCheckedContinuation { continuation in
            Thread.detachNewThread { continuation.resume(returning: process.wait()) }
        }
    }

    private func printSummary(_ s: RunSummary, status: ExitStatus, interruptedBy: Int32?, code: Int32,
                              counters: KernelCounters, subscriberDropped: Int, seconds: Double) {
        let ended: String = {
            if let sig = interruptedBy { return "interrupted by signal \(sig)" }
            switch status {
            case .exited(let c): return "exited with code \(c)"
            case .signaled(let sig): return "killed by signal \(sig)"
            }
        }()
        switch format {
        case .json:
            let object: [String: Any] = [
                "record": "run_summary", "sandbox_id": sandboxID, "agent_id": agentID,
                "classification": policy.classification.rawValue, "exit_code": Int(code), "ended": ended,
                "duration_seconds": (seconds * 1000).rounded() / 1000,
                "events": s.byKind, "syscalls": s.syscalls, "bytes_written": s.bytesWritten,
                "top_syscalls": s.topSyscalls(5).map { ["name": $0.0, "count": $0.1] as [String: Any] },
                "kernel": ["seen": counters.seen, "submitted": counters.submitted, "dropped": counters.dropped],
                "stream_dropped": subscriberDropped,
                "alerts": s.findings,
            ]
            Output.out(OCSFEncoder.jsonLine(object) + "\n")
        case .table:
            let kinds = s.byKind.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
            let top = s.topSyscalls(5).map { "\($0.0) \($0.1)" }.joined(separator: ", ")
            let alerts = s.findings.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
            let text = """
                --- alcub3 run summary ---
                sandbox    \(sandboxID) (agent \(agentID), \(policy.classification.rawValue))
                ended      \(ended) after \(String(format: "%.3f", seconds)) s; exit code \(code)
                events     \(kinds.isEmpty ? "none" : kinds)
                syscalls   \(s.syscalls)\(top.isEmpty ? "" : " (top: \(top))")
                written    \(s.bytesWritten) bytes
                kernel     \(counters.seen) records seen, \(counters.submitted) submitted, \(counters.dropped) dropped
                stream     \(subscriberDropped) events dropped by a slow reader
                alerts     \(alerts.isEmpty ? "none" : alerts)

                """
            Output.err(text)
        }
    }

    static func randomHex(_ bytes: Int) -> String {
        (0..<bytes).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
    }
}

/// Runs a kernel-facing step; its failure becomes one line naming the step.
func kernelStep<T>(_ what: String, _ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let failure as Failure {
        throw failure
    } catch {
        throw fail(Alcub3Exit.kernelRefused, "\(what): \(error)")
    }
}
