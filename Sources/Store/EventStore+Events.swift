import CSQLite

/// A SELECT over an append-only table (events, alerts) with the filters that are
/// set, in id order. Its SQL depends only on which filters are set, so each
/// shape is prepared once and reused.
struct AppendOnlyQuery {
    let table: String
    let columns: String
    private var conditions: [String] = []
    private var values: [any SQLiteBindable] = []

    init(table: String, columns: String) {
        self.table = table
        self.columns = columns
    }

    /// Adds `condition` when `value` is set, binding it to each `?` in the condition.
    mutating func require<V: SQLiteBindable>(_ condition: String, _ value: V?) {
        guard let value else { return }
        conditions.append(condition)
        values += Array(repeating: value, count: condition.count(where: { $0 == "?" }))
    }

    /// The first `limit` matching rows, or the last `limit` when `newest`; in id order either way.
    func rows<T>(in database: SQLiteDatabase, limit: Int, newest: Bool, operation: @autoclosure () -> String,
                 row transform: (SQLiteRow) throws(StoreError) -> T) throws(StoreError) -> [T] {
        let filter = conditions.isEmpty ? "" : " WHERE " + conditions.joined(separator: " AND ")
        let sql = "SELECT \(columns) FROM \(table)\(filter) ORDER BY id \(newest ? "DESC" : "ASC") LIMIT ?"
        let rows = try database.query(sql, values + [max(limit, 0)], operation: operation(), row: transform)
        return newest ? rows.reversed() : rows
    }
}

// MARK: - Events

extension EventStore {
    static let insertEventSQL = "INSERT INTO events (time_ns, sandbox_id, agent_id, kind, class_uid, json) VALUES (?, ?, ?, ?, ?, ?)"
    /// Adds to (or, with negative numbers, takes from) a sandbox's count of one kind.
    static let addEventCountSQL = """
        INSERT INTO event_counts (sandbox_id, agent_id, kind, events, bytes) VALUES (?, ?, ?, ?, ?)
        ON CONFLICT (sandbox_id, kind) DO UPDATE SET events = events + excluded.events, bytes = bytes + excluded.bytes
        """

    struct CountKey: Hashable {
        let sandboxID: String
        let agentID: String
        let kind: String
    }

    struct CountDelta {
        var events = 0
        var bytes = 0

        mutating func add(bytes: Int) {
            events += 1
            self.bytes += bytes
        }
    }

    /// Appends a batch in one transaction and returns the id of its last event
    /// (for an empty batch, the highest id ever assigned). Ids increase in
    /// batch order.
    @discardableResult
    public func appendEvents(_ events: [StoredEvent]) throws(StoreError) -> Int64 {
        if events.isEmpty { return try lastEventID() }
        return try withDatabase { database throws(StoreError) -> Int64 in
            try database.transaction("append \(events.count) events") { () throws(StoreError) -> Int64 in
                let insert = try database.statement(Self.insertEventSQL)
                var totals: [CountKey: CountDelta] = [:]
                for event in events {
                    try insert.bind(event.timeNs, event.sandboxID, event.agentID, event.kind, event.classUID, event.json,
                                    operation: "append an event of sandbox \(event.sandboxID)")
                    while try insert.step("append an event of sandbox \(event.sandboxID)") {}
                    totals[CountKey(sandboxID: event.sandboxID, agentID: event.agentID, kind: event.kind), default: CountDelta()].add(bytes: event.json.utf8.count)
                }
                let lastID = database.lastInsertRowID
                for (key, total) in totals {
                    try database.run(Self.addEventCountSQL, key.sandboxID, key.agentID, key.kind, total.events, total.bytes,
                                     operation: "count events of sandbox \(key.sandboxID)")
                }
                return lastID
            }
        }
    }

    /// Events matching `filter`, in id order.
    public func events(_ filter: EventFilter) throws(StoreError) -> [StoredEvent] {
        var query = AppendOnlyQuery(table: "events", columns: "id, time_ns, sandbox_id, agent_id, kind, class_uid, json")
        query.require("sandbox_id = ?", filter.sandboxID)
        // A sandbox's events all carry its agent id; the sandbox index finds them.
        query.require("agent_id = ? AND sandbox_id IN (SELECT sandbox_id FROM event_counts WHERE agent_id = ?)", filter.agentID)
        query.require("kind = ?", filter.kind)
        // Ids follow time closely but not exactly, so the first id at or after the
        // time (found in the time index) bounds the id-ordered scan; without it
        // SQLite would walk every older event.
        query.require("time_ns >= ? AND id >= (SELECT min(id) FROM events INDEXED BY events_time WHERE time_ns >= ?)", filter.sinceNs)
        query.require("id > ?", filter.afterID)
        return try withDatabase { database throws(StoreError) in
            try query.rows(in: database, limit: filter.limit, newest: filter.newest, operation: "read events") { row in
                StoredEvent(id: row.int64(0), timeNs: row.int64(1), sandboxID: row.text(2), agentID: row.text(3),
                            kind: row.text(4), classUID: row.optionalInt64(5).map { Int($0) }, json: row.text(6))
            }
        }
    }

