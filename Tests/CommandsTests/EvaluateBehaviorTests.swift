import Foundation
import Testing

/// `alcub3 integrity evaluate-behavior` as a user runs it, on small trace folders.
@Suite struct EvaluateBehaviorTests {
    /// train/, normal/ (nested) and attack/ of made-up traces: a loop of file
    /// calls with small variations; attacks splice in a connect-dup2-execve burst.
    func traceFolders() throws -> String {
        let root = NSTemporaryDirectory() + "alcub3-eval-" + UUID().uuidString
        let loop = [257, 5, 0, 0, 3, 9, 11, 202, 232, 0, 1]
        func trace(_ seed: Int, burst: Bool) -> String {
            var calls: [Int] = []
            for round in 0..<60 {
                calls += loop
                if (round * 7 + seed) % 5 == 0 { calls += [4, 257, 3] }
                if burst && round == 30 { calls += [41, 42, 33, 33, 33, 59, 61] }
            }
            return calls.map(String.init).joined(separator: " ") + "\n"
        }
        for (folder, count, burst) in [("train", 12, false), ("normal/a/b", 6, false), ("attack", 4, true)] {
            try FileManager.default.createDirectory(atPath: root + "/" + folder, withIntermediateDirectories: true)
            for index in 0..<count {
                try trace(index + folder.count, burst: burst).write(toFile: "\(root)/\(folder)/t\(index)", atomically: true, encoding: .utf8)
            }
        }
        return root
    }

    @Test func jsonHasTheMetricsOfEveryModel() throws {
        let root = try traceFolders()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let r = try alcub3(["integrity", "evaluate-behavior", "--train", root + "/train", "--normal", root + "/normal",
                            "--attack", root + "/attack", "--model", "all", "--format", "json", "--save-profile", "profile.json",
                            "--agent-id", "eval-agent"], in: root)
        #expect(r.code == 0, "stderr: \(r.stderr)")
        let objects = r.jsonLines
        #expect(objects.count == 1)
        let object = try #require(objects.first)
        #expect(Set(object.keys) == ["auc", "detection_at_false_alarm", "false_alarm_at_detection_0.90", "models"])
        #expect(Set((object["detection_at_false_alarm"] as? [String: Double])?.keys.map { $0 } ?? []) == ["0.01", "0.05", "0.10", "0.20"])
        let models = try #require(object["models"] as? [String: [String: Any]])
        #expect(Set(models.keys) == ["alcub3", "stide", "markov"])
        #expect(models["alcub3"]?["auc"] as? Double == object["auc"] as? Double)
        #expect(object["auc"] as? Double == 1.0)
        let profile = try #require(FileManager.default.contents(atPath: root + "/profile.json"))
        let saved = try #require(try JSONSerialization.jsonObject(with: profile) as? [String: Any])
        #expect(saved["agent_id"] as? String == "eval-agent")
        #expect(saved["format"] as? String == "alcub3-sequence-model")

        let table = try alcub3(["integrity", "evaluate-behavior", "--train", root + "/train", "--normal", root + "/normal",
                                "--attack", root + "/attack"])
        #expect(table.code == 0 && table.stdout.contains("alcub3") && table.stdout.contains("AUC"), "\(table.stdout)\(table.stderr)")
    }

    @Test func badTracesAreRefusedNamingTheToken() throws {
        let root = try traceFolders()
        defer { try? FileManager.default.removeItem(atPath: root) }
        try "1 2 3\n4 read 5\n".write(toFile: root + "/normal/a/bad", atomically: true, encoding: .utf8)
        let r = try alcub3(["integrity", "evaluate-behavior", "--train", root + "/train", "--normal", root + "/normal",
                            "--attack", root + "/attack", "--format", "json"])
        #expect(r.code == 68)
        #expect(r.stderr.contains("--normal: \(root)/normal/a/bad:2: 'read' is not a syscall number"), "\(r.stderr)")
        #expect(r.stdout.isEmpty)
        let missing = try alcub3(["integrity", "evaluate-behavior", "--train", root + "/nope", "--normal", root + "/normal",
                                  "--attack", root + "/attack"])
        #expect(missing.code == 68 && missing.stderr.contains("does not exist"), "\(missing.stderr)")
        try "".write(toFile: root + "/attack/empty", atomically: true, encoding: .utf8)
        try FileManager.default.removeItem(atPath: root + "/normal/a/bad")
        let empty = try alcub3(["integrity", "evaluate-behavior", "--train", root + "/train", "--normal", root + "/normal",
                                "--attack", root + "/attack"])
        #expect(empty.code == 68 && empty.stderr.contains("empty trace"), "\(empty.stderr)")
    }
}
