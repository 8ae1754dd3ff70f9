import ArgumentParser
import Foundation
import KernelSupport
import Logging
import Policy
import Service
import Store

/// Connects to the service, starting it in the background when it is not
/// running (root only), and turns its answers into output and exit codes.
enum ServiceAccess {
    /// Where the service is: the configuration in ALCUB3_CONFIG (as given to
    /// `alcub3 daemon --config`) over the shipped defaults, then the environment.
    static var configuration: ServiceSettings {
        if let file = ProcessInfo.processInfo.environment["ALCUB3_CONFIG"], !file.isEmpty,
           let policy = try? PolicyConfiguration.load(overrides: [URL(fileURLWithPath: file)]),
           let configuration = try? ServiceSettings.from(policy) {
            return configuration
        }
        return .fromEnvironment()
    }

    static func client(autoStart: Bool = true) throws -> ServiceClient {
        let path = configuration.socketPath
        do {
            return try ServiceClient(path: path)
        } catch let error as SystemError where error.errno == EACCES || error.errno == EPERM {
            throw fail(Alcub3Exit.notAllowed, "not allowed to use the alcub3 service: \(path) is for root (or the configured group) only")
        } catch {
            // not running: start it below, or say how
        }
        // ALCUB3_NO_AUTOSTART=1: scripts and tests that manage the service themselves.
        guard autoStart, ProcessInfo.processInfo.environment["ALCUB3_NO_AUTOSTART"] != "1" else {
            throw fail(Alcub3Exit.serviceUnavailable, "the alcub3 service is not running: start it with `alcub3 daemon` (or systemctl start alcub3)")
        }
        guard geteuid() == 0 else {
            throw fail(Alcub3Exit.serviceUnavailable, "the alcub3 service is not running and only root can start it: sudo alcub3 daemon")
        }
        try startInBackground()
        for _ in 0..<200 {
            if let client = try? ServiceClient(path: path) { return client }
            usleep(50_000)
        }
        throw fail(Alcub3Exit.serviceUnavailable,
                   "started the alcub3 service but it does not answer on \(path); see \(configuration.stateDirectory)/daemon.log")
    }

    /// `alcub3 daemon --detach` from this same executable.
    static func startInBackground() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        process.arguments = ["daemon", "--detach"]
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
    }

    /// Sends a request; output messages go to stdout/stderr, events and steps to
    /// `onMessage`; returns the result payload, or throws the service's error.
    @discardableResult
    static func call(_ request: ServiceRequest, autoStart: Bool = true,
                     onMessage: (ServiceMessage) -> Void = { _ in }) throws -> String {
        let client = try client(autoStart: autoStart)
        var payload: String?
        var failure: Failure?
        try client.call(request) { message in
            switch message.type {
            case .output:
                let bytes = Data(base64Encoded: message.data ?? "") ?? Data()
                let text = String(decoding: bytes, as: UTF8.self)
                if message.stream == "stderr" { Output.err(text) } else { Output.out(text) }
            case .result:
                payload = message.json
            case .error:
                failure = fail(message.code ?? Alcub3Exit.internalError, message.message ?? "the service failed")
            case .event, .step:
                onMessage(message)
            }
        }
        if let failure { throw failure }
        return payload ?? "null"
    }

    static func decode<T: Decodable>(_ type: T.Type, _ json: String) throws -> T {
        do {
            return try JSONDecoder().decode(T.self, from: Data(json.utf8))
        } catch {
            throw fail(Alcub3Exit.internalError, "unexpected answer from the service: \(error)")
        }
    }

    /// Pretty JSON with sorted keys, for --format json.
    static func printJSON(_ json: String) {
        Output.out(prettyJSON(json) + "\n")
    }

    /// `json` indented, keys sorted; as it is when it does not parse.
    static func prettyJSON(_ json: String) -> String {
        guard let object = try? JSONSerialization.jsonObject(with: Data(json.utf8)),
              let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]) else {
            return json
        }
        return String(decoding: data, as: UTF8.self)
    }
}

