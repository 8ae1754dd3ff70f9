import ArgumentParser
import Foundation
import Policy
import Sandbox
import Service
import Store
import Telemetry
import KernelSupport

struct SandboxCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sandbox",
        abstract: "Create, run commands in, watch and end sandboxes held by the alcub3 service.",
        subcommands: [Create.self, Exec.self, List.self, Monitor.self, IntegrityCommand.Validate.self, Export.self, Import.self, PolicyCommand.self, Thaw.self,
                      Terminate.self, DebugCreate.self])

    /// Options shared by create and debug-create.
    struct CreateOptions: ParsableArguments {
        @Option(name: .customLong("agent-id"), help: "Agent identifier.") var agentID: String
        @Option(help: "UNCLASSIFIED, CONFIDENTIAL, SECRET or TOP_SECRET.") var classification: String = "UNCLASSIFIED"
        @Option(name: .customLong("isolation-level"), help: "process, container, vm or hardware (default: the classification's).")
        var isolationLevel: String?
        @Option(name: .customLong("policy-file"), help: "YAML overriding parts of the default policy (repeatable).")
        var policyFiles: [String] = []
        @Option(name: .customLong("capability"), help: "network, filesystem_write, subprocess, python (repeatable or comma-separated; default: the level's).")
        var capabilities: [String] = []
        @Option(name: .customLong("seccomp-profile"), help: "An OCI / Docker seccomp profile (JSON) replacing the policy's syscall allow-list.")
        var seccompProfile: String?
        @Flag(name: .customLong("share-cwd"), help: "Work in the current directory, writable and not size-capped, instead of a private workspace.")
        var shareCwd = false
        @Option(help: "Container level: the image, a root filesystem directory, an OCI image layout or a tar of one.")
        var image: String?
        @Option(name: .customLong("image-digest"), help: "The manifest digest (sha256:...) the OCI image must have; without it, the service's allow-list.")
        var imageDigest: String?
        @Option(help: "A behaviour profile: an existing file is the agent's learned behaviour (no observation window); a new one receives the profile learned.")
        var profile: String?
        @OptionGroup var environment: EnvironmentOptions
        @Argument(parsing: .captureForPassthrough, help: "The agent's command, after --; none: the sandbox waits for exec.")
        var command: [String] = []

        func request(dryRun: Bool, verbose: Bool) throws -> ServiceRequest {
            if let problem = Identifier.validate(agentID) {
                throw fail(Alcub3Exit.invalidAgentID, "invalid agent id '\(RunCommand.printable(agentID))': \(problem)")
            }
            var request = ServiceRequest(op: .create)
            request.agentID = agentID
            request.classification = classification
            request.isolation = isolationLevel
            request.policyFileNames = policyFiles
            request.capabilities = capabilities.isEmpty ? nil : capabilities.flatMap { $0.split(separator: ",").map(String.init) }
            request.policyYAML = try policyFiles.map { path in
                guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                    throw fail(Alcub3Exit.invalidPolicy, "policy file not found or unreadable: \(path)")
                }
                return text
            }
            request.seccompProfile = try seccompProfile.map(SeccompProfileFile.read)
            request.shareWorkingDirectory = shareCwd
            request.image = image.map { $0.hasPrefix("/") ? $0 : FileManager.default.currentDirectoryPath + "/" + $0 }
            request.imageDigest = imageDigest
            request.profilePath = profile.map { $0.hasPrefix("/") ? $0 : FileManager.default.currentDirectoryPath + "/" + $0 }
            request.command = try PassthroughCommand.argv(command)
            request.workingDirectory = FileManager.default.currentDirectoryPath
            request.environment = try environment.environment()
            request.dryRun = dryRun
            request.verbose = verbose
            return request
        }
    }

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a sandbox and start its agent (or only its init).")
        @OptionGroup var options: CreateOptions
        @Flag(help: "Show the effective policy; create nothing.") var dryRun = false
        @Flag(help: "Print each creation step and what enforces the policy (seccomp, Landlock, capabilities, BPF-LSM).")
        var verbose = false
        @Option(help: "table or json.") var format: OutputFormat = .table

        func run() throws {
            let result = try ServiceAccess.call(try options.request(dryRun: dryRun, verbose: verbose)) { message in
                guard message.type == .step, let json = message.json,
                      let step = try? JSONDecoder().decode(CreationStep.self, from: Data(json.utf8)) else { return }
                Output.err(String(format: "%8d us  %@  -> %@\n", step.microseconds, step.step as NSString, step.result as NSString))
            }
            if format == .json || dryRun {
                ServiceAccess.printJSON(result)
                return
            }
            let record = try ServiceAccess.decode(SandboxRecord.self, result)
            Output.out("created \(record.sandboxID) for agent \(record.agentID) (\(record.classification), \(record.isolation)), init pid \(record.initPID.map(String.init) ?? "?")\n")
        }
    }

    struct DebugCreate: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "debug-create", abstract: "Create a sandbox step by step: each step's time and the kernel's answer.")
        @OptionGroup var options: CreateOptions
        @Flag(help: "Print every step (always on; accepted for the published command line).") var verbose = false
        @Option(help: "table or json.") var format: OutputFormat = .table

        func run() throws {
            let result = try ServiceAccess.call(try options.request(dryRun: false, verbose: true)) { message in
                guard message.type == .step, let json = message.json else { return }
                if format == .json { Output.out(json + "\n"); return }
                if let step = try? JSONDecoder().decode(CreationStep.self, from: Data(json.utf8)) {
                    Output.out(String(format: "%8d us  %@  -> %@\n", step.microseconds, step.step as NSString, step.result as NSString))
                }
            }
            if format == .json { Output.out(result + "\n") } else {
                let record = try ServiceAccess.decode(SandboxRecord.self, result)
                Output.out("created \(record.sandboxID), init pid \(record.initPID.map(String.init) ?? "?")\n")
            }
        }
    }

    struct Exec: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run a command inside a running sandbox; its exit code passes through.")
        @Option(name: .customLong("agent-id")) var agentID: String
        @Option(help: "table or json (accepted; the command's own output is passed as is).") var format: OutputFormat = .table
        @OptionGroup var environment: EnvironmentOptions
        @Argument(parsing: .captureForPassthrough) var command: [String] = []

        func run() throws {
            let argv = try PassthroughCommand.argv(command)
            guard !argv.isEmpty else { throw fail(Alcub3Exit.usage, "no command given: alcub3 sandbox exec --agent-id ID -- CMD") }
            var request = ServiceRequest(op: .exec)
            request.agentID = agentID
            request.command = argv
            request.environment = try environment.environment()
            let result = try ServiceAccess.call(request)
            let code = (try? JSONSerialization.jsonObject(with: Data(result.utf8)) as? [String: Any])?["exitCode"] as? Int ?? 0
            throw ExitCode(Int32(code))
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List sandboxes.")
        @Option(help: "active, stopped or all.") var status: String = "active"
        @Option(help: "table or json.") var format: OutputFormat = .table

        func run() throws {
            var request = ServiceRequest(op: .list)
            request.status = status
            let result = try ServiceAccess.call(request)
            if format == .json { ServiceAccess.printJSON(result); return }
            let records = try ServiceAccess.decode([SandboxRecord].self, result)
            Output.out("SANDBOX          AGENT                CLASSIFICATION  ISOLATION  STATE     PID      CREATED\n")
            for r in records {
                func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
                Output.out("\(pad(r.sandboxID, 16)) \(pad(r.agentID, 20)) \(pad(r.classification, 15)) \(pad(r.isolation, 10)) \(pad(r.state.rawValue, 9)) \(pad(r.initPID.map(String.init) ?? "-", 8)) \(String(WallClock.iso8601(unixNanos: r.createdNs).prefix(19)))\n")
            }
        }
    }

    struct Monitor: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A live periodic view of one sandbox.")
        @Option(name: .customLong("agent-id")) var agentID: String
        @Option(help: "Seconds between views, e.g. 30s, 2s or 0.5.") var interval: String = "30s"
        @Option(help: "Stop after this many views (default: until Ctrl-C).") var count: Int?
        @Option(help: "table or json.") var format: OutputFormat = .table

        func run() throws {
            let text = interval.hasSuffix("s") ? String(interval.dropLast()) : interval
            guard let seconds = Double(text), seconds > 0, seconds <= 86400 else {
                throw fail(Alcub3Exit.usage, "invalid interval '\(interval)': use seconds such as 30s or 0.5")
            }
            var previous: [String: Any]?
            var shown = 0
            while count.map({ shown < $0 }) ?? true {
                var request = ServiceRequest(op: .monitor)
                request.agentID = agentID
                let json = try ServiceAccess.call(request, autoStart: false)
                guard let snapshot = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any] else { break }
                if format == .json { Output.out(json + "\n") } else { Output.out(MonitorView.render(snapshot, previous: previous)) }
                previous = snapshot
                shown += 1
                if snapshot["state"] as? String != "running" { break }
                if count.map({ shown >= $0 }) ?? false { break }
                usleep(UInt32(seconds * 1e6))
            }
        }
    }

    struct Export: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write a sandbox's policy and command to a JSON file.")
        @Option(name: .customLong("agent-id")) var agentID: String
        @Option(help: "Output file (inside the working directory).") var output: String
        @Flag(help: "Write the sandbox's seccomp filter as an OCI / Docker profile (for --seccomp-profile) instead.")
        var seccomp = false
        @Option(help: "table or json.") var format: OutputFormat = .table

        func run() throws {
            let path = try SafePath.inWorkingDirectory(output)
            var request = ServiceRequest(op: .export)
            request.agentID = agentID
            var json = try ServiceAccess.call(request)
            if seccomp {
                let exported = try ServiceAccess.decode(SandboxExport.self, json)
                do {
                    let profile = try SeccompProfile.effective(for: exported.policy, supervised: false)
                    json = String(decoding: try profile.jsonData(), as: UTF8.self)
                } catch let error as PolicyError {
                    throw fail(Alcub3Exit.invalidPolicy, "the sandbox's seccomp profile cannot be written: \(error)")
                }
            }
            guard FileManager.default.createFile(atPath: path, contents: Data((json + "\n").utf8), attributes: [.posixPermissions: 0o600]) else {
                throw fail(Alcub3Exit.kernelRefused, "cannot write \(output)")
            }
            if format == .json { ServiceAccess.printJSON(json) } else { Output.out("exported \(agentID) to \(output)\n") }
        }
    }

    struct Import: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a sandbox with an exported policy under a new agent id.")
        @Option(help: "A file written by sandbox export.") var config: String
        @Option(name: .customLong("agent-id"), help: "The new agent id.") var agentID: String
        @Option(help: "table or json.") var format: OutputFormat = .table
        @OptionGroup var environment: EnvironmentOptions

        func run() throws {
            if let problem = Identifier.validate(agentID) {
                throw fail(Alcub3Exit.invalidAgentID, "invalid agent id '\(RunCommand.printable(agentID))': \(problem)")
            }
            let path = try SafePath.inWorkingDirectory(config)
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw fail(Alcub3Exit.notFound, "cannot read \(config)")
            }
            var request = ServiceRequest(op: .importPolicy)
            request.agentID = agentID
            request.policyJSON = text
            request.environment = try environment.environment()
            let result = try ServiceAccess.call(request)
            if format == .json { ServiceAccess.printJSON(result); return }
            let record = try ServiceAccess.decode(SandboxRecord.self, result)
            Output.out("imported as \(record.sandboxID) for agent \(record.agentID)\n")
        }
    }

    struct PolicyCommand: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "policy", abstract: "Change a running sandbox's policy.",
                                                        subcommands: [Set.self])

        struct Set: ParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Replace a running sandbox's allowed destinations and ports, in force from its next connect.")
            @Option(name: .customLong("agent-id")) var agentID: String
            @Option(name: .customLong("allowed-destination"), help: "A network the sandbox may reach, e.g. 10.1.0.0/16 (repeatable or comma-separated).")
            var destinations: [String] = []
            @Option(name: .customLong("allowed-port"), help: "A port it may reach (repeatable or comma-separated; none: every port).")
            var ports: [String] = []
            @Option(help: "table or json.") var format: OutputFormat = .table

            func run() throws {
                var request = ServiceRequest(op: .policySet)
                request.agentID = agentID
                request.destinations = destinations.flatMap { $0.split(separator: ",").map(String.init) }
                request.ports = try ports.flatMap { $0.split(separator: ",") }.map { text in
                    guard let port = Int(text) else { throw fail(Alcub3Exit.invalidPolicy, "port '\(text)' is not a number") }
                    return port
                }
                let result = try ServiceAccess.call(request)
                if format == .json { ServiceAccess.printJSON(result) } else { Output.out("network policy of \(agentID) updated\n") }
            }
        }
    }

    struct Thaw: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Let a sandbox its policy froze (on_violation: freeze) run again.")
        @Option(name: .customLong("agent-id")) var agentID: String
        @Option(help: "table or json.") var format: OutputFormat = .table

        func run() throws {
            var request = ServiceRequest(op: .thaw)
            request.agentID = agentID
            let result = try ServiceAccess.call(request)
            if format == .json { ServiceAccess.printJSON(result) } else { Output.out("thawed \(agentID)\n") }
        }
    }

    struct Terminate: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "End a sandbox: SIGTERM, SIGKILL after a grace period, then clean up.")
        @Option(name: .customLong("agent-id")) var agentID: String
        @Flag(help: "SIGKILL at once.") var force = false
        @Option(help: "Seconds between SIGTERM and SIGKILL.") var grace: Double = 10
        @Option(help: "table or json.") var format: OutputFormat = .table

        func run() throws {
            guard grace >= 0 && grace <= 3600 else { throw fail(Alcub3Exit.usage, "grace must be between 0 and 3600 seconds") }
            var request = ServiceRequest(op: .terminate)
            request.agentID = agentID
            request.force = force
            request.graceSeconds = grace
            let result = try ServiceAccess.call(request, autoStart: false)
            if format == .json { ServiceAccess.printJSON(result); return }
            let record = try ServiceAccess.decode(SandboxRecord.self, result)
            Output.out("terminated \(record.sandboxID) (agent \(record.agentID))\(record.exitCode.map { ", exit code \($0)" } ?? "")\n")
        }
    }
}

struct EventsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "events", abstract: "Read the stored event stream.",
                                                    subcommands: [Tail.self])

    struct Tail: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print stored events, and with --follow new ones as they come.")
        @Option(name: .customLong("agent-id")) var agentID: String?
        @Option(help: "process, file, network, alcub3 or alert.") var kind: String?
        @Option(help: "Only events at or after this time (ISO 8601, or seconds ago like 300s, 5m, 2h).") var since: String?
        @Flag(help: "Keep printing new events.") var follow = false
        @Option(help: "How many stored events to start with.") var lines: Int = 100
        @Option(help: "table or json.") var format: OutputFormat = .json

        func run() throws {
            var request = ServiceRequest(op: .events)
            request.agentID = agentID
            request.kind = kind
            request.follow = follow
            request.limit = lines
            if let since { request.sinceNs = try SinceParser.parse(since) }
            try ServiceAccess.call(request) { message in
                guard message.type == .event, let json = message.json else { return }
                Output.out((format == .json ? json : EventLine.render(json)) + "\n")
            }
        }
    }
}
