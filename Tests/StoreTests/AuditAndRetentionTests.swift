import Foundation
import Testing
@testable import Store

@Suite struct AuditTests {
    func storeWithFiveRecords(_ directory: TemporaryDirectory) throws -> EventStore {
        let store = try EventStore(path: directory.storePath, auditKey: testAuditKey)
        for n in 1...5 {
            try store.appendAudit(socketClient, action: "sandbox.create", subject: "sb-\(n)",
                                  details: #"{"agent_id":"agent-\#(n)"}"#, timeNs: Int64(n) * 1_000)
        }
        return store
    }

    @Test func anIntactChainVerifies() throws {
        let directory = TemporaryDirectory()
        let store = try storeWithFiveRecords(directory)
        let records = try store.auditRecords()
        #expect(records.map(\.seq) == [1, 2, 3, 4, 5])
        #expect(records[0].prevHash == String(repeating: "0", count: 64))
        for (previous, record) in zip(records, records.dropFirst()) {
            #expect(record.prevHash == previous.hash)
            #expect(record.hash == record.contentHash)
        }
        let result = try store.verifyAudit()
        #expect(result == AuditVerification(ok: true, records: 5, firstBroken: nil, reason: nil, headHash: records[4].hash,
                                            unkeyedRecords: 0, headMAC: records[4].mac))
        #expect(records.allSatisfy { $0.mac == $0.expectedMAC(testAuditKey) && $0.requesterJSON == socketClient.json })
        #expect(try store.auditRecords(afterSeq: 3).map(\.seq) == [4, 5])
    }

    /// Four threads on two connections (as two processes would be) append events
    /// and audit records at once: the chain stays whole and nothing is lost.
    @Test func concurrentWritersSerialize() throws {
        let directory = TemporaryDirectory()
        let stores = [try EventStore(path: directory.storePath, auditKey: testAuditKey),
                      try EventStore(path: directory.storePath, auditKey: testAuditKey)]
        DispatchQueue.concurrentPerform(iterations: 4) { worker in
            do {
                for batch in 0..<20 {
                    try stores[worker % 2].appendEvents((0..<50).map { n in
                        event(batch * 50 + n, sandbox: "sb-\(worker)", agent: "a\(worker)", kind: "file", timeNs: Int64(batch))
                    })
                    try stores[worker % 2].appendAudit(.service, action: "batch", subject: "\(batch)")
                }
            } catch {
                Issue.record(error)
            }
        }
        let verification = try stores[0].verifyAudit()
        #expect(verification.ok && verification.records == 80)
        for worker in 0..<4 {
            let events = try stores[1].events(EventFilter(sandboxID: "sb-\(worker)", limit: 5_000))
            #expect(events.map(\.json) == (0..<1_000).map { #"{"n":\#($0),"kind":"file"}"# })
            #expect(try stores[0].eventCounts(sandboxID: "sb-\(worker)").map(\.events) == [1_000])
        }
    }

    @Test func anEmptyLogVerifies() throws {
        let directory = TemporaryDirectory()
        let result = try EventStore(path: directory.storePath).verifyAudit()
        #expect(result.ok && result.records == 0 && result.headHash == AuditRecord.genesisHash)
    }

    /// The hash is the documented one (docs/store.md), computed here by coreutils'
    /// sha256sum over the netstrings rather than by the code under test.
    @Test func theHashIsSHA256OfTheDocumentedNetstrings() throws {
        let record = AuditRecord(seq: 7, timeNs: 1_795_000_000_000_000_000, actor: "root", action: "sandbox.create",
                                 subject: "sb-0123456789ab", detailsJSON: #"{"note":"é,:"}"#,
                                 prevHash: AuditRecord.genesisHash, hash: "")
        let fields = ["alcub3-audit-v1", "7", "1795000000000000000", "root", "sandbox.create", "sb-0123456789ab",
                      #"{"note":"é,:"}"#, AuditRecord.genesisHash]
        let message = fields.map { "\($0.utf8.count):\($0)," }.joined()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
        let input = Pipe(), output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        input.fileHandleForWriting.write(Data(message.utf8))
        try input.fileHandleForWriting.close()
        let digest = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).prefix(64)
        process.waitUntilExit()
        #expect(record.contentHash == String(digest))
    }

    @Test func appendOnlyTriggersRefuseChangesThroughSQLite() throws {
        let directory = TemporaryDirectory()
        _ = try storeWithFiveRecords(directory)
        let refusal = try sqlite3(directory.storePath, "UPDATE audit_log SET actor = 'x' WHERE seq = 2", expectSuccess: false)
        #expect(refusal.contains("append-only"))
        try sqlite3(directory.storePath, "DELETE FROM audit_log WHERE seq = 2", expectSuccess: false)
    }

    @Test func alteredDetailsNameExactlyThatRecord() throws {
        let directory = TemporaryDirectory()
        let store = try storeWithFiveRecords(directory)
        try sqlite3(directory.storePath, """
            DROP TRIGGER audit_log_no_update; UPDATE audit_log SET details_json = '{"agent_id":"someone-else"}' WHERE seq = 3
            """)
        let result = try store.verifyAudit()
        #expect(!result.ok)
        #expect(result.firstBroken == 3)
        #expect(result.records == 5)
        #expect(result.reason?.contains("content") == true)
    }

    /// With keys, the rewritten record itself is caught (its MAC), before the next link.
    @Test func aRewrittenRecordWithARecomputedHashFailsItsMAC() throws {
        let directory = TemporaryDirectory()
        let store = try storeWithFiveRecords(directory)
        var forged = try store.auditRecords()[2]
        forged.actor = "nobody"
        try sqlite3(directory.storePath, """
            DROP TRIGGER audit_log_no_update; UPDATE audit_log SET actor = 'nobody', hash = '\(forged.contentHash)' WHERE seq = 3
            """)
        let result = try store.verifyAudit()
        #expect(result.firstBroken == 3)
        #expect(result.reason?.contains("MAC does not verify") == true)
    }

    @Test func aDeletedMiddleRecordIsFound() throws {
        let directory = TemporaryDirectory()
        let store = try storeWithFiveRecords(directory)
        try sqlite3(directory.storePath, "DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE seq = 3")
        let result = try store.verifyAudit()
        #expect(!result.ok)
        #expect(result.firstBroken == 4)
        #expect(result.records == 4)
        #expect(result.reason == "record 3 is missing (deleted)")
    }

    @Test func aDeletedFirstRecordIsFound() throws {
        let directory = TemporaryDirectory()
        let store = try storeWithFiveRecords(directory)
        try sqlite3(directory.storePath, "DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE seq <= 2")
        let result = try store.verifyAudit()
        #expect(result.firstBroken == 3)
        #expect(result.reason == "records 1 to 2 are missing (deleted)")
    }
}

