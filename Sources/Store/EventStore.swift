import CSQLite
import KernelSupport
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// alcub3's embedded store (docs/store.md): sandboxes, events, alerts,
/// baselines and the hash-chained audit log in one SQLite database.
///
/// One connection serves every caller, one at a time, behind a mutex; the
/// database is in WAL mode, so other processes (`alcub3 audit verify`) can read
/// while the service writes.
public final class EventStore: Sendable {
    /// The schema version this build writes (PRAGMA user_version).
    public static let schemaVersion = Schema.version
    /// How long a write waits for another process's write lock before SQLITE_BUSY.
    public static let busyTimeoutMilliseconds: Int32 = 5000

    public let path: String
    private let database: Mutex<SQLiteDatabase>
    /// What audit records are MAC'd and verified with; nil: records are
    /// written unkeyed (tests, benchmarks) and keyed ones cannot be verified.
    let auditKey: AuditKey?
    /// Called with each audit record after its commit (the service exports the head).
    let auditAppended: (@Sendable (AuditRecord) -> Void)?

    /// Opens the store at `path`, creating it (directories 0700, file 0600) and
    /// migrating its schema unless `readOnly`. With `auditKey`, audit records
    /// are keyed from now on (an unkeyed head gets an `audit.keyed` record
    /// first) and verified with it. Throws `SystemError` when the directory or
    /// file cannot be created, `StoreError` when SQLite refuses.
    public init(path: String, readOnly: Bool = false, auditKey: AuditKey? = nil,
                onAuditAppend: (@Sendable (AuditRecord) -> Void)? = nil) throws {
        if !readOnly { try Self.createFile(path) }
        let database = try SQLiteDatabase(path: path, readOnly: readOnly, busyTimeoutMilliseconds: Self.busyTimeoutMilliseconds)
        if !readOnly { try Self.configure(database) }
        try Schema.migrate(database, readOnly: readOnly)
        self.path = path
        self.database = Mutex(database)
        self.auditKey = auditKey
        self.auditAppended = onAuditAppend
        if let auditKey, !readOnly { try startKeyedRecords(auditKey) }
    }

    /// Runs `body` with the connection, alone.
    func withDatabase<T: Sendable>(_ body: (SQLiteDatabase) throws(StoreError) -> T) throws(StoreError) -> T {
        try database.withLock { database throws(StoreError) -> T in try body(database) }
    }

    private static func configure(_ database: SQLiteDatabase) throws(StoreError) {
        // auto_vacuum only takes effect before the first table and before WAL
        // mode writes the header; on an existing store it is a no-op.
        try database.run("PRAGMA auto_vacuum = INCREMENTAL", operation: "set auto_vacuum on \(database.path)")
        let mode = try database.queryFirst("PRAGMA journal_mode = WAL", operation: "set WAL mode on \(database.path)") { $0.text(0) }
        guard mode == "wal" else {
            throw StoreError(code: SQLITE_ERROR, message: "journal_mode stayed \(mode ?? "unknown")", operation: "set WAL mode on \(database.path)")
        }
        // NORMAL in WAL mode: a power cut may lose the last commits, never the
        // database; fsync happens at checkpoints, not at every batch.
        try database.run("PRAGMA synchronous = NORMAL", operation: "set synchronous on \(database.path)")
        // Without a limit the WAL keeps its largest size after a burst.
        try database.queryFirst("PRAGMA journal_size_limit = 67108864", operation: "limit the WAL of \(database.path)") { _ in () }
        try database.run("PRAGMA cache_size = -16384", operation: "set the page cache of \(database.path)")
    }

    /// Creates the missing directories of `path` 0700 and the file 0600, so the
    /// database (and the -wal and -shm files SQLite gives the same mode) is the
    /// owner's alone.
    private static func createFile(_ path: String) throws(SystemError) {
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/").dropLast() {
            prefix += "/" + component
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST {
                throw SystemError(errno: errno, call: "mkdir", context: prefix)
            }
        }
        _ = try OwnedDescriptor(path: path, flags: O_RDWR | O_CREAT, mode: 0o600)
    }

    /// Nanoseconds since the Unix epoch (CLOCK_REALTIME).
    static func wallClockNanos() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
    }
}

// MARK: - Sandboxes

