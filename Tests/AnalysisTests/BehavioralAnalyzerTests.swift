import Analysis
import Testing

/// The live analyzer on made-up input: learning, then windows scored with
/// their indicators and reasons (the service's tests drive it from the kernel).
@Suite struct BehavioralAnalyzerTests {
    /// A thread's ordinary loop: the same few calls again and again.
    static func ordinary(tid: Int32, count: Int) -> [SyscallRecord] {
        let loop: [UInt16] = [0, 1, 3, 257, 5, 9, 0, 3, 1, 231]
        return (0..<count).map { SyscallRecord(pid: tid, tid: tid, number: loop[$0 % loop.count]) }
    }

    func learned() throws -> BehavioralAnalyzer {
        let analyzer = BehavioralAnalyzer(settings: .init(agentID: "a", observationSeconds: 10, windowSeconds: 1,
                                                          workspacePrefixes: ["/workspace/"]), now: 0)
        // Many threads, so calibration has held-out traces; runs of 32 records interleaved.
        for round in 0..<40 {
            var batch: [SyscallRecord] = []
            for tid in Int32(1)...6 { batch += Self.ordinary(tid: tid + Int32(round * 10), count: 320) }
            analyzer.add(batch)
        }
        analyzer.observe(.exec(pid: 1, program: "/usr/bin/python3", name: "python3", parentName: "sh"))
        analyzer.observe(.connect(pid: 1, destination: "127.0.0.1:8000"))
        analyzer.observe(.read(pid: 1, path: "/etc/passwd", refused: false))
        guard case .learning = analyzer.closeWindow(now: 5) else { throw Failure("still learning at 5 s") }
        guard case .learned(let profile) = analyzer.closeWindow(now: 10) else { throw Failure("no profile at 10 s") }
        #expect(profile.programs == ["/usr/bin/python3"] && profile.destinations == ["127.0.0.1:8000"])
        #expect(profile.model.trainedSyscalls == 40 * 6 * 320 && profile.model.calibration != nil)
        return analyzer
    }

    @Test func ordinaryWorkStaysQuietAndNovelTouchesAlertWithReasons() throws {
        let analyzer = try learned()
        analyzer.add(Self.ordinary(tid: 900, count: 3000))
        analyzer.observe(.exec(pid: 900, program: "/usr/bin/python3", name: "python3", parentName: "sh"))
        guard case .scored(let quiet) = analyzer.closeWindow(now: 11) else { throw Failure("not scored") }
        #expect(!quiet.alert && quiet.risk < 0.5, "\(quiet.reasons)")

        analyzer.observe(.connect(pid: 901, destination: "127.0.0.1:4444"))
        analyzer.observe(.read(pid: 902, path: "/workspace/.aws/credentials", refused: false))
        analyzer.observe(.write(pid: 903, path: "/workspace/tool"))
        analyzer.observe(.chmod(pid: 903, path: "/workspace/tool", mode: 0o755))
        analyzer.observe(.exec(pid: 904, program: "./tool", name: "tool", parentName: "sh"))
        guard case .scored(let risky) = analyzer.closeWindow(now: 12) else { throw Failure("not scored") }
        #expect(risky.alert && risky.risk > 0.9)
        let kinds = Set(risky.indicators.map(\.kind))
        #expect(kinds.isSuperset(of: [.newDestination, .credentialRead, .chmoddedExec, .newProgramPair]), "\(kinds)")
        #expect(risky.reasons.contains { $0.contains("connected to 127.0.0.1:4444") })
        #expect(risky.processes.contains { $0.pid == 902 && $0.risk >= 0.8 })
        #expect(risky.maestroLayer == "L2 Data Operations", "the strongest indicator leads")

        // Each novelty is one alert, not one per window.
        analyzer.observe(.connect(pid: 901, destination: "127.0.0.1:4444"))
        guard case .scored(let again) = analyzer.closeWindow(now: 13) else { throw Failure("not scored") }
        #expect(!again.alert, "\(again.reasons)")
    }

    @Test func aThreadOfNeverSeenCallsIsASequenceAnomaly() throws {
        let analyzer = try learned()
        let odd: [UInt16] = [101, 165, 272, 310, 321, 298, 425, 435]
        analyzer.add((0..<200).map { SyscallRecord(pid: 77, tid: 77, number: odd[$0 % odd.count]) })
        guard case .scored(let window) = analyzer.closeWindow(now: 11) else { throw Failure("not scored") }
        #expect(window.anomaly >= 0.5 && window.alert, "peak \(window.peak) threshold \(window.threshold)")
        #expect(window.reasons.first?.hasPrefix("syscall sequences scored") == true, "\(window.reasons)")
        #expect(window.processes.first?.pid == 77)
        #expect(!window.rareSequences.isEmpty)
        // Judged again at low sensitivity, a lone sequence stretch may pass; the indicators are none.
        let low = BehavioralAnalyzer.judge(window, calibration: analyzer.snapshot().profile?.calibration, sensitivity: .low)
        #expect(low.threshold > window.threshold)
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ d: String) { description = d }
    }
}