@Suite struct RetentionTests {
    /// Events 1...100 at times 1_000...100_000 over two sandboxes, alerts at 10_000 and 90_000.
    func filledStore(_ directory: TemporaryDirectory) throws -> EventStore {
        let store = try EventStore(path: directory.storePath)
        try store.appendEvents((1...100).map { n in
            event(n, sandbox: "sb-\(n % 2)", agent: "a\(n % 2)", kind: n % 5 == 0 ? "network" : "file", timeNs: Int64(n) * 1_000)
        })
        for time in [10_000, 90_000] as [Int64] {
            try store.appendAlert(AlertRecord(timeNs: time, sandboxID: "sb-0", agentID: "a0", severityID: 4, technique: "T1611", json: "{}"))
        }
        try store.appendAudit(.service, action: "filled", subject: "store", timeNs: 1)
        return store
    }

    /// The counters retention maintains agree with the events left.
    func expectCountsMatchEvents(_ store: EventStore) throws {
        let events = try store.events(EventFilter(limit: 10_000))
        #expect(try store.eventBytes() == Int64(events.reduce(0) { $0 + $1.json.utf8.count }))
        for sandbox in ["sb-0", "sb-1"] {
            var expected: [String: Int] = [:]
            for event in events where event.sandboxID == sandbox { expected[event.kind, default: 0] += 1 }
            let counted = try store.eventCounts(sandboxID: sandbox)
            #expect(Dictionary(uniqueKeysWithValues: counted.map { ($0.kind, $0.events) }) == expected)
        }
    }

    @Test func byAgeDeletesOlderEventsAndAlertsAndRecordsIt() throws {
        let directory = TemporaryDirectory()
        let store = try filledStore(directory)
        let result = try store.applyRetention(maxAgeNs: 50_000, maxBytes: nil, requester: socketClient, nowNs: 100_500)
        #expect(result.deletedEvents == 50)  // times below 50_500: events 1...50
        #expect(result.deletedAlerts == 1)
        #expect(try store.events(EventFilter()).map(\.id) == Array(51...100))
        #expect(try store.alerts(AlertFilter()).map(\.timeNs) == [90_000])
        try expectCountsMatchEvents(store)

        let audit = try store.auditRecords()
        #expect(audit.count == 2)
        #expect(result.auditSeq == 2)
        #expect(audit[1].actor == socketClient.actor && audit[1].action == "retention" && audit[1].subject == "events")
        #expect(audit[1].detailsJSON.contains(#""deleted_events":50"#))
        #expect(audit[1].detailsJSON.contains(#""deleted_alerts":1"#))
        #expect(audit[1].detailsJSON.contains(#""cutoff_ns":50500"#))
        #expect(try store.verifyAudit().ok)

        // Nothing more to delete: nothing recorded.
        let again = try store.applyRetention(maxAgeNs: 50_000, maxBytes: nil, nowNs: 100_500)
        #expect(again.deletedEvents == 0 && again.auditSeq == nil)
        #expect(try store.auditRecords().count == 2)
    }

