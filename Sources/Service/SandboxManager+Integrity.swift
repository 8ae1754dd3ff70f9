import CAlcub3
import Crypto
import Foundation
import Integrity
import KernelSupport
import Policy
import Store
import Telemetry

/// What `integrity validate` (and `sandbox validate`) answers.
public struct ValidationReport: Codable, Sendable {
    public struct Dimension: Codable, Sendable {
        public var name: String
        /// nil: not measured by this version (said in `status`).
        public var valid: Bool?
        public var status: String
        public var checkedEntries: Int
        public var findings: [IntegrityFinding]
    }

    public var agentID: String
    public var sandboxID: String
    public var baselineID: String
    public var valid: Bool
    /// The share of the baseline this validation could check: entries read back
    /// (unreadable ones excluded) over entries in the baseline, times the share of
    /// the three dimensions measured. 1.0 means everything was looked at.
    public var confidence: Double
    public var dimensions: [Dimension]
    public var microseconds: Int
    /// Each step of the validation with its time (`integrity debug-validate --trace`).
    public var steps: [Step]

    public struct Step: Codable, Sendable {
        public var name: String
        public var microseconds: Int
    }
}

extension SandboxManager {
    /// The key baselines are signed with: made by the service on first use, mode 0600.
    func baselineKey() throws -> Curve25519.Signing.PrivateKey {
        do {
            return try BaselineKey.loadOrCreate(at: configuration.baselineKeyPath ?? configuration.stateDirectory + "/baseline.key")
        } catch let error as BaselineError {
            throw ServiceFailure(Alcub3Exit.internalError, error.description)
        }
    }

    /// The tree a sandbox's filesystem baseline covers: its working directory
    /// (the private workspace, read through its init's root; or the shared host
    /// directory), and that path as the sandbox sees it.
    func integrityRoot(_ sandbox: LiveSandbox) -> (host: String, inside: String) {
        let inside = Self.details(of: sandbox)?.workingDirectory ?? sandbox.policy.filesystem.workspace
        if inside == sandbox.policy.filesystem.workspace && sandbox.policy.filesystem.readOnlySystem {
            return ("/proc/\(sandbox.initProcess.pid)/root" + inside, inside)
        }
        return (inside, inside)
    }

    /// How a sandbox's processes' memory is captured: as it is, or for a vm
    /// sandbox (whose only processes are QEMU and its init) without QEMU's JIT
    /// buffers, the translated guest code TCG rewrites all the time.
    func memoryCapture(for sandbox: LiveSandbox) -> (Int32) -> MemoryBaseline? {
        let vm = Self.isVM(sandbox.record)
        return { pid in (try? MemoryBaseline.capture(pid: pid)).map { vm ? $0.droppingJITBuffers() : $0 } }
    }

    /// Where a vm or hardware sandbox's baseline reads the guest: the command's working directory there.
    static let guestIntegrityRoot = "/root"

    /// The tree a baseline covers, read now: the host's scan of the sandbox's
    /// working directory, or, for a vm or hardware sandbox, the guest agent's
    /// scan of the guest's (over the channel) with what the guest booted.
    func readTree(of sandbox: LiveSandbox, progress: ((Int) -> Void)? = nil) throws -> (tree: FileTree, inside: String, boot: BootRecord?) {
        guard Self.isVM(sandbox.record) else {
            let (host, inside) = integrityRoot(sandbox)
            do {
                return (try FileTree.scan(root: host, progress: progress), inside, nil)
            } catch {
                throw ServiceFailure(Alcub3Exit.kernelRefused, "cannot read \(inside) of \(sandbox.record.sandboxID): \(error)")
            }
        }
        let inside = Self.guestIntegrityRoot
        guard let guest = Self.liveGuest(sandbox.record.sandboxID) else {
            throw ServiceFailure(Alcub3Exit.notFound, "the guest of \(sandbox.record.sandboxID) is not running its command: its files cannot be read")
        }
        let reply: GuestChannel.ScanReply
        do {
            reply = try guest.channel.scan(inside)
        } catch {
            throw ServiceFailure(Alcub3Exit.vmFailed, "cannot read \(inside) in the guest of \(sandbox.record.sandboxID): \(error)")
        }
        guard reply.error == 0 else {
            throw ServiceFailure(Alcub3Exit.vmFailed, "the guest agent cannot read \(inside) of \(sandbox.record.sandboxID): \(SystemError.name(of: reply.error))")
        }
        let entries = reply.entries.compactMap(FileEntry.decodingGuestEntry)
        guard entries.count == reply.entries.count else {
            throw ServiceFailure(Alcub3Exit.vmFailed, "the guest of \(sandbox.record.sandboxID) sent \(reply.entries.count - entries.count) malformed file entries; "
                                 + "its files are not taken for a baseline")
        }
        guard !reply.truncated else {
            throw ServiceFailure(Alcub3Exit.vmFailed, "\(inside) in the guest of \(sandbox.record.sandboxID) holds more than \(ALCUB3_GUEST_SCAN_LIMIT) "
                                 + "entries, 128 directory levels or 64 MiB of entries: too large for a baseline")
        }
        progress?(entries.count)
        return (FileTree.assembled(root: "guest:" + inside, entries: entries), inside, guest.boot)
    }

