extension EventStore {
    /// Deletes events and alerts older than `maxAgeNs`, then the oldest events
    /// until the event data (the UTF-8 length of their JSON, kept in
    /// event_counts) is at most `maxBytes`. The audit log is never touched.
    /// The deletions and one audit record saying what went ("retention",
    /// "events") commit together; a pass that deletes nothing records nothing.
    /// Freed pages stay in the file for the next events, except when more than a
    /// quarter of the file is free (the limit was lowered, a burst aged out):
    /// then an incremental vacuum gives them back to the file system.
    @discardableResult
    public func applyRetention(maxAgeNs: Int64?, maxBytes: Int64?, requester: Requester = .service,
                               nowNs: Int64? = nil) throws(StoreError) -> RetentionResult {
        let now = nowNs ?? Self.wallClockNanos()
        let cutoff = maxAgeNs.map { now - $0 }
        var appended: AuditRecord?
        let result = try withDatabase { database throws(StoreError) in
            var result = try database.transaction("apply retention") { () throws(StoreError) -> RetentionResult in
                let before = try Self.eventBytes(database)
                var deletedEvents = 0
                var deletedAlerts = 0
                if let cutoff {
                    deletedEvents += try Self.deleteEvents(database, where: "time_ns < ?", cutoff)
                    try database.run("DELETE FROM alerts WHERE time_ns < ?", cutoff, operation: "delete alerts older than the retention age")
                    deletedAlerts = database.changes
                }
                if let maxBytes {
                    let excess = try Self.eventBytes(database) - maxBytes
                    if excess > 0, let newestDeleted = try Self.oldestEvents(database, totalling: excess) {
                        deletedEvents += try Self.deleteEvents(database, where: "id <= ?", newestDeleted)
                    }
                }
                let after = try Self.eventBytes(database)
                var result = RetentionResult(deletedEvents: deletedEvents, deletedAlerts: deletedAlerts,
                                             eventBytesBefore: before, eventBytesAfter: after, auditSeq: nil, pagesReturned: 0)
                if deletedEvents + deletedAlerts > 0 {
                    let details = Self.jsonObject([
                        ("cutoff_ns", cutoff), ("deleted_alerts", Int64(deletedAlerts)), ("deleted_events", Int64(deletedEvents)),
                        ("event_bytes_after", after), ("event_bytes_before", before), ("max_age_ns", maxAgeNs), ("max_bytes", maxBytes),
                    ])
                    appended = try Self.appendAudit(database, key: auditKey, requester: requester, action: "retention",
                                                    subject: "events", details: details, timeNs: now)
                    result.auditSeq = appended?.seq
                }
                return result
            }
            if result.auditSeq != nil { result.pagesReturned = try Self.shrinkIfMostlyFree(database) }
            return result
        }
        if let appended { auditAppended?(appended) }
        return result
    }

    /// Runs an incremental vacuum when more than a quarter of the pages are free
    /// and returns how many pages it gave back. Below that, reusing the pages
    /// costs nothing, while vacuuming moves live pages (the newest, at the end of
    /// the file) into the holes the oldest left: as much I/O as was deleted.
    private static func shrinkIfMostlyFree(_ database: SQLiteDatabase) throws(StoreError) -> Int {
        let operation = "return free pages of \(database.path) to the file system"
        let free = try database.queryFirst("PRAGMA freelist_count", operation: operation) { $0.int(0) } ?? 0
        let total = try database.queryFirst("PRAGMA page_count", operation: operation) { $0.int(0) } ?? 0
        guard free * 4 > total else { return 0 }
        try database.run("PRAGMA incremental_vacuum", operation: operation)
        return free - (try database.queryFirst("PRAGMA freelist_count", operation: operation) { $0.int(0) } ?? 0)
    }

    /// Deletes the events matching `condition` and takes them off event_counts.
    private static func deleteEvents(_ database: SQLiteDatabase, where condition: String, _ bound: Int64) throws(StoreError) -> Int {
        let removed = try database.query("""
            SELECT sandbox_id, agent_id, kind, count(*), sum(length(CAST(json AS BLOB))) FROM events WHERE \(condition)
            GROUP BY sandbox_id, agent_id, kind
            """, bound, operation: "count the events retention deletes") { row in
            (sandboxID: row.text(0), agentID: row.text(1), kind: row.text(2), events: row.int64(3), bytes: row.int64(4))
        }
        for group in removed {
            try database.run(addEventCountSQL, group.sandboxID, group.agentID, group.kind, -group.events, -group.bytes,
                             operation: "uncount deleted events of sandbox \(group.sandboxID)")
        }
        try database.run("DELETE FROM event_counts WHERE events <= 0", operation: "drop empty event counts")
        try database.run("DELETE FROM events WHERE \(condition)", bound, operation: "delete events beyond retention")
        return database.changes
    }

    /// The id of the newest of the oldest events whose JSON adds up to `bytes`
    /// (the last event when all of them together do not).
    private static func oldestEvents(_ database: SQLiteDatabase, totalling bytes: Int64) throws(StoreError) -> Int64? {
        let statement = try database.statement("SELECT id, length(CAST(json AS BLOB)) FROM events ORDER BY id")
        var sum: Int64 = 0
        var lastID: Int64?
        while try statement.step("find the oldest events beyond the size limit") {
            lastID = statement.row.int64(0)
            sum += statement.row.int64(1)
            if sum >= bytes {
                statement.reset()
                break
            }
        }
        return lastID
    }

    /// A flat JSON object of integer fields, in the order given (sorted by the caller).
    static func jsonObject(_ fields: [(String, Int64?)]) -> String {
        "{" + fields.map { "\"\($0.0)\":\($0.1.map { String($0) } ?? "null")" }.joined(separator: ",") + "}"
    }
}
