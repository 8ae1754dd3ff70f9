/// A sandbox's life cycle as the store records it.
public enum SandboxState: String, Codable, Sendable, CaseIterable {
    case creating, running, stopped, failed

    /// The states in which a sandbox holds its agent id: at most one per agent id.
    public static let active: Set<SandboxState> = [.creating, .running]

    public var isActive: Bool { Self.active.contains(self) }
}

/// One sandbox: what it was asked to be (policy, command) and where it lives in
/// the kernel (cgroup, init pid), so a restarted service can re-adopt it.
public struct SandboxRecord: Codable, Sendable, Equatable {
    public var sandboxID: String
    public var agentID: String
    public var classification: String
    public var isolation: String
    public var state: SandboxState
    public var policyJSON: String
    public var commandJSON: String
    public var cgroupPath: String?
    /// The inode number of the sandbox's cgroup2 directory (`bpf_get_current_cgroup_id()`).
    public var cgroupID: UInt64?
    public var initPID: Int32?
    public var createdNs: Int64
    public var endedNs: Int64?
    public var exitCode: Int32?
    public var detailsJSON: String?

    public init(sandboxID: String, agentID: String, classification: String, isolation: String,
                state: SandboxState, policyJSON: String, commandJSON: String,
                cgroupPath: String? = nil, cgroupID: UInt64? = nil, initPID: Int32? = nil,
                createdNs: Int64, endedNs: Int64? = nil, exitCode: Int32? = nil, detailsJSON: String? = nil) {
        self.sandboxID = sandboxID
        self.agentID = agentID
        self.classification = classification
        self.isolation = isolation
        self.state = state
        self.policyJSON = policyJSON
        self.commandJSON = commandJSON
        self.cgroupPath = cgroupPath
        self.cgroupID = cgroupID
        self.initPID = initPID
        self.createdNs = createdNs
        self.endedNs = endedNs
        self.exitCode = exitCode
        self.detailsJSON = detailsJSON
    }
}

/// One telemetry event, already rendered (OCSF JSON) by its producer.
public struct StoredEvent: Codable, Sendable, Equatable {
    /// Assigned by the store, increasing and never reused; 0 until stored.
    public var id: Int64
    /// Wall-clock time of the event, nanoseconds since the Unix epoch.
    public var timeNs: Int64
    public var sandboxID: String
    public var agentID: String
    /// "process", "file", "network", "alcub3", ...
    public var kind: String
    public var classUID: Int?
    public var json: String

    public init(id: Int64 = 0, timeNs: Int64, sandboxID: String, agentID: String, kind: String, classUID: Int? = nil, json: String) {
        self.id = id
        self.timeNs = timeNs
        self.sandboxID = sandboxID
        self.agentID = agentID
        self.kind = kind
        self.classUID = classUID
        self.json = json
    }
}

/// Which events to read. Results are always in id order; `afterID` pages forward
/// (`events tail --follow` polls with the last id it printed).
public struct EventFilter: Sendable, Equatable {
    public var sandboxID: String?
    public var agentID: String?
    public var kind: String?
    public var sinceNs: Int64?
    public var afterID: Int64?
    public var limit: Int
    /// The last `limit` matching events instead of the first (the start of a tail).
    public var newest: Bool

    public init(sandboxID: String? = nil, agentID: String? = nil, kind: String? = nil, sinceNs: Int64? = nil,
                afterID: Int64? = nil, limit: Int = 1000, newest: Bool = false) {
        self.sandboxID = sandboxID
        self.agentID = agentID
        self.kind = kind
        self.sinceNs = sinceNs
        self.afterID = afterID
        self.limit = limit
        self.newest = newest
    }
}

/// Stored events of one kind in one sandbox, kept as events are appended and
/// deleted (a lookup, not a scan).
public struct EventCount: Codable, Sendable, Equatable {
    public var kind: String
    public var events: Int
    /// The UTF-8 length of their JSON.
    public var bytes: Int64
}

/// A finding of an analyzer (OCSF Detection Finding JSON, rendered by its producer).
public struct AlertRecord: Codable, Sendable, Equatable {
    /// Assigned by the store, increasing and never reused; 0 until stored.
    public var id: Int64
    public var timeNs: Int64
    public var sandboxID: String
    public var agentID: String
    /// OCSF severity_id: 1 Informational ... 5 Critical, 6 Fatal.
    public var severityID: Int
    /// The technique the finding names (an escape-suite id or a MITRE ATT&CK id).
    public var technique: String
    public var json: String

