import CSQLite
import Crypto

extension AuditRecord {
    /// The prev_hash of the first record.
    public static let genesisHash = String(repeating: "0", count: 64)

    /// Whether the record carries a MAC (records written before keys do not).
    public var isKeyed: Bool { mac != nil }

    /// The bytes the hash (and, for a keyed record, the MAC) is computed over
    /// (docs/store.md): the netstrings (`<UTF-8 byte length>:<bytes>,`) of a
    /// version tag, seq, time_ns (both decimal), actor, action, subject,
    /// details_json, for a keyed record requester_json, and prev_hash. The
    /// length prefixes make the encoding unambiguous whatever the fields contain.
    /// Unkeyed records keep the first definition ("alcub3-audit-v1", no requester),
    /// so records written before keys still verify.
    var message: [UInt8] {
        let fields = isKeyed
            ? ["alcub3-audit-v2", String(seq), String(timeNs), actor, action, subject, detailsJSON, requesterJSON, prevHash]
            : ["alcub3-audit-v1", String(seq), String(timeNs), actor, action, subject, detailsJSON, prevHash]
        var message: [UInt8] = []
        for field in fields {
            message.append(contentsOf: "\(field.utf8.count):".utf8)
            message.append(contentsOf: field.utf8)
            message.append(UInt8(ascii: ","))
        }
        return message
    }

    /// The hash this record's content should carry: SHA-256 of `message`, as lowercase hex.
    public var contentHash: String { hexString(SHA256.hash(data: message)) }

    /// The MAC this record should carry under `key`: HMAC-SHA256 of `message`, as lowercase hex.
    public func expectedMAC(_ key: AuditKey) -> String { key.mac(message) }
}

extension EventStore {
    private static let auditColumns = "seq, time_ns, actor, action, subject, details_json, prev_hash, hash, requester_json, mac"

    /// Appends one record to the audit log, chained to the last one, with
    /// `requester` as its actor and requester. With the store's audit key the
    /// record is keyed (MAC'd); a store without a key writes unkeyed records and
    /// refuses to once the log is keyed. The read of the head and the insert are
    /// one write transaction, so concurrent appends (from any process) serialize.
    @discardableResult
    public func appendAudit(_ requester: Requester, action: String, subject: String, details: String = "{}",
                            timeNs: Int64? = nil) throws(StoreError) -> AuditRecord {
        let record = try withDatabase { database throws(StoreError) in
            try database.transaction("append the audit record '\(action) \(subject)'") { () throws(StoreError) in
                try Self.appendAudit(database, key: auditKey, requester: requester, action: action, subject: subject,
                                     details: details, timeNs: timeNs ?? Self.wallClockNanos())
            }
        }
        auditAppended?(record)
        return record
    }

    /// The append itself, inside a caller's transaction (retention records its
    /// deletions in the transaction that deletes).
    static func appendAudit(_ database: SQLiteDatabase, key: AuditKey?, requester: Requester, action: String, subject: String,
                            details: String, timeNs: Int64) throws(StoreError) -> AuditRecord {
        let head = try database.queryFirst("SELECT seq, hash, mac IS NOT NULL FROM audit_log ORDER BY seq DESC LIMIT 1",
                                           operation: "read the head of the audit log") { ($0.int64(0), $0.text(1), $0.int(2) != 0) }
        if key == nil, head?.2 == true {
            throw StoreError(code: SQLITE_MISUSE, message: "the audit log is keyed and this store has no audit key",
                             operation: "append the audit record '\(action) \(subject)'")
        }
        var record = AuditRecord(seq: (head?.0 ?? 0) + 1, timeNs: timeNs, actor: requester.actor, action: action, subject: subject,
                                 detailsJSON: details, prevHash: head?.1 ?? AuditRecord.genesisHash, hash: "")
        if key != nil {
            // The placeholder makes `message` the keyed one; the MAC replaces it below.
            record.mac = ""
            record.requesterJSON = requester.json
        }
        record.hash = record.contentHash
        if let key { record.mac = record.expectedMAC(key) }
        try database.run("INSERT INTO audit_log (\(auditColumns)) VALUES (\(placeholders(10)))",
                         record.seq, record.timeNs, record.actor, record.action, record.subject, record.detailsJSON,
                         record.prevHash, record.hash, record.requesterJSON, record.mac, operation: "append audit record \(record.seq)")
        return record
    }

