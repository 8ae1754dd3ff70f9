import Foundation
import KernelSupport

/// One syscall of a sandboxed thread, as the analyzer takes them (in batches).
public struct SyscallRecord: Sendable {
    public var pid: Int32
    public var tid: Int32
    public var number: UInt16

    public init(pid: Int32, tid: Int32, number: UInt16) {
        self.pid = pid
        self.tid = tid
        self.number = number
    }
}

/// What a sandbox did besides syscalls, reduced to what behaviour is made of.
public enum BehaviourObservation: Sendable {
    case exec(pid: Int32, program: String, name: String, parentName: String?)
    case connect(pid: Int32, destination: String)
    /// A first read of the file (the kernel reports no repeat), or a refused one.
    case read(pid: Int32, path: String, refused: Bool)
    case write(pid: Int32, path: String)
    case chmod(pid: Int32, path: String, mode: UInt32)
    case threadExit(tid: Int32)
}

/// Something an analysis window's activity touched that the profile never saw,
/// with the weight it adds to the risk score (docs/detection.md, "Risk").
public struct RiskIndicator: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable, CaseIterable {
        case credentialRead = "credential_read"
        case chmoddedExec = "chmodded_exec"
        case newDestination = "new_destination"
        case cpuSurge = "cpu_surge"
        case newProgram = "new_program"
        case writeOutsideWorkspace = "write_outside_workspace"
        case newProgramPair = "new_program_pair"

        /// How much one indicator of this kind raises the risk (0-1); risk is
        /// 1 - the product of (1 - weight) over the window's indicators.
        public var weight: Double {
            switch self {
            case .credentialRead, .chmoddedExec: 0.8
            case .newDestination: 0.6
            case .cpuSurge: 0.4
            case .newProgram, .writeOutsideWorkspace: 0.3
            case .newProgramPair: 0.15
            }
        }

        /// The MAESTRO layer (docs/security.md) an alert led by this indicator belongs to.
        public var maestroLayer: String {
            switch self {
            case .credentialRead: "L2 Data Operations"
            case .newDestination: "L7 Agent Ecosystem"
            case .chmoddedExec, .newProgram, .newProgramPair: "L3 Agent Frameworks"
            case .cpuSurge, .writeOutsideWorkspace: "L4 Deployment and Infrastructure"
            }
        }

        /// MITRE ATT&CK technique the indicator most often stands for.
        public var mitre: String {
            switch self {
            case .credentialRead: "T1552.001"
            case .chmoddedExec: "T1105"
            case .newDestination: "T1071"
            case .cpuSurge: "T1496"
            case .newProgram, .newProgramPair: "T1059"
            case .writeOutsideWorkspace: "T1565.001"
            }
        }
    }

    public var kind: Kind
    public var pid: Int32
    public var detail: String

    public var reason: String {
        switch kind {
        case .credentialRead: "read credential file \(detail), never read while learning"
        case .chmoddedExec: "ran \(detail), a file the sandbox made executable itself"
        case .newDestination: "connected to \(detail), a destination never seen while learning"
        case .cpuSurge: "used \(detail)"
        case .newProgram: "ran \(detail), a program never run while learning"
        case .writeOutsideWorkspace: "wrote \(detail), outside the workspace and every directory written while learning"
        case .newProgramPair: "started \(detail), a parent and child never seen together"
        }
    }
}

/// One process's part of a window.
public struct ProcessScore: Codable, Sendable, Equatable {
    public var pid: Int32
    public var program: String
    public var syscalls: UInt64
    /// The process's highest burst (bits per call) and what it makes on the 0-1 scale.
    public var peak: Double
    public var anomaly: Double
    public var risk: Double
    public var reasons: [String]
}

