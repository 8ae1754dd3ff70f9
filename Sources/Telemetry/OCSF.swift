import Foundation
import KernelSupport

/// Renders telemetry as OCSF 1.3 events (docs/events.md): Process Activity
/// (1007), File System Activity (1001), Network Activity (4001); Detection
/// Finding (2004) is used by the analyzers. Every event also carries alcub3's
/// own `sandbox_id` and `agent_id`.
public struct OCSFEncoder: Sendable {
    public static let schemaVersion = "1.3.0"
    public static let productVersion = "0.1.0"

    public let sandboxID: String
    public let agentID: String
    public let clock: WallClock

    public init(sandboxID: String, agentID: String, clock: WallClock) {
        self.sandboxID = sandboxID
        self.agentID = agentID
        self.clock = clock
    }

    /// A JSON object for one event, or nil for kinds that are not OCSF events
    /// (syscall records and drop reports are rendered by `alcub3Record`).
    public func encode(_ event: TelemetryEvent, processes: ProcessTable) -> [String: Any]? {
        switch event {
        case .process(let e): return process(e, processes)
        case .file(let e): return file(e, processes)
        case .network(let e): return network(e, processes)
        default: return nil
        }
    }

    private func base(classUID: Int, className: String, categoryUID: Int, categoryName: String,
                      activityID: Int, activityName: String, origin: EventOrigin, processes: ProcessTable) -> [String: Any] {
        let nanos = clock.unixNanos(boot: origin.bootNanos)
        var object: [String: Any] = [
            "class_uid": classUID, "class_name": className,
            "category_uid": categoryUID, "category_name": categoryName,
            "activity_id": activityID, "activity_name": activityName,
            "type_uid": classUID * 100 + activityID,
            "severity_id": 1, "severity": "Informational",
            "time": nanos / 1_000_000,
            "time_dt": WallClock.iso8601(unixNanos: nanos),
            "metadata": ["version": Self.schemaVersion,
                         "product": ["name": "alcub3", "vendor_name": "alcub3", "version": Self.productVersion]],
            "sandbox_id": sandboxID,
            "agent_id": agentID,
            "actor": ["process": processObject(pid: origin.pid, tid: origin.tid, uid: origin.uid, processes: processes)],
        ]
        if origin.truncated { object["unmapped"] = ["truncated": true] }
        return object
    }

    public func processObject(pid: Int32, tid: Int32?, uid: UInt32?, processes: ProcessTable) -> [String: Any] {
        var p: [String: Any] = ["pid": Int(pid)]
        if let tid { p["tid"] = Int(tid) }
        if let uid { p["user"] = ["uid": String(uid)] }
        if let info = processes[pid] {
            p["name"] = info.name
            p["file"] = ["path": info.executable, "name": PathText.lastComponent(of: info.executable)]
            if !info.arguments.isEmpty { p["cmd_line"] = info.arguments.joined(separator: " ") }
            if info.parentPID > 0 { p["parent_process"] = ["pid": Int(info.parentPID)] }
        }
        return p
    }