extension EventStore {
    private static let sandboxColumnNames = [
        "sandbox_id", "agent_id", "classification", "isolation", "state", "policy_json", "command_json",
        "cgroup_path", "cgroup_id", "init_pid", "created_ns", "ended_ns", "exit_code", "details_json",
    ]
    private static let sandboxColumns = sandboxColumnNames.joined(separator: ", ")
    private static let upsertSandboxSQL =
        "INSERT INTO sandboxes (\(sandboxColumns)) VALUES (\(placeholders(sandboxColumnNames.count))) ON CONFLICT (sandbox_id) DO UPDATE SET "
        + sandboxColumnNames.dropFirst().map { "\($0) = excluded.\($0)" }.joined(separator: ", ")

    /// Inserts a sandbox or replaces every field of the one with its id. Throws a
    /// constraint violation (`StoreError.isConstraintViolation`) when another
    /// active sandbox holds the agent id.
    public func upsertSandbox(_ record: SandboxRecord) throws(StoreError) {
        try withDatabase { database throws(StoreError) in
            try database.run(Self.upsertSandboxSQL, record.sandboxID, record.agentID, record.classification, record.isolation,
                             record.state.rawValue, record.policyJSON, record.commandJSON, record.cgroupPath,
                             record.cgroupID.map { Int64(bitPattern: $0) }, record.initPID, record.createdNs,
                             record.endedNs, record.exitCode, record.detailsJSON,
                             operation: "save sandbox \(record.sandboxID) of agent \(record.agentID)")
        }
    }

    public func sandbox(id: String) throws(StoreError) -> SandboxRecord? {
        try withDatabase { database throws(StoreError) in
            try database.queryFirst("SELECT \(Self.sandboxColumns) FROM sandboxes WHERE sandbox_id = ?", id,
                                    operation: "read sandbox \(id)", row: Self.sandboxRecord)
        }
    }

    /// The agent's active sandbox, or else its most recently created one.
    public func sandbox(agentID: String) throws(StoreError) -> SandboxRecord? {
        try withDatabase { database throws(StoreError) in
            try database.queryFirst("""
                SELECT \(Self.sandboxColumns) FROM sandboxes WHERE agent_id = ?
                ORDER BY state IN ('creating', 'running') DESC, created_ns DESC, rowid DESC LIMIT 1
                """, agentID, operation: "read the sandbox of agent \(agentID)", row: Self.sandboxRecord)
        }
    }

    /// Sandboxes in the given states, oldest first.
    public func sandboxes(states: Set<SandboxState> = Set(SandboxState.allCases)) throws(StoreError) -> [SandboxRecord] {
        let ordered = SandboxState.allCases.filter(states.contains)
        if ordered.isEmpty { return [] }
        return try withDatabase { database throws(StoreError) in
            try database.query("SELECT \(Self.sandboxColumns) FROM sandboxes WHERE state IN (\(placeholders(ordered.count))) ORDER BY created_ns, rowid",
                               ordered.map(\.rawValue), operation: "list sandboxes", row: Self.sandboxRecord)
        }
    }

    /// Moves a sandbox to `state`, recording its end time and exit code when
    /// given. False when no sandbox has the id.
    @discardableResult
    public func updateSandboxState(id: String, to state: SandboxState, endedNs: Int64? = nil, exitCode: Int32? = nil) throws(StoreError) -> Bool {
        try withDatabase { database throws(StoreError) in
            try database.run("""
                UPDATE sandboxes SET state = ?, ended_ns = coalesce(?, ended_ns), exit_code = coalesce(?, exit_code)
                WHERE sandbox_id = ?
                """, state.rawValue, endedNs, exitCode, id, operation: "set sandbox \(id) \(state.rawValue)")
            return database.changes > 0
        }
    }

    private static func sandboxRecord(_ row: SQLiteRow) throws(StoreError) -> SandboxRecord {
        guard let state = SandboxState(rawValue: row.text(4)) else {
            throw StoreError(code: SQLITE_MISMATCH, message: "unknown state '\(row.text(4))'", operation: "read sandbox \(row.text(0))")
        }
        return SandboxRecord(
            sandboxID: row.text(0), agentID: row.text(1), classification: row.text(2), isolation: row.text(3),
            state: state, policyJSON: row.text(5), commandJSON: row.text(6), cgroupPath: row.optionalText(7),
            cgroupID: row.optionalInt64(8).map { UInt64(bitPattern: $0) }, initPID: row.optionalInt64(9).map { Int32(truncatingIfNeeded: $0) },
            createdNs: row.int64(10), endedNs: row.optionalInt64(11),
            exitCode: row.optionalInt64(12).map { Int32(truncatingIfNeeded: $0) }, detailsJSON: row.optionalText(13))
    }
}