/// A closed analysis window: the scores, and why, for a responder.
public struct BehaviourWindow: Codable, Sendable, Equatable {
    public var index: Int
    /// Unix seconds.
    public var start: Double
    public var end: Double
    public var syscalls: UInt64
    /// The highest burst of any thread (bits per call) and the threshold it is held to.
    public var peak: Double
    public var threshold: Double
    /// 0-1: 0.5 at the threshold.
    public var anomaly: Double
    /// 0-1: the anomaly and every indicator combined.
    public var risk: Double
    public var alert: Bool
    public var sensitivity: Sensitivity
    public var reasons: [String]
    public var indicators: [RiskIndicator]
    public var processes: [ProcessScore]
    public var rareSequences: [String]
    public var cores: Double?
    public var maestroLayer: String
}

/// The behavioural analyzer of one sandbox. It learns for an observation window
/// (or starts from a saved profile), then scores each analysis window: the
/// syscall sequences of every thread against the learned `SequenceModel` (the
/// anomaly score) and what the activity touched against the profile (the risk
/// indicators). Syscalls come in batches from the event pipeline's thread; a
/// timer closes windows; both take the one lock.
public final class BehavioralAnalyzer: @unchecked Sendable {
    public struct Settings: Sendable {
        public var agentID: String
        public var observationSeconds: Double
        public var windowSeconds: Double
        public var sensitivity: Sensitivity
        /// Writes under these prefixes are never outside the workspace.
        public var workspacePrefixes: [String]
        /// Syscall names for reasons (the Telemetry module has x86_64's).
        public var names: @Sendable (UInt16) -> String

        public init(agentID: String, observationSeconds: Double = 300, windowSeconds: Double = 10, sensitivity: Sensitivity = .high,
                    workspacePrefixes: [String] = [], names: @escaping @Sendable (UInt16) -> String = { String($0) }) {
            self.agentID = agentID
            self.observationSeconds = observationSeconds
            self.windowSeconds = windowSeconds
            self.sensitivity = sensitivity
            self.workspacePrefixes = workspacePrefixes
            self.names = names
        }
    }

    public enum Phase: Sendable, Equatable {
        case learning(remainingSeconds: Double)
        case scoring
    }

    /// What closing a window gave.
    public enum Outcome: Sendable {
        case learning(remainingSeconds: Double)
        /// Learning ended: the profile to save (scoring starts with the next window).
        case learned(AgentProfile)
        case scored(BehaviourWindow)
    }

    public let settings: Settings
    private let lock = NSLock()
    private var profile: AgentProfile?
    private let started: Double
    private var windowStart: Double
    private var windowIndex = 0
    private var lastCPUSeconds: Double?

    // Learning: each thread's calls (bounded), and what the activity touched.
    private var learningTraces: [Int32: [UInt16]] = [:]
    private var learningCalls = 0
    private static let learningCallLimit = 8_000_000
    private var learned = AgentProfile(agentID: "", learnedAt: "", observedSeconds: 0, model: SequenceModel())

    // Scoring: each thread's stream and its peak this window.
    private struct ThreadState {
        var pid: Int32
        var stream = SequenceModel.Stream()
        var peak: Double = 0
        var calls: UInt64 = 0
    }
    private var threads: [Int32: ThreadState] = [:]
    private var window = AnomalyWindow(explanations: 5)
    private var indicators: [RiskIndicator] = []
    private var madeExecutable: Set<String> = []
    private var programsOf: [Int32: String] = [:]
    /// Novelties already reported: each is one alert, not one per window.
    private var reported: Set<String> = []

    // For the live view: totals since the start and the recent windows.
    private var syscallTotals = [UInt64](repeating: 0, count: 1024)
    private var observationCounts: [String: UInt64] = [:]
    public private(set) var recentWindows: [BehaviourWindow] = []

    /// Starts learning, or scoring at once when `profile` is given.
    public init(settings: Settings, profile: AgentProfile? = nil, now: Double = Date().timeIntervalSince1970) {
        self.settings = settings
        self.profile = profile
        started = now
        windowStart = now
        learned.agentID = settings.agentID
    }

    public var phase: Phase {
        lock.withLock {
            profile != nil ? .scoring : .learning(remainingSeconds: max(0, started + settings.observationSeconds - windowStart))
        }
    }

    // MARK: input

