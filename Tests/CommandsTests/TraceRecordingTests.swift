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

    /// H6: the agent plants `python3-<pid>-<pid>.trace` symlinks to a root-only
    /// file outside for every pid the host can hand out (it cannot know its
    /// host pid from inside its pid namespace); alcub3 writes no trace through
    /// them, leaves the file as it was and fails naming the planted names.
    @Test func symlinksPlantedWhereTracesGoAreNeverWrittenThrough() throws {
        let dir = NSTemporaryDirectory() + "alcub3-traces-" + UUID().uuidString
        let outside = NSTemporaryDirectory() + "alcub3-trace-canary-" + UUID().uuidString
        for d in [dir + "/traces", outside] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        defer { for d in [dir, outside] { try? FileManager.default.removeItem(atPath: d) } }
        let canary = outside + "/clobber.txt"
        try "original content of a root-owned file\n".write(toFile: canary, atomically: false, encoding: .utf8)
        chmod(canary, 0o600)
        let pidMax = Int((try String(contentsOfFile: "/proc/sys/kernel/pid_max", encoding: .utf8))
            .trimmingCharacters(in: .whitespacesAndNewlines)) ?? 32768
        // Past 32768 the spray would take long; the pids here are the ones just handed out.
        let last = min(pidMax - 1, 32767)
        let script = """
            import os
            for n in range(300, \(last) + 1):
                os.symlink("\(canary)", "traces/python3-%d-%d.trace" % (n, n))
            print("planted", \(last) - 299)
            """
        let r = try alcub3(["run", "--record-traces", "traces", "--", "/usr/bin/python3", "-c", script], in: dir)
        #expect(r.stdout.contains("planted"), "stdout: \(r.stdout) stderr: \(r.stderr)")
        #expect(try String(contentsOfFile: canary, encoding: .utf8) == "original content of a root-owned file\n")
        var st = stat()
        #expect(lstat(canary, &st) == 0 && st.st_mode & 0o7777 == 0o600 && st.st_uid == 0)
        // The python trace's name was taken (the spray covers every pid), so the run says so.
        #expect(r.code == 75, "exit \(r.code): \(r.stderr)")
        // (Or, on a loaded machine, the spray's 32,000 records overflowed the ring buffer and no
        // trace was written at all: the canary's safety above is what this test is about.)
        #expect((r.stderr.contains("never writes over an existing file or through a symlink") && r.stderr.contains("python3-"))
                || r.stderr.contains("traces not written: "), "stderr: \(r.stderr)")
        let planted = try FileManager.default.contentsOfDirectory(atPath: dir + "/traces")
        #expect(planted.allSatisfy { (try? FileManager.default.destinationOfSymbolicLink(atPath: dir + "/traces/" + $0)) == canary },
                "a planted link was replaced: every entry in traces/ should still be the agent's link")
    }

    /// H6: during the run the agent swaps DIR itself for a symlink to a host
    /// directory; no trace lands there and the run says why.
    @Test func aTraceDirectorySwappedForASymlinkIsRefused() throws {
        let dir = NSTemporaryDirectory() + "alcub3-traces-" + UUID().uuidString
        let outside = NSTemporaryDirectory() + "alcub3-trace-target-" + UUID().uuidString
        for d in [dir, outside] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        defer { for d in [dir, outside] { try? FileManager.default.removeItem(atPath: d) } }
        let script = """
            import os, shutil
            # A directory of the working directory moves as a copy (the overlay's EXDEV for a
            # lower directory): the swap reaches the host when the run's changes are applied.
            shutil.move("traces", "traces.old")
            os.symlink("\(outside)", "traces")
            for _ in range(100): os.getppid()
            """
        let r = try alcub3(["run", "--record-traces", "traces", "--", "/usr/bin/python3", "-c", script], in: dir)
        #expect(try FileManager.default.contentsOfDirectory(atPath: outside).isEmpty, "traces were written through the symlink")
        #expect(r.code == 75, "exit \(r.code): \(r.stderr)")
        #expect(r.stderr.contains("is a symlink (not followed)"), "stderr: \(r.stderr)")
        // Given as a symlink before the run, it is refused before anything runs.
        let before = try alcub3(["run", "--record-traces", "traces", "--", "/bin/sh", "-c", "touch ran"], in: dir)
        #expect(before.code == 64 && before.stderr.contains("is a symlink (not followed)"), "\(before.code): \(before.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/ran"))
    }
}

