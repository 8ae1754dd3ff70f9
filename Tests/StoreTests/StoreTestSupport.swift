import Foundation
import Testing
@testable import Store

/// A fresh directory for one test, removed with everything in it when the test ends.
final class TemporaryDirectory {
    let path: String

    init() {
        var template = Array((NSTemporaryDirectory() + "alcub3-store-XXXXXX").utf8CString)
        path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    /// A store path two directories down, so the test sees them created.
    var storePath: String { path + "/state/alcub3/alcub3.db" }
}

/// Runs the sqlite3 command-line tool on a store, as an operator (or a tamperer) would.
@discardableResult
func sqlite3(_ database: String, _ sql: String, expectSuccess: Bool = true) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/sqlite3")
    process.arguments = [database, sql]
    let output = Pipe()
    process.standardOutput = output
    process.standardError = output
    try process.run()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let text = String(decoding: data, as: UTF8.self)
    #expect((process.terminationStatus == 0) == expectSuccess, "sqlite3 \(sql): \(text)")
    return text.trimmingCharacters(in: .whitespacesAndNewlines)
}

func sandboxRecord(_ id: String, agent: String, state: SandboxState = .running, createdNs: Int64 = 1_000) -> SandboxRecord {
    SandboxRecord(sandboxID: id, agentID: agent, classification: "UNCLASSIFIED", isolation: "process", state: state,
                  policyJSON: #"{"cpu_limit":"2.0"}"#, commandJSON: #"["python3","agent.py"]"#,
                  cgroupPath: "/sys/fs/cgroup/unified/alcub3/\(id)", cgroupID: 0xFFFF_0000_0000_1234, initPID: 4242,
                  createdNs: createdNs)
}

func event(_ n: Int, sandbox: String, agent: String, kind: String, timeNs: Int64) -> StoredEvent {
    StoredEvent(timeNs: timeNs, sandboxID: sandbox, agentID: agent, kind: kind, classUID: kind == "alcub3" ? nil : 1007,
                json: #"{"n":\#(n),"kind":"\#(kind)"}"#)
}
