import Enforcement
import Foundation
import KernelSupport
import Sandbox
import Synchronization
import Telemetry

/// Turns the event stream into what a person or a program reads: one table
/// line or one JSON object per event, and a summary at the end. Escape
/// findings arrive from two threads (the event stream and the seccomp
/// supervisor): `lock` guards the renderer's state, `outputLock` only the
/// writes, so a finding is formatted without waiting for a batch to render.
final class EventRenderer: @unchecked Sendable {
    private let lock = NSLock()
    private let outputLock = NSLock()
    /// Called after each finding is printed (the policy's response); set before rendering starts.
    var onFinding: (@Sendable (EscapeFinding) -> Void)?
    /// False for a sandbox whose seccomp filter no supervisor of alcub3's hears
    /// (the container level): refused escape syscalls are then judged from
    /// their telemetry records. Set before the first batch.
    var supervised = true
    let format: OutputFormat
    let encoder: OCSFEncoder
    let printSyscalls: Bool
    private(set) var processes = ProcessTable()
    private(set) var summary = RunSummary()
    /// Open files being written: path and the opener's name, for write-volume lines.
    private var filePaths: [UInt64: (path: String, opener: String)] = [:]

    init(format: OutputFormat, encoder: OCSFEncoder, printSyscalls: Bool) {
        self.format = format
        self.encoder = encoder
        self.printSyscalls = printSyscalls
    }

    /// Escape findings of a batch, judged on the ring buffer consumer's thread
    /// (EventHub.observe) as soon as the kernel's records arrive, before the
    /// batch waits for its turn to be rendered. It takes no lock the
    /// rendering holds, and prints on a queue of its own: neither a batch being
    /// rendered nor a slow reader of the output holds up the consumer.
    func detect(_ batch: [TelemetryEvent]) {
        let supervised = self.supervised
        let findings = batch.compactMap { EscapeDetector.finding(for: $0, supervised: supervised) }
        if !findings.isEmpty { findingQueue.async { [self] in for finding in findings { render(finding) } } }
    }

    private let findingQueue = DispatchQueue(label: "alcub3-findings")

    /// Waits until every finding handed to the queue is printed (before the summary).
    func drainFindings() { findingQueue.sync {} }

    /// The events, in slices of 32 with the lock released between them: a
    /// finding waits for one slice, not for a burst of thousands of records
    /// (a fork bomb's).
    func render(_ batch: [TelemetryEvent]) {
        var start = batch.startIndex
        while start < batch.endIndex {
            let end = min(start + 32, batch.endIndex)
            renderSlice(batch[start..<end])
            start = end
        }
    }

    private func renderSlice(_ batch: ArraySlice<TelemetryEvent>) {
        let text = lock.withLock {
            var text = ""
            for event in batch {
                processes.observe(event)
                if case .process(let p) = event {
                    switch p.activity {
                    case .exec(let file, _, _, _, let name): namesSeen.withLock { $0[p.origin.pid] = (name, file) }
                    case .fork(let child, _, false, let name):
                        namesSeen.withLock { $0[child] = (name, $0[p.origin.pid]?.executable ?? "") }
                    case .exit(_, _, false, _): namesSeen.withLock { _ = $0.removeValue(forKey: p.origin.pid) }
                    default: break
                    }
                }
                summary.count(event)
                if case .file(let f) = event, f.fileID != 0 { filePaths[f.fileID] = (f.path, processes[f.origin.pid]?.name ?? "?") }
                if let line = line(for: event) { text += line + "\n" }
                if case .process(let p) = event, case .exit(_, _, false, _) = p.activity { processes.forget(p.origin.pid) }
            }
            return text
        }
        write(text)
    }

    private func write(_ text: String) {
        guard !text.isEmpty else { return }
        outputLock.withLock { Output.out(text) }
    }

    /// A syscall the seccomp supervisor refused, a limit hit: its finding,
    /// printed at once (formatted from a copy of the process table).
    func render(_ finding: EscapeFinding) {
        findingCounts.withLock { $0[finding.technique.id, default: 0] += 1 }
        var known = ProcessTable()
        if let seen = namesSeen.withLock({ $0[finding.pid] }) {
            known.seed(pid: finding.pid, name: seen.name, executable: seen.executable)
        }
        // The policy's response first: printing waits for the event slice being written.
        onFinding?(finding)
        write(findingLine(finding, known) + "\n")
        if let escape = correlator.add(finding) {
            findingCounts.withLock { $0["escape", default: 0] += 1 }
            onFinding?(escape)
            write(findingLine(escape, known) + "\n")
        }
    }