    /// The highest event id ever assigned (0 for none): `events tail --follow`
    /// without history starts after it.
    public func lastEventID() throws(StoreError) -> Int64 {
        try withDatabase { database throws(StoreError) in
            try database.queryFirst("SELECT seq FROM sqlite_sequence WHERE name = 'events'", operation: "read the last event id") { $0.int64(0) } ?? 0
        }
    }

    /// The stored events of one sandbox by kind.
    public func eventCounts(sandboxID: String) throws(StoreError) -> [EventCount] {
        try withDatabase { database throws(StoreError) in
            try database.query("SELECT kind, events, bytes FROM event_counts WHERE sandbox_id = ? ORDER BY kind", sandboxID,
                               operation: "count the events of sandbox \(sandboxID)") { row in
                EventCount(kind: row.text(0), events: row.int(1), bytes: row.int64(2))
            }
        }
    }

    /// The event data retention limits: the UTF-8 length of all stored event JSON.
    public func eventBytes() throws(StoreError) -> Int64 {
        try withDatabase { database throws(StoreError) in try Self.eventBytes(database) }
    }

    static func eventBytes(_ database: SQLiteDatabase) throws(StoreError) -> Int64 {
        try database.queryFirst("SELECT coalesce(sum(bytes), 0) FROM event_counts", operation: "sum the event data") { $0.int64(0) } ?? 0
    }
}

// MARK: - Alerts

extension EventStore {
    /// Stores an alert and returns its id.
    @discardableResult
    public func appendAlert(_ alert: AlertRecord) throws(StoreError) -> Int64 {
        try withDatabase { database throws(StoreError) in
            try database.run("""
                INSERT INTO alerts (time_ns, sandbox_id, agent_id, severity_id, technique, json) VALUES (?, ?, ?, ?, ?, ?)
                """, alert.timeNs, alert.sandboxID, alert.agentID, alert.severityID, alert.technique, alert.json,
                operation: "append an alert (\(alert.technique)) of sandbox \(alert.sandboxID)")
            return database.lastInsertRowID
        }
    }

    /// Alerts matching `filter`, in id order.
    public func alerts(_ filter: AlertFilter) throws(StoreError) -> [AlertRecord] {
        var query = AppendOnlyQuery(table: "alerts", columns: "id, time_ns, sandbox_id, agent_id, severity_id, technique, json")
        query.require("sandbox_id = ?", filter.sandboxID)
        query.require("agent_id = ?", filter.agentID)
        query.require("severity_id >= ?", filter.minSeverityID)
        query.require("time_ns >= ?", filter.sinceNs)
        query.require("id > ?", filter.afterID)
        return try withDatabase { database throws(StoreError) in
            try query.rows(in: database, limit: filter.limit, newest: filter.newest, operation: "read alerts") { row in
                AlertRecord(id: row.int64(0), timeNs: row.int64(1), sandboxID: row.text(2), agentID: row.text(3),
                            severityID: row.int(4), technique: row.text(5), json: row.text(6))
            }
        }
    }

    /// How many alerts the store holds (the metrics endpoint's gauge): counted
    /// by SQLite, not by reading every row.
    public func alertCount() throws(StoreError) -> Int {
        try withDatabase { database throws(StoreError) in
            try database.queryFirst("SELECT COUNT(*) FROM alerts", operation: "count alerts") { $0.int(0) } ?? 0
        }
    }
}

// MARK: - Baselines

extension EventStore {
    /// Stores a new baseline. Baselines are immutable: an existing id is a
    /// constraint violation, not an overwrite.
    public func saveBaseline(_ baseline: BaselineRecord) throws(StoreError) {
        try withDatabase { database throws(StoreError) in
            try database.run("INSERT INTO baselines (id, sandbox_id, agent_id, created_ns, json) VALUES (?, ?, ?, ?, ?)",
                             baseline.id, baseline.sandboxID, baseline.agentID, baseline.createdNs, baseline.json,
                             operation: "save baseline \(baseline.id) of agent \(baseline.agentID)")
        }
    }

    public func baseline(id: String) throws(StoreError) -> BaselineRecord? {
        try withDatabase { database throws(StoreError) in
            try database.queryFirst("SELECT id, sandbox_id, agent_id, created_ns, json FROM baselines WHERE id = ?", id,
                                    operation: "read baseline \(id)") { row in
                BaselineRecord(id: row.text(0), sandboxID: row.text(1), agentID: row.text(2), createdNs: row.int64(3), json: row.text(4))
            }
        }
    }

    /// Baselines (without their JSON) of one agent or of all, oldest first.
    public func baselines(agentID: String? = nil) throws(StoreError) -> [BaselineSummary] {
        try withDatabase { database throws(StoreError) in
            try database.query("""
                SELECT id, sandbox_id, agent_id, created_ns, length(CAST(json AS BLOB)) FROM baselines
                WHERE ?1 IS NULL OR agent_id = ?1 ORDER BY created_ns, id
                """, agentID, operation: "list baselines") { row in
                BaselineSummary(id: row.text(0), sandboxID: row.text(1), agentID: row.text(2), createdNs: row.int64(3), bytes: row.int(4))
            }
        }
    }
}
