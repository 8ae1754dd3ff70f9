import Testing
@testable import Commands

@Suite struct AgentIDTests {
    @Test func defaultAgentIDsAreValidIdentifiers() {
        #expect(RunCommand.defaultAgentID(for: "/usr/bin/python3").hasPrefix("python3-"))
        #expect(RunCommand.defaultAgentID(for: "./..weird name!").hasPrefix("weirdname-"))
        #expect(RunCommand.defaultAgentID(for: "///").hasPrefix("agent-"))
    }

    @Test func controlCharactersAreShownEscaped() {
        #expect(RunCommand.printable("a\u{1}b\n") == "a\\x01b\\x0A")
    }
}
