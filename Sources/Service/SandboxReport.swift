import Foundation
import Policy
import Store
import Telemetry
import KernelSupport

/// `integrity report`: what one sandbox did over a time range, aggregated from
/// the store (events, alerts, audit log). The CLI renders it as HTML and
/// writes it as JSON; both carry the same data.
public struct SandboxReport: Codable, Sendable {
    public static let formatName = "alcub3-sandbox-report/1"
    /// Entries in each top list.
    public static let topCount = 15
    /// Events read at most: a report stays bounded in time and memory whatever the sandbox did.
    public static let maxEvents = 2_000_000
    /// Alerts and audit entries kept at most (the rest are counted, not listed).
    public static let maxListed = 10_000
    /// The timeline has at most this many buckets: one per minute, wider for long ranges.
    public static let maxBuckets = 720
    public static let timelineKinds = ["process", "file", "network", "alert"]
    public static let anomalyNote = "No anomaly scores in this range: the behavioural analyzer was still learning the agent "
        + "(behavioral_analysis.observation_window), or is off for it. Behaviour that diverges from a baseline's profile is also "
        + "reported by integrity validation (integrity findings, dimension behaviour)."
    public static let anomalyScored = "The behavioural analyzer's scores, one per analysis window (docs/detection.md): "
        + "the anomaly of the syscall sequences and the risk with what the activity touched; alerting windows are marked."

    public var format = SandboxReport.formatName
    public var generatedAt: String
    public var agentID: String
    public var sandboxID: String
    public var classification: String
    public var isolation: String
    public var state: String
    public var command: [String]
    public var createdAt: String
    public var endedAt: String?
    public var exitCode: Int32?
    /// The effective policy in a few lines, in a fixed order.
    public var policy: [Field]
    /// The range covered: the one asked for, or the sandbox's life.
    public var start: String
    public var end: String
    /// Events in the range by kind (every kind, "alcub3" service records included).
    public var eventsByKind: [String: Int]
    public var eventsRead: Int
    /// True when the range held more than `maxEvents` events: the figures cover the first ones only.
    public var eventsTruncated: Bool
    public var timeline: Timeline
    public var alerts: [Alert]
    public var alertsOmitted: Int
    /// Alerts whose technique starts with "integrity-", with their evidence.
    public var integrityFindings: [IntegrityFinding]
    public var anomalyScores: AnomalyScores
    public var topProcesses: [Ranked]
    public var topFiles: [Ranked]
    public var topDestinations: [Ranked]
    public var audit: [AuditEntry]
    public var auditOmitted: Int

    public struct Field: Codable, Sendable {
        public var name: String
        public var value: String
    }

    /// Events per bucket by kind (`timelineKinds`); buckets cover [start, end) without gaps.
    public struct Timeline: Codable, Sendable {
        public var bucketSeconds: Int
        /// The end of the chart: the range's end, or the sandbox's when it ended earlier.
        public var end: String
        public var buckets: [Bucket]

        public struct Bucket: Codable, Sendable {
            public var start: String
            public var process = 0
            public var file = 0
            public var network = 0
            public var alert = 0

            public func count(_ kind: String) -> Int {
                switch kind {
                case "process": process
                case "file": file
                case "network": network
                case "alert": alert
                default: 0
                }
            }

            mutating func add(_ kind: String) {
                switch kind {
                case "process": process += 1
                case "file": file += 1
                case "network": network += 1
                case "alert": alert += 1
                default: break
                }
            }
        }
    }

    /// One Detection Finding (an escape attempt, an integrity change, a resource abuse).
    public struct Alert: Codable, Sendable {
        public var id: Int64
        public var time: String
        public var technique: String
        public var severityID: Int
        public var message: String
        /// What refused an escape attempt (seccomp, Landlock, ...); nil for findings nothing had to refuse.
        public var refusedBy: String?
        /// The process the finding names ("pid 12 name", or "pid 12" when it was gone before it could be named).
        public var process: String?
    }

