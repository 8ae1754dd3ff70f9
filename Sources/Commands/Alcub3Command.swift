import ArgumentParser
import Foundation
#if canImport(Glibc)
import Glibc
#endif

public enum OutputFormat: String, ExpressibleByArgument, CaseIterable, Sendable {
    case table, json
}

public struct Alcub3Command: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "alcub3",
        abstract: "Run untrusted AI agents in sandboxes and watch them from the kernel.",
        version: "0.1.0",
        subcommands: [RunCommand.self, SandboxCommand.self, IntegrityCommand.self, EventsCommand.self, AuditCommand.self, DaemonCommand.self,
                      DoctorCommand.self])

    public init() {}

    /// The entry point of the executable: maps alcub3's failures to one stderr
    /// line and their exit code, and leaves the rest to ArgumentParser.
    public static func main(arguments: [String]) async -> Never {
        Output.ignoreBrokenPipes()
        do {
            var command = try parseAsRoot(arguments)
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
            Glibc.exit(0)
        } catch let failure as Failure {
            Output.err("alcub3: error: \(failure.message)\n")
            Glibc.exit(failure.code)
        } catch let code as ExitCode {
            Glibc.exit(code.rawValue)
        } catch {
            exit(withError: error)
        }
    }
}