    public init(id: Int64 = 0, timeNs: Int64, sandboxID: String, agentID: String, severityID: Int, technique: String, json: String) {
        self.id = id
        self.timeNs = timeNs
        self.sandboxID = sandboxID
        self.agentID = agentID
        self.severityID = severityID
        self.technique = technique
        self.json = json
    }
}

/// Which alerts to read; in id order, like `EventFilter`.
public struct AlertFilter: Sendable, Equatable {
    public var sandboxID: String?
    public var agentID: String?
    public var minSeverityID: Int?
    public var sinceNs: Int64?
    public var afterID: Int64?
    public var limit: Int
    public var newest: Bool

    public init(sandboxID: String? = nil, agentID: String? = nil, minSeverityID: Int? = nil, sinceNs: Int64? = nil,
                afterID: Int64? = nil, limit: Int = 1000, newest: Bool = false) {
        self.sandboxID = sandboxID
        self.agentID = agentID
        self.minSeverityID = minSeverityID
        self.sinceNs = sinceNs
        self.afterID = afterID
        self.limit = limit
        self.newest = newest
    }
}

/// An integrity baseline of a sandbox's file tree. Baselines are immutable: a new
/// baseline gets a new id.
public struct BaselineRecord: Codable, Sendable, Equatable {
    public var id: String
    public var sandboxID: String
    public var agentID: String
    public var createdNs: Int64
    public var json: String

    public init(id: String, sandboxID: String, agentID: String, createdNs: Int64, json: String) {
        self.id = id
        self.sandboxID = sandboxID
        self.agentID = agentID
        self.createdNs = createdNs
        self.json = json
    }
}

/// A baseline without its (possibly large) JSON, for listings.
public struct BaselineSummary: Codable, Sendable, Equatable {
    public var id: String
    public var sandboxID: String
    public var agentID: String
    public var createdNs: Int64
    /// The UTF-8 length of the baseline's JSON.
    public var bytes: Int
}

/// One audit log entry; `hash` chains it to the entry before, `mac` proves it
/// was written by the holder of the audit key (docs/store.md).
public struct AuditRecord: Codable, Sendable, Equatable {
    public var seq: Int64
    public var timeNs: Int64
    public var actor: String
    public var action: String
    public var subject: String
    public var detailsJSON: String
    public var prevHash: String
    public var hash: String
    /// Who asked (a `Requester` as JSON); "{}" in records written before requesters were kept.
    public var requesterJSON: String = "{}"
    /// HMAC-SHA256 (hex) with the audit key; nil in records written before keys.
    public var mac: String? = nil
}

/// The outcome of `EventStore.verifyAudit()`.
public struct AuditVerification: Codable, Sendable, Equatable {
    public var ok: Bool
    /// Records read (all of them: verification goes on past the first break only to count).
    public var records: Int
    /// The seq of the first record that does not fit the chain.
    public var firstBroken: Int64?
    public var reason: String?
    /// The hash of the last record; note it elsewhere to detect a truncated tail.
    public var headHash: String
    /// Records 1 to `unkeyedRecords` carry no MAC: written before the audit key existed.
    public var unkeyedRecords: Int = 0
    /// The MAC of the last record (nil when it is unkeyed): what the service exports on each append.
    public var headMAC: String? = nil

    public init(ok: Bool, records: Int, firstBroken: Int64?, reason: String?, headHash: String,
                unkeyedRecords: Int = 0, headMAC: String? = nil) {
        self.ok = ok
        self.records = records
        self.firstBroken = firstBroken
        self.reason = reason
        self.headHash = headHash
        self.unkeyedRecords = unkeyedRecords
        self.headMAC = headMAC
    }

    /// One line for people: intact or where it breaks, and which records are unkeyed.
    public var summary: String {
        let unkeyed = unkeyedRecords == 0 ? "" : "; unkeyed records 1..\(unkeyedRecords) (written before keys)"
        if ok {
            let macs = records > unkeyedRecords ? ", MACs verified" : ""
            return "audit log intact: \(records) records, chain verified\(macs)\(unkeyed)"
        }
        return "audit log BROKEN at record \(firstBroken.map(String.init) ?? "?"): \(reason ?? "")\(unkeyed)"
    }
}

/// What one retention pass removed.
public struct RetentionResult: Codable, Sendable, Equatable {
    public var deletedEvents: Int
    public var deletedAlerts: Int
    /// Event data (UTF-8 JSON bytes) before and after the pass.
    public var eventBytesBefore: Int64
    public var eventBytesAfter: Int64
    /// The audit entry recording the deletion; nil when nothing was deleted.
    public var auditSeq: Int64?
    /// Pages an incremental vacuum gave back to the file system (0 when the
    /// freed pages stay for reuse).
    public var pagesReturned: Int
}
