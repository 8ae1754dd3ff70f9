import Analysis
import CAlcub3
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import KernelSupport
import Policy
import Sandbox
import Store
import Telemetry

/// Answers one client request. Every failure becomes one `error` message with
/// the exit code the CLI passes on; nothing half-made is left behind (the
/// manager undoes a failed creation).
struct RequestHandler: Sendable {
    let daemon: Daemon
    var manager: SandboxManager { daemon.manager }

    func handle(_ request: ServiceRequest, _ connection: ControlConnection) {
        do {
            try dispatch(request, connection)
        } catch let failure as ServiceFailure {
            connection.send(.error(failure.code, failure.message))
        } catch let error as SandboxError {
            connection.send(.error(Alcub3Exit.kernelRefused, error.description))
        } catch let error as StoreError {
            connection.send(.error(Alcub3Exit.internalError, "store: \(error)"))
        } catch {
            connection.send(.error(Alcub3Exit.kernelRefused, "\(error)"))
        }
    }

    private func dispatch(_ request: ServiceRequest, _ connection: ControlConnection) throws {
        let requester = Requester(peer: connection.peer)
        switch request.op {
        case .ping:
            connection.send(.result(["pid": String(getpid()), "sandboxes": String(manager.liveSandboxes.count)]))
        case .create:
            try create(request, connection)
        case .exec:
            let agent = try agentID(request)
            let code = try manager.exec(agentID: agent, command: request.command ?? [], workingDirectory: request.workingDirectory,
                                        environment: request.environment ?? [], requester: requester, output: { stream, bytes in
                connection.send(ServiceMessage(type: .output, stream: stream, data: Data(bytes).base64EncodedString()))
            })
            connection.send(.result(ExecResult(exitCode: code)))
        case .list:
            let states: Set<SandboxState>
            switch request.status ?? "active" {
            case "active": states = [.creating, .running]
            case "stopped": states = [.stopped, .failed]
            case "all": states = Set(SandboxState.allCases)
            case let other: throw ServiceFailure(Alcub3Exit.usage, "unknown status '\(other)': use active, stopped or all")
            }
            connection.send(.result(try manager.store.sandboxes(states: states)))
        case .show:
            let agent = try agentID(request)
            guard let record = try manager.store.sandbox(agentID: agent) else {
                throw ServiceFailure(Alcub3Exit.notFound, "no sandbox has agent id '\(agent)'")
            }
            connection.send(.result(record))
        case .terminate:
            let record = try manager.terminate(agentID: try agentID(request), grace: request.graceSeconds ?? 10,
                                               force: request.force ?? false, requester: requester)
            connection.send(.result(record))
        case .policySet:
            try rootOnly(connection.peer, "may not change a running sandbox's network policy")
            connection.send(.result(try manager.setNetwork(agentID: try agentID(request), destinations: request.destinations ?? [],
                                                           ports: request.ports ?? [], requester: requester)))
        case .baseline where request.list == true:
            // Every stored baseline (of one agent when named), oldest first.
            connection.send(.result(try manager.store.baselines(agentID: request.agentID)))
        case .baseline:
            // Progress every 1000 entries, for long trees.
            connection.send(.result(try manager.makeBaseline(agentID: try agentID(request), update: request.update ?? false,
                                                                 requester: requester) { count in
                connection.send(ServiceMessage(type: .step, json: nil, message: "scanned \(count) entries"))
            }))
        case .validate:
            connection.send(.result(try manager.validate(agentID: try agentID(request), baseline: request.baselineText ?? "",
                                                         source: request.baselineSource ?? "the baseline", requester: requester)))
        case .thaw:
            connection.send(.result(try manager.thaw(agentID: try agentID(request), requester: requester)))
        case .export:
            let agent = try agentID(request)
            guard let record = try manager.store.sandbox(agentID: agent) else {
                throw ServiceFailure(Alcub3Exit.notFound, "no sandbox has agent id '\(agent)'")
            }
            connection.send(.result(try SandboxExport(record: record)))
        case .importPolicy:
            try rootOnly(connection.peer, "may not import a policy (sandbox import)")
            try importPolicy(request, connection)
        case .events:
            try events(request, connection)
        case .monitor:
            connection.send(.result(try MonitorSnapshot.take(manager: manager, agentID: try agentID(request))))
        case .auditVerify:
            connection.send(.result(try manager.store.verifyAudit()))
        case .behaviour:
            connection.send(.result(try manager.behaviourSnapshot(agentID: try agentID(request), detailed: request.verbose ?? false)))
        case .report:
            let agent = try agentID(request)
            guard let record = try manager.store.sandbox(agentID: agent) else {
                throw ServiceFailure(Alcub3Exit.notFound, "no sandbox has agent id '\(agent)'")
            }
            connection.send(.result(try SandboxReport.make(store: manager.store, record: record, sinceNs: request.sinceNs,
                                                           untilNs: request.untilNs)))
        }
    }