    /// `integrity baseline`: scans the sandbox's tree, signs the baseline,
    /// stores it (audited) and returns the signed JSON. A sandbox that already
    /// has one keeps it unless `update` (an operator's deliberate choice, or the
    /// service's refresh of a clean sandbox), recorded in the audit log.
    public func makeBaseline(agentID: String, update: Bool = false, requester: Requester,
                             progress: ((Int) -> Void)? = nil) throws -> String {
        guard let sandbox = sandbox(agentID: agentID) else {
            throw ServiceFailure(Alcub3Exit.notFound, "no running sandbox has agent id '\(agentID)'")
        }
        let current = integrityWatch.baselineID(cgroupID: sandbox.cgroup.id)
        if let current, !update {
            throw ServiceFailure(Alcub3Exit.agentInUse, "sandbox of agent '\(agentID)' already has baseline \(current); "
                                 + "pass --update to replace it (recorded in the audit log)")
        }
        let (tree, inside, boot) = try readTree(of: sandbox, progress: progress)
        let now = WallClock.nowUnixNanos()
        let count = (try? store.baselines(agentID: agentID).count) ?? 0
        let id = String(format: "baseline-%03d", count + 1) + "-" + sandbox.record.sandboxID
        var baseline = FilesystemBaseline(id: id, agentID: agentID, sandboxID: sandbox.record.sandboxID,
                                          createdAt: WallClock.iso8601(unixNanos: now), root: inside, tree: tree)
        // Memory: every process of the sandbox now (one that ends meanwhile is skipped).
        let capture = memoryCapture(for: sandbox)
        baseline.memory = sandbox.cgroup.processes().sorted().compactMap(capture)
        // Behaviour: what it did since it started (or since its last baseline); a new window begins.
        baseline.behaviour = sandbox.behaviour.takeAndRestart()
        baseline.boot = boot
        let json = String(decoding: try SignedBaseline(signing: baseline, with: baselineKey()).jsonData(), as: UTF8.self)
        try store.saveBaseline(BaselineRecord(id: id, sandboxID: sandbox.record.sandboxID, agentID: agentID, createdNs: now, json: json))
        try? store.appendAudit(requester, action: current == nil ? "baseline.create" : "baseline.update",
                               subject: sandbox.record.sandboxID,
                               details: ServiceJSON.encode(["baseline": id, "replaces": current ?? "", "root_hash": tree.rootHash,
                                                            "entries": String(tree.count)]))
        // From now on the service validates the sandbox against it, event-driven
        // (a vm guest's files on request only: the host cannot read them itself).
        if boot == nil { integrityWatch.watch(cgroupID: sandbox.cgroup.id, baseline: baseline, tree: tree) }
        return json
    }

