import CSQLite

/// The store's schema as numbered migrations; PRAGMA user_version holds the
/// number applied. A migration is appended, never edited once shipped.
enum Schema {
    static let migrations: [String] = [
        // 1: sandboxes, events with their per-kind counters, alerts, baselines, audit log.
        """
        CREATE TABLE sandboxes (
            sandbox_id     TEXT PRIMARY KEY,
            agent_id       TEXT NOT NULL,
            classification TEXT NOT NULL,
            isolation      TEXT NOT NULL,
            state          TEXT NOT NULL CHECK (state IN ('creating', 'running', 'stopped', 'failed')),
            policy_json    TEXT NOT NULL,
            command_json   TEXT NOT NULL,
            cgroup_path    TEXT,
            cgroup_id      INTEGER,
            init_pid       INTEGER,
            created_ns     INTEGER NOT NULL,
            ended_ns       INTEGER,
            exit_code      INTEGER,
            details_json   TEXT
        );
        -- One live sandbox per agent id; ended ones keep theirs for history.
        CREATE UNIQUE INDEX sandboxes_active_agent ON sandboxes (agent_id) WHERE state IN ('creating', 'running');
        CREATE INDEX sandboxes_agent ON sandboxes (agent_id, created_ns);

        -- AUTOINCREMENT: ids are never reused, even when retention empties the
        -- table, so a follower polling "after id N" never misses an event.
        CREATE TABLE events (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,
            time_ns    INTEGER NOT NULL,
            sandbox_id TEXT NOT NULL,
            agent_id   TEXT NOT NULL,
            kind       TEXT NOT NULL,
            class_uid  INTEGER,
            json       TEXT NOT NULL
        );
        -- Every index entry ends with the rowid, so these also serve "ORDER BY id".
        -- No index on agent_id: it cost a quarter of the insert rate (measured);
        -- an agent's events are found through its sandboxes in event_counts.
        CREATE INDEX events_sandbox ON events (sandbox_id);
        CREATE INDEX events_time ON events (time_ns);

        -- Kept in step with events by appendEvents and retention: counts by kind
        -- without a scan, the event data size retention limits, and the
        -- sandboxes of an agent.
        CREATE TABLE event_counts (
            sandbox_id TEXT NOT NULL,
            agent_id   TEXT NOT NULL,
            kind       TEXT NOT NULL,
            events     INTEGER NOT NULL,
            bytes      INTEGER NOT NULL,
            PRIMARY KEY (sandbox_id, kind)
        ) WITHOUT ROWID;

        CREATE TABLE alerts (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            time_ns     INTEGER NOT NULL,
            sandbox_id  TEXT NOT NULL,
            agent_id    TEXT NOT NULL,
            severity_id INTEGER NOT NULL,
            technique   TEXT NOT NULL,
            json        TEXT NOT NULL
        );
        CREATE INDEX alerts_sandbox ON alerts (sandbox_id);
        CREATE INDEX alerts_agent ON alerts (agent_id);
        CREATE INDEX alerts_time ON alerts (time_ns);

        CREATE TABLE baselines (
            id         TEXT PRIMARY KEY,
            sandbox_id TEXT NOT NULL,
            agent_id   TEXT NOT NULL,
            created_ns INTEGER NOT NULL,
            json       TEXT NOT NULL
        );
        CREATE INDEX baselines_agent ON baselines (agent_id, created_ns);

        CREATE TABLE audit_log (
            seq          INTEGER PRIMARY KEY,
            time_ns      INTEGER NOT NULL,
            actor        TEXT NOT NULL,
            action       TEXT NOT NULL,
            subject      TEXT NOT NULL,
            details_json TEXT NOT NULL,
            prev_hash    TEXT NOT NULL,
            hash         TEXT NOT NULL
        );
        -- Guards against alcub3's own bugs; tampering by hand (which can drop
        -- these) is what the hash chain catches.
        CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
            BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
        CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
            BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
        """,
        // 2: who asked for each audited action, and a MAC with a key kept outside
        // the database (docs/store.md). Records written before have '{}' and NULL:
        // verification names them as unkeyed.
        """
        ALTER TABLE audit_log ADD COLUMN requester_json TEXT NOT NULL DEFAULT '{}';
        ALTER TABLE audit_log ADD COLUMN mac TEXT;
        """,
    ]

    static var version: Int { migrations.count }

    static func userVersion(_ database: SQLiteDatabase) throws(StoreError) -> Int {
        try database.queryFirst("PRAGMA user_version", operation: "read the schema version of \(database.path)") { $0.int(0) } ?? 0
    }

    /// Brings the schema up to `version`. The version is read again inside the
    /// write transaction, so two processes opening a new store migrate it once.
    static func migrate(_ database: SQLiteDatabase, readOnly: Bool) throws(StoreError) {
        let found = try userVersion(database)
        if found == version { return }
        if found > version { throw newerSchema(database, found) }
        if readOnly {
            throw StoreError(code: SQLITE_READONLY, message: "schema version \(found), this alcub3 needs \(version); open the store read-write once",
                             operation: "open \(database.path) read-only")
        }
        try database.transaction("migrate \(database.path)") { () throws(StoreError) in
            let current = try userVersion(database)
            if current > version { throw newerSchema(database, current) }
            for step in current..<version {
                try database.execute(script: migrations[step], operation: "migrate \(database.path) to schema version \(step + 1)")
            }
            // PRAGMA takes no parameters; `version` is our own integer.
            try database.execute(script: "PRAGMA user_version = \(version)", operation: "set the schema version of \(database.path)")
        }
    }

    private static func newerSchema(_ database: SQLiteDatabase, _ found: Int) -> StoreError {
        StoreError(code: SQLITE_ERROR, message: "schema version \(found) is newer than this alcub3's \(version)",
                   operation: "open \(database.path)")
    }
}
