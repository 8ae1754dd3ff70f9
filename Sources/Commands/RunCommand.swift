import ArgumentParser
import Foundation
import Policy
import Sandbox

struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a command in a process-level sandbox and stream its events live.",
        discussion: """
            The command's exit code passes through (a signal gives 128 + its number).
            Ctrl-C ends the sandbox and removes everything it made.
            """)

    @Option(name: .customLong("agent-id"), help: "Agent identifier (letters, digits, '.', '_', '-'; at most 64).")
    var agentID: String?

    @Option(help: "UNCLASSIFIED, CONFIDENTIAL, SECRET or TOP_SECRET.")
    var classification: String = "UNCLASSIFIED"

    @Option(help: "Isolation level; only 'process' is available to run for now.")
    var isolation: String?

    @Option(help: "table or json (one JSON object per line).")
    var format: OutputFormat = .table

    @Flag(help: "Also print one record per syscall (counts are in the summary either way).")
    var syscalls = false

    @Flag(name: .customLong("syscall-entry"), help: "Also record syscall entries, not only completed syscalls.")
    var syscallEntry = false

    @Flag(name: .customLong("private-workspace"),
          help: "Work in a private workspace (the policy's, a tmpfs of workspace_size) instead of the current directory.")
    var privateWorkspace = false

    @Option(name: .customLong("policy-file"), help: "YAML overriding parts of the default policy (repeatable), as for sandbox create.")
    var policyFiles: [String] = []

    @Option(name: .customLong("seccomp-profile"), help: "An OCI / Docker seccomp profile (JSON) replacing the policy's syscall allow-list.")
    var seccompProfile: String?

    @Argument(parsing: .captureForPassthrough, help: "The command, after --.")
    var command: [String] = []

    func run() async throws {
        let argv = command.first == "--" ? Array(command.dropFirst()) : command
        guard let program = argv.first, !program.isEmpty else {
            throw fail(Alcub3Exit.usage, "no command given: use alcub3 run [options] -- CMD [ARGS...]")
        }
        guard let level = Classification(parsing: classification) else {
            throw fail(Alcub3Exit.unknownClassification,
                       "unknown classification '\(classification)': use one of \(Classification.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        var policy = try Self.policy(for: level, files: policyFiles)
        if let isolation {
            guard let chosen = IsolationLevel(rawValue: isolation.lowercased()) else {
                throw fail(Alcub3Exit.usage, "unknown isolation level '\(isolation)': use process, container, vm or hardware")
            }
            policy.isolation = chosen
        }
        // A stronger level than `run` can give is refused, never silently weakened.
        if policy.isolation != .process {
            let why = isolation == nil ? "\(level.rawValue) requires isolation level '\(policy.isolation.rawValue)'" : "isolation level '\(policy.isolation.rawValue)'"
            throw fail(Alcub3Exit.unsupportedIsolation,
                       "\(why), which alcub3 run does not provide yet; pass --isolation process to accept process-level isolation")
        }
        if let seccompProfile {
            policy.seccompProfile = try SeccompProfileFile.read(seccompProfile)
        }
        let agent = agentID ?? Self.defaultAgentID(for: program)
        if let problem = Identifier.validate(agent) {
            throw fail(Alcub3Exit.invalidAgentID, "invalid agent id '\(Self.printable(agent))': \(problem)")
        }
        guard geteuid() == 0 else {
            throw fail(Alcub3Exit.notRoot, "alcub3 run needs root (BPF, cgroups and namespaces); try sudo")
        }
        let executable: String
        do {
            executable = try CommandResolver.resolve(program, hiddenPaths: policy.filesystem.hiddenPaths)
        } catch SandboxError.commandNotExecutable(let c) {
            throw fail(Alcub3Exit.commandNotExecutable, "command is not executable: \(c)")
        } catch let error as SandboxError {
            if case .commandHidden = error { throw fail(Alcub3Exit.commandNotFound, error.description) }
            throw fail(Alcub3Exit.commandNotFound, "command not found: \(program)")
        }

        let session = RunSession(
            agentID: agent, policy: policy, executable: executable, arguments: argv,
            format: format, printSyscalls: syscalls, syscallEntry: syscallEntry)
        session.privateWorkspace = privateWorkspace
        let code = try await session.run()
        throw ExitCode(code)
    }

    /// "<program>-<pid>": readable, and unique among runs on this host.
    static func defaultAgentID(for program: String) -> String {
        let base = (program as NSString).lastPathComponent
            .filter { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" || $0 == ".") }
        let trimmed = String(base.drop(while: { $0 == "." || $0 == "-" }).prefix(48))
        return (trimmed.isEmpty ? "agent" : trimmed) + "-" + String(getpid())
    }

    /// Control characters shown escaped, so the error line stays one line.
    static func printable(_ s: String) -> String {
        s.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7f ? String(format: "\\x%02X", $0.value) : String($0) }.joined()
    }

    /// The shipped policy of `level` with each --policy-file merged over it, in order.
    static func policy(for level: Classification, files: [String]) throws -> SandboxPolicy {
        guard !files.isEmpty else { return SandboxPolicy.builtIn(level) }
        do {
            var configuration = PolicyConfiguration.shipped
            for path in files {
                guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                    throw fail(Alcub3Exit.invalidPolicy, "policy file not found or unreadable: \(path)")
                }
                configuration = try configuration.merging(try PolicyOverrides.parse(text, source: path))
            }
            return try configuration.sandboxPolicy(for: level)
        } catch let error as PolicyError {
            throw fail(Alcub3Exit.invalidPolicy, error.description)
        }
    }

}