    /// A batch of syscalls (in the order each thread made them).
    public func add(_ records: [SyscallRecord]) {
        lock.withLock {
            for record in records where Int(record.number) < syscallNumberLimit { syscallTotals[Int(record.number)] += 1 }
            guard let profile else {
                learn(records)
                return
            }
            let model = profile.model
            // Records come in runs of one thread (the kernel batches per thread):
            // its state is looked up once per run, not once per call.
            var index = records.startIndex
            while index < records.endIndex {
                let tid = records[index].tid
                var state = threads.removeValue(forKey: tid) ?? ThreadState(pid: records[index].pid)
                while index < records.endIndex, records[index].tid == tid {
                    let number = records[index].number
                    index += 1
                    guard Int(number) < syscallNumberLimit else { continue }
                    window.observe(number, on: &state.stream, model: model)
                    if state.stream.evidence > state.peak { state.peak = state.stream.evidence }
                    state.calls += 1
                }
                threads[tid] = state
            }
        }
    }

    private func learn(_ records: [SyscallRecord]) {
        guard learningCalls < Self.learningCallLimit else { return }
        var index = records.startIndex
        while index < records.endIndex {
            let tid = records[index].tid
            var trace = learningTraces.removeValue(forKey: tid) ?? []
            while index < records.endIndex, records[index].tid == tid {
                if Int(records[index].number) < syscallNumberLimit { trace.append(records[index].number) }
                index += 1
            }
            learningTraces[tid] = trace
        }
        learningCalls += records.count
    }

    public func observe(_ observation: BehaviourObservation) {
        lock.withLock {
            switch observation {
            case .exec(let pid, let program, let name, let parentName):
                observationCounts["exec", default: 0] += 1
                programsOf[pid] = name
                let pair = "\(parentName ?? "?") -> \(name)"
                guard let profile else {
                    learned.programs.insert(program)
                    learned.programPairs.insert(pair)
                    return
                }
                if madeExecutable(program) {
                    note(.chmoddedExec, pid: pid, program)
                } else if !profile.programs.contains(program) {
                    note(.newProgram, pid: pid, program)
                }
                if !profile.programPairs.contains(pair) { note(.newProgramPair, pid: pid, pair) }
            case .connect(let pid, let destination):
                observationCounts["connect", default: 0] += 1
                guard let profile else { learned.destinations.insert(destination); return }
                if !profile.destinations.contains(destination) { note(.newDestination, pid: pid, destination) }
            case .read(let pid, let path, _):
                observationCounts["read", default: 0] += 1
                guard let profile else { learned.reads.insert(path); return }
                if !profile.reads.contains(path), CredentialPaths.matches(path) { note(.credentialRead, pid: pid, path) }
            case .write(let pid, let path):
                observationCounts["write", default: 0] += 1
                let directory = PathText.parent(of: path)
                guard let profile else { learned.writtenDirectories.insert(directory); return }
                if !settings.workspacePrefixes.contains(where: { path.hasPrefix($0) }), !profile.writtenDirectories.contains(directory) {
                    note(.writeOutsideWorkspace, pid: pid, path)
                }
            case .chmod(_, let path, let mode):
                observationCounts["chmod", default: 0] += 1
                if mode & 0o111 != 0 { madeExecutable.insert(path) }
            case .threadExit(let tid):
                // Its peak is kept until the window closes; its stream is not needed again.
                if var state = threads[tid], profile != nil {
                    state.stream = SequenceModel.Stream()
                    threads[tid] = state
                } else {
                    threads[tid] = nil
                }
            }
        }
    }

    /// Whether the sandbox itself made `program` executable. The kernel names a
    /// program as exec was given it ("./tool"): a relative name matches the
    /// chmodded path that ends with it.
    private func madeExecutable(_ program: String) -> Bool {
        if madeExecutable.contains(program) { return true }
        guard !program.hasPrefix("/") else { return false }
        let tail = "/" + (program.hasPrefix("./") ? String(program.dropFirst(2)) : program)
        return madeExecutable.contains { $0.hasSuffix(tail) }
    }

