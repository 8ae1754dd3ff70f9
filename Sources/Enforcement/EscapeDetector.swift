#if canImport(Glibc)
import Glibc
#endif
import KernelSupport
import Sandbox
import Telemetry

/// An escape attempt the kernel refused, named by technique, with the evidence.
public struct EscapeFinding: Sendable, Hashable {
    public let technique: EscapeTechnique
    public let sandboxCgroupID: UInt64?
    public let pid: Int32
    /// What was attempted and how it was answered, for a responder.
    public let evidence: String
    /// The mechanism that refused it: seccomp, cgroup BPF, the read-only view / Landlock.
    public let refusedBy: String
    /// CLOCK_BOOTTIME when the kernel reported the attempt.
    public let observedNanos: UInt64
    /// How sure this indicator is (0-1): the technique's, unless the detector knows better.
    public let confidence: Double
    /// Set on a correlated escape finding: the indicators it stands on.
    public let indicators: [EscapeFinding]
    /// CLOCK_BOOTTIME when the finding was made (the detector's answer; printing it comes after).
    public let detectedNanos: UInt64

    public init(technique: EscapeTechnique, sandboxCgroupID: UInt64?, pid: Int32, evidence: String, refusedBy: String,
                observedNanos: UInt64, confidence: Double? = nil, indicators: [EscapeFinding] = []) {
        self.technique = technique
        self.sandboxCgroupID = sandboxCgroupID
        self.pid = pid
        self.evidence = evidence
        self.refusedBy = refusedBy
        self.observedNanos = observedNanos
        self.confidence = confidence ?? technique.confidence
        self.indicators = indicators
        detectedNanos = bootClockNanos()
    }

    public var severity: FindingSeverity { technique.severity }
}

/// The policy layer of escape detection: every refusal the kernel reports
/// (a syscall the seccomp supervisor refused, a connect cgroup BPF refused, a
/// write the read-only view or Landlock refused) becomes a finding that names
/// the technique from `EscapeTechnique.all`. It keeps no state: each input is
/// judged alone, so a finding follows its kernel record without delay.
public enum EscapeDetector {
    public static func finding(for notice: SeccompNotice, sandboxCgroupID: UInt64?) -> EscapeFinding {
        let id = EscapeClassifier.technique(syscall: notice.syscall, arguments: notice.arguments, call: notice.call)
        return EscapeFinding(technique: EscapeTechnique.named(id)!, sandboxCgroupID: sandboxCgroupID, pid: notice.pid,
                             evidence: "\(notice.call) refused with \(SystemError.name(of: notice.errno))",
                             refusedBy: "seccomp", observedNanos: notice.receivedAt)
    }

    /// Errors that mean a policy refused the call, not that it failed on its own.
    static let refusals: Set<Int64> = [Int64(EPERM), Int64(EACCES), Int64(EROFS)]

    /// A refused escape syscall seen only by the telemetry: for a sandbox
    /// whose seccomp filter answers by itself, with no supervisor of alcub3's
    /// to hear it (the container level, where runc installs the filter; a
    /// process sandbox after a service restart, whose filter then answers
    /// ENOSYS). The syscall's first three arguments tell the dangerous form
    /// of the calls that have a harmless one (a raw socket, namespace flags, a
    /// writable and executable mapping, a device node); the others are
    /// indicators whatever their arguments. nil for anything else.
    public static func finding(forUnsupervised s: SyscallEvent) -> EscapeFinding? {
        guard !s.isEntry, [Int64(EPERM), Int64(EACCES), Int64(ENOSYS)].contains(-s.returnValue) else { return nil }
        let name = SyscallNames.name(Int(s.number))
        let (a0, a1, a2) = s.arguments
        switch name {
        case "socket":
            // AF_PACKET, or SOCK_RAW of any family (the type's low bits; flags above them).
            guard a0 == UInt64(AF_PACKET) || (a1 & 0xf) == UInt64(SOCK_RAW.rawValue) else { return nil }
        case "clone":
            guard a0 & namespaceFlags != 0 else { return nil }
        case "mmap", "mprotect", "pkey_mprotect":
            guard a2 & UInt64(PROT_WRITE | PROT_EXEC) == UInt64(PROT_WRITE | PROT_EXEC) else { return nil }
        case "ioctl":
            let request = a1 & 0xffff_ffff
            guard request == SeccompProfile.tiocsti || request == SeccompProfile.tioclinux else { return nil }
        case "mknod", "mknodat":
            let mode = UInt32(truncatingIfNeeded: name == "mknod" ? a1 : a2) & UInt32(S_IFMT)
            guard mode == UInt32(S_IFBLK) || mode == UInt32(S_IFCHR) else { return nil }
        default:
            break
        }
        let id = EscapeClassifier.technique(syscall: name, arguments: [a0, a1, a2], call: "")
        // Credential calls are the process layer's (credentialChange records); the rest is not an escape syscall.
        guard id != "kernel-control", id != "setuid-root", let technique = EscapeTechnique.named(id) else { return nil }
        return EscapeFinding(technique: technique, sandboxCgroupID: s.origin.sandboxCgroupID, pid: s.origin.pid,
                             evidence: "\(name) refused with \(SystemError.name(of: Int32(-s.returnValue)))",
                             refusedBy: "seccomp (the sandbox's filter; reported from the syscall's telemetry record)",
                             observedNanos: s.origin.bootNanos)
    }