    /// Indicators close in time become one escape finding.
    private let correlator = EscapeCorrelator()

    /// Findings by technique, and the process names as of the last rendered
    /// slice: what a finding needs, behind locks of their own.
    private let findingCounts = Mutex<[String: Int]>([:])
    private let namesSeen = Mutex<[Int32: (name: String, executable: String)]>([:])

    var finalSummary: RunSummary {
        drainFindings()
        var result = lock.withLock { summary }
        result.findings = findingCounts.withLock { $0 }
        return result
    }

    private func findingLine(_ finding: EscapeFinding, _ processes: ProcessTable) -> String {
        if format == .json { return OCSFEncoder.jsonLine(finding.ocsf(encoder: encoder, processes: processes)) }
        return TerminalText.escaped(findingTableLine(finding, processes))
    }

    private func findingTableLine(_ finding: EscapeFinding, _ processes: ProcessTable) -> String {
        let time = encoder.clock.iso8601(boot: finding.observedNanos)
        let clock = String(time.dropFirst(11).prefix(15))
        let name = processes[finding.pid]?.name ?? "?"
        if !finding.indicators.isEmpty {
            let confidence = Int((finding.confidence * 100).rounded())
            return "\(clock) \(pad("\(name)[\(finding.pid)]", 22)) ESCAPE   \(finding.evidence); confidence \(confidence)%; "
                + "recommended: \(finding.recommendedActions.joined(separator: "; "))"
        }
        return "\(clock) \(pad("\(name)[\(finding.pid)]", 22)) ALERT    \(finding.technique.id): \(finding.evidence) (refused by \(finding.refusedBy))"
    }


    /// The sandbox's init never execs: name it so its events read well.
    func seedInit(pid: Int32) { processes.seed(pid: pid, name: "alcub3-init", executable: "alcub3 (sandbox init)") }

    private func line(for event: TelemetryEvent) -> String? {
        switch format {
        case .json:
            if let object = encoder.encode(event, processes: processes) { return OCSFEncoder.jsonLine(object) }
            return alcub3Record(event).map(OCSFEncoder.jsonLine)
        case .table:
            // Paths, argv and names are the agent's choice: escaped before they reach the terminal.
            return tableLine(event).map(TerminalText.escaped)
        }
    }

    /// Records that are not OCSF events: syscalls (opt-in), write volumes, drops.
    private func alcub3Record(_ event: TelemetryEvent) -> [String: Any]? {
        let common: [String: Any] = ["sandbox_id": encoder.sandboxID, "agent_id": encoder.agentID]
        switch event {
        case .syscall(let s) where printSyscalls:
            return common.merging([
                "record": s.isEntry ? "syscall_entry" : "syscall",
                "time_dt": encoder.clock.iso8601(boot: s.origin.bootNanos),
                "pid": Int(s.origin.pid), "tid": Int(s.origin.tid),
                "syscall": SyscallNames.name(Int(s.number)), "nr": Int(s.number), "ret": s.returnValue,
                "args": [s.arguments.0, s.arguments.1, s.arguments.2].map { String($0, radix: 16) },
            ]) { a, _ in a }
        case .writeVolume(let w):
            return common.merging([
                "record": "write_volume", "time_dt": WallClock.iso8601(unixNanos: WallClock.nowUnixNanos()),
                "pid": Int(w.pid), "path": filePaths[w.fileID]?.path ?? "", "bytes": w.totalBytes, "writes": w.totalWrites,
                "new_bytes": w.newBytes,
            ]) { a, _ in a }
        case .drops(let counters, let newly):
            return common.merging([
                "record": "kernel_drops", "time_dt": WallClock.iso8601(unixNanos: WallClock.nowUnixNanos()),
                "dropped": newly, "dropped_total": counters.dropped, "seen_total": counters.seen,
            ]) { a, _ in a }
        default:
            return nil
        }
    }

