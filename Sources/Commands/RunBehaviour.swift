import Analysis
import Foundation
import KernelSupport
import Policy
import Service
import Telemetry

/// `alcub3 run --profile FILE`: the behavioural analyzer for one run. Without
/// FILE, the run is the observation: the analyzer learns for as long as the
/// command runs and saves the profile at the end. With FILE, the run is scored
/// against it window by window, and alerts appear in the stream as they come.
final class RunBehaviour: @unchecked Sendable {
    // @unchecked: `timer` and `consumer` are set once in `start`, before any other thread sees them.
    let analyzer: BehavioralAnalyzer
    let path: String
    let learning: Bool
    private let format: OutputFormat
    private let sandboxID: String
    private var timer: DispatchSourceTimer?
    private var consumer: Task<Void, Never>?

    /// Checks `--profile` before anything starts: an existing file must be a
    /// profile of `agentID` and intact; a new one must be writable.
    static func prepare(path: String, agentID: String) throws -> AgentProfile? {
        let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        guard FileManager.default.fileExists(atPath: absolute) else {
            let directory = PathText.parent(of: absolute)
            guard access(directory, W_OK) == 0 else {
                throw fail(Alcub3Exit.usage, "--profile \(path): cannot write in \(directory) (\(String(cString: strerror(errno))))")
            }
            return nil
        }
        do {
            return try AgentProfile.load(from: absolute, agentID: agentID)
        } catch {
            throw fail(Alcub3Exit.invalidPolicy, "\(error)")
        }
    }

    init(path: String, profile: AgentProfile?, agentID: String, sandboxID: String, configuration: BehavioralAnalysis,
         workspace: String, format: OutputFormat) {
        // The run is the observation: it learns until the command ends.
        var settings = BehaviourSettings(configuration)
        settings.observationSeconds = .infinity
        analyzer = settings.analyzer(agentID: agentID, workspace: workspace, profile: profile)
        self.path = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        learning = profile == nil
        self.format = format
        self.sandboxID = sandboxID
    }

    /// Subscribes (call before the command starts) and, when scoring, closes a window every analysis window.
    func start(hub: EventHub) {
        let subscription = hub.subscribe()
        let analyzer = self.analyzer
        consumer = Task {
            var processes = ProcessTable()
            var records: [SyscallRecord] = []
            for await batch in subscription.events {
                for event in batch {
                    if case .syscall(let s) = event {
                        if let record = BehaviourFeed.record(for: s) { records.append(record) }
                        continue
                    }
                    processes.observe(event)
                    if let observation = BehaviourFeed.observation(for: event, processes: processes) { analyzer.observe(observation) }
                }
                if !records.isEmpty {
                    analyzer.add(records)
                    records.removeAll(keepingCapacity: true)
                }
            }
        }
        guard !learning else { return }
        let timer = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "alcub3-behaviour"))
        let interval = analyzer.settings.windowSeconds
        timer.schedule(deadline: .now() + interval, repeating: interval)
        timer.setEventHandler { [self] in closeWindow() }
        timer.resume()
        self.timer = timer
    }

    private func closeWindow() {
        guard case .scored(let window) = analyzer.closeWindow(), window.alert else { return }
        let finding = BehaviourFinding(window: window, sandboxID: sandboxID, agentID: analyzer.settings.agentID)
        if format == .json {
            Output.out(OCSFEncoder.jsonLine(finding.ocsf) + "\n")
        } else {
            // Reasons name the agent's programs, files and destinations: escaped for the terminal.
            Output.out(String(format: "%@ BEHAVIOUR anomaly %.2f risk %.2f [%@]: ", ISO8601DateFormatter().string(from: Date()),
                              window.anomaly, window.risk, window.maestroLayer)
                       + TerminalText.escaped(window.reasons.prefix(4).joined(separator: "; ")) + "\n")
        }
    }

    /// After the command ended and the stream drained: the last window scored,
    /// or the profile learned and saved. Returns the line for the summary.
    func finish() async -> String {
        timer?.cancel()
        await consumer?.value
        guard learning else {
            closeWindow()
            let alerts = analyzer.recentWindows.filter(\.alert).count
            return "behaviour scored against \(path): \(analyzer.recentWindows.count) windows, \(alerts) alerting"
        }
        guard let profile = analyzer.endLearning() else { return "behaviour: nothing learned" }
        do {
            try profile.save(to: path)
            return "behaviour profile learned from \(profile.model.trainedSyscalls) syscalls, \(profile.programs.count) programs, "
                + "\(profile.destinations.count) destinations; saved to \(path) (use it with --profile for the next runs)"
        } catch {
            return "behaviour profile not saved: \(error)"
        }
    }
}
