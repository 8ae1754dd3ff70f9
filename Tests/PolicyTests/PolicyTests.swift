import Testing
@testable import Policy

@Suite struct ClassificationTests {
    @Test func parsesCanonicalAndLenientSpellings() {
        #expect(Classification(parsing: "SECRET") == .secret)
        #expect(Classification(parsing: "top-secret") == .topSecret)
        #expect(Classification(parsing: "Top Secret") == .topSecret)
        #expect(Classification(parsing: "unclassified") == .unclassified)
        #expect(Classification(parsing: "COSMIC") == nil)
        #expect(Classification(parsing: "") == nil)
    }

    @Test func levelsAreOrdered() {
        #expect(Classification.unclassified < .confidential)
        #expect(Classification.secret < .topSecret)
        #expect(IsolationLevel.process < .hardware)
    }

    @Test func builtInPoliciesFollowThePublishedDefaults() {
        #expect(SandboxPolicy.builtIn(.unclassified).isolation == .process)
        #expect(SandboxPolicy.builtIn(.unclassified).allowsNetwork)
        #expect(SandboxPolicy.builtIn(.secret).isolation == .vm)
        #expect(SandboxPolicy.builtIn(.topSecret).isolation == .hardware)
        #expect(!SandboxPolicy.builtIn(.topSecret).allowsNetwork)
    }
}

@Suite struct IdentifierTests {
    @Test(arguments: ["agent-1", "a", "build.bot_2", String(repeating: "x", count: 64)])
    func acceptsPlainNames(_ name: String) {
        #expect(Identifier.validate(name) == nil)
    }

    @Test func refusesPathsControlCharactersAndOddNames() {
        #expect(Identifier.validate("") == .empty)
        #expect(Identifier.validate("..") == .dotName)
        #expect(Identifier.validate(".") == .dotName)
        #expect(Identifier.validate("a/b") == .forbiddenCharacter("/"))
        #expect(Identifier.validate("../etc") == .forbiddenCharacter("."))
        #expect(Identifier.validate("ab\u{7}c") == .forbiddenCharacter("\u{7}"))
        #expect(Identifier.validate("line\nbreak") == .forbiddenCharacter("\n"))
        #expect(Identifier.validate("-rf") == .forbiddenCharacter("-"))
        #expect(Identifier.validate("ünïcode") == .forbiddenCharacter("ü"))
        #expect(Identifier.validate(String(repeating: "x", count: 65)) == .tooLong(65))
    }

    @Test func describesControlCharactersReadably() {
        #expect(Identifier.Problem.forbiddenCharacter("\u{1}").description.contains("control character 0x01"))
    }
}