    private func tableLine(_ event: TelemetryEvent) -> String? {
        func head(_ o: EventOrigin, _ kind: String) -> String {
            let time = encoder.clock.iso8601(boot: o.bootNanos)
            let clock = String(time.dropFirst(11).prefix(15))  // HH:MM:SS.ffffff
            let name = processes[o.pid]?.name ?? "?"
            return "\(clock) \(pad(String(o.pid), 7)) \(pad(name, 15)) \(pad(kind, 8))"
        }
        func result(_ r: Int64) -> String { r < 0 ? " -> \(encoder.errnoName(Int32(-r)))" : "" }
        switch event {
        case .process(let p):
            switch p.activity {
            case .exec(let file, let args, _, _, _):
                return head(p.origin, "exec") + " \(file) \(args.dropFirst().joined(separator: " "))"
            case .fork(let child, _, let isThread, _):
                return isThread ? nil : head(p.origin, "fork") + " child \(child)"
            case .exit(let status, _, let isThread, _):
                if isThread { return nil }
                let signal = status & 0x7f
                return head(p.origin, "exit") + (signal == 0 ? " code \((status >> 8) & 0xff)" : " signal \(signal)")
            case .namespaceChange(let nr, let flags, _, let r):
                return head(p.origin, "ns") + " \(SyscallNames.name(Int(nr))) flags 0x\(String(flags, radix: 16))\(result(r))"
            case .credentialChange(let nr, let r, let uid, let euid, _, _, _, _):
                return head(p.origin, "cred") + " \(SyscallNames.name(Int(nr))) uid \(uid) euid \(euid)\(result(r))"
            }
        case .file(let f) where f.operation != .read || printSyscalls:  // first reads: many at a program's start
            let second = f.secondPath.map { " -> \($0)" } ?? ""
            return head(f.origin, f.operation.rawValue) + " \(f.path)\(second)\(result(f.result))"
        case .network(let n):
            let target = n.operation == .listen || n.operation == .bind ? n.local.description : n.remote.description
            let shown = (n.operation == .bind && n.remote.ip != nil) ? n.remote.description : target
            return head(n.origin, n.operation.rawValue) + " \(shown)\(n.result < 0 && n.result != -115 ? result(n.result) : "")"
        case .syscall(let s) where printSyscalls:
            return head(s.origin, "syscall") + " \(SyscallNames.name(Int(s.number))) = \(s.returnValue)"
        case .writeVolume(let w):
            let file = filePaths[w.fileID]
            return "\(String(repeating: " ", count: 15)) \(pad(String(w.pid), 7)) \(pad(file?.opener ?? "?", 15)) \(pad("written", 8)) \(file?.path ?? "file \(String(w.fileID, radix: 16))"): \(w.totalBytes) bytes in \(w.totalWrites) writes"
        case .drops(_, let newly):
            return "WARNING: the kernel dropped \(newly) records (ring buffer full)"
        default:
            return nil
        }
    }

    private func pad(_ s: String, _ width: Int) -> String {
        s.count >= width ? String(s.prefix(width)) : s + String(repeating: " ", count: width - s.count)
    }
}

/// What a run did, in numbers.
struct RunSummary {
    var byKind: [String: Int] = [:]
    var syscalls = 0
    var syscallsByNumber: [Int32: Int] = [:]
    var bytesWritten: UInt64 = 0
    var processesStarted = 0
    var kernelDropped: UInt64 = 0
    /// Escape findings by technique id.
    var findings: [String: Int] = [:]

    mutating func count(_ event: TelemetryEvent) {
        switch event {
        case .syscall(let s):
            if !s.isEntry { syscalls += 1; syscallsByNumber[s.number, default: 0] += 1 }
        case .process(let p):
            switch p.activity {
            case .exec: byKind["exec", default: 0] += 1; processesStarted += 1
            case .fork(_, _, let isThread, _): byKind[isThread ? "thread" : "fork", default: 0] += 1
            case .exit(_, _, let isThread, _): if !isThread { byKind["exit", default: 0] += 1 }
            case .namespaceChange: byKind["namespace", default: 0] += 1
            case .credentialChange: byKind["credentials", default: 0] += 1
            }
        case .file: byKind["file", default: 0] += 1
        case .network: byKind["network", default: 0] += 1
        case .device: byKind["device", default: 0] += 1
        case .writeVolume(let w): bytesWritten += w.newBytes
        case .drops(_, let n): kernelDropped += n
        }
    }

    func topSyscalls(_ n: Int) -> [(String, Int)] {
        syscallsByNumber.sorted { $0.value > $1.value }.prefix(n).map { (SyscallNames.name(Int($0.key)), $0.value) }
    }
}