    public struct IntegrityFinding: Codable, Sendable {
        public var alertID: Int64
        public var time: String
        /// content, permissions, owner, created, deleted, kind, ... (the technique without "integrity-").
        public var change: String
        public var dimension: String?
        public var path: String?
        public var old: String?
        public var new: String?
        public var foundBy: String?
        public var cause: String?
    }

    public struct AnomalyScores: Codable, Sendable {
        public var available: Bool
        public var note: String
        public var points: [Point]

        public struct Point: Codable, Sendable {
            public var time: String
            /// The window's anomaly score (0-1), its risk score and whether it alerted.
            public var score: Double
            public var risk: Double?
            public var alert: Bool?
        }
    }

    /// A name and how many events named it; `failures`: how many of those the kernel refused.
    public struct Ranked: Codable, Sendable {
        public var name: String
        public var count: Int
        public var failures: Int
    }

    public struct AuditEntry: Codable, Sendable {
        public var seq: Int64
        public var time: String
        public var actor: String
        public var action: String
        public var details: String
        public var hash: String
    }
}

extension SandboxReport {
    /// The report of `record` over [sinceNs, untilNs] (each defaulting to the
    /// sandbox's life), read from `store`.
    public static func make(store: EventStore, record: SandboxRecord, sinceNs: Int64?, untilNs: Int64?,
                            now: Int64 = WallClock.nowUnixNanos()) throws -> SandboxReport {
        let start = sinceNs ?? record.createdNs
        let end = untilNs ?? record.endedNs ?? now
        guard start <= end else {
            throw ServiceFailure(Alcub3Exit.usage, "the start time \(WallClock.iso8601(unixNanos: start)) is after the end time \(WallClock.iso8601(unixNanos: end))")
        }
        var report = SandboxReport(
            generatedAt: WallClock.iso8601(unixNanos: now), agentID: record.agentID, sandboxID: record.sandboxID,
            classification: record.classification, isolation: record.isolation, state: record.state.rawValue,
            command: (try? JSONDecoder().decode([String].self, from: Data(record.commandJSON.utf8))) ?? [],
            createdAt: WallClock.iso8601(unixNanos: record.createdNs), endedAt: record.endedNs.map { WallClock.iso8601(unixNanos: $0) },
            exitCode: record.exitCode, policy: policySummary(record),
            start: WallClock.iso8601(unixNanos: start), end: WallClock.iso8601(unixNanos: end),
            eventsByKind: [:], eventsRead: 0, eventsTruncated: false,
            timeline: Timeline(bucketSeconds: 60, end: "", buckets: []), alerts: [], alertsOmitted: 0, integrityFindings: [],
            anomalyScores: AnomalyScores(available: false, note: anomalyNote, points: []),
            topProcesses: [], topFiles: [], topDestinations: [], audit: [], auditOmitted: 0)
        try report.readEvents(store, sandboxID: record.sandboxID, start: start, end: end,
                              life: record.createdNs...(record.endedNs ?? now))
        if report.anomalyScores.available { report.anomalyScores.note = anomalyScored }
        try report.readAlerts(store, sandboxID: record.sandboxID, start: start, end: end)
        try report.readAudit(store, sandboxID: record.sandboxID, start: start, end: end)
        return report
    }

    private static func policySummary(_ record: SandboxRecord) -> [Field] {
        guard let policy = try? JSONDecoder().decode(SandboxPolicy.self, from: Data(record.policyJSON.utf8)) else {
            return [Field(name: "policy", value: "the stored policy cannot be read")]
        }
        let network: String = switch policy.network {
        case .any: "any destination"
        case .privateAndLoopback: "private and loopback ranges only"
        case .listed(let cidrs, let ports):
            (cidrs.isEmpty ? "no destination" : cidrs.map(\.description).joined(separator: ", "))
                + (ports.isEmpty ? ", every port" : ", ports " + ports.map(String.init).joined(separator: ", "))
        case .none: "none (the sandbox's own loopback only)"
        }
        return [
            Field(name: "network", value: "\(policy.networkAccess.joined(separator: ", ")): \(network)"),
            Field(name: "capabilities", value: policy.capabilities.isEmpty ? "none" : policy.capabilities.map(\.rawValue).joined(separator: ", ")),
            Field(name: "limits", value: String(format: "%.2f cores, %@ memory, %d pids", policy.cpuLimit,
                                                mebibytes(policy.memoryLimitBytes) as NSString, policy.pidsLimit)),
            Field(name: "workspace", value: "\(policy.filesystem.workspace) (\(mebibytes(policy.filesystem.workspaceBytes)))"
                  + (policy.filesystem.readOnlySystem ? ", system read-only" : "")),
            Field(name: "seccomp", value: policy.seccompProfile == nil ? "the capabilities' syscall allow-list" : "a custom profile"),
            Field(name: "on_violation", value: policy.onViolation.rawValue),
        ]
    }