    /// `integrity validate`: the baseline (a file's text, or a stored id) is
    /// checked (signature, agent, format), then the tree is read again and compared.
    public func validate(agentID: String, baseline text: String, source: String, requester: Requester) throws -> ValidationReport {
        guard let sandbox = sandbox(agentID: agentID) else {
            throw ServiceFailure(Alcub3Exit.notFound, "no running sandbox has agent id '\(agentID)'")
        }
        let started = DispatchTime.now().uptimeNanoseconds
        var steps: [ValidationReport.Step] = []
        var mark = started
        func step(_ name: String) {
            let now = DispatchTime.now().uptimeNanoseconds
            steps.append(.init(name: name, microseconds: Int((now - mark) / 1000)))
            mark = now
        }
        var data = Data(text.utf8)
        if let stored = try store.baseline(id: text.trimmingCharacters(in: .whitespacesAndNewlines)) { data = Data(stored.json.utf8) }
        let baseline: FilesystemBaseline
        do {
            baseline = try SignedBaseline.verify(data, source: source, trusted: baselineKey().publicKey, agentID: agentID)
        } catch let error as BaselineError {
            throw ServiceFailure(Alcub3Exit.invalidPolicy, error.description)
        }
        step("read the baseline and check its Ed25519 signature, agent and format (\(baseline.entries.count) entries)")
        let expectedRoot = Self.isVM(sandbox.record) ? Self.guestIntegrityRoot : integrityRoot(sandbox).inside
        guard baseline.root == expectedRoot else {
            throw ServiceFailure(Alcub3Exit.invalidPolicy, "\(source): the baseline covers \(baseline.root), this sandbox works in \(expectedRoot)")
        }
        let (tree, inside, boot) = try readTree(of: sandbox)
        step("read and hash \(inside) again (\(tree.count) entries\(boot == nil ? "" : ", read by the guest agent"))")
        let findings = FilesystemValidator.compare(baseline, with: tree, foundBy: "rescan")
        step("compare with the baseline (\(findings.count) changes)")
        let memory = validateMemory(baseline.memory ?? [], running: sandbox.cgroup.processes(), capture: memoryCapture(for: sandbox))
        step("capture and compare the executable memory of \(memory.checked) of \(baseline.memory?.count ?? 0) baseline processes")
        let behaviour = baseline.behaviour.map {
            BehaviourProfile.compare(baseline: $0, current: sandbox.behaviour.current(),
                                     threshold: anomalyThreshold, root: inside)
        }
        step("compare behaviour with the baseline's profile")
        let readable = tree.entries.values.filter { $0.unreadable == nil }.count
        let coverage = baseline.entries.isEmpty ? 1 : min(1, Double(readable) / Double(baseline.entries.count))
        let filesystem = ValidationReport.Dimension(name: "filesystem", valid: findings.isEmpty,
                                                    status: findings.isEmpty ? "clean" : "\(findings.count) changes",
                                                    checkedEntries: tree.count, findings: findings)
        let memoryCount = baseline.memory?.count ?? 0
        let memoryDimension = memoryCount == 0
            ? ValidationReport.Dimension(name: "memory", valid: nil, status: "no process in the baseline", checkedEntries: 0, findings: [])
            : ValidationReport.Dimension(name: "memory", valid: memory.findings.isEmpty,
                                         status: memory.findings.isEmpty ? "clean (\(memory.checked) of \(memoryCount) processes still running)"
                                             : "\(memory.findings.count) changes", checkedEntries: memory.checked, findings: memory.findings)
        let behaviourDimension = behaviour.map {
            ValidationReport.Dimension(name: "behaviour", valid: $0.isEmpty, status: $0.isEmpty ? "as in the baseline's window" : "\($0.count) differences",
                                       checkedEntries: 1, findings: $0)
        } ?? ValidationReport.Dimension(name: "behaviour", valid: nil, status: "no profile in the baseline", checkedEntries: 0, findings: [])
        var dimensions = [filesystem, memoryDimension, behaviourDimension]
        if let recorded = baseline.boot {
            // The image the guest booted, measured again on disk: a change there is what later boots would boot.
            let changes = recorded.changesOnDisk().map { change -> IntegrityFinding in
                var finding = IntegrityFinding(change: .content, path: change.component == "kernel" ? recorded.kernelPath : recorded.initramfsPath,
                                               old: change.expected, new: change.found, foundBy: "rescan")
                finding.dimension = "boot"
                finding.cause = "the guest's \(change.component) changed on disk since the sandbox booted (measured boot records sha256 \(change.expected))"
                return finding
            }
            let pcr = recorded.pcr.map { ", PCR \(BootMeasurement.pcr) \($0.prefix(16))... as the guest's TPM reported it" } ?? ""
            dimensions.append(ValidationReport.Dimension(name: "boot", valid: changes.isEmpty,
                                                         status: changes.isEmpty ? "kernel and initramfs as booted\(pcr)" : "\(changes.count) changes",
                                                         checkedEntries: 2, findings: changes))
            step("measure the guest's kernel and initramfs again (\(changes.count) changes)")
        }
        // Coverage per dimension: the share of the baseline read back; a dimension the baseline lacks counts 0.
        let memoryCoverage = memoryCount == 0 ? 0 : Double(memory.checked) / Double(memoryCount)
        let confidence = (coverage + memoryCoverage + (behaviour == nil ? 0 : 1)) / 3
        let valid = dimensions.allSatisfy { $0.valid != false }
        let report = ValidationReport(agentID: agentID, sandboxID: sandbox.record.sandboxID, baselineID: baseline.id,
                                      valid: valid, confidence: (confidence * 1000).rounded() / 1000,
                                      dimensions: dimensions,
                                      microseconds: Int((DispatchTime.now().uptimeNanoseconds - started) / 1000), steps: steps)
        try? store.appendAudit(requester, action: "baseline.validate", subject: sandbox.record.sandboxID,
                               details: ServiceJSON.encode(["baseline": baseline.id, "valid": String(report.valid),
                                                            "findings": String(dimensions.map(\.findings.count).reduce(0, +))]))
        return report
    }