    private func process(_ e: ProcessEvent, _ processes: ProcessTable) -> [String: Any] {
        switch e.activity {
        case .exec(let filename, let arguments, let parentPID, let euid, let name):
            var o = base(classUID: 1007, className: "Process Activity", categoryUID: 1, categoryName: "System Activity",
                         activityID: 1, activityName: "Launch", origin: e.origin, processes: processes)
            o["process"] = ["pid": Int(e.origin.pid), "tid": Int(e.origin.tid), "name": name,
                            "file": ["path": filename, "name": PathText.lastComponent(of: filename)],
                            "cmd_line": arguments.joined(separator: " "),
                            "parent_process": ["pid": Int(parentPID)],
                            "user": ["uid": String(e.origin.uid)], "unmapped": ["euid": Int(euid)]] as [String: Any]
            o["status"] = "Success"
            return o
        case .fork(let child, let childTID, let isThread, let name):
            var o = base(classUID: 1007, className: "Process Activity", categoryUID: 1, categoryName: "System Activity",
                         activityID: 99, activityName: isThread ? "Thread Create" : "Fork",
                         origin: e.origin, processes: processes)
            var target = processObject(pid: child, tid: childTID, uid: e.origin.uid, processes: processes)
            target["name"] = name
            target["parent_process"] = ["pid": Int(e.origin.pid)]
            o["process"] = target
            return o
        case .exit(let status, _, let isThread, _):
            var o = base(classUID: 1007, className: "Process Activity", categoryUID: 1, categoryName: "System Activity",
                         activityID: 2, activityName: "Terminate", origin: e.origin, processes: processes)
            o["process"] = processObject(pid: e.origin.pid, tid: e.origin.tid, uid: e.origin.uid, processes: processes)
            let signal = status & 0x7f
            var exit: [String: Any] = ["thread": isThread]
            if signal == 0 { exit["exit_code"] = Int((status >> 8) & 0xff) } else { exit["signal"] = Int(signal) }
            o["exit_code"] = signal == 0 ? Int((status >> 8) & 0xff) : 128 + Int(signal)
            o["unmapped"] = exit
            return o
        case .namespaceChange(let nr, let flags, let fd, let result):
            var o = base(classUID: 1007, className: "Process Activity", categoryUID: 1, categoryName: "System Activity",
                         activityID: 99, activityName: "Namespace Change", origin: e.origin, processes: processes)
            o["process"] = processObject(pid: e.origin.pid, tid: e.origin.tid, uid: e.origin.uid, processes: processes)
            addStatus(&o, result)
            o["unmapped"] = ["syscall": Int(nr), "flags": String(flags, radix: 16), "fd": Int(fd)] as [String: Any]
            return o
        case .credentialChange(let nr, let result, let uid, let euid, let gid, let egid, let capE, let capP):
            var o = base(classUID: 1007, className: "Process Activity", categoryUID: 1, categoryName: "System Activity",
                         activityID: 5, activityName: "Set User ID", origin: e.origin, processes: processes)
            o["process"] = processObject(pid: e.origin.pid, tid: e.origin.tid, uid: uid, processes: processes)
            addStatus(&o, result)
            o["unmapped"] = ["syscall": Int(nr), "uid": Int(uid), "euid": Int(euid), "gid": Int(gid), "egid": Int(egid),
                             "cap_effective": String(capE, radix: 16), "cap_permitted": String(capP, radix: 16)] as [String: Any]
            return o
        }
    }

    private func file(_ e: FileEvent, _ processes: ProcessTable) -> [String: Any] {
        let (id, name): (Int, String) = switch e.operation {
        case .open: e.openFlags & 0o100 != 0 ? (1, "Create") : (3, "Update")  // O_CREAT
        case .truncate: (3, "Update")
        case .rename: (5, "Rename")
        case .unlink, .rmdir: (4, "Delete")
        case .mkdir, .symlink, .link: (1, "Create")
        case .chmod, .chown: (7, "Set Security")
        case .read: (2, "Read")
        }
        var o = base(classUID: 1001, className: "File System Activity", categoryUID: 1, categoryName: "System Activity",
                     activityID: id, activityName: name, origin: e.origin, processes: processes)
        let type = e.operation == .mkdir || e.operation == .rmdir ? "Folder" : (e.operation == .symlink ? "Symbolic Link" : "Regular File")
        o["file"] = ["path": e.path, "name": PathText.lastComponent(of: e.path), "type": type]
        if let second = e.secondPath {
            o[e.operation == .symlink ? "file" : "file_result"] = ["path": second, "name": PathText.lastComponent(of: second)]
            if e.operation == .symlink { o["unmapped"] = ["symlink_target": e.path] }
        }
        addStatus(&o, e.result)
        var details: [String: Any] = ["operation": e.operation.rawValue, "syscall": Int(e.syscall)]
        if e.operation == .open { details["open_flags"] = String(e.openFlags, radix: 8) }
        if e.operation == .chmod || e.operation == .open { details["mode"] = String(e.mode, radix: 8) }
        if e.operation == .chown { details["owner_uid"] = Int(Int32(bitPattern: e.ownerUID)); details["owner_gid"] = Int(Int32(bitPattern: e.ownerGID)) }
        if e.fileID != 0 { details["file_id"] = String(e.fileID, radix: 16) }
        o["unmapped"] = (o["unmapped"] as? [String: Any] ?? [:]).merging(details) { a, _ in a }
        return o
    }

