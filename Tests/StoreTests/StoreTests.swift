import Foundation
import Testing
@testable import Store

@Suite struct OpeningTests {
    @Test func createsAPrivateWALDatabaseWithTheCurrentSchema() throws {
        let directory = TemporaryDirectory()
        let store = try EventStore(path: directory.storePath)  // open: its -wal file exists
        let owned = [(directory.path + "/state", 0o700), (directory.path + "/state/alcub3", 0o700),
                     (directory.storePath, 0o600), (directory.storePath + "-wal", 0o600)]
        for (path, mode) in owned {
            var info = stat()
            #expect(stat(path, &info) == 0)
            #expect(Int(info.st_mode) & 0o777 == mode, "\(path)")
        }
        #expect(try sqlite3(directory.storePath, "PRAGMA journal_mode") == "wal")
        #expect(store.path == directory.storePath)
        #expect(try sqlite3(directory.storePath, "PRAGMA user_version") == String(EventStore.schemaVersion))
        #expect(try sqlite3(directory.storePath, "PRAGMA auto_vacuum") == "2")  // incremental
        let tables = try sqlite3(directory.storePath, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        for table in ["alerts", "audit_log", "baselines", "event_counts", "events", "sandboxes"] {
            #expect(tables.split(separator: "\n").contains(Substring(table)))
        }
    }

    @Test func reopeningKeepsDataAndMigratesNothing() throws {
        let directory = TemporaryDirectory()
        do {
            let store = try EventStore(path: directory.storePath)
            try store.upsertSandbox(sandboxRecord("sb-1", agent: "a"))
            try store.appendEvents([event(1, sandbox: "sb-1", agent: "a", kind: "process", timeNs: 10)])
            try store.appendAudit(.service, action: "open", subject: "store")
        }
        let schema = try sqlite3(directory.storePath, "SELECT group_concat(sql, ';') FROM sqlite_master")
        let store = try EventStore(path: directory.storePath)
        #expect(try sqlite3(directory.storePath, "SELECT group_concat(sql, ';') FROM sqlite_master") == schema)
        #expect(try sqlite3(directory.storePath, "PRAGMA user_version") == String(EventStore.schemaVersion))
        #expect(try store.sandbox(id: "sb-1")?.agentID == "a")
        #expect(try store.appendEvents([event(2, sandbox: "sb-1", agent: "a", kind: "file", timeNs: 20)]) == 2)
        #expect(try store.verifyAudit().records == 1)
    }

    @Test func refusesAStoreFromANewerAlcub3() throws {
        let directory = TemporaryDirectory()
        _ = try EventStore(path: directory.storePath)
        try sqlite3(directory.storePath, "PRAGMA user_version = 99")
        #expect { try EventStore(path: directory.storePath) } throws: { error in
            (error as? StoreError)?.message.contains("schema version 99 is newer") == true
        }
    }

    @Test func readOnlyStoresReadButDoNotWrite() throws {
        let directory = TemporaryDirectory()
        try EventStore(path: directory.storePath).appendAudit(.service, action: "write", subject: "x")
        let store = try EventStore(path: directory.storePath, readOnly: true)
        #expect(try store.verifyAudit().ok)
        #expect { try store.appendAudit(.service, action: "write", subject: "y") } throws: { error in
            (error as? StoreError)?.primaryCode == 8  // SQLITE_READONLY
        }
    }

    @Test func errorsNameTheOperationAndSQLitesAnswer() throws {
        let directory = TemporaryDirectory()
        let missing = directory.path + "/missing.db"
        do {
            _ = try EventStore(path: missing, readOnly: true)
            Issue.record("opened a missing store read-only")
        } catch let error as StoreError {
            #expect(error.primaryCode == 14)  // SQLITE_CANTOPEN
            #expect(error.operation == "open \(missing)")
            #expect(error.description.hasPrefix("open \(missing): "))
        }
    }
}

