import ArgumentParser
import Foundation
import KernelSupport

/// What an agent's environment holds: a few of the operator's variables that
/// programs need to run and print sensibly, and what `--env` names. Nothing
/// else: an operator's shell carries tokens and keys (AWS_SECRET_ACCESS_KEY,
/// GITHUB_TOKEN, SSH_AUTH_SOCK) that an agent must not get by default.
enum AgentEnvironment {
    /// Copied when set. PATH and HOME so programs are found and have a home;
    /// LANG, LC_* and TZ so text and times come out as the operator reads them
    /// (locale names and a zone, never credentials); TERM for the terminal.
    static let copied: Set<String> = ["PATH", "HOME", "LANG", "TERM", "TZ"]
    static let defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    /// The minimal environment from the caller's, then each `--env` in order:
    /// `NAME=VALUE` sets NAME, `NAME` copies the operator's value. Sorted.
    static func make(_ options: [String], from caller: [String: String] = ProcessInfo.processInfo.environment) throws -> [String] {
        var chosen = minimal(caller)
        for option in options {
            let name = String(option.prefix { $0 != "=" })
            guard isName(name) else {
                throw fail(Alcub3Exit.usage, "--env '\(RunCommand.printable(option))': write NAME=VALUE or NAME (letters, digits and _, not starting with a digit)")
            }
            if name.count < option.count {
                chosen[name] = String(option.dropFirst(name.count + 1))
            } else if let value = caller[name] {
                chosen[name] = value
            } else {
                throw fail(Alcub3Exit.usage, "--env \(name): \(name) is not set in your environment; write \(name)=VALUE to give a value")
            }
        }
        return lines(chosen)
    }

    /// The caller's variables an agent gets without `--env`, as NAME=VALUE lines.
    static func minimal(from caller: [String: String] = ProcessInfo.processInfo.environment) -> [String] { lines(minimal(caller)) }

    private static func minimal(_ caller: [String: String]) -> [String: String] {
        var chosen = caller.filter { copied.contains($0.key) || $0.key.hasPrefix("LC_") }
        if chosen["PATH"] == nil { chosen["PATH"] = defaultPath }
        return chosen
    }

    private static func lines(_ variables: [String: String]) -> [String] { variables.map { "\($0.key)=\($0.value)" }.sorted() }

    private static func isName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, !("0"..."9").contains(first) else { return false }
        return name.unicodeScalars.allSatisfy { $0.isASCII && ($0 == "_" || ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0)) }
    }
}

/// `--env`, shared by run, sandbox create, sandbox exec and sandbox import.
struct EnvironmentOptions: ParsableArguments {
    @Option(name: .customLong("env"),
            help: "NAME=VALUE sets a variable for the agent; NAME copies yours (repeatable). By default the agent gets only PATH, HOME, LANG, LC_*, TERM and TZ.")
    var variables: [String] = []

    func environment() throws -> [String] { try AgentEnvironment.make(variables) }
}