    private func note(_ kind: RiskIndicator.Kind, pid: Int32, _ detail: String) {
        guard reported.insert("\(kind.rawValue) \(detail)").inserted else { return }
        if indicators.count < 256 { indicators.append(RiskIndicator(kind: kind, pid: pid, detail: detail)) }
    }

    // MARK: windows

    /// Closes the current window. `cpuSeconds` is the sandbox's CPU time so far
    /// (its cgroup's), when known.
    public func closeWindow(now: Double = Date().timeIntervalSince1970, cpuSeconds: Double? = nil) -> Outcome {
        lock.withLock {
            let seconds = max(now - windowStart, 0.001)
            let cores = cpuSeconds.flatMap { total in lastCPUSeconds.map { max(0, total - $0) / seconds } }
            if let cpuSeconds { lastCPUSeconds = cpuSeconds }
            defer { windowStart = now }
            guard let profile else {
                if let cores { learned.peakCores = max(learned.peakCores, cores) }
                let remaining = started + settings.observationSeconds - now
                guard remaining <= 0 else { return .learning(remainingSeconds: remaining) }
                let finished = finishLearning(now: now)
                self.profile = finished
                return .learned(finished)
            }
            return .scored(score(profile, start: windowStart, end: now, cores: cores))
        }
    }

    /// Ends learning now (a run that learns for as long as its command runs):
    /// the profile, or nil when the analyzer was already scoring.
    public func endLearning(now: Double = Date().timeIntervalSince1970) -> AgentProfile? {
        lock.withLock {
            guard profile == nil else { return nil }
            let finished = finishLearning(now: now)
            profile = finished
            return finished
        }
    }