    @Test func bySizeDeletesTheOldestUntilTheDataFits() throws {
        let directory = TemporaryDirectory()
        let store = try filledStore(directory)
        let before = try store.eventBytes()
        let limit = before / 3
        let result = try store.applyRetention(maxAgeNs: nil, maxBytes: limit)
        #expect(result.eventBytesBefore == before)
        #expect(result.eventBytesAfter <= limit)
        #expect(result.deletedAlerts == 0)
        let left = try store.events(EventFilter())
        #expect(left.last?.id == 100)
        #expect(left.first?.id == Int64(100 - left.count + 1))  // the newest were kept
        // No more was deleted than needed: one more event would not fit.
        let oneMore = try #require(left.first).json.utf8.count
        #expect(result.eventBytesAfter + Int64(oneMore) > limit || left.count == 100)
        #expect(try store.eventBytes() == result.eventBytesAfter)
        try expectCountsMatchEvents(store)
        #expect(try store.auditRecords().last?.detailsJSON.contains(#""max_bytes":\#(limit)"#) == true)
        #expect(try store.verifyAudit().ok)
    }

    @Test func neverTouchesTheAuditLogAndNeverReusesIDs() throws {
        let directory = TemporaryDirectory()
        let store = try filledStore(directory)
        // Enough data (about 1 MB) that the file is mostly free pages once it goes.
        try store.appendEvents((101...2_600).map { EventStore.sampleEvent($0, timeNs: Int64($0) * 100) })
        let result = try store.applyRetention(maxAgeNs: 0, maxBytes: 0, nowNs: 1_000_000)
        #expect(result.deletedEvents == 2_600 && result.deletedAlerts == 2)
        #expect(try store.events(EventFilter()).isEmpty)
        #expect(try store.eventBytes() == 0)
        #expect(try store.auditRecords().count == 2)
        #expect(try store.verifyAudit().ok)
        // Nearly the whole file was free: it went back to the file system.
        #expect(result.pagesReturned > 0)
        #expect(try sqlite3(directory.storePath, "PRAGMA freelist_count") == "0")
        // A follower that saw id 2,600 still sees the next event.
        #expect(try store.appendEvents([event(0, sandbox: "sb-0", agent: "a0", kind: "file", timeNs: 2_000_000)]) == 2_601)
        #expect(try store.events(EventFilter(afterID: 2_600)).map(\.id) == [2_601])
    }
}

@Suite struct BenchmarkTests {
    /// Not a timed test: the benchmark runs and its figures are sane numbers.
    @Test func benchmarkInsertRunsAndReports() throws {
        let directory = TemporaryDirectory()
        let path = directory.path + "/bench.db"
        let result = try EventStore.benchmarkInsert(path: path, events: 5_000, batch: 1_000)
        #expect(result.eventsPerSecond > 0 && result.eventsPerSecond.isFinite)
        #expect(result.bytesPerEvent > 300)
        #expect(try EventStore(path: path).lastEventID() == 5_000)
        print("store insert (debug build, 5,000 events): \(Int(result.eventsPerSecond)) events/s, \(Int(result.bytesPerEvent)) bytes/event")
    }

    /// The figure for docs: ALCUB3_STORE_BENCH=1000000 swift test --filter measureInsertRate
    @Test(.enabled(if: ProcessInfo.processInfo.environment["ALCUB3_STORE_BENCH"] != nil))
    func measureInsertRate() throws {
        let directory = TemporaryDirectory()
        let events = Int(ProcessInfo.processInfo.environment["ALCUB3_STORE_BENCH"] ?? "") ?? 1_000_000
        for batch in [1_000, 4_096] {
            let result = try EventStore.benchmarkInsert(path: directory.path + "/bench-\(batch).db", events: events, batch: batch)
            print("store insert, \(events) events, batch \(batch): \(Int(result.eventsPerSecond)) events/s, \(Int(result.bytesPerEvent)) bytes/event")
        }
    }
}