    private static func mebibytes(_ bytes: UInt64) -> String { String(format: "%.0f MiB", Double(bytes) / 1_048_576) }

    /// Counts, timeline and top lists from the events, read in pages (never all at once).
    private mutating func readEvents(_ store: EventStore, sandboxID: String, start: Int64, end: Int64,
                                     life: ClosedRange<Int64>) throws {
        // The chart covers the part of the range the sandbox lived: an early
        // --start-time must not draw years of empty minutes.
        let chartStart = max(start, life.lowerBound), chartEnd = max(chartStart, min(end, life.upperBound))
        let minutes = Int((chartEnd - chartStart) / 60_000_000_000) + 1
        let bucketSeconds = 60 * ((minutes + Self.maxBuckets - 1) / Self.maxBuckets)
        let bucketNs = Int64(bucketSeconds) * 1_000_000_000
        let count = Int((chartEnd - chartStart) / bucketNs) + 1
        var buckets = (0..<count).map { Timeline.Bucket(start: WallClock.iso8601(unixNanos: chartStart + Int64($0) * bucketNs)) }
        var processes: [String: Ranked] = [:], files: [String: Ranked] = [:], destinations: [String: Ranked] = [:]
        // A short-lived process may be gone before the pipeline names its
        // events' actor; its fork and exec events named it (by pid) earlier.
        var names: [Int: String] = [:]
        var after: Int64 = 0
        reading: while true {
            let rows = try store.events(EventFilter(sandboxID: sandboxID, sinceNs: start, afterID: after, limit: 1000))
            if rows.isEmpty { break }
            for row in rows {
                after = row.id
                guard row.timeNs <= end else { continue }
                if eventsRead == Self.maxEvents {
                    eventsTruncated = true
                    break reading
                }
                eventsRead += 1
                eventsByKind[row.kind, default: 0] += 1
                if row.timeNs >= chartStart {
                    let index = Int((row.timeNs - chartStart) / bucketNs)
                    if index < buckets.count { buckets[index].add(row.kind) }
                }
                if row.kind == "alcub3", row.json.contains("\"behaviour_window\""),
                   let window = try? JSONSerialization.jsonObject(with: Data(row.json.utf8)) as? [String: Any],
                   let anomaly = window["anomaly"] as? Double {
                    anomalyScores.available = true
                    anomalyScores.points.append(.init(time: WallClock.iso8601(unixNanos: row.timeNs), score: anomaly,
                                                      risk: window["risk"] as? Double, alert: window["alert"] as? Bool))
                    continue
                }
                guard ["process", "file", "network"].contains(row.kind),
                      let object = try? JSONSerialization.jsonObject(with: Data(row.json.utf8)) as? [String: Any] else { continue }
                let failed = object["status"] as? String == "Failure"
                if object["class_uid"] as? Int == 1007, let process = object["process"] as? [String: Any],
                   let pid = process["pid"] as? Int, let name = process["name"] as? String {
                    names[pid] = name
                }
                if let actor = (object["actor"] as? [String: Any])?["process"] as? [String: Any] {
                    let pid = actor["pid"] as? Int ?? 0
                    let name = actor["name"] as? String ?? names[pid] ?? "pid \(pid)"
                    Self.tally(&processes, name, failed: failed)
                }
                // Files written: a read (activity 2) changes nothing.
                if object["class_uid"] as? Int == 1001, object["activity_id"] as? Int != 2,
                   let path = (object["file"] as? [String: Any])?["path"] as? String {
                    Self.tally(&files, path, failed: failed)
                }
                if object["class_uid"] as? Int == 4001, let destination = object["dst_endpoint"] as? [String: Any] {
                    let host = destination["ip"] as? String ?? destination["path"] as? String ?? "?"
                    let name = (destination["port"] as? Int).map { host.contains(":") ? "[\(host)]:\($0)" : "\(host):\($0)" } ?? host
                    Self.tally(&destinations, name, failed: failed)
                }
            }
        }
        timeline = Timeline(bucketSeconds: bucketSeconds, end: WallClock.iso8601(unixNanos: chartEnd), buckets: buckets)
        topProcesses = Self.top(processes)
        topFiles = Self.top(files)
        topDestinations = Self.top(destinations)
    }