    /// clone's flags that make a namespace: CLONE_NEWNS 0x20000, NEWCGROUP 0x2000000,
    /// NEWUTS 0x4000000, NEWIPC 0x8000000, NEWUSER 0x10000000, NEWPID 0x20000000, NEWNET 0x40000000
    /// (linux/sched.h; Glibc's module does not export them without _GNU_SOURCE).
    static let namespaceFlags: UInt64 = 0x20000 | 0x2000000 | 0x4000000 | 0x8000000 | 0x10000000 | 0x20000000 | 0x40000000

    /// `finding(for:)`, and for a sandbox without a supervisor (`supervised`
    /// false) also `finding(forUnsupervised:)` of a refused syscall.
    public static func finding(for event: TelemetryEvent, supervised: Bool) -> EscapeFinding? {
        if !supervised, case .syscall(let s) = event, s.returnValue < 0 { return finding(forUnsupervised: s) ?? finding(for: event) }
        return finding(for: event)
    }

    public static func finding(for event: TelemetryEvent) -> EscapeFinding? {
        switch event {
        case .file(let e) where e.operation == .read:
            return refusedProcessRead(e)
        case .file(let e):
            guard isWriteAttempt(e), !isOwnTuning(e.path) else { return nil }
            let id = EscapeClassifier.technique(refusedWriteAt: e.path)
            // A write to a place escapes are made through is reported whatever its
            // result (ENOENT for another pid namespace's /proc entry included);
            // any other write only when a policy refused it.
            guard id != "write-outside-workspace" || (e.result < 0 && refusals.contains(-e.result)) else { return nil }
            let what = e.operation == .open ? "open for writing" : e.operation.rawValue
            let outcome = e.result < 0 ? "refused with \(SystemError.name(of: Int32(-e.result)))" : "succeeded"
            let refusedBy: String
            switch -e.result {
            case Int64(EROFS): refusedBy = "read-only system view"
            case Int64(EACCES), Int64(EPERM): refusedBy = "Landlock or permissions"
            case Int64(ENOENT): refusedBy = "pid and mount namespaces (not visible)"
            case let code where code > 0: refusedBy = "the kernel (\(SystemError.name(of: Int32(code))))"
            default: refusedBy = "nothing: it succeeded"
            }
            return EscapeFinding(technique: EscapeTechnique.named(id)!, sandboxCgroupID: e.origin.sandboxCgroupID,
                                 pid: e.origin.pid, evidence: "\(what) \(e.path) \(outcome)", refusedBy: refusedBy,
                                 observedNanos: e.origin.bootNanos)
        case .network(let e):
            if e.operation == .bind, e.result == -Int64(EPERM) {
                let address = e.remote.ip != nil ? e.remote : e.local
                return EscapeFinding(technique: EscapeTechnique.named("network-policy")!, sandboxCgroupID: e.origin.sandboxCgroupID,
                                     pid: e.origin.pid, evidence: "bind to \(address) refused with EPERM (loopback only)",
                                     refusedBy: "cgroup BPF network policy", observedNanos: e.origin.bootNanos)
            }
            guard e.operation == .connect || e.operation == .sendto || e.operation == .sendmsg else { return nil }
            if let path = e.remote.unixPath, EscapeClassifier.runtimeSockets.contains(path) {
                return EscapeFinding(technique: EscapeTechnique.named("runtime-socket")!, sandboxCgroupID: e.origin.sandboxCgroupID,
                                     pid: e.origin.pid, evidence: "connect to \(path): \(outcome(e.result))",
                                     refusedBy: e.result < 0 ? "hidden path or missing socket" : "nothing: it connected",
                                     observedNanos: e.origin.bootNanos)
            }
            guard e.result == -Int64(EPERM), let ip = e.remote.ip else { return nil }
            let id = EscapeClassifier.isCloudMetadata(ip) ? "cloud-metadata" : "network-policy"
            return EscapeFinding(technique: EscapeTechnique.named(id)!, sandboxCgroupID: e.origin.sandboxCgroupID,
                                 pid: e.origin.pid, evidence: "\(e.operation.rawValue) to \(e.remote) refused with EPERM",
                                 refusedBy: "cgroup BPF network policy", observedNanos: e.origin.bootNanos)
        case .process(let e):
            return processLayer(e)
        case .device(let d):
            return EscapeFinding(technique: EscapeTechnique.named("device-access")!, sandboxCgroupID: d.origin.sandboxCgroupID,
                                 pid: d.origin.pid, evidence: "\(d.access.joined(separator: "+")) of \(d.device) refused with EPERM",
                                 refusedBy: "cgroup BPF device filter", observedNanos: d.origin.bootNanos)
        case .syscall(let s) where !s.isEntry && (s.returnValue == -Int64(ENOSPC) || s.returnValue == -Int64(EDQUOT)):
            // A write refused for want of space: a size cap (tmpfs workspace, /tmp) holding.
            let name = SyscallNames.name(Int(s.number))
            guard writeSyscalls.contains(name) else { return nil }
            return EscapeFinding(technique: EscapeTechnique.named("disk-filler")!, sandboxCgroupID: s.origin.sandboxCgroupID,
                                 pid: s.origin.pid, evidence: "\(name) refused with \(SystemError.name(of: Int32(-s.returnValue)))",
                                 refusedBy: "tmpfs size limit", observedNanos: s.origin.bootNanos)
        default:
            return nil
        }
    }