@Suite struct SandboxRecordTests {
    @Test func savesReadsAndReplacesSandboxes() throws {
        let directory = TemporaryDirectory()
        let store = try EventStore(path: directory.storePath)
        var record = sandboxRecord("sb-1", agent: "builder", state: .creating)
        try store.upsertSandbox(record)
        #expect(try store.sandbox(id: "sb-1") == record)
        #expect(try store.sandbox(id: "sb-2") == nil)
        record.state = .running
        record.initPID = 777
        record.detailsJSON = #"{"applied":{}}"#
        try store.upsertSandbox(record)
        #expect(try store.sandbox(agentID: "builder") == record)
        #expect(try store.sandbox(id: "sb-1")?.cgroupID == 0xFFFF_0000_0000_1234)
    }

    @Test func listsByState() throws {
        let directory = TemporaryDirectory()
        let store = try EventStore(path: directory.storePath)
        try store.upsertSandbox(sandboxRecord("sb-1", agent: "a", state: .running, createdNs: 1))
        try store.upsertSandbox(sandboxRecord("sb-2", agent: "b", state: .stopped, createdNs: 2))
        try store.upsertSandbox(sandboxRecord("sb-3", agent: "c", state: .creating, createdNs: 3))
        try store.upsertSandbox(sandboxRecord("sb-4", agent: "d", state: .failed, createdNs: 4))
        #expect(try store.sandboxes().map(\.sandboxID) == ["sb-1", "sb-2", "sb-3", "sb-4"])
        #expect(try store.sandboxes(states: SandboxState.active).map(\.sandboxID) == ["sb-1", "sb-3"])
        #expect(try store.sandboxes(states: [.stopped, .failed]).map(\.sandboxID) == ["sb-2", "sb-4"])
        #expect(try store.sandboxes(states: []).isEmpty)
    }

    @Test func anAgentIDHasOneActiveSandbox() throws {
        let directory = TemporaryDirectory()
        let store = try EventStore(path: directory.storePath)
        try store.upsertSandbox(sandboxRecord("sb-1", agent: "agent", state: .running, createdNs: 1))
        #expect { try store.upsertSandbox(sandboxRecord("sb-2", agent: "agent", state: .creating, createdNs: 2)) } throws: { error in
            (error as? StoreError)?.isConstraintViolation == true
        }
        #expect(try store.updateSandboxState(id: "sb-1", to: .stopped, endedNs: 50, exitCode: 3))
        try store.upsertSandbox(sandboxRecord("sb-2", agent: "agent", state: .running, createdNs: 2))
        try store.upsertSandbox(sandboxRecord("sb-0", agent: "agent", state: .failed, createdNs: 9))

        // The active one first, then the newest.
        #expect(try store.sandbox(agentID: "agent")?.sandboxID == "sb-2")
        let ended = try #require(try store.sandbox(id: "sb-1"))
        #expect(ended.state == .stopped && ended.endedNs == 50 && ended.exitCode == 3)
        #expect { try store.updateSandboxState(id: "sb-1", to: .running) } throws: { error in
            (error as? StoreError)?.isConstraintViolation == true
        }
        #expect(try store.updateSandboxState(id: "sb-2", to: .failed))
        #expect(try store.sandbox(agentID: "agent")?.sandboxID == "sb-0")
        #expect(try store.updateSandboxState(id: "sb-9", to: .stopped) == false)
    }
}

@Suite struct EventTests {
    /// 30 events: sandboxes sb-0..2 (agents a0..a2) in turn, kinds process/file/network
    /// changing every 10, times 100, 200, ... 3000.
    func filledStore(_ directory: TemporaryDirectory) throws -> EventStore {
        let store = try EventStore(path: directory.storePath)
        let kinds = ["process", "file", "network"]
        let events = (0..<30).map { n in
            event(n, sandbox: "sb-\(n % 3)", agent: "a\(n % 3)", kind: kinds[n / 10], timeNs: Int64(n + 1) * 100)
        }
        #expect(try store.appendEvents(Array(events[0..<20])) == 20)
        #expect(try store.appendEvents(Array(events[20...])) == 30)
        return store
    }