    private static func tally(_ table: inout [String: Ranked], _ name: String, failed: Bool) {
        table[name, default: Ranked(name: name, count: 0, failures: 0)].count += 1
        if failed { table[name]!.failures += 1 }
    }

    /// The most frequent first; ties by name, so a report is reproducible.
    private static func top(_ table: [String: Ranked]) -> [Ranked] {
        Array(table.values.sorted { ($0.count, $1.name) > ($1.count, $0.name) }.prefix(topCount))
    }

    private mutating func readAlerts(_ store: EventStore, sandboxID: String, start: Int64, end: Int64) throws {
        var after: Int64 = 0
        while true {
            let rows = try store.alerts(AlertFilter(sandboxID: sandboxID, sinceNs: start, afterID: after, limit: 1000))
            if rows.isEmpty { break }
            for row in rows {
                after = row.id
                guard row.timeNs <= end else { continue }
                guard alerts.count < Self.maxListed else {
                    alertsOmitted += 1
                    continue
                }
                let object = (try? JSONSerialization.jsonObject(with: Data(row.json.utf8)) as? [String: Any]) ?? [:]
                let unmapped = object["unmapped"] as? [String: Any] ?? [:]
                let evidence = (object["evidences"] as? [[String: Any]])?.first ?? [:]
                let actor = (evidence["actor"] as? [String: Any])?["process"] as? [String: Any]
                let time = WallClock.iso8601(unixNanos: row.timeNs)
                alerts.append(Alert(id: row.id, time: time, technique: row.technique, severityID: row.severityID,
                                    message: object["message"] as? String ?? "",
                                    refusedBy: unmapped["refused_by"] as? String,
                                    process: actor.map { "pid \($0["pid"] as? Int ?? 0)" + (($0["name"] as? String).map { " \($0)" } ?? "") }))
                if row.technique.hasPrefix("integrity-") {
                    let data = evidence["data"] as? [String: Any] ?? [:]
                    func text(_ key: String) -> String? { (data[key] as? String).flatMap { $0.isEmpty ? nil : $0 } }
                    integrityFindings.append(IntegrityFinding(
                        alertID: row.id, time: time, change: String(row.technique.dropFirst("integrity-".count)),
                        dimension: unmapped["dimension"] as? String, path: (evidence["file"] as? [String: Any])?["path"] as? String,
                        old: text("old"), new: text("new"), foundBy: text("found_by"), cause: text("cause")))
                }
            }
        }
    }

    /// The audit entries about this sandbox (their subject is its id).
    private mutating func readAudit(_ store: EventStore, sandboxID: String, start: Int64, end: Int64) throws {
        var after: Int64 = 0
        while true {
            let records = try store.auditRecords(afterSeq: after, limit: 1000)
            guard let last = records.last else { break }
            after = last.seq
            for record in records where record.subject == sandboxID && (start...end).contains(record.timeNs) {
                guard audit.count < Self.maxListed else {
                    auditOmitted += 1
                    continue
                }
                audit.append(AuditEntry(seq: record.seq, time: WallClock.iso8601(unixNanos: record.timeNs), actor: record.actor,
                                        action: record.action, details: record.detailsJSON, hash: record.hash))
            }
        }
    }
}