    /// `--profile FILE`: an existing file is the profile to start from (it must
    /// be this agent's and intact); a new one is where the learned profile goes.
    /// A peer that is not root must be able to read the file, or write and
    /// search its directory, itself (PeerAccess); the file is read, and the new
    /// one later written, through descriptors opened now.
    private func profileChoice(_ request: ServiceRequest, agent: String, peer: PeerCredentials) throws -> ProfileChoice? {
        guard let path = request.profilePath else { return nil }
        guard path.hasPrefix("/") else { throw ServiceFailure(Alcub3Exit.usage, "--profile needs an absolute path, got '\(path)'") }
        let directory = (path as NSString).deletingLastPathComponent, name = (path as NSString).lastPathComponent
        guard !name.isEmpty, name != ".", name != ".." else { throw ServiceFailure(Alcub3Exit.usage, "--profile \(path) names no file") }
        var st = stat()
        let exists = lstat(path, &st) == 0
        do {
            if peer.isRoot {
                guard exists else {
                    guard access(directory, W_OK) == 0 else {
                        throw ServiceFailure(Alcub3Exit.usage, "--profile \(path): cannot write in \(directory) (\(String(cString: strerror(errno))))")
                    }
                    let held = try OwnedDescriptor(path: directory, flags: ALCUB3_O_PATH | O_DIRECTORY)
                    return ProfileChoice(loaded: nil, target: ProfileTarget(directory: held, name: name, path: path, peer: nil))
                }
                return ProfileChoice(loaded: try AgentProfile.load(from: path, agentID: agent), target: nil)
            }
            let access = PeerAccess(peer: peer)
            guard exists else {
                let walk = try access.walk(directory, want: PeerAccess.write | PeerAccess.search, what: "--profile: the directory")
                return ProfileChoice(loaded: nil, target: ProfileTarget(directory: walk.descriptor, name: name, path: path, peer: peer))
            }
            let walk = try access.walk(path, want: PeerAccess.read, what: "--profile")
            guard walk.status.st_mode & S_IFMT == S_IFREG else { throw ServiceFailure(Alcub3Exit.usage, "--profile \(path) is not a file") }
            // Read through the descriptor the walk checked (its magic link), not the path again.
            let data = Data(try FileIO.read("/proc/self/fd/\(walk.descriptor.raw)", limit: 64 << 20).utf8)
            return ProfileChoice(loaded: try AgentProfile.load(data, path: path, agentID: agent), target: nil)
        } catch let refusal as PeerAccess.Refusal {
            throw ServiceFailure(Alcub3Exit.notAllowed, refusal.description)
        } catch let error as ProfileError {
            throw ServiceFailure(Alcub3Exit.invalidPolicy, "\(error)")
        }
    }

    /// Requests only root may make. Root is trusted with every request (it is
    /// root on the host anyway); members of service.socket_group are not.
    private func rootOnly(_ peer: PeerCredentials, _ what: String) throws {
        guard !peer.isRoot else { return }
        throw ServiceFailure(Alcub3Exit.notAllowed, "uid \(peer.uid) (a member of the service's socket group, not root) \(what): only root may")
    }

    /// A member of the socket group gets the operator's configured policy for
    /// the classification it chooses, or a stricter isolation level; it may
    /// not bring policy of its own. Refused outright rather than "tighten
    /// only": the policy has many fields (paths, network, seccomp,
    /// capabilities, limits, responses) and grows, and a comparison that
    /// missed one would silently give a member a weaker sandbox.
    private func checkMemberRequest(_ request: ServiceRequest, peer: PeerCredentials) throws {
        guard !peer.isRoot else { return }
        if !(request.policyYAML ?? []).isEmpty { try rootOnly(peer, "may not give policy files (--policy-file)") }
        if request.seccompProfile != nil { try rootOnly(peer, "may not give a seccomp profile (--seccomp-profile)") }
        if request.capabilities != nil { try rootOnly(peer, "may not grant capabilities (--capability)") }
        if request.imageDigest != nil { try rootOnly(peer, "may not give --image-digest, which stands in for the image allow-list") }
    }

