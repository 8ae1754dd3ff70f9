import Foundation
import Testing
@testable import Analysis

/// A fresh directory with `files` (relative path -> content), removed by the caller.
func traceDirectory(_ files: [String: String]) throws -> String {
    let root = NSTemporaryDirectory() + "alcub3-traces-" + UUID().uuidString
    for (path, text) in files {
        let full = root + "/" + path
        try FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try text.write(toFile: full, atomically: true, encoding: .utf8)
    }
    try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    return root
}

@Suite struct TraceLoadingTests {
    @Test func nestedFoldersAreOneTracePerFile() throws {
        let root = try traceDirectory(["a.txt": "1 2 3\n4 5", "x/b": "6\t7  8\n", "x/y/z/c.trace": "0 1023"])
        defer { try? FileManager.default.removeItem(atPath: root) }
        let traces = try SyscallTrace.loadDirectory(root)
        #expect(traces.count == 3)
        #expect(traces.map(\.syscalls) == [[1, 2, 3, 4, 5], [6, 7, 8], [0, 1023]])
    }

    @Test func badTokensNameTheFileLineAndToken() throws {
        let cases: [(String, (String) -> TraceError)] = [
            ("1 2\n3 read 4", { .nonNumericToken(file: $0, line: 2, token: "read") }),
            ("1 2 12a", { .nonNumericToken(file: $0, line: 1, token: "12a") }),
            ("1\n\n1024", { .outOfRange(file: $0, line: 3, token: "1024") }),
            ("5 99999999999999999999999", { .outOfRange(file: $0, line: 1, token: "99999999999999999999999") }),
            ("5 -1", { .outOfRange(file: $0, line: 1, token: "-1") }),
            ("1 2 3.5", { .nonNumericToken(file: $0, line: 1, token: "3.5") }),
            ("1 \u{1}", { .nonNumericToken(file: $0, line: 1, token: "\\x01") }),
            (" \n\t ", { .emptyTrace(file: $0) }),
            ("", { .emptyTrace(file: $0) }),
        ]
        for (text, expected) in cases {
            let root = try traceDirectory(["t/trace": text])
            defer { try? FileManager.default.removeItem(atPath: root) }
            let file = root + "/t/trace"
            #expect(throws: expected(file)) { try SyscallTrace.loadDirectory(root) }
        }
        #expect(TraceError.nonNumericToken(file: "f", line: 2, token: "read").description
            == "f:2: 'read' is not a syscall number (whitespace-separated decimal numbers expected)")
        #expect(TraceError.outOfRange(file: "f", line: 3, token: "1024").description
            == "f:3: syscall number 1024 is out of range (0 to 1023)")
    }

    @Test func missingOrEmptyDirectoriesAreRefused() throws {
        let root = try traceDirectory(["only/dirs/.keep-dir/x": "1"])
        defer { try? FileManager.default.removeItem(atPath: root) }
        try FileManager.default.removeItem(atPath: root + "/only/dirs/.keep-dir/x")
        #expect(throws: TraceError.noTraces(directory: root)) { try SyscallTrace.loadDirectory(root) }
        #expect(throws: TraceError.missingDirectory(root + "/nope")) { try SyscallTrace.loadDirectory(root + "/nope") }
        try "1".write(toFile: root + "/file", atomically: true, encoding: .utf8)
        #expect(throws: TraceError.notADirectory(root + "/file")) { try SyscallTrace.loadDirectory(root + "/file") }
        for error in [TraceError.noTraces(directory: "d"), .missingDirectory("d"), .emptyTrace(file: "f"), .unreadable(path: "p", reason: "r")] {
            #expect(!error.description.contains("\n"))
        }
    }
}

@Suite struct DetectionMetricsTests {
    @Test func aucCountsTiesHalf() {
        #expect(DetectionMetrics.auc(normal: [1, 2, 3], attack: [4, 5]) == 1)
        #expect(DetectionMetrics.auc(normal: [4, 5], attack: [1, 2, 3]) == 0)
        #expect(DetectionMetrics.auc(normal: [1, 1], attack: [1, 1]) == 0.5)
        // Pairs: 2>1, 4>1, 4>3 win and 2<3 loses: 3 of 4.
        #expect(DetectionMetrics.auc(normal: [1, 3], attack: [2, 4]) == 0.75)
        // 3 against 3 is a tie, half a win: 3.5 of 4.
        #expect(DetectionMetrics.auc(normal: [1, 3], attack: [3, 4]) == 0.875)
    }

    @Test func detectionAtFalseAlarmKeepsAlarmsWithinTheRate() {
        // 100 normal scores 0...99; attacks 50...149.
        let normal = (0..<100).map(Double.init), attack = (50..<150).map(Double.init)
        // 1 % false alarms: only 99 may pass, so the threshold is 98 and attacks 99...149 (51) pass.
        #expect(DetectionMetrics.detectionRate(atFalseAlarm: 0.01, normal: normal, attack: attack) == 0.51)
        #expect(DetectionMetrics.detectionRate(atFalseAlarm: 0.05, normal: normal, attack: attack) == 0.55)
        #expect(DetectionMetrics.detectionRate(atFalseAlarm: 0.20, normal: normal, attack: attack) == 0.70)
        // 90 % detection needs the 90 highest attacks, down to 60: normal scores 60...99 alarm (40 %).
        #expect(DetectionMetrics.falseAlarmRate(atDetection: 0.9, normal: normal, attack: attack) == 0.40)
        // Ties at the threshold never alarm: a flat normal list allows no detection of equal attacks.
        #expect(DetectionMetrics.detectionRate(atFalseAlarm: 0.05, normal: [1, 1, 1, 1], attack: [1, 2]) == 0.5)
        // Fewer normal traces than 1/rate: no false alarm is allowed at all.
        #expect(DetectionMetrics.detectionRate(atFalseAlarm: 0.01, normal: [1, 5], attack: [2, 6]) == 0.5)
    }

    @Test func jsonObjectHasTheDocumentedKeys() {
        let metrics = DetectionMetrics(normal: [0, 1, 2, 3], attack: [2, 5, 6])
        let object = metrics.jsonObject
        #expect(Set(object.keys) == ["auc", "detection_at_false_alarm", "false_alarm_at_detection_0.90"])
        #expect(Set((object["detection_at_false_alarm"] as? [String: Any])?.keys ?? [:].keys) == ["0.01", "0.05", "0.10", "0.20"])
        // 90 % of 3 attacks is all 3, down to 2: normal 2 and 3 alarm.
        #expect(metrics.falseAlarmAtDetection == 0.5)
    }
}