    private func finishLearning(now: Double) -> AgentProfile {
        // Long threads are cut into pieces so calibration has enough held-out scores.
        var traces: [[UInt16]] = []
        for trace in learningTraces.values {
            var start = 0
            while start < trace.count {
                let end = min(trace.count, start + 20_000)
                traces.append(Array(trace[start..<end]))
                start = end
            }
        }
        var model = SequenceModel.trainedAndCalibrated(on: traces)
        model.agentID = settings.agentID
        var profile = learned
        profile.model = model
        profile.observedSeconds = now - started
        profile.learnedAt = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: now))
        learningTraces = [:]
        return profile
    }

    /// The threshold a burst is held to at this sensitivity; without a
    /// calibration (too little was learned) sequences never alert alone.
    private func threshold(_ profile: AgentProfile) -> Double {
        profile.model.calibration?.threshold(for: settings.sensitivity) ?? .infinity
    }

    /// 0.5 at the threshold, rising steeply past it.
    private static func anomaly(peak: Double, threshold: Double) -> Double {
        guard threshold.isFinite, threshold > 0 else { return 0 }
        return 1 / (1 + exp(-(peak - threshold) / (0.1 * threshold)))
    }

    /// The risk a set of indicators and an anomaly make together.
    static func risk(anomaly: Double, indicators: [RiskIndicator]) -> Double {
        1 - indicators.reduce(1 - anomaly) { $0 * (1 - $1.kind.weight) }
    }

    /// Alerts come when the sequences pass the threshold, or when what the
    /// activity touched is risky enough at this sensitivity.
    public static func riskThreshold(_ sensitivity: Sensitivity) -> Double {
        switch sensitivity {
        case .high: 0.5
        case .medium: 0.7
        case .low: 0.85
        }
    }

    /// A window judged again at another sensitivity (the live view's `--sensitivity`).
    public static func judge(_ window: BehaviourWindow, calibration: Calibration?, sensitivity: Sensitivity)
        -> (threshold: Double, anomaly: Double, alert: Bool) {
        let threshold = calibration?.threshold(for: sensitivity) ?? .infinity
        let anomaly = anomaly(peak: window.peak, threshold: threshold)
        return (threshold, anomaly, anomaly >= 0.5 || risk(anomaly: 0, indicators: window.indicators) >= riskThreshold(sensitivity))
    }

    private func score(_ profile: AgentProfile, start: Double, end: Double, cores: Double?) -> BehaviourWindow {
        let limit = threshold(profile)
        if let cores, cores > max(2 * profile.peakCores, 0.5) {
            note(.cpuSurge, pid: 0, String(format: "%.2f cores, where the most while learning was %.2f", cores, profile.peakCores))
        }
        let closed = window.close()
        // Each process: its threads' highest burst, its own indicators.
        // Each thread's window is scored as a trace is: its peak evidence, length-corrected.
        var byPID: [Int32: (peak: Double, calls: UInt64)] = [:]
        var windowPeak = 0.0
        for (tid, state) in threads {
            let current = byPID[state.pid] ?? (0, 0)
            let score = state.calls > 0 ? SequenceModel.lengthCorrected(peak: state.peak, calls: state.calls) : 0
            windowPeak = max(windowPeak, score)
            byPID[state.pid] = (max(current.peak, score), current.calls + state.calls)
            threads[tid]?.peak = 0
            threads[tid]?.calls = 0
        }
        for indicator in indicators where indicator.pid > 0 && byPID[indicator.pid] == nil { byPID[indicator.pid] = (0, 0) }
        let processes = byPID.map { pid, figures -> ProcessScore in
            let own = indicators.filter { $0.pid == pid }
            let anomaly = Self.anomaly(peak: figures.peak, threshold: limit)
            var reasons = own.map(\.reason)
            if anomaly >= 0.5 { reasons.insert(String(format: "syscall sequences scored %.2f (evidence per bit of length), above %.2f", figures.peak, limit), at: 0) }
            return ProcessScore(pid: pid, program: programsOf[pid] ?? "?", syscalls: figures.calls, peak: figures.peak, anomaly: anomaly,
                                risk: Self.risk(anomaly: anomaly, indicators: own), reasons: reasons)
        }.filter { $0.syscalls > 0 || !$0.reasons.isEmpty }.sorted { ($0.risk, $0.peak) > ($1.risk, $1.peak) }
        // Threads that ended are forgotten once their window is scored.
        threads = threads.filter { $0.value.stream.calls > 0 }

        let anomaly = Self.anomaly(peak: windowPeak, threshold: limit)
        let risk = Self.risk(anomaly: anomaly, indicators: indicators)
        let noveltyRisk = Self.risk(anomaly: 0, indicators: indicators)
        let alert = anomaly >= 0.5 || noveltyRisk >= Self.riskThreshold(settings.sensitivity)
        let rare = closed.rareSequences.map { sequence in
            sequence.describe(names: settings.names) + (sequence.novel ? " (never seen)" : "")
                + String(format: " %.1f bits", sequence.surprisal)
        }
        var reasons = indicators.sorted { $0.kind.weight > $1.kind.weight }.map(\.reason)
        if anomaly >= 0.5 {
            reasons.insert(String(format: "syscall sequences scored %.2f (evidence per bit of length), above the %@ threshold %.2f; rarest: %@",
                                  windowPeak, settings.sensitivity.rawValue, limit, rare.prefix(3).joined(separator: ", ")), at: 0)
        }
        let lead = indicators.max { $0.kind.weight < $1.kind.weight }
        let report = BehaviourWindow(
            index: windowIndex, start: start, end: end, syscalls: closed.syscalls, peak: windowPeak, threshold: limit,
            anomaly: anomaly, risk: risk, alert: alert, sensitivity: settings.sensitivity, reasons: reasons, indicators: indicators,
            processes: Array(processes.prefix(20)), rareSequences: rare, cores: cores,
            maestroLayer: anomaly >= 0.5 && (lead.map { $0.kind.weight < 0.6 } ?? true) ? "L3 Agent Frameworks"
                : lead?.kind.maestroLayer ?? "L3 Agent Frameworks")
        windowIndex += 1
        indicators = []
        recentWindows.append(report)
        if recentWindows.count > 120 { recentWindows.removeFirst(recentWindows.count - 120) }
        return report
    }

    // MARK: the live view

    /// What `monitor-behavior` and `debug-behavior` show.
    public struct Snapshot: Codable, Sendable {
        public var agentID: String
        public var phase: String
        public var learningRemainingSeconds: Double?
        public var sensitivity: Sensitivity
        public var threshold: Double?
        public var riskThreshold: Double
        public var syscalls: UInt64
        public var topSyscalls: [String: UInt64]
        public var observations: [String: UInt64]
        public var windows: [BehaviourWindow]
        public var profile: ProfileSummary?
    }

    public struct ProfileSummary: Codable, Sendable {
        public var learnedAt: String
        public var observedSeconds: Double
        public var trainedSyscalls: UInt64
        public var sequences: Int
        public var modelBytes: Int
        public var programs: Int
        public var destinations: Int
        public var reads: Int
        public var peakCores: Double
        public var calibration: Calibration?
        public var commonSequences: [String]
    }

    public func snapshot(windows: Int = 60, detailed: Bool = false) -> Snapshot {
        lock.withLock {
            var top: [(Int, UInt64)] = syscallTotals.enumerated().filter { $0.element > 0 }.map { ($0.offset, $0.element) }
            top.sort { $0.1 > $1.1 }
            let summary = profile.map { p in
                ProfileSummary(learnedAt: p.learnedAt, observedSeconds: p.observedSeconds, trainedSyscalls: p.model.trainedSyscalls,
                               sequences: p.model.sequences, modelBytes: p.model.memoryBytes, programs: p.programs.count,
                               destinations: p.destinations.count, reads: p.reads.count, peakCores: p.peakCores,
                               calibration: p.model.calibration,
                               commonSequences: detailed ? p.model.commonSequences(top: 10).map { $0.describe(names: settings.names) } : [])
            }
            let remaining = profile == nil ? max(0, started + settings.observationSeconds - Date().timeIntervalSince1970) : nil
            return Snapshot(agentID: settings.agentID, phase: profile == nil ? "learning" : "scoring", learningRemainingSeconds: remaining,
                            sensitivity: settings.sensitivity, threshold: profile.map(threshold),
                            riskThreshold: Self.riskThreshold(settings.sensitivity), syscalls: syscallTotals.reduce(0, +),
                            topSyscalls: Dictionary(uniqueKeysWithValues: top.prefix(10).map { (settings.names(UInt16($0.0)), $0.1) }),
                            observations: observationCounts, windows: Array(recentWindows.suffix(windows)), profile: summary)
        }
    }
}

