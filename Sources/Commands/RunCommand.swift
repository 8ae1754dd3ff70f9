import ArgumentParser
import Foundation
import KernelSupport
import Policy
import Sandbox
import Service

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

    @Option(name: [.customLong("isolation"), .customLong("isolation-level")],
            help: "Isolation level: process, container (with --image) or vm (QEMU); default: the classification's.")
    var isolation: String?

    @Option(name: .customLong("guest-image"),
            help: "Vm level: the guest image directory (default $ALCUB3_GUEST_DIR or /var/cache/alcub3/guest; built once if missing).")
    var guestImage: String?

    @Option(name: .customLong("boot-timeout"), help: "Vm level: seconds the guest may take to boot (default 60).")
    var bootTimeout: Double?

    @Option(help: "Container level: the image, a root filesystem directory, an OCI image layout or a tar of one.")
    var image: String?

    @Option(name: .customLong("image-digest"),
            help: "The manifest digest (sha256:...) the OCI image must have; without it, the allow-list \(ImageAllowList.defaultPath).")
    var imageDigest: String?

    @Option(help: "table or json (one JSON object per line).")
    var format: OutputFormat = .table

    @Flag(help: "Also print one record per syscall (counts are in the summary either way).")
    var syscalls = false

    @Flag(name: .customLong("syscall-entry"), help: "Also record syscall entries, not only completed syscalls.")
    var syscallEntry = false

    @Flag(name: .customLong("private-workspace"),
          help: "Work in a private workspace (the policy's, a tmpfs of workspace_size) instead of the current directory.")
    var privateWorkspace = false

    @Option(help: "What becomes of the agent's changes to the current directory when the sandbox ends: apply (default), review (list them and ask on this terminal) or discard. The agent works on a copy-on-write view of it, bounded by workspace_size.")
    var changes: WorkspaceChanges = .apply

    @Option(name: .customLong("policy-file"), help: "YAML overriding parts of the default policy (repeatable), as for sandbox create.")
    var policyFiles: [String] = []

    @Option(name: .customLong("seccomp-profile"), help: "An OCI / Docker seccomp profile (JSON) replacing the policy's syscall allow-list.")
    var seccompProfile: String?

    @Option(name: .customLong("record-traces"),
            help: "Write each sandbox thread's syscall numbers to DIR, one trace file per thread (created if missing).")
    var recordTraces: String?

    @Option(help: "A behaviour profile: an existing file is scored against (alerts in the stream); a new one receives the profile learned from this run.")
    var profile: String?

    @OptionGroup var environment: EnvironmentOptions

    @Argument(parsing: .captureForPassthrough, help: "The command, after --.")
    var command: [String] = []

    func run() async throws {
        // The passthrough argument takes a leading --help too: answer it as help, not as a command.
        if let first = command.first, first == "--help" || first == "-h" { throw CleanExit.helpRequest(self) }
        let argv = try PassthroughCommand.argv(command)
        guard let program = argv.first, !program.isEmpty else {
            throw fail(Alcub3Exit.usage, "no command given: use alcub3 run [options] -- CMD [ARGS...]")
        }
        guard let level = Classification(parsing: classification) else {
            throw fail(Alcub3Exit.unknownClassification,
                       "unknown classification '\(classification)': use one of \(Classification.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        var policy = try Self.policy(for: level, files: policyFiles)
        // No sandbox sees any alcub3 service's socket, state (database, keys), pins or baseline key: the
        // configured service's and the one the environment (ALCUB3_SOCKET, _STATE_DIR, _PIN_DIR) points at.
        policy.filesystem.hiddenPaths = Array(Set(policy.filesystem.hiddenPaths
            + ServiceSettings.hiddenPaths(of: try Self.configuration(files: policyFiles)))).sorted()
        if let isolation {
            guard let chosen = IsolationLevel(rawValue: isolation.lowercased()) else {
                throw fail(Alcub3Exit.usage, "unknown isolation level '\(isolation)': use process, container, vm or hardware")
            }
            policy.isolation = chosen
        }
        // A stronger level than `run` can give is refused, never silently weakened.
        if policy.isolation == .container {
            guard image != nil else {
                let why = isolation == nil ? "\(level.rawValue) requires isolation level 'container', which" : "isolation level 'container'"
                throw fail(Alcub3Exit.usage, "\(why) needs an image: --image PATH (a root filesystem, an OCI image layout or a tar of one), "
                           + "or --isolation process to accept process-level isolation")
            }
        } else if image != nil || imageDigest != nil {
            throw fail(Alcub3Exit.usage, "--image and --image-digest apply to --isolation-level container")
        }
        let digest = try imageDigest.map { text in
            guard let digest = ImageDigest(text) else {
                throw fail(Alcub3Exit.usage, "--image-digest '\(Self.printable(text))' is not a digest like sha256:<64 lower-case hex digits>")
            }
            return digest
        }
        let virtual = policy.isolation == .vm || policy.isolation == .hardware
        if (guestImage != nil || bootTimeout != nil) && !virtual {
            throw fail(Alcub3Exit.usage, "--guest-image and --boot-timeout apply to --isolation-level vm or hardware")
        }
        if let bootTimeout, !(bootTimeout > 0 && bootTimeout <= 3600) {
            throw fail(Alcub3Exit.usage, "--boot-timeout must be between 0 and 3600 seconds")
        }
        // A container gets its image's environment, a vm guest its own: --env would be silently lost there.
        if !environment.variables.isEmpty && (policy.isolation == .container || virtual) {
            throw fail(Alcub3Exit.usage, "--env applies to --isolation-level process; a container has its image's environment, a vm its guest's")
        }
        let agentEnvironment = try environment.environment()
        if let seccompProfile {
            policy.seccompProfile = try SeccompProfileFile.read(seccompProfile)
        }
        // With a profile, runs of the same program share an agent id, so the profile fits the next run.
        let agent = agentID ?? Self.defaultAgentID(for: program, unique: profile == nil)
        if let problem = Identifier.validate(agent) {
            throw fail(Alcub3Exit.invalidAgentID, "invalid agent id '\(Self.printable(agent))': \(problem)")
        }
        guard geteuid() == 0 else {
            throw fail(Alcub3Exit.notRoot, "alcub3 run needs root (BPF, cgroups and namespaces); try sudo")
        }
        let traceDirectory = try recordTraces.map(TraceRecorder.prepare)
        let executable: String
        do {
            // A container's command is looked up in its image, once unpacked; a vm's in the guest.
            executable = policy.isolation == .container || virtual ? program
                : try CommandResolver.resolve(program, hiddenPaths: policy.filesystem.hiddenPaths)
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
        if changes == .review && !OperatorTerminal.available {
            throw fail(Alcub3Exit.usage, "--changes review asks on the terminal, and alcub3 has none; use apply or discard")
        }
        session.changes = changes
        session.environment = agentEnvironment
        session.container = image.map { (image: $0, digest: digest) }
        if virtual {
            var options = VMOptions()
            options.hardware = policy.isolation == .hardware
            if let guestImage { options.guestDirectory = guestImage }
            if let bootTimeout { options.bootTimeout = bootTimeout }
            session.vm = options
        }
        session.traceDirectory = traceDirectory
        if let profile {
            let loaded = try RunBehaviour.prepare(path: profile, agentID: agent)
            session.behaviour = RunBehaviour(
                path: profile, profile: loaded, agentID: agent, sandboxID: session.sandboxID,
                configuration: try Self.configuration(files: policyFiles).behavioralAnalysis,
                workspace: privateWorkspace ? policy.filesystem.workspace : FileManager.default.currentDirectoryPath, format: format)
        }
        let code = try await session.run()
        throw ExitCode(code)
    }

    /// "<program>-<pid>": readable, and unique among runs on this host.
    static func defaultAgentID(for program: String, unique: Bool = true) -> String {
        let base = (program as NSString).lastPathComponent
            .filter { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" || $0 == ".") }
        let trimmed = String(base.drop(while: { $0 == "." || $0 == "-" }).prefix(48))
        return (trimmed.isEmpty ? "agent" : trimmed) + (unique ? "-" + String(getpid()) : "")
    }

    /// Control characters shown escaped, so the error line stays one line (TerminalText).
    static func printable(_ s: String) -> String { TerminalText.escaped(s) }

    /// The shipped policy of `level` with each --policy-file merged over it, in order.
    static func policy(for level: Classification, files: [String]) throws -> SandboxPolicy {
        guard !files.isEmpty else { return SandboxPolicy.builtIn(level) }
        do {
            return try configuration(files: files).sandboxPolicy(for: level)
        } catch let error as PolicyError {
            throw fail(Alcub3Exit.invalidPolicy, error.description)
        }
    }

    /// The shipped configuration with `files` merged over it, in order.
    static func configuration(files: [String]) throws -> PolicyConfiguration {
        do {
            var configuration = PolicyConfiguration.shipped
            for path in files {
                guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                    throw fail(Alcub3Exit.invalidPolicy, "policy file not found or unreadable: \(path)")
                }
                configuration = try configuration.merging(try PolicyOverrides.parse(text, source: path))
            }
            return configuration
        } catch let error as PolicyError {
            throw fail(Alcub3Exit.invalidPolicy, error.description)
        }
    }

}