    /// Opened with a key on a log whose head is unkeyed (written before keys, by
    /// an older alcub3): one keyed record saying so, so the chain continues keyed
    /// from here and the unkeyed records are named as such by verification.
    func startKeyedRecords(_ key: AuditKey) throws(StoreError) {
        let record = try withDatabase { database throws(StoreError) -> AuditRecord? in
            try database.transaction("start keyed audit records") { () throws(StoreError) -> AuditRecord? in
                let head = try database.queryFirst("SELECT seq, mac IS NOT NULL FROM audit_log ORDER BY seq DESC LIMIT 1",
                                                   operation: "read the head of the audit log") { ($0.int64(0), $0.int(1) != 0) }
                guard let head, !head.1 else { return nil }
                return try Self.appendAudit(database, key: key, requester: .service, action: "audit.keyed", subject: "audit_log",
                                            details: Self.jsonObject([("unkeyed_records", head.0)]), timeNs: Self.wallClockNanos())
            }
        }
        if let record { auditAppended?(record) }
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
    /// the previous record's hash, a hash that does not match the content, or a
    /// MAC that does not verify with the store's audit key (a record rewritten
    /// with every SHA-256 link recomputed). Unkeyed records may only come first
    /// (written before keys); one after a keyed record had its MAC stripped.
    /// Removing records from the end leaves a valid shorter chain: compare
    /// `headHash`/`headMAC` with the ones the service exported to catch that.
    public func verifyAudit() throws(StoreError) -> AuditVerification {
        try withDatabase { database throws(StoreError) in
            let statement = try database.statement("SELECT \(Self.auditColumns) FROM audit_log ORDER BY seq")
            var records = 0
            var unkeyed = 0
            var keyedSeen = false
            var expectedSeq: Int64 = 1
            var head = (hash: AuditRecord.genesisHash, mac: String?.none)
            var broken: (seq: Int64, reason: String)?
            while try statement.step("verify the audit log") {
                records += 1
                let record = Self.auditRecord(statement.row)
                if broken == nil {
                    broken = chainBreak(record, expectedSeq: expectedSeq, previousHash: head.hash, keyedBefore: keyedSeen)
                        .map { (record.seq, $0) }
                    expectedSeq = record.seq + 1
                }
                if record.isKeyed { keyedSeen = true } else if !keyedSeen { unkeyed += 1 }
                head = (record.hash, record.mac)
            }
            // Every record stripped of its MAC and re-hashed the old way would
            // otherwise read as a log written before keys.
            if broken == nil, auditKey != nil, records > 0, !keyedSeen {
                broken = (1, "none of the \(records) records carries a MAC although the audit key exists: "
                          + "the MACs were stripped, or no keyed alcub3 has written to this database")
            }
            return AuditVerification(ok: broken == nil, records: records, firstBroken: broken?.seq, reason: broken?.reason,
                                     headHash: head.hash, unkeyedRecords: unkeyed, headMAC: head.mac)
        }
    }

    /// Why `record` does not follow the record before it, or nil when it does.
    private func chainBreak(_ record: AuditRecord, expectedSeq: Int64, previousHash: String, keyedBefore: Bool) -> String? {
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
        if !record.isKeyed && keyedBefore {
            return "no MAC after keyed records (the MAC was stripped: the record was altered)"
        }
        if record.contentHash != record.hash {
            return "hash does not match the record's content (altered)"
        }
        guard record.isKeyed else { return nil }
        guard let auditKey else { return "the record carries a MAC, but no audit key was given to check it" }
        if record.expectedMAC(auditKey) != record.mac {
            return "MAC does not verify with the audit key (altered and re-hashed, or written with another key)"
        }
        return nil
    }

    private static func auditRecord(_ row: SQLiteRow) -> AuditRecord {
        AuditRecord(seq: row.int64(0), timeNs: row.int64(1), actor: row.text(2), action: row.text(3), subject: row.text(4),
                    detailsJSON: row.text(5), prevHash: row.text(6), hash: row.text(7), requesterJSON: row.text(8),
                    mac: row.optionalText(9))
    }
}