struct DaemonCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon",
        abstract: "Run the alcub3 service in the foreground (for systemd or another supervisor).",
        discussion: "Paths come from ALCUB3_SOCKET, ALCUB3_STATE_DIR and ALCUB3_PIN_DIR when set.")

    @Flag(help: "Detach from the terminal (used when a command starts the service); logs go to STATE_DIR/daemon.log.")
    var detach = false

    @Option(help: "A configuration file (sandbox_config.yaml schema) over the shipped defaults; also ALCUB3_CONFIG.")
    var config: String?

    func run() throws {
        let file = config ?? ProcessInfo.processInfo.environment["ALCUB3_CONFIG"].flatMap { $0.isEmpty ? nil : $0 }
        let policy: PolicyConfiguration
        let configuration: ServiceSettings
        do {
            policy = try PolicyConfiguration.load(overrides: file.map { [URL(fileURLWithPath: $0)] } ?? [])
            configuration = try ServiceSettings.from(policy)
        } catch let error as PolicyError {
            throw fail(Alcub3Exit.invalidPolicy, error.description)
        } catch let failure as ServiceFailure {
            throw fail(failure.code, failure.message)
        }
        if detach {
            setsid()
            try? FileManager.default.createDirectory(atPath: configuration.stateDirectory, withIntermediateDirectories: true,
                                                     attributes: [.posixPermissions: 0o700])
            let log = open(configuration.stateDirectory + "/daemon.log", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
            if log >= 0 { dup2(log, 1); dup2(log, 2); close(log) }
        }
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var logger = Logger(label: "alcub3.daemon")
        logger.logLevel = .info
        let daemon = Daemon(configuration: configuration, policyConfiguration: policy, log: logger)
        do {
            try daemon.start()
        } catch let failure as ServiceFailure {
            throw fail(failure.code, failure.message)
        } catch {
            throw fail(Alcub3Exit.kernelRefused, "the service could not start: \(error)")
        }
        let stopping = DispatchSemaphore(value: 0)
        var sources: [DispatchSourceSignal] = []
        for sig in [SIGTERM, SIGINT] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { stopping.signal() }
            source.resume()
            sources.append(source)
        }
        Thread.detachNewThread { daemon.serve() }
        stopping.wait()
        daemon.stop()
        withExtendedLifetime(sources) {}
    }
}

struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit", abstract: "The hash-chained, MAC'd audit log.", subcommands: [Verify.self])

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check the audit chain and MACs; name the first broken record. Exit 0 intact, 1 broken.")

        @Option(help: "table or json.") var format: OutputFormat = .table
        @Option(help: "Check this database file directly instead of asking the service.") var database: String?
        @Option(help: "With --database: the audit key (default: audit.key beside the database).") var key: String?

        func run() throws {
            let verification: AuditVerification
            if let database {
                guard FileManager.default.fileExists(atPath: database) else {
                    throw fail(Alcub3Exit.notFound, "no such database: \(database)")
                }
                // Without a key file, keyed records cannot be checked: verification says so at the first one.
                let directory = PathText.parent(of: database)
                let keyPath = key ?? (directory.isEmpty || directory.hasSuffix("/") ? directory : directory + "/") + AuditKey.fileName
                let auditKey: AuditKey?
                do {
                    auditKey = key != nil || FileManager.default.fileExists(atPath: keyPath) ? try AuditKey.load(at: keyPath) : nil
                } catch {
                    throw fail(Alcub3Exit.notAllowed, "cannot use the audit key: \(error)")
                }
                do {
                    verification = try EventStore(path: database, readOnly: true, auditKey: auditKey).verifyAudit()
                } catch {
                    throw fail(Alcub3Exit.internalError, "cannot read \(database): \(error)")
                }
            } else {
                if key != nil { throw fail(Alcub3Exit.usage, "--key applies with --database; the service checks with its own key") }
                verification = try ServiceAccess.decode(AuditVerification.self, ServiceAccess.call(ServiceRequest(op: .auditVerify)))
            }
            switch format {
            case .json:
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
                Output.out(String(decoding: try encoder.encode(verification), as: UTF8.self) + "\n")
            case .table:
                Output.out(verification.summary + "\n")
            }
            if !verification.ok { throw ExitCode(1) }
        }
    }
}
