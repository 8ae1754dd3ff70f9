import Foundation
import Testing
@testable import Store

let testAuditKey = AuditKey(bytes: Array(0..<32))
let socketClient = Requester(channel: .socket, uid: 1000, gid: 1000, pid: 4242, cgroup: "/user.slice/session-1.scope",
                             sandboxed: false, sandboxID: nil)

/// The audit's rechain.py forgery: rewrite one record's details, recompute every SHA-256 link.
@discardableResult
func rechain(_ database: String, seq: Int64, details: String, strip: Bool = false) throws -> String {
    let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/audit-rechain.py").path
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
    process.arguments = [script, database, String(seq), details] + (strip ? ["--strip"] : [])
    let output = Pipe()
    process.standardOutput = output
    process.standardError = output
    try process.run()
    let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    #expect(process.terminationStatus == 0, "rechain: \(text)")
    return text
}

@Suite struct AuditKeyTests {
    func keyedStore(_ directory: TemporaryDirectory, records: Int = 5) throws -> EventStore {
        let store = try EventStore(path: directory.storePath, auditKey: testAuditKey)
        for n in 1...records {
            try store.appendAudit(socketClient, action: "sandbox.create", subject: "sb-\(n)",
                                  details: #"{"agent_id":"agent-\#(n)","command":"true"}"#)
        }
        return store
    }

    /// M1: a full re-chain (every SHA-256 recomputed) passed verification; the
    /// MAC of the rewritten record does not verify, and verification names it.
    @Test func aFullRechainIsCaughtAtTheRewrittenRecord() throws {
        let directory = TemporaryDirectory()
        let store = try keyedStore(directory)
        try rechain(directory.storePath, seq: 2, details: #"{"agent_id":"innocent-agent","command":"true"}"#)
        // The forgery is consistent as a hash chain: every link and hash fit.
        let records = try store.auditRecords()
        #expect(records[1].detailsJSON.contains("innocent-agent"))
        for (previous, record) in zip(records, records.dropFirst()) { #expect(record.prevHash == previous.hash) }
        #expect(records.allSatisfy { $0.hash == $0.contentHash })
        let result = try store.verifyAudit()
        #expect(!result.ok)
        #expect(result.firstBroken == 2, "\(result)")
        #expect(result.reason?.contains("MAC does not verify") == true, "\(result)")
        #expect(result.summary.hasPrefix("audit log BROKEN at record 2: MAC does not verify"), "\(result.summary)")
    }

    @Test func anotherKeyFailsAtTheFirstKeyedRecord() throws {
        let directory = TemporaryDirectory()
        _ = try keyedStore(directory)
        let other = try EventStore(path: directory.storePath, readOnly: true, auditKey: AuditKey(bytes: Array(repeating: 7, count: 32)))
        let result = try other.verifyAudit()
        #expect(!result.ok && result.firstBroken == 1 && result.reason?.contains("MAC does not verify") == true, "\(result)")
        let keyless = try EventStore(path: directory.storePath, readOnly: true).verifyAudit()
        #expect(!keyless.ok && keyless.firstBroken == 1 && keyless.reason?.contains("no audit key") == true, "\(keyless)")
    }

    /// Stripping MACs and re-hashing the old way: one stripped record after
    /// keyed ones, or all of them (the log would read as written before keys).
    @Test func strippedMACsAreCaught() throws {
        let directory = TemporaryDirectory()
        let store = try keyedStore(directory)
        try sqlite3(directory.storePath, "DROP TRIGGER audit_log_no_update; UPDATE audit_log SET mac = NULL WHERE seq = 4")
        try rechain(directory.storePath, seq: 4, details: #"{"agent_id":"agent-4","command":"true"}"#)
        let one = try store.verifyAudit()
        #expect(one.firstBroken == 4 && one.reason?.contains("no MAC after keyed records") == true, "\(one)")

        try rechain(directory.storePath, seq: 4, details: #"{"agent_id":"agent-4","command":"true"}"#, strip: true)
        let all = try store.verifyAudit()
        #expect(!all.ok && all.firstBroken == 1 && all.reason?.contains("none of the 5 records carries a MAC") == true, "\(all)")
    }

    /// A database from before keys: its records are named as unkeyed, the
    /// first keyed record says how many came before, and the chain goes on keyed.
    @Test func anOldDatabaseIsMigratedAndItsUnkeyedRecordsNamed() throws {
        let directory = TemporaryDirectory()
        do {
            let old = try EventStore(path: directory.storePath)
            for n in 1...3 { try old.appendAudit(.service, action: "sandbox.create", subject: "sb-\(n)") }
        }
        // As schema version 1 wrote it: no requester, no MAC columns.
        try sqlite3(directory.storePath, """
            ALTER TABLE audit_log DROP COLUMN requester_json; ALTER TABLE audit_log DROP COLUMN mac; PRAGMA user_version = 1
            """)
        let store = try EventStore(path: directory.storePath, auditKey: testAuditKey)
        #expect(try sqlite3(directory.storePath, "PRAGMA user_version") == String(EventStore.schemaVersion))
        try store.appendAudit(socketClient, action: "sandbox.exec", subject: "sb-1")
        let records = try store.auditRecords()
        #expect(records.map(\.seq) == [1, 2, 3, 4, 5])
        #expect(records[3].action == "audit.keyed" && records[3].detailsJSON == #"{"unkeyed_records":3}"#)
        #expect(records.prefix(3).allSatisfy { $0.mac == nil } && records.suffix(2).allSatisfy { $0.mac != nil })
        let result = try store.verifyAudit()
        #expect(result.ok && result.unkeyedRecords == 3 && result.headMAC == records[4].mac, "\(result)")
        #expect(result.summary == "audit log intact: 5 records, chain verified, MACs verified; unkeyed records 1..3 (written before keys)")
        // Rewriting an unkeyed record and re-chaining breaks the first keyed one, whose MAC covers the link.
        try rechain(directory.storePath, seq: 2, details: #"{"forged":true}"#)
        let forged = try store.verifyAudit()
        #expect(forged.firstBroken == 4 && forged.reason?.contains("MAC does not verify") == true, "\(forged)")
        // A store without the key may not add unkeyed records after keyed ones.
        #expect(throws: StoreError.self) { try EventStore(path: directory.storePath).appendAudit(.service, action: "x", subject: "y") }
    }

    /// The keyed hash and MAC are the documented ones (docs/store.md),
    /// computed here by Python's hashlib and hmac, not by the code under test.
    @Test func theMACIsHMACSHA256OfTheDocumentedNetstrings() throws {
        let directory = TemporaryDirectory()
        let store = try EventStore(path: directory.storePath, auditKey: testAuditKey)
        let record = try store.appendAudit(socketClient, action: "sandbox.exec", subject: "sb-0123456789ab",
                                           details: #"{"note":"é,:"}"#, timeNs: 1_795_000_000_000_000_000)
        let fields = ["alcub3-audit-v2", "1", "1795000000000000000", socketClient.actor, "sandbox.exec", "sb-0123456789ab",
                      #"{"note":"é,:"}"#, socketClient.json, AuditRecord.genesisHash]
        let script = """
            import hashlib, hmac, json, sys
            fields = json.loads(sys.stdin.read())
            message = b"".join(b"%d:%s," % (len(f.encode()), f.encode()) for f in fields)
            print(hashlib.sha256(message).hexdigest(), hmac.new(bytes(range(32)), message, hashlib.sha256).hexdigest())
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-c", script]
        let input = Pipe(), output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        input.fileHandleForWriting.write(try JSONSerialization.data(withJSONObject: fields))
        try input.fileHandleForWriting.close()
        let words = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).split(separator: " ")
        process.waitUntilExit()
        #expect(words.count == 2)
        #expect(record.hash == words.first.map(String.init))
        #expect(record.mac == words.last.map { String($0.dropLast()) })
        #expect(socketClient.json == #"{"cgroup":"/user.slice/session-1.scope","channel":"socket","gid":1000,"pid":4242,"sandboxed":false,"uid":1000}"#)
    }

    /// The key file: made 0600 with O_EXCL, read back the same; refused when
    /// others can read it, when it is a symbolic link, or when it is not a key.
    @Test func theKeyFileIsPrivateAndLaxOnesAreRefused() throws {
        let directory = TemporaryDirectory()
        let path = directory.path + "/audit.key"
        _ = try AuditKey.loadOrCreate(at: path)
        var st = stat()
        #expect(lstat(path, &st) == 0 && st.st_mode & 0o777 == 0o600 && st.st_uid == geteuid())
        let first = try EventStore(path: directory.storePath, auditKey: AuditKey.loadOrCreate(at: path))
        let record = try first.appendAudit(.service, action: "a", subject: "b")
        #expect(record.mac == record.expectedMAC(try AuditKey.load(at: path)))

        chmod(path, 0o640)
        #expect { try AuditKey.loadOrCreate(at: path) } throws: { "\($0)".contains("readable by others (mode 640") }
        chmod(path, 0o600)
        let link = directory.path + "/link.key"
        symlink(path, link)
        #expect { try AuditKey.load(at: link) } throws: { "\($0)".contains("symbolic link") }
        #expect { try AuditKey.loadOrCreate(at: link) } throws: { "\($0)".contains("symbolic link") }
        let short = directory.path + "/short.key"
        FileManager.default.createFile(atPath: short, contents: Data("c2hvcnQ=\n".utf8), attributes: [.posixPermissions: 0o600])
        #expect { try AuditKey.load(at: short) } throws: { "\($0)".contains("not an alcub3 audit key") }
        #expect { try AuditKey.load(at: directory.path + "/missing.key") } throws: { "\($0)".contains("ENOENT") }
    }
}