    private func network(_ e: NetworkEvent, _ processes: ProcessTable) -> [String: Any] {
        let (id, name): (Int, String)
        switch (e.operation, e.result) {
        case (.listen, _), (.bind, _): (id, name) = (7, "Listen")
        case (_, let r) where r < 0 && r != -115 /* EINPROGRESS */: (id, name) = (e.result == -111 ? 5 : 4, e.result == -111 ? "Refuse" : "Fail")
        case (.sendto, _), (.sendmsg, _): (id, name) = (6, "Traffic")
        default: (id, name) = (1, "Open")
        }
        var o = base(classUID: 4001, className: "Network Activity", categoryUID: 4, categoryName: "Network Activity",
                     activityID: id, activityName: name, origin: e.origin, processes: processes)
        func endpoint(_ a: SocketAddress) -> [String: Any] {
            var d: [String: Any] = [:]
            if let ip = a.ip { d["ip"] = ip }
            if a.port != 0 { d["port"] = Int(a.port) }
            if let path = a.unixPath { d["path"] = path }
            return d
        }
        let remote = endpoint(e.remote), local = endpoint(e.local)
        if e.operation == .bind || e.operation == .listen {
            o["src_endpoint"] = remote.isEmpty ? local : remote
        } else {
            if !remote.isEmpty { o["dst_endpoint"] = remote }
            if !local.isEmpty { o["src_endpoint"] = local }
        }
        let protocolName: String? = switch e.proto { case 6: "tcp"; case 17: "udp"; case 1: "icmp"; case 58: "icmpv6"; default: nil }
        var connection: [String: Any] = ["protocol_num": Int(e.proto),
                                         "protocol_ver_id": e.remote.family == SocketAddress.inet6 ? 6 : (e.remote.family == SocketAddress.inet ? 4 : 0),
                                         "direction_id": e.operation == .accept ? 1 : 2,
                                         "direction": e.operation == .accept ? "Inbound" : "Outbound"]
        if let protocolName { connection["protocol_name"] = protocolName }
        o["connection_info"] = connection
        addStatus(&o, e.result)
        o["unmapped"] = ["operation": e.operation.rawValue, "fd": Int(e.fd), "family": Int(e.remote.family),
                         "socket_type": Int(e.socketType)] as [String: Any]
        return o
    }

    private func addStatus(_ o: inout [String: Any], _ result: Int64) {
        if result < 0 && result != -115 {
            o["status"] = "Failure"
            o["status_id"] = 2
            o["status_code"] = errnoName(Int32(-result))
            o["status_detail"] = String(cString: strerror(Int32(-result)))
        } else {
            o["status"] = "Success"
            o["status_id"] = 1
        }
    }

    public func errnoName(_ code: Int32) -> String { SystemError.name(of: code) }

    /// One line of JSON with sorted keys.
    /// The fields every alcub3 Detection Finding (class 2004) shares: the
    /// escape detector's, the behavioural analyzer's and integrity validation's.
    /// Each adds its finding_info, message, evidences and unmapped.
    public static func detectionFinding(sandboxID: String, agentID: String, unixNanos: Int64,
                                        severityID: Int, severity: String) -> [String: Any] {
        [
            "class_uid": 2004, "class_name": "Detection Finding", "category_uid": 2, "category_name": "Findings",
            "activity_id": 1, "activity_name": "Create", "type_uid": 200401,
            "severity_id": severityID, "severity": severity, "status_id": 1, "status": "New",
            "time": unixNanos / 1_000_000, "time_dt": WallClock.iso8601(unixNanos: unixNanos),
            "metadata": ["version": schemaVersion, "product": ["name": "alcub3", "vendor_name": "alcub3", "version": productVersion]],
            "sandbox_id": sandboxID, "agent_id": agentID,
        ]
    }

    public static func jsonLine(_ object: [String: Any]) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) else {
            return "{\"error\":\"unencodable event\"}"
        }
        return String(decoding: data, as: UTF8.self)
    }
}
