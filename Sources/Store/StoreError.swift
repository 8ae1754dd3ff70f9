import CSQLite

/// The one error the store throws: SQLite's result code and message, and what
/// the store was doing when SQLite refused.
public struct StoreError: Error, CustomStringConvertible, Sendable, Equatable {
    /// SQLite's extended result code (`SQLITE_CONSTRAINT_UNIQUE`, `SQLITE_BUSY`, ...).
    public let code: Int32
    /// `sqlite3_errmsg` at the time of the failure.
    public let message: String
    /// What the store was doing: "append events", "open /var/lib/alcub3/alcub3.db".
    public let operation: String

    public init(code: Int32, message: String, operation: String) {
        self.code = code
        self.message = message
        self.operation = operation
    }

    /// The primary result code (the low byte of the extended one).
    public var primaryCode: Int32 { code & 0xff }

    /// A uniqueness or check rule refused the change: for a sandbox, an active
    /// sandbox with the same agent id exists already.
    public var isConstraintViolation: Bool { primaryCode == SQLITE_CONSTRAINT }

    public var description: String {
        "\(operation): \(message) (\(String(cString: sqlite3_errstr(code))), code \(code))"
    }
}
