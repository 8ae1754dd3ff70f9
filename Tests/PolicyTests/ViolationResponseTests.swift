import Foundation
import Testing
@testable import Policy

@Suite struct ViolationResponseTests {
    @Test func eachLevelNamesItsResponse() throws {
        #expect(SandboxPolicy.builtIn(.unclassified).onViolation == .alert)
        #expect(SandboxPolicy.builtIn(.secret).onViolation == .kill)
        #expect(SandboxPolicy.builtIn(.topSecret).onViolation == .freeze)
        let overrides = try PolicyOverrides.parse(levelFile("UNCLASSIFIED", "on_violation: \"deny\""), source: "p.yaml")
        let policy = try PolicyConfiguration.shipped.merging(overrides).sandboxPolicy(for: .unclassified)
        #expect(policy.onViolation == .deny)
        // It travels with the policy through export and import.
        #expect(try SandboxPolicy.fromJSON(try policy.jsonData(), source: "x.json").onViolation == .deny)
    }

    @Test func anUnknownResponseIsRefusedWithTheValidOnes() {
        let error = parseError(levelFile("SECRET", "on_violation: \"explode\""))
        #expect(error?.kind == .unknownName)
        #expect(error?.description.contains("unknown violation response 'explode'") == true, "\(String(describing: error))")
        #expect(error?.description.contains("alert, deny, kill, freeze") == true)
    }
}
