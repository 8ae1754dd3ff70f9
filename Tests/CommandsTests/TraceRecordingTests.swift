import Foundation
import Testing

/// `alcub3 run --record-traces DIR`: one trace file per thread of the sandbox,
/// the syscall numbers it made, from alcub3's own telemetry.
@Suite(.serialized, .enabled(if: isRoot, "needs root: BPF, cgroups and namespaces"))
struct TraceRecordingTests {
    @Test func eachThreadGetsItsSyscallsInATraceFile() throws {
        let dir = NSTemporaryDirectory() + "alcub3-traces-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // A main thread making 3000 getppid calls, and a second thread making 500;
        // a signal handler, whose rt_sigreturn the kernel reports as -1 at its exit.
        let script = """
            import os, signal, threading
            signal.signal(signal.SIGUSR1, lambda *_: None)
            os.kill(os.getpid(), signal.SIGUSR1)
            t = threading.Thread(target=lambda: [os.getppid() for _ in range(500)])
            t.start(); t.join()
            for _ in range(3000): os.getppid()
            """
        let r = try alcub3(["run", "--record-traces", "traces", "--", "/usr/bin/python3", "-c", script], in: dir)
        #expect(r.code == 0, "stderr: \(r.stderr)")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir + "/traces").sorted()
        let python = files.filter { $0.hasPrefix("python3-") && $0.hasSuffix(".trace") }
        #expect(python.count == 2, "trace files: \(files)")
        // <program>-<pid>-<tid>.trace: both threads of one process.
        let ids = python.map { $0.dropLast(6).split(separator: "-").dropFirst().compactMap { Int32($0) } }
        #expect(ids.allSatisfy { $0.count == 2 } && Set(ids.map { $0[0] }).count == 1, "names: \(python)")
        var getppids: [Int] = [], sigreturns = 0
        for name in python {
            let text = try String(contentsOfFile: dir + "/traces/" + name, encoding: .utf8)
            let tokens = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
            #expect(tokens.allSatisfy { Int($0).map { (0..<1024).contains($0) } == true },
                    "\(name) holds something other than syscall numbers")
            getppids.append(tokens.filter { $0 == "110" }.count)  // getppid on x86_64
            sigreturns += tokens.filter { $0 == "15" }.count
        }
        #expect(sigreturns >= 1)
        #expect(getppids.sorted().first ?? 0 >= 500 && getppids.max() ?? 0 >= 3000, "getppid per trace: \(getppids)")
        #expect(r.stderr.contains("traces ("), "stderr: \(r.stderr)")
    }

    @Test func aDirectoryThatCannotHoldTracesIsRefusedBeforeAnythingRuns() throws {
        let dir = NSTemporaryDirectory() + "alcub3-traces-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "x".write(toFile: dir + "/file", atomically: true, encoding: .utf8)
        for target in ["file", "file/below", "/proc/sys/kernel"] {
            let r = try alcub3(["run", "--record-traces", target, "--", "/bin/sh", "-c", "touch ran"], in: dir)
            #expect(r.code == 64, "\(target): \(r.code) \(r.stderr)")
            let lines = r.stderr.split(separator: "\n")
            #expect(lines.count == 1 && lines[0].hasPrefix("alcub3: error: --record-traces: "), "\(target): \(r.stderr)")
            #expect(!FileManager.default.fileExists(atPath: dir + "/ran"))
        }
    }
}
