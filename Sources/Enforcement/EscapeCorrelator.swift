import Synchronization

/// The correlation layer of escape detection. One refused attempt is an
/// indicator: an agent's tool may stumble on a policy. Several techniques from
/// one sandbox within a short window are an escape attempt: this raises one
/// escape finding that names them all, with their combined confidence and the
/// actions a responder should take (the service applies the policy's).
public final class EscapeCorrelator: Sendable {
    /// Indicators further apart than this are not read as one attempt.
    public let windowNanos: UInt64
    /// The combined confidence (1 - product of (1 - each technique's)) that makes an escape.
    public let threshold: Double

    private struct Recent {
        var indicators: [EscapeFinding] = []
        var raisedTechniques: Set<String> = []
        var lastRaised: UInt64 = 0
    }
    private let recent = Mutex<[UInt64: Recent]>([:])

    public init(windowSeconds: Double = 30, threshold: Double = 0.95) {
        windowNanos = UInt64(windowSeconds * 1e9)
        self.threshold = threshold
    }

    /// Adds an indicator; returns the escape finding it completes, if any. A
    /// sandbox gets a first escape finding when two or more techniques reach the
    /// threshold, then at most one more per window, and only with new techniques.
    public func add(_ indicator: EscapeFinding) -> EscapeFinding? {
        guard indicator.indicators.isEmpty, let sandbox = indicator.sandboxCgroupID else { return nil }
        return recent.withLock { all -> EscapeFinding? in
            var entry = all[sandbox] ?? Recent()
            let now = indicator.observedNanos
            entry.indicators.removeAll { now > $0.observedNanos && now - $0.observedNanos > windowNanos }
            entry.indicators.append(indicator)
            if entry.indicators.count > 256 { entry.indicators.removeFirst(entry.indicators.count - 256) }
            defer { all[sandbox] = entry }

            // The strongest indicator of each technique.
            var strongest: [String: EscapeFinding] = [:]
            for found in entry.indicators where found.confidence > (strongest[found.technique.id]?.confidence ?? -1) {
                strongest[found.technique.id] = found
            }
            guard strongest.count >= 2 else { return nil }
            let combined = 1 - strongest.values.reduce(1.0) { $0 * (1 - $1.confidence) }
            guard combined >= threshold else { return nil }
            let techniques = Set(strongest.keys)
            let first = entry.raisedTechniques.isEmpty
            guard first || (!techniques.isSubset(of: entry.raisedTechniques) && now > entry.lastRaised && now - entry.lastRaised > windowNanos) else { return nil }
            entry.raisedTechniques.formUnion(techniques)
            entry.lastRaised = now

            let ordered = strongest.values.sorted { ($0.severity, $0.confidence) > ($1.severity, $1.confidence) }
            let lead = ordered[0]
            let names = ordered.map(\.technique.id).joined(separator: ", ")
            return EscapeFinding(technique: lead.technique, sandboxCgroupID: sandbox, pid: lead.pid,
                                 evidence: "\(ordered.count) escape techniques within \(windowNanos / 1_000_000_000) s: \(names)",
                                 refusedBy: ordered.map(\.refusedBy).uniqued().joined(separator: "; "),
                                 observedNanos: now, confidence: combined, indicators: ordered)
        }
    }

    /// Forgets a sandbox that ended.
    public func forget(sandboxCgroupID: UInt64) { _ = recent.withLock { $0.removeValue(forKey: sandboxCgroupID) } }
}

extension EscapeFinding {
    /// What a responder should do, most urgent first.
    public var recommendedActions: [String] {
        var actions: [String] = []
        if !indicators.isEmpty || severity == .critical {
            actions.append("freeze the sandbox now to keep its state for analysis")
        }
        if pid > 0 { actions.append("kill process \(pid) if the sandbox must keep running") }
        actions.append("export the sandbox's events and alerts as evidence (alcub3 sandbox export)")
        if !indicators.isEmpty || severity >= .high {
            actions.append("terminate the sandbox and review the agent's task and inputs before running it again")
        }
        return actions
    }
}

extension Sequence where Element: Hashable {
    func uniqued() -> [Element] {
        var seen = Set<Element>()
        return filter { seen.insert($0).inserted }
    }
}