    /// The process layer's own reading of what succeeded or was refused
    /// outside the supervisor: code with no file, and the harmful forms of
    /// setresuid/setresgid, which the filter sends to its default EPERM.
    /// A namespace joined or capabilities held after a credential change are
    /// not indicators: a container runtime's init (runc's) does both in the
    /// sandbox's cgroup while it sets the container up; their refused forms
    /// come from the supervisor.
    static func processLayer(_ e: ProcessEvent) -> EscapeFinding? {
        switch e.activity {
        case .exec(let filename, _, _, _, _) where filename.hasPrefix("/memfd:"):
            return EscapeFinding(technique: EscapeTechnique.named("memfd-exec")!, sandboxCgroupID: e.origin.sandboxCgroupID,
                                 pid: e.origin.pid, evidence: "exec of \(filename) (a program with no file)",
                                 refusedBy: "nothing: it ran", observedNanos: e.origin.bootNanos)
        case .credentialChange(let nr, let result, _, _, _, _, _, _)
            where result == -Int64(EPERM) && SeccompProfile.effectiveIDCalls.contains(SyscallNames.name(Int(nr))):
            // The filter lets these through only in their harmless form; any other
            // form meets its default EPERM, so the supervisor never sees it.
            return EscapeFinding(technique: EscapeTechnique.named("setuid-root")!, sandboxCgroupID: e.origin.sandboxCgroupID,
                                 pid: e.origin.pid, evidence: "\(SyscallNames.name(Int(nr))) refused with EPERM",
                                 refusedBy: "seccomp", observedNanos: e.origin.bootNanos)
        default:
            return nil
        }
    }

