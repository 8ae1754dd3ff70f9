import Crypto

extension AuditRecord {
    /// The prev_hash of the first record.
    public static let genesisHash = String(repeating: "0", count: 64)

    /// The hash this record's content should carry (docs/store.md): SHA-256, as
    /// lowercase hex, of the netstrings (`<UTF-8 byte length>:<bytes>,`) of
    /// "alcub3-audit-v1", seq, time_ns (both decimal), actor, action, subject,
    /// details_json and prev_hash. The length prefixes make the encoding
    /// unambiguous whatever the fields contain.
    public var contentHash: String {
        var message: [UInt8] = []
        for field in ["alcub3-audit-v1", String(seq), String(timeNs), actor, action, subject, detailsJSON, prevHash] {
            message.append(contentsOf: "\(field.utf8.count):".utf8)
            message.append(contentsOf: field.utf8)
            message.append(UInt8(ascii: ","))
        }
        let hex = Array("0123456789abcdef".utf8)
        var digest: [UInt8] = []
        for byte in SHA256.hash(data: message) {
            digest.append(hex[Int(byte >> 4)])
            digest.append(hex[Int(byte & 0x0f)])
        }
        return String(decoding: digest, as: UTF8.self)
    }
}

extension EventStore {
    private static let auditColumns = "seq, time_ns, actor, action, subject, details_json, prev_hash, hash"

    /// Appends one record to the audit log, chained to the last one. The read of
    /// the last hash and the insert are one write transaction, so concurrent
    /// appends (from any process) serialize.
    @discardableResult
    public func appendAudit(actor: String, action: String, subject: String, details: String = "{}",
                            timeNs: Int64? = nil) throws(StoreError) -> AuditRecord {
        try withDatabase { database throws(StoreError) in
            try database.transaction("append the audit record '\(action) \(subject)'") { () throws(StoreError) in
                try Self.appendAudit(database, actor: actor, action: action, subject: subject, details: details,
                                     timeNs: timeNs ?? Self.wallClockNanos())
            }
        }
    }

    /// The append itself, inside a caller's transaction (retention records its
    /// deletions in the transaction that deletes).
    static func appendAudit(_ database: SQLiteDatabase, actor: String, action: String, subject: String, details: String,
                            timeNs: Int64) throws(StoreError) -> AuditRecord {
        let head = try database.queryFirst("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
                                           operation: "read the head of the audit log") { ($0.int64(0), $0.text(1)) }
        var record = AuditRecord(seq: (head?.0 ?? 0) + 1, timeNs: timeNs, actor: actor, action: action, subject: subject,
                                 detailsJSON: details, prevHash: head?.1 ?? AuditRecord.genesisHash, hash: "")
        record.hash = record.contentHash
        try database.run("INSERT INTO audit_log (\(auditColumns)) VALUES (\(placeholders(8)))",
                         record.seq, record.timeNs, record.actor, record.action, record.subject, record.detailsJSON,
                         record.prevHash, record.hash, operation: "append audit record \(record.seq)")
        return record
    }

    /// Audit records after `afterSeq`, in order.
    public func auditRecords(afterSeq: Int64 = 0, limit: Int = 1000) throws(StoreError) -> [AuditRecord] {
        try withDatabase { database throws(StoreError) in
            try database.query("SELECT \(Self.auditColumns) FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?", afterSeq, limit,
                               operation: "read the audit log", row: Self.auditRecord)
        }
    }

    /// Recomputes the chain from the first record and names the first record
    /// that does not fit: a seq gap (deleted records), a prev_hash that is not
    /// the previous record's hash, or a hash that does not match the content.
    /// Removing records from the end leaves a valid shorter chain: compare
    /// `headHash` with one noted elsewhere to catch that.
    public func verifyAudit() throws(StoreError) -> AuditVerification {
        try withDatabase { database throws(StoreError) in
            let statement = try database.statement("SELECT \(Self.auditColumns) FROM audit_log ORDER BY seq")
            var records = 0
            var expectedSeq: Int64 = 1
            var headHash = AuditRecord.genesisHash
            var broken: (seq: Int64, reason: String)?
            while try statement.step("verify the audit log") {
                records += 1
                if broken == nil {
                    let record = Self.auditRecord(statement.row)
                    broken = Self.chainBreak(record, expectedSeq: expectedSeq, previousHash: headHash).map { (record.seq, $0) }
                    expectedSeq = record.seq + 1
                }
                headHash = statement.row.text(7)
            }
            return AuditVerification(ok: broken == nil, records: records, firstBroken: broken?.seq, reason: broken?.reason, headHash: headHash)
        }
    }

    /// Why `record` does not follow the record before it, or nil when it does.
    private static func chainBreak(_ record: AuditRecord, expectedSeq: Int64, previousHash: String) -> String? {
        if record.seq != expectedSeq {
            return record.seq == expectedSeq + 1
                ? "record \(expectedSeq) is missing (deleted)"
                : "records \(expectedSeq) to \(record.seq - 1) are missing (deleted)"
        }
        if record.prevHash != previousHash {
            return record.seq == 1
                ? "prev_hash is not the genesis hash (64 zeros)"
                : "prev_hash does not match the hash of record \(record.seq - 1) (one of the two was altered)"
        }
        if record.contentHash != record.hash {
            return "hash does not match the record's content (altered)"
        }
        return nil
    }

    private static func auditRecord(_ row: SQLiteRow) -> AuditRecord {
        AuditRecord(seq: row.int64(0), timeNs: row.int64(1), actor: row.text(2), action: row.text(3), subject: row.text(4),
                    detailsJSON: row.text(5), prevHash: row.text(6), hash: row.text(7))
    }
}