/// Where credentials live on Linux hosts and in agents' homes: a first read
/// of one of these, never read while learning, is a risk indicator
/// (MITRE T1552.001, T1003.008). docs/detection.md lists them.
public enum CredentialPaths {
    public static let exact: Set<String> = [
        "/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-", "/etc/sudoers", "/etc/master.passwd",
        "/etc/security/opasswd",
    ]
    /// Path components that end in a secret (matched as "/component" anywhere).
    public static let fragments: [String] = [
        "/.ssh/", "/.aws/credentials", "/.aws/config", "/.config/gcloud/", "/.azure/", "/.kube/config", "/.docker/config.json",
        "/.netrc", "/.git-credentials", "/.pgpass", "/.gnupg/", "/.npmrc", "/.pypirc", "/.vault-token", "/etc/sudoers.d/",
        "/run/secrets/", "/var/run/secrets/", "/etc/ssl/private/",
    ]

    public static func matches(_ path: String) -> Bool {
        if exact.contains(path) { return true }
        if path.hasPrefix("/proc/"), path.hasSuffix("/environ") { return true }
        return fragments.contains { path.contains($0) }
    }
}

extension SequenceModel {
    /// The model's most frequent sequences of `length` calls (for debug-behavior).
    public func commonSequences(top: Int, length: Int = 3) -> [RareSequence] {
        var found: [(key: UInt64, count: UInt32)] = []
        for slot in 0..<table.capacity where table.keys[slot] != 0 && PackedSequence.length(table.keys[slot]) == length {
            found.append((table.keys[slot], table.counts[slot]))
        }
        found.sort { $0.count > $1.count }
        return found.prefix(top).map { RareSequence(calls: PackedSequence.calls($0.key), surprisal: 0, novel: false, occurrences: Int($0.count)) }
    }
}
