#if canImport(Glibc)
import Glibc
#endif

extension EventStore {
    /// `make bench`: appends `events` OCSF-like events (about 400 bytes of JSON
    /// each, process, file and network activity of 8 sandboxes) in batches of
    /// `batch` into the store at `path`, which should not exist yet. Only the
    /// appends are timed, not building the rows (that is the renderer's cost).
    /// bytesPerEvent is the database file's growth per event, after a checkpoint
    /// has moved the WAL into it (indexes and counters included).
    public static func benchmarkInsert(path: String, events: Int, batch: Int) throws -> (eventsPerSecond: Double, bytesPerEvent: Double) {
        precondition(events > 0 && batch > 0)
        let store = try EventStore(path: path)
        let sizeBefore = try store.checkpointedFileSize()
        let clock = ContinuousClock()
        var elapsed = Duration.zero
        let start = wallClockNanos()
        var appended = 0
        while appended < events {
            let rows = (appended..<min(appended + batch, events)).map { sampleEvent($0, timeNs: start + Int64($0) * 1000) }
            let began = clock.now
            try store.appendEvents(rows)
            elapsed += clock.now - began
            appended += rows.count
        }
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let growth = try store.checkpointedFileSize() - sizeBefore
        return (Double(events) / seconds, Double(growth) / Double(events))
    }

    /// The database file's size once the WAL is checkpointed into it.
    func checkpointedFileSize() throws(StoreError) -> Int64 {
        try withDatabase { database throws(StoreError) in
            try database.queryFirst("PRAGMA wal_checkpoint(TRUNCATE)", operation: "checkpoint \(database.path)") { _ in () }
            return try database.queryFirst("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                                           operation: "size \(database.path)") { $0.int64(0) } ?? 0
        }
    }

    /// Event `n` of the benchmark: what the OCSF encoder renders for an exec, a
    /// file create and a connect, with the fields that vary between events varied.
    static func sampleEvent(_ n: Int, timeNs: Int64) -> StoredEvent {
        let sandbox = n % 8
        let sandboxID = "sb-00000000000\(sandbox)"
        let agentID = "agent-\(sandbox)"
        let pid = 4000 + n % 997
        let millis = timeNs / 1_000_000
        let nanos = String(1_000_000_000 + timeNs % 1_000_000_000).dropFirst()
        let common = """
            "actor":{"process":{"name":"python3","pid":\(pid)}},"agent_id":"\(agentID)",\
            "metadata":{"product":{"name":"alcub3","version":"0.1.0"},"version":"1.3.0"},\
            "sandbox_id":"\(sandboxID)","time":\(millis),"time_dt":"2026-11-29T04:24:01.\(nanos)Z"
            """
        switch n % 3 {
        case 0:
            return StoredEvent(timeNs: timeNs, sandboxID: sandboxID, agentID: agentID, kind: "process", classUID: 1007, json: """
                {"activity_id":1,"activity_name":"Launch",\(common),"class_uid":1007,"process":{"cmd_line":"python3 tool.py --step \(n)",\
                "file":{"path":"/usr/bin/python3"},"pid":\(pid + 1)},"type_uid":100701}
                """)
        case 1:
            return StoredEvent(timeNs: timeNs, sandboxID: sandboxID, agentID: agentID, kind: "file", classUID: 1001, json: """
                {"activity_id":1,"activity_name":"Create",\(common),"class_uid":1001,"file":{"path":"/workspace/out/result-\(n).json"},\
                "type_uid":100101,"unmapped":{"flags":"0x241","file_id":\(n)}}
                """)
        default:
            return StoredEvent(timeNs: timeNs, sandboxID: sandboxID, agentID: agentID, kind: "network", classUID: 4001, json: """
                {"activity_id":1,"activity_name":"Open",\(common),"class_uid":4001,"dst_endpoint":{"ip":"10.0.\(n % 256).7","port":443},\
                "connection_info":{"protocol_name":"tcp","protocol_num":6},"type_uid":400101}
                """)
        }
    }
}
