import Analysis
import Enforcement
import Foundation
import Logging
import Store
import Synchronization
import Telemetry

/// What the pipeline has done since the service started, for /metrics.
struct PipelineStatistics: Sendable {
    var eventsByKind: [String: UInt64] = [:]
    var syscalls: UInt64 = 0
    var batches: UInt64 = 0
    var lastBatchSeconds: Double = 0
    var storeErrors: UInt64 = 0
}

/// Carries the event stream into the store: each record rendered as OCSF
/// JSON with its sandbox's ids, written in batches (one transaction each).
/// Syscall records are counted, not stored one by one.
final class EventPipeline: Sendable {
    let manager: SandboxManager
    let subscription: EventSubscription
    let log: Logger
    let statistics = Mutex(PipelineStatistics())

    init(manager: SandboxManager, log: Logger) {
        self.manager = manager
        self.subscription = manager.monitor.hub.subscribe(bufferedEvents: 1 << 22)
        self.log = log
    }

    /// Runs until the hub finishes the stream (the monitor stopped).
    func run() async {
        // Records of a sandbox still being created (watched before its first
        // process starts, registered once it runs): held, then stored in order.
        var held: [UInt64: [TelemetryEvent]] = [:]
        for await batch in subscription.events {
            var rows: [StoredEvent] = []
            rows.reserveCapacity(batch.count / 4)
            for (id, events) in held where !manager.isCreating(cgroupID: id) {
                held[id] = nil
                guard let sandbox = manager.sandbox(cgroupID: id) else { continue }  // its creation failed
                for event in events { if let row = render(event, sandbox: sandbox) { rows.append(row) } }
            }
            // Runs of records come from one sandbox: look it up once per run, not per syscall.
            var cached: (id: UInt64, sandbox: LiveSandbox?) = (0, nil)
            for event in batch {
                if let id = event.sandboxCgroupID, id != cached.id { cached = (id, manager.sandbox(cgroupID: id)) }
                if cached.sandbox == nil, let id = event.sandboxCgroupID, manager.isCreating(cgroupID: id) {
                    if held[id, default: []].count < 1_000_000 { held[id, default: []].append(event) }
                    continue
                }
                if let row = render(event, sandbox: cached.sandbox) { rows.append(row) }
            }
            for sandbox in manager.liveSandboxes {
                sandbox.behaviour.add(syscalls: &sandbox.pendingSyscalls)
                if !sandbox.pendingRecords.isEmpty {
                    sandbox.analyzer?.add(sandbox.pendingRecords)
                    sandbox.pendingRecords.removeAll(keepingCapacity: true)
                }
            }
            let syscalls = batch.reduce(0) { if case .syscall = $1 { $0 + 1 } else { $0 } }
            guard !rows.isEmpty else {
                statistics.withLock { $0.syscalls += UInt64(syscalls) }
                continue
            }
            let started = DispatchTime.now().uptimeNanoseconds
            do {
                try manager.store.appendEvents(rows)
                let seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
                statistics.withLock { s in
                    for row in rows { s.eventsByKind[row.kind, default: 0] += 1 }
                    s.syscalls += UInt64(syscalls)
                    s.batches += 1
                    s.lastBatchSeconds = seconds
                }
            } catch {
                statistics.withLock { $0.storeErrors += 1 }
                log.error("could not store \(rows.count) events: \(error)")
            }
        }
    }

