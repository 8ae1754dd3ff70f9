import CSQLite

/// SQLITE_TRANSIENT is a macro Swift cannot import: SQLite copies text bound with it,
/// so a Swift string need not outlive the bind call.
private let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

/// A Swift value that binds to a statement parameter; nil binds SQL NULL.
protocol SQLiteBindable {
    func bind(to statement: OpaquePointer, at index: Int32) -> Int32
}

extension String: SQLiteBindable {
    func bind(to statement: OpaquePointer, at index: Int32) -> Int32 {
        // withCString borrows a native string's storage without copying; SQLite copies.
        withCString { sqlite3_bind_text(statement, index, $0, Int32(utf8.count), transient) }
    }
}

extension Int64: SQLiteBindable {
    func bind(to statement: OpaquePointer, at index: Int32) -> Int32 { sqlite3_bind_int64(statement, index, self) }
}

extension Int: SQLiteBindable {
    func bind(to statement: OpaquePointer, at index: Int32) -> Int32 { sqlite3_bind_int64(statement, index, Int64(self)) }
}

extension Int32: SQLiteBindable {
    func bind(to statement: OpaquePointer, at index: Int32) -> Int32 { sqlite3_bind_int64(statement, index, Int64(self)) }
}

extension Optional: SQLiteBindable where Wrapped: SQLiteBindable {
    func bind(to statement: OpaquePointer, at index: Int32) -> Int32 {
        switch self {
        case .some(let value): value.bind(to: statement, at: index)
        case .none: sqlite3_bind_null(statement, index)
        }
    }
}

/// One result row, valid only inside the callback that receives it.
struct SQLiteRow {
    fileprivate let handle: OpaquePointer

    func int64(_ column: Int32) -> Int64 { sqlite3_column_int64(handle, column) }
    func int(_ column: Int32) -> Int { Int(sqlite3_column_int64(handle, column)) }
    func isNull(_ column: Int32) -> Bool { sqlite3_column_type(handle, column) == SQLITE_NULL }
    func optionalInt64(_ column: Int32) -> Int64? { isNull(column) ? nil : int64(column) }

    func text(_ column: Int32) -> String {
        guard let bytes = sqlite3_column_text(handle, column) else { return "" }
        let count = Int(sqlite3_column_bytes(handle, column))
        return String(decoding: UnsafeBufferPointer(start: bytes, count: count), as: UTF8.self)
    }

    func optionalText(_ column: Int32) -> String? { isNull(column) ? nil : text(column) }
}

/// A prepared statement, finalized when the last reference goes. Only its
/// database's statement cache creates them, so each SQL text is prepared once.
final class SQLiteStatement {
    let handle: OpaquePointer
    private unowned let database: SQLiteDatabase

    fileprivate init(database: SQLiteDatabase, sql: String) throws(StoreError) {
        var handle: OpaquePointer?
        try database.check(sqlite3_prepare_v3(database.handle, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &handle, nil),
                           "prepare \(sql)")
        guard let handle else { preconditionFailure("an empty statement: \(sql)") }
        self.handle = handle
        self.database = database
    }

    deinit { sqlite3_finalize(handle) }

    /// Binds parameters 1, 2, ... in order; every parameter of the statement each time.
    func bind(_ values: [any SQLiteBindable], _ operation: @autoclosure () -> String) throws(StoreError) {
        for (offset, value) in values.enumerated() {
            try database.check(value.bind(to: handle, at: Int32(offset + 1)), operation())
        }
    }

    func bind(_ values: any SQLiteBindable..., operation: @autoclosure () -> String) throws(StoreError) {
        try bind(values, operation())
    }

    /// Runs the statement to its next row: true when a row is ready, false when done.
    /// After a failure or `false`, the statement is reset for reuse.
    func step(_ operation: @autoclosure () -> String) throws(StoreError) -> Bool {
        switch sqlite3_step(handle) {
        case SQLITE_ROW: return true
        case SQLITE_DONE: sqlite3_reset(handle); return false
        case let code:
            let error = database.error(code, operation())
            sqlite3_reset(handle)
            throw error
        }
    }

    /// Ends a statement stopped before its last row, so it holds no read snapshot
    /// (an open one in WAL mode keeps the checkpointer from truncating the log).
    func reset() { sqlite3_reset(handle) }

    var row: SQLiteRow { SQLiteRow(handle: handle) }
}

/// An open SQLite connection with its prepared statements; closes itself. Not
/// thread-safe: `EventStore` keeps it behind a mutex, which is why it is opened
/// with SQLITE_OPEN_NOMUTEX.
final class SQLiteDatabase {
    let handle: OpaquePointer
    let path: String
    private var statements: [String: SQLiteStatement] = [:]