    @Test func eachFilterSelectsItsEvents() throws {
        let directory = TemporaryDirectory()
        let store = try filledStore(directory)
        let all = try store.events(EventFilter())
        #expect(all.map(\.id) == Array(1...30))
        #expect(all[4].json == #"{"n":4,"kind":"process"}"# && all[4].sandboxID == "sb-1" && all[4].classUID == 1007)

        #expect(try store.events(EventFilter(sandboxID: "sb-1")).map(\.id) == Array(stride(from: 2, through: 30, by: 3)))
        #expect(try store.events(EventFilter(agentID: "a2")).map(\.id) == Array(stride(from: 3, through: 30, by: 3)))
        #expect(try store.events(EventFilter(kind: "file")).map(\.id) == Array(11...20))
        #expect(try store.events(EventFilter(sinceNs: 2_550)).map(\.id) == Array(26...30))
        #expect(try store.events(EventFilter(afterID: 27)).map(\.id) == [28, 29, 30])
        #expect(try store.events(EventFilter(sandboxID: "sb-0", kind: "network", sinceNs: 2_500)).map(\.id) == [25, 28])
        #expect(try store.events(EventFilter(limit: 4)).map(\.id) == [1, 2, 3, 4])
        #expect(try store.events(EventFilter(kind: "process", limit: 3, newest: true)).map(\.id) == [8, 9, 10])
        #expect(try store.events(EventFilter(sandboxID: "nobody")).isEmpty)
    }

    @Test func sinceFindsEventsStoredOutOfTimeOrder() throws {
        let directory = TemporaryDirectory()
        let store = try EventStore(path: directory.storePath)
        try store.appendEvents([10, 105, 101, 5, 120].enumerated().map { n, time in
            event(n, sandbox: "sb-0", agent: "a", kind: "file", timeNs: time)
        })
        #expect(try store.events(EventFilter(sinceNs: 100)).map(\.id) == [2, 3, 5])
        #expect(try store.events(EventFilter(sandboxID: "sb-0", sinceNs: 103, afterID: 2)).map(\.id) == [5])
        #expect(try store.events(EventFilter(sinceNs: 121)).isEmpty)
    }

    @Test func anAgentsEventsSpanItsSandboxesInIDOrder() throws {
        let directory = TemporaryDirectory()
        let store = try EventStore(path: directory.storePath)
        try store.appendEvents((0..<9).map { n in
            event(n, sandbox: ["sb-old", "sb-new", "sb-other"][n % 3], agent: n % 3 == 2 ? "b" : "a", kind: "file", timeNs: Int64(n))
        })
        #expect(try store.events(EventFilter(agentID: "a")).map(\.id) == [1, 2, 4, 5, 7, 8])
        #expect(try store.events(EventFilter(agentID: "a", afterID: 4, limit: 2)).map(\.id) == [5, 7])
        #expect(try store.events(EventFilter(agentID: "b", newest: true)).map(\.id) == [3, 6, 9])
    }

    @Test func afterIDPagesThroughEverythingOnce() throws {
        let directory = TemporaryDirectory()
        let store = try filledStore(directory)
        var seen: [Int64] = []
        var after: Int64 = 0
        while true {
            let page = try store.events(EventFilter(agentID: "a1", afterID: after, limit: 3))
            guard let last = page.last else { break }
            seen += page.map(\.id)
            after = last.id
        }
        #expect(seen == Array(stride(from: 2, through: 30, by: 3)))
        // A follower polling after the last id sees new events only.
        try store.appendEvents([event(99, sandbox: "sb-1", agent: "a1", kind: "alcub3", timeNs: 9_999)])
        #expect(try store.events(EventFilter(agentID: "a1", afterID: after)).map(\.id) == [31])
        #expect(try store.lastEventID() == 31)
        #expect(try store.appendEvents([]) == 31)
    }