    /// The isolation level a member asks for may be stronger than the configured one, never weaker.
    private func checkMemberIsolation(_ request: ServiceRequest, resolved: ResolvedPolicy, peer: PeerCredentials) throws {
        if !peer.isRoot && request.isolation != nil {
            let configured = try PolicyResolver.resolve(base: daemon.policyConfiguration, classification: request.classification, isolation: nil,
                                                        capabilities: nil, policyFiles: []).policy.isolation
            let order = IsolationLevel.allCases
            if order.firstIndex(of: resolved.policy.isolation)! < order.firstIndex(of: configured)! {
                try rootOnly(peer, "may not lower the isolation level below the configured \(configured.rawValue)")
            }
        }
    }

    private func agentID(_ request: ServiceRequest) throws -> String {
        guard let agent = request.agentID, !agent.isEmpty else { throw ServiceFailure(Alcub3Exit.usage, "--agent-id is required") }
        if let problem = Identifier.validate(agent) {
            throw ServiceFailure(Alcub3Exit.invalidAgentID, "invalid agent id '\(agent)': \(problem)")
        }
        return agent
    }

    private func create(_ request: ServiceRequest, _ connection: ControlConnection) throws {
        let agent = try agentID(request)
        let names = request.policyFileNames ?? []
        let files = (request.policyYAML ?? []).enumerated().map { (i, text) in
            (name: i < names.count ? names[i] : "policy file \(i + 1)", text: text)
        }
        try checkMemberRequest(request, peer: connection.peer)
        var resolved = try PolicyResolver.resolve(base: daemon.policyConfiguration, classification: request.classification, isolation: request.isolation,
                                                  capabilities: request.capabilities, policyFiles: files)
        try checkMemberIsolation(request, resolved: resolved, peer: connection.peer)
        if let profile = request.seccompProfile {
            resolved.policy.seccompProfile = profile
            _ = try SandboxManager.seccompProgram(for: resolved.policy)
        }
        if request.dryRun == true {
            connection.send(.result(DryRun(agentID: agent, policy: resolved.policy, limits: resolved.limits,
                                           command: request.command ?? [])))
            return
        }
        try startSandbox(agent: agent, resolved: resolved, request: request, connection: connection)
    }

    private func startSandbox(agent: String, resolved: ResolvedPolicy, request: ServiceRequest,
                              connection: ControlConnection) throws {
        let isolation = resolved.policy.isolation
        if isolation == .container && request.image == nil {
            throw ServiceFailure(Alcub3Exit.usage, "isolation level 'container' needs an image: --image PATH (a root filesystem, an OCI image "
                                 + "layout or a tar of one), or --isolation-level process to accept process-level isolation")
        }
        if isolation != .container && (request.image != nil || request.imageDigest != nil) {
            throw ServiceFailure(Alcub3Exit.usage, "--image and --image-digest apply to --isolation-level container")
        }
        let imageDigest = try request.imageDigest.map { text in
            guard let digest = ImageDigest(text) else {
                throw ServiceFailure(Alcub3Exit.usage, "--image-digest '\(text)' is not a digest like sha256:<64 lower-case hex digits>")
            }
            return digest
        }
        var create = CreateRequest(agentID: agent, policy: resolved.policy, limits: resolved.limits, command: request.command ?? [],
                                   workingDirectory: request.workingDirectory ?? "/", environment: request.environment ?? [])
        create.shareWorkingDirectory = request.shareWorkingDirectory ?? false
        create.image = isolation == .container ? request.image : nil
        create.imageDigest = imageDigest
        create.profile = try profileChoice(request, agent: agent, peer: connection.peer)
        create.requester = Requester(peer: connection.peer)
        let image = try memberPaths(&create, peer: connection.peer)
        let record = try withExtendedLifetime(image) {
            try manager.create(create,
                steps: request.verbose == true ? { step in
                    connection.send(ServiceMessage(type: .step, json: ServiceJSON.encode(step), message: step.step))
                } : nil)
        }
        connection.send(.result(record))
    }