    init(path: String, readOnly: Bool, busyTimeoutMilliseconds: Int32) throws(StoreError) {
        var handle: OpaquePointer?
        let access = readOnly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE
        let code = sqlite3_open_v2(path, &handle, access | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE, nil)
        guard code == SQLITE_OK, let handle else {
            let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? String(cString: sqlite3_errstr(code))
            sqlite3_close_v2(handle)
            throw StoreError(code: code, message: message, operation: "open \(path)")
        }
        self.handle = handle
        self.path = path
        sqlite3_busy_timeout(handle, busyTimeoutMilliseconds)
    }

    deinit {
        statements.removeAll()  // finalize every statement first, then close
        sqlite3_close_v2(handle)
    }

    func error(_ code: Int32, _ operation: String) -> StoreError {
        StoreError(code: code, message: String(cString: sqlite3_errmsg(handle)), operation: operation)
    }

    func check(_ code: Int32, _ operation: @autoclosure () -> String) throws(StoreError) {
        if code != SQLITE_OK { throw error(code, operation()) }
    }

    /// The cached statement for `sql`, prepared on first use.
    func statement(_ sql: String) throws(StoreError) -> SQLiteStatement {
        if let cached = statements[sql] { return cached }
        let prepared = try SQLiteStatement(database: self, sql: sql)
        statements[sql] = prepared
        return prepared
    }

    /// Runs a statement that returns no rows (or whose rows are not wanted).
    func run(_ sql: String, _ values: any SQLiteBindable..., operation: @autoclosure () -> String) throws(StoreError) {
        let statement = try statement(sql)
        try statement.bind(values, operation())
        while try statement.step(operation()) {}
    }

    /// Runs a query and maps every row.
    func query<T>(_ sql: String, _ values: [any SQLiteBindable], operation: @autoclosure () -> String,
                  row transform: (SQLiteRow) throws(StoreError) -> T) throws(StoreError) -> [T] {
        let statement = try statement(sql)
        try statement.bind(values, operation())
        var rows: [T] = []
        while try statement.step(operation()) {
            do { rows.append(try transform(statement.row)) } catch { statement.reset(); throw error }
        }
        return rows
    }

    func query<T>(_ sql: String, _ values: any SQLiteBindable..., operation: @autoclosure () -> String,
                  row transform: (SQLiteRow) throws(StoreError) -> T) throws(StoreError) -> [T] {
        try query(sql, values, operation: operation(), row: transform)
    }

    /// The first row of a query, or nil.
    func queryFirst<T>(_ sql: String, _ values: any SQLiteBindable..., operation: @autoclosure () -> String,
                       row transform: (SQLiteRow) throws(StoreError) -> T) throws(StoreError) -> T? {
        let statement = try statement(sql)
        try statement.bind(values, operation())
        guard try statement.step(operation()) else { return nil }
        defer { statement.reset() }
        return try transform(statement.row)
    }

    /// Runs several statements of fixed text (schema scripts); nothing is cached.
    func execute(script: String, operation: @autoclosure () -> String) throws(StoreError) {
        var message: UnsafeMutablePointer<CChar>?
        let code = sqlite3_exec(handle, script, nil, nil, &message)
        defer { sqlite3_free(message) }
        if code != SQLITE_OK {
            throw StoreError(code: code, message: message.map { String(cString: $0) } ?? String(cString: sqlite3_errstr(code)),
                             operation: operation())
        }
    }

    /// Runs `body` in one write transaction (BEGIN IMMEDIATE takes the write lock
    /// up front, so a concurrent writer waits on the busy timeout instead of failing
    /// at its first write). Any error rolls everything back.
    func transaction<T>(_ operation: String, _ body: () throws(StoreError) -> T) throws(StoreError) -> T {
        try run("BEGIN IMMEDIATE", operation: "\(operation): begin")
        do {
            let result = try body()
            try run("COMMIT", operation: "\(operation): commit")
            return result
        } catch {
            // SQLite rolls back by itself after some errors; only roll back what is open.
            if sqlite3_get_autocommit(handle) == 0 { sqlite3_exec(handle, "ROLLBACK", nil, nil, nil) }
            throw error
        }
    }

    var lastInsertRowID: Int64 { sqlite3_last_insert_rowid(handle) }
    var changes: Int { Int(sqlite3_changes64(handle)) }
}

/// "?, ?, ?" for `count` parameters.
func placeholders(_ count: Int) -> String {
    Array(repeating: "?", count: count).joined(separator: ", ")
}