    private func render(_ event: TelemetryEvent, sandbox: LiveSandbox?) -> StoredEvent? {
        if case .drops(let counters, let newly) = event {
            // Not tied to one sandbox: stored under every live one, never silent.
            let now = WallClock.nowUnixNanos()
            for sandbox in manager.liveSandboxes {
                let json = OCSFEncoder.jsonLine([
                    "record": "kernel_drops", "sandbox_id": sandbox.record.sandboxID, "agent_id": sandbox.record.agentID,
                    "time_dt": WallClock.iso8601(unixNanos: now), "dropped": newly, "dropped_total": counters.dropped,
                ])
                try? manager.store.appendEvents([StoredEvent(timeNs: now, sandboxID: sandbox.record.sandboxID,
                                                             agentID: sandbox.record.agentID, kind: "alcub3", json: json)])
            }
            return nil
        }
        guard event.sandboxCgroupID != nil, let sandbox else { return nil }
        // Syscalls, a million a second: counted here, handed to the behaviour
        // recorder once per batch (flushSyscalls), judged only when they failed.
        if case .syscall(let s) = event {
            sandbox.syscalls += 1
            if !s.isEntry, s.number >= 0, Int(s.number) < sandbox.pendingSyscalls.count {
                sandbox.pendingSyscalls[Int(s.number)] += 1
                if sandbox.analyzer != nil, let record = BehaviourFeed.record(for: s) { sandbox.pendingRecords.append(record) }
            }
            // A container's filter (runc's) and a process sandbox's after a service restart answer
            // without a supervisor: their refused escape syscalls are judged from these records.
            if s.returnValue < 0,
               let finding = EscapeDetector.finding(for: event, supervised: sandbox.supervisor != nil || sandbox.policy.isolation.isVirtualMachine) {
                manager.raise(finding, in: sandbox, processes: sandbox.processes)
            }
            return nil
        }
        sandbox.processes.observe(event)
        sandbox.behaviour.record(event)
        sandbox.observeBehaviour(event)
        // The cause is put in words only for a sandbox with a baseline.
        if case .file(let file) = event, file.operation.changesFilesystem, manager.integrityWatch.isWatching(cgroupID: file.origin.sandboxCgroupID) {
            let who = sandbox.processes[file.origin.pid].map { " (\($0.name))" } ?? ""
            let when = WallClock.iso8601(unixNanos: sandbox.encoder.clock.unixNanos(boot: file.origin.bootNanos))
            manager.integrityWatch.note(file, cause: "\(file.operation.rawValue) by pid \(file.origin.pid)\(who) at \(when)")
        }
        if let finding = EscapeDetector.finding(for: event) {
            manager.raise(finding, in: sandbox, processes: sandbox.processes)
        }
        switch event {
        case .writeVolume(let w):
            let now = WallClock.nowUnixNanos()
            let json = OCSFEncoder.jsonLine([
                "record": "write_volume", "sandbox_id": sandbox.record.sandboxID, "agent_id": sandbox.record.agentID,
                "time_dt": WallClock.iso8601(unixNanos: now), "pid": Int(w.pid), "file_id": String(w.fileID, radix: 16),
                "bytes": w.totalBytes, "writes": w.totalWrites, "new_bytes": w.newBytes,
            ])
            return StoredEvent(timeNs: now, sandboxID: sandbox.record.sandboxID, agentID: sandbox.record.agentID,
                               kind: "alcub3", json: json)
        default:
            guard let object = sandbox.encoder.encode(event, processes: sandbox.processes) else { return nil }
            let kind: String = switch event {
            case .process: "process"
            case .file: "file"
            case .network: "network"
            default: "alcub3"
            }
            let time = originNanos(event, sandbox) ?? WallClock.nowUnixNanos()
            return StoredEvent(timeNs: time, sandboxID: sandbox.record.sandboxID, agentID: sandbox.record.agentID,
                               kind: kind, classUID: object["class_uid"] as? Int, json: OCSFEncoder.jsonLine(object))
        }
    }

    private func originNanos(_ event: TelemetryEvent, _ sandbox: LiveSandbox) -> Int64? {
        let boot: UInt64? = switch event {
        case .process(let e): e.origin.bootNanos
        case .file(let e): e.origin.bootNanos
        case .network(let e): e.origin.bootNanos
        default: nil
        }
        return boot.map { sandbox.encoder.clock.unixNanos(boot: $0) }
    }
}
