import Enforcement
import Telemetry
import Testing

/// The correlation layer: one indicator is an alert, several techniques from
/// one sandbox close in time are one escape finding.
@Suite struct EscapeCorrelatorTests {
    func indicator(_ id: String, sandbox: UInt64 = 7, pid: Int32 = 42, at seconds: Double) -> EscapeFinding {
        EscapeFinding(technique: EscapeTechnique.named(id)!, sandboxCgroupID: sandbox, pid: pid, evidence: "\(id) refused",
                      refusedBy: "seccomp", observedNanos: UInt64(seconds * 1e9))
    }

    @Test func oneTechniqueAloneIsNoEscape() {
        let correlator = EscapeCorrelator()
        for second in 0..<10 { #expect(correlator.add(indicator("mount", at: Double(second))) == nil) }
    }

    @Test func twoStrongTechniquesMakeOneEscapeWithTheirEvidence() throws {
        let correlator = EscapeCorrelator()
        #expect(correlator.add(indicator("mount", at: 1)) == nil)
        let escape = try #require(correlator.add(indicator("setns-host", pid: 43, at: 2)))
        #expect(Set(escape.indicators.map(\.technique.id)) == ["mount", "setns-host"])
        #expect(escape.technique.id == "setns-host", "the most severe technique leads")
        #expect(escape.confidence > 0.99 && escape.confidence <= 1)
        #expect(escape.recommendedActions.first?.hasPrefix("freeze") == true)
        // The same techniques again, in the same window: no second finding.
        #expect(correlator.add(indicator("mount", at: 3)) == nil)
        #expect(correlator.add(indicator("kernel-module", at: 4)) == nil, "at most one escape finding per window")
        #expect(correlator.add(indicator("bpf", at: 40)) == nil, "bpf and kernel-module only (mount aged out) fall short")
        #expect(correlator.add(indicator("core-pattern", at: 41)) != nil, "new techniques after the window: a new finding")
    }

    @Test func weakIndicatorsOrFarApartOrOtherSandboxesDoNotCorrelate() {
        let correlator = EscapeCorrelator()
        #expect(correlator.add(indicator("write-outside-workspace", at: 1)) == nil)
        #expect(correlator.add(indicator("network-policy", at: 2)) == nil, "0.5 and 0.6 combine to 0.8: below 0.95")
        #expect(correlator.add(indicator("mount", at: 100)) == nil)
        #expect(correlator.add(indicator("setns-host", sandbox: 8, at: 101)) == nil, "another sandbox")
        #expect(correlator.add(indicator("setns-host", at: 200)) == nil, "mount was 100 s earlier")
    }

    @Test func everyTechniqueHasALayerASeverityAndAConfidence() {
        #expect(Set(EscapeTechnique.all.map(\.id)).count == EscapeTechnique.all.count, "ids are unique")
        for layer in EscapeLayer.allCases { #expect(EscapeTechnique.all.contains { $0.layer == layer }, "\(layer)") }
        for technique in EscapeTechnique.all { #expect(technique.confidence > 0 && technique.confidence <= 1, "\(technique.id)") }
    }

    /// The process layer: a refused harmful setresuid is an indicator; what
    /// succeeded (a namespace joined by runc's init, say) is not.
    @Test func refusedIdentityChangesAreIndicatorsSuccessfulSetupIsNot() throws {
        let origin = EventOrigin(bootNanos: 1, sandboxCgroupID: 7, pid: 9, tid: 9, uid: 0)
        let joined = TelemetryEvent.process(ProcessEvent(origin: origin, activity: .namespaceChange(syscall: 308, flags: 0, fd: 3, result: 0)))
        #expect(EscapeDetector.finding(for: joined) == nil, "runc's init joins the container's namespaces")
        let refused = TelemetryEvent.process(ProcessEvent(origin: origin, activity: .credentialChange(
            syscall: 117, result: -1, uid: 0, euid: 0, gid: 0, egid: 0, capEffective: 0, capPermitted: 0)))
        #expect(EscapeDetector.finding(for: refused)?.technique.id == "setuid-root", "setresuid refused by the filter's default")
        let allowed = TelemetryEvent.process(ProcessEvent(origin: origin, activity: .credentialChange(
            syscall: 117, result: 0, uid: 0, euid: 0, gid: 0, egid: 0, capEffective: 1 << 21, capPermitted: 1 << 21)))
        #expect(EscapeDetector.finding(for: allowed) == nil, "runc's init changes identity with its capabilities")
        let read = TelemetryEvent.file(FileEvent(origin: origin, operation: .read, syscall: 257, result: 3, openFlags: 0, mode: 0,
                                                 ownerUID: 0, ownerGID: 0, fileID: 0, path: "/etc/shadow", secondPath: nil))
        #expect(EscapeDetector.finding(for: read) == nil, "reads are the behavioural analyzer's, not escapes")
    }
}