    static let writeSyscalls: Set<String> = ["write", "writev", "pwrite64", "pwritev", "pwritev2", "fallocate",
                                             "copy_file_range", "sendfile", "splice"]

    /// A process adjusting itself (its OOM score): refused by the read-only
    /// /proc, but no attempt at anything outside.
    static func isOwnTuning(_ path: String) -> Bool {
        path.hasPrefix("/proc/self/oom_") || path.hasPrefix("/proc/thread-self/oom_")
    }

    /// Reading another process's namespaces (to setns into them) or memory,
    /// refused by the kernel's ptrace access check: the sandbox's init is not
    /// dumpable and the agent is nobody outside its user namespace.
    static func refusedProcessRead(_ e: FileEvent) -> EscapeFinding? {
        guard e.result == -Int64(EACCES) || e.result == -Int64(EPERM) else { return nil }
        let parts = e.path.split(separator: "/")
        guard parts.count >= 3, parts[0] == "proc", parts[1].allSatisfy(\.isNumber) else { return nil }
        let id: String
        switch parts[2] {
        case "ns" where parts.count == 4: id = "setns-host"
        case "mem", "environ": id = "proc-mem-outside"
        default: return nil
        }
        return EscapeFinding(technique: EscapeTechnique.named(id)!, sandboxCgroupID: e.origin.sandboxCgroupID, pid: e.origin.pid,
                             evidence: "open \(e.path) for reading refused with \(SystemError.name(of: Int32(-e.result)))",
                             refusedBy: "ptrace access check (a process that is not dumpable, or the agent's user namespace)",
                             observedNanos: e.origin.bootNanos)
    }

    static func isWriteAttempt(_ e: FileEvent) -> Bool {
        if e.operation == .read { return false }
        if e.operation != .open { return true } // every other file operation changes the filesystem
        let accessMode = e.openFlags & 3
        return accessMode == UInt32(O_WRONLY) || accessMode == UInt32(O_RDWR)
            || e.openFlags & UInt32(O_CREAT | O_TRUNC) != 0
    }

    static func outcome(_ result: Int64) -> String {
        result < 0 ? "failed with \(SystemError.name(of: Int32(-result)))" : "connected"
    }
}

extension EscapeFinding {
    /// The finding as an OCSF Detection Finding (class 2004), in the shape of
    /// the other events of docs/events.md.
    public func ocsf(encoder: OCSFEncoder, processes: ProcessTable) -> [String: Any] {
        let nanos = encoder.clock.unixNanos(boot: observedNanos)
        var finding: [String: Any] = ["title": technique.name, "uid": technique.id,
                                      "types": [indicators.isEmpty ? "escape attempt" : "escape"]]
        if let mitre = technique.mitre {
            finding["attacks"] = [["technique": ["uid": mitre]]]
        }
        return OCSFEncoder.detectionFinding(sandboxID: encoder.sandboxID, agentID: encoder.agentID, unixNanos: nanos,
                                            severityID: severity.rawValue, severity: severity.name).merging([
            "confidence_score": Int((confidence * 100).rounded()),
            "finding_info": finding,
            "message": "\(technique.id): \(evidence)",
            "evidences": [["actor": ["process": encoder.processObject(pid: pid, tid: nil, uid: nil, processes: processes)],
                           "data": ["refused_by": refusedBy, "detail": evidence]]],
            "unmapped": ["technique": technique.id, "refused_by": refusedBy, "layer": technique.layer.rawValue,
                         "maestro_layer": technique.maestro.rawValue,
                         "indicators": indicators.map { ["technique": $0.technique.id, "pid": Int($0.pid), "evidence": $0.evidence,
                                                         "confidence": $0.confidence] },
                         "recommended_actions": recommendedActions,
                         // From the kernel's record of the attempt to this finding.
                         "detection_latency_ns": Int64(bitPattern: detectedNanos &- observedNanos),
                         // ... and to this record, printed or stored (queues and output included).
                         "reported_latency_ns": Int64(bitPattern: bootClockNanos() &- observedNanos)],
        ]) { shared, _ in shared }
    }
}