    @Test func countsEventsByKind() throws {
        let directory = TemporaryDirectory()
        let store = try filledStore(directory)
        let counts = try store.eventCounts(sandboxID: "sb-0")
        #expect(counts.map(\.kind) == ["file", "network", "process"])
        #expect(counts.map(\.events) == [3, 3, 4])
        let stored = try store.events(EventFilter(sandboxID: "sb-0", kind: "process"))
        #expect(counts[2].bytes == Int64(stored.reduce(0) { $0 + $1.json.utf8.count }))
        #expect(try store.eventBytes() == Int64(try store.events(EventFilter()).reduce(0) { $0 + $1.json.utf8.count }))
        #expect(try store.eventCounts(sandboxID: "nobody").isEmpty)
    }

    @Test func manyBatchedEventsGoInAndComeOut() throws {
        let directory = TemporaryDirectory()
        let store = try EventStore(path: directory.storePath)
        let total = 20_000
        let rows = (0..<total).map { EventStore.sampleEvent($0, timeNs: 1_000_000 + Int64($0)) }
        for start in stride(from: 0, to: total, by: 4096) {
            try store.appendEvents(Array(rows[start..<min(start + 4096, total)]))
        }
        var read: [StoredEvent] = []
        while read.count < total + 1 {
            let page = try store.events(EventFilter(afterID: read.last?.id ?? 0, limit: 5000))
            if page.isEmpty { break }
            read += page
        }
        #expect(read.count == total)
        #expect(read.map(\.id) == Array(1...Int64(total)))
        #expect(read.map(\.json) == rows.map(\.json))
        let meanLength = Double(rows.reduce(0) { $0 + $1.json.utf8.count }) / Double(total)
        #expect(meanLength > 350 && meanLength < 450, "benchmark rows should be about 400 bytes, are \(meanLength)")
    }
}

@Suite struct AlertAndBaselineTests {
    @Test func alertsAreFilteredLikeEvents() throws {
        let directory = TemporaryDirectory()
        let store = try EventStore(path: directory.storePath)
        for n in 0..<6 {
            let id = try store.appendAlert(AlertRecord(timeNs: Int64(n) * 10, sandboxID: "sb-\(n % 2)", agentID: "a\(n % 2)",
                                                       severityID: n, technique: "T\(n)", json: #"{"n":\#(n)}"#))
            #expect(id == Int64(n + 1))
        }
        #expect(try store.alerts(AlertFilter()).map(\.technique) == ["T0", "T1", "T2", "T3", "T4", "T5"])
        #expect(try store.alerts(AlertFilter(sandboxID: "sb-1")).map(\.id) == [2, 4, 6])
        #expect(try store.alerts(AlertFilter(agentID: "a0", minSeverityID: 2)).map(\.id) == [3, 5])
        #expect(try store.alerts(AlertFilter(sinceNs: 40, afterID: 5)).map(\.id) == [6])
        #expect(try store.alerts(AlertFilter(limit: 2, newest: true)).map(\.id) == [5, 6])
    }

    @Test func baselinesAreImmutableAndListedWithoutTheirJSON() throws {
        let directory = TemporaryDirectory()
        let store = try EventStore(path: directory.storePath)
        let first = BaselineRecord(id: "bl-1", sandboxID: "sb-1", agentID: "a", createdNs: 5, json: #"{"files":{"/etc/hosts":"ab"}}"#)
        try store.saveBaseline(first)
        try store.saveBaseline(BaselineRecord(id: "bl-2", sandboxID: "sb-2", agentID: "b", createdNs: 6, json: "{}"))
        #expect(try store.baseline(id: "bl-1") == first)
        #expect(try store.baseline(id: "bl-9") == nil)
        #expect { try store.saveBaseline(BaselineRecord(id: "bl-1", sandboxID: "sb-1", agentID: "a", createdNs: 7, json: "{}")) } throws: { error in
            (error as? StoreError)?.isConstraintViolation == true
        }
        #expect(try store.baselines() == [
            BaselineSummary(id: "bl-1", sandboxID: "sb-1", agentID: "a", createdNs: 5, bytes: first.json.utf8.count),
            BaselineSummary(id: "bl-2", sandboxID: "sb-2", agentID: "b", createdNs: 6, bytes: 2),
        ])
        #expect(try store.baselines(agentID: "b").map(\.id) == ["bl-2"])
    }
}