    /// Each baseline process still running (same pid and start time) is
    /// captured again and compared; one that ended is not counted as checked.
    /// A process started since the baseline is held to the baseline of a
    /// process of the same program (by file and offset, not address): a
    /// library it loads that the baseline's did not, or LD_PRELOAD, is found.
    func validateMemory(_ processes: [MemoryBaseline], running: [Int32],
                        capture: (Int32) -> MemoryBaseline? = { try? MemoryBaseline.capture(pid: $0) }) -> (checked: Int, findings: [IntegrityFinding]) {
        var checked = 0
        var findings: [IntegrityFinding] = []
        func add(_ found: [MemoryFinding]) {
            for found in found {
                var finding = IntegrityFinding(change: .memory, path: found.path, old: found.old, new: found.new, foundBy: "rescan")
                finding.dimension = "memory"
                finding.cause = "\(found.change.rawValue) in pid \(found.pid)" + (found.mapping.map { " at \($0)" } ?? "")
                findings.append(finding)
            }
        }
        var known = Set<Int32>()
        for before in processes {
            guard let now = capture(before.pid), now.startTime == before.startTime else { continue }
            checked += 1
            known.insert(before.pid)
            add(MemoryValidator.compare(before, now))
        }
        let byProgram = Dictionary(processes.map { ($0.executable, $0) }, uniquingKeysWith: { a, _ in a })
        for pid in running where !known.contains(pid) {
            guard let now = capture(pid), let model = byProgram[now.executable] else { continue }
            add(MemoryValidator.compare(model, now, sameProcess: false))
        }
        return (checked, findings)
    }

    /// A clean sandbox's baseline older than `seconds` (baseline_update_interval)
    /// is made again, recorded as `baseline.update` by the service; never over
    /// an unresolved violation.
    func refreshBaselines(olderThan seconds: Double) {
        for cgroupID in integrityWatch.refreshable(olderThan: seconds) {
            guard let sandbox = sandbox(cgroupID: cgroupID) else { continue }
            do {
                _ = try makeBaseline(agentID: sandbox.record.agentID, update: true, requester: .service)
            } catch {
                log.error("could not refresh the baseline of \(sandbox.record.sandboxID): \(error)")
            }
        }
    }

    /// One validation cycle of every sandbox with a baseline: each new
    /// difference becomes an alert (Detection Finding) and an event.
    func runIntegrityCycle() {
        for result in integrityWatch.cycle() {
            guard let sandbox = sandbox(cgroupID: result.cgroupID) else { continue }
            for finding in result.newFindings { raise(finding, in: sandbox) }
            if !result.newFindings.isEmpty {
                log.warning("integrity violations", metadata: ["sandbox": "\(sandbox.record.sandboxID)",
                                                               "count": "\(result.newFindings.count)",
                                                               "cycle_us": "\(result.microseconds)"])
            }
        }
    }

    /// An integrity finding as an OCSF Detection Finding, stored as an alert and as an event.
    func raise(_ finding: IntegrityFinding, in sandbox: LiveSandbox) {
        let now = WallClock.nowUnixNanos()
        let id = "integrity-\(finding.change.rawValue)"
        var detail = "\(finding.change.rawValue) \(finding.path)"
        if let old = finding.old { detail += " (was \(old))" }
        if let new = finding.new { detail += " (now \(new))" }
        let object = OCSFEncoder.detectionFinding(sandboxID: sandbox.record.sandboxID, agentID: sandbox.record.agentID,
                                                  unixNanos: now, severityID: 4, severity: "High").merging([
            "finding_info": ["uid": id, "title": "Integrity: \(finding.change.rawValue)", "types": ["integrity violation"]],
            "message": "\(id): \(detail)",
            "evidences": [["file": ["path": finding.path], "data": ["old": finding.old ?? "", "new": finding.new ?? "",
                                                                    "found_by": finding.foundBy, "cause": finding.cause ?? ""]]],
            "unmapped": ["technique": id, "dimension": finding.dimension, "found_by": finding.foundBy],
        ] as [String: Any]) { shared, _ in shared }
        let json = OCSFEncoder.jsonLine(object)
        do {
            _ = try store.appendAlert(AlertRecord(timeNs: now, sandboxID: sandbox.record.sandboxID, agentID: sandbox.record.agentID,
                                                  severityID: 4, technique: id, json: json))
            try store.appendEvents([StoredEvent(timeNs: now, sandboxID: sandbox.record.sandboxID, agentID: sandbox.record.agentID,
                                                kind: "alert", classUID: 2004, json: json)])
        } catch {
            log.error("could not store an integrity finding of \(sandbox.record.sandboxID): \(error)")
        }
    }
}