    /// A member of the socket group shares only a directory it may write
    /// itself whose place it cannot change (PeerAccess.shareableDirectory),
    /// and runs only an image tar it may read itself, read by the service
    /// through the descriptor returned here (hold it until the creation is
    /// done). Root's paths are taken as given.
    private func memberPaths(_ create: inout CreateRequest, peer: PeerCredentials) throws -> OwnedDescriptor? {
        guard !peer.isRoot else { return nil }
        let access = PeerAccess(peer: peer)
        do {
            if create.shareWorkingDirectory {
                create.workingDirectory = try access.shareableDirectory(create.workingDirectory).path
            }
            guard let image = create.image else { return nil }
            let walk = try access.walk(image, want: PeerAccess.read, what: "--image")
            guard walk.status.st_mode & S_IFMT == S_IFREG else {
                throw PeerAccess.Refusal(description: "--image \(image): a member of the socket group gives an image as a tar of an OCI "
                                         + "image layout; a directory (a root filesystem or a layout) only root may give")
            }
            let held = try PeerAccess.reopen(walk, flags: O_RDONLY)
            create.image = "/proc/self/fd/\(held.raw)"
            return held
        } catch let refusal as PeerAccess.Refusal {
            throw ServiceFailure(Alcub3Exit.notAllowed, refusal.description)
        }
    }

    private func importPolicy(_ request: ServiceRequest, _ connection: ControlConnection) throws {
        let agent = try agentID(request)
        guard let text = request.policyJSON,
              let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
              object["format"] as? String == SandboxExport.formatName else {
            throw ServiceFailure(Alcub3Exit.invalidPolicy, "the file is not an alcub3 sandbox export (see alcub3 sandbox export)")
        }
        let exported: SandboxExport
        do {
            exported = try JSONDecoder().decode(SandboxExport.self, from: Data(text.utf8))
            // The policy goes through the same checks as any policy from outside.
            _ = try SandboxPolicy.fromJSON(try exported.policy.jsonData(), source: "the imported file")
        } catch let error as PolicyError {
            throw ServiceFailure(Alcub3Exit.invalidPolicy, error.description)
        } catch {
            throw ServiceFailure(Alcub3Exit.invalidPolicy, "the imported file is not a valid export: \(error)")
        }
        let resolved = ResolvedPolicy(policy: exported.policy)
        var copy = request
        if copy.command == nil { copy.command = exported.command }
        if copy.workingDirectory == nil { copy.workingDirectory = exported.workingDirectory }
        try startSandbox(agent: agent, resolved: resolved, request: copy, connection: connection)
    }

    private func events(_ request: ServiceRequest, _ connection: ControlConnection) throws {
        var sandboxID: String?
        if let agent = request.agentID {
            guard let record = try manager.store.sandbox(agentID: agent) else {
                throw ServiceFailure(Alcub3Exit.notFound, "no sandbox has agent id '\(agent)'")
            }
            sandboxID = record.sandboxID
        }
        if let kind = request.kind, !["process", "file", "network", "alcub3", "alert"].contains(kind) {
            throw ServiceFailure(Alcub3Exit.usage, "unknown kind '\(kind)': use process, file, network, alcub3 or alert")
        }
        var after = request.afterID ?? 0
        var first = true
        repeat {
            let rows = try manager.store.events(EventFilter(sandboxID: sandboxID, kind: request.kind, sinceNs: request.sinceNs,
                                                            afterID: after, limit: first ? (request.limit ?? 1000) : 1000))
            for row in rows {
                if !connection.send(ServiceMessage(type: .event, json: row.json)) { return }
                after = row.id
            }
            first = false
            if request.follow == true && rows.isEmpty {
                if connection.clientGone { return }
                usleep(200_000)
            }
        } while request.follow == true
        connection.send(.result(["last_id": String(after)]))
    }
}

struct ExecResult: Codable { var exitCode: Int32 }

/// What `sandbox create --dry-run` shows.
struct DryRun: Codable {
    var agentID: String
    var policy: SandboxPolicy
    var limits: ResourceLimits
    var command: [String]
}

/// `sandbox export`: enough to recreate an identical policy under a new agent id.
public struct SandboxExport: Codable, Sendable {
    public static let formatName = "alcub3-sandbox-export/1"
    public var format = SandboxExport.formatName
    public var agentID: String
    public var sandboxID: String
    public var policy: SandboxPolicy
    public var limits: ResourceLimits
    public var command: [String]
    public var workingDirectory: String

    init(record: SandboxRecord) throws {
        guard let policy = try? JSONDecoder().decode(SandboxPolicy.self, from: Data(record.policyJSON.utf8)),
              let details = try? JSONDecoder().decode(SandboxDetails.self, from: Data((record.detailsJSON ?? "").utf8)) else {
            throw ServiceFailure(Alcub3Exit.internalError, "the stored policy of \(record.sandboxID) cannot be read")
        }
        agentID = record.agentID
        sandboxID = record.sandboxID
        self.policy = policy
        limits = details.limits
        command = (try? JSONDecoder().decode([String].self, from: Data(record.commandJSON.utf8))) ?? []
        workingDirectory = details.workingDirectory
    }
}
