import Foundation

/// The effective policy a sandbox runs under: what `alcub3 sandbox create
/// --dry-run` shows and `sandbox export` writes. `PolicyConfiguration.sandboxPolicy`
/// makes it; an imported one is checked by the same rules as the configuration.
public struct SandboxPolicy: Sendable, Equatable {
    public var classification: Classification
    public var isolation: IsolationLevel
    /// The network classes the policy was made from ("internet", "intranet",
    /// "classified_network", "air_gapped_only"); `network` is what they allow.
    public var networkAccess: [String]
    public var network: NetworkPolicy
    /// Cores, after the classification's multiplier.
    public var cpuLimit: Double
    /// Bytes, after the classification's multiplier.
    public var memoryLimitBytes: UInt64
    public var pidsLimit: Int
    public var filesystem: FilesystemPolicy
    public var capabilities: [Capability]
    /// Send one telemetry record per syscall (the behavioral analyzer's input).
    public var traceSyscalls: Bool
    /// An OCI / Docker seccomp profile (JSON text) that replaces the filter made
    /// from `allowedSyscalls` (`--seccomp-profile`); nil: that filter.
    public var seccompProfile: String?
    /// What happens on an escape attempt or policy violation, beyond refusing and reporting it.
    public var onViolation: ViolationResponse = .alert

    /// The syscalls the sandbox may make: the base set plus its capabilities' groups.
    public var allowedSyscalls: [String] { Capability.allowedSyscalls(for: capabilities) }

    /// True when the sandbox may reach a network beyond its own loopback.
    public var allowsNetwork: Bool { network.reachesBeyondSandbox }

    /// The policy of the shipped default configuration for `level`.
    public static func builtIn(_ level: Classification) -> SandboxPolicy {
        do {
            return try PolicyConfiguration.shipped.sandboxPolicy(for: level)
        } catch {
            preconditionFailure("the embedded default configuration gives no \(level.rawValue) policy: \(error)")
        }
    }

    /// Pretty JSON with sorted keys, the form of `sandbox export`.
    public func jsonData() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(self)
    }

    /// A policy from `sandbox export`'s JSON, refused with one line when any
    /// value breaks the configuration's rules or does not match its sources.
    public static func fromJSON(_ data: Data, source: String) throws -> SandboxPolicy {
        do {
            return try JSONDecoder().decode(SandboxPolicy.self, from: data)
        } catch let error as PolicyError {
            throw error.located(source: source, line: nil, column: nil)
        } catch let error as DecodingError {
            throw PolicyError(decoding: error, source: source)
        }
    }
}

/// What of the host's filesystem a sandbox sees.
public struct FilesystemPolicy: Sendable, Equatable {
    /// The host's system directories are visible read-only; always true.
    public var readOnlySystem: Bool
    /// Where the sandbox's private writable directory appears inside it.
    public var workspace: String
    /// Its size: a tmpfs of this many bytes; full means ENOSPC inside.
    public var workspaceBytes: UInt64 = 1 << 30
    /// Paths the sandbox cannot see at all.
    public var hiddenPaths: [String]
    /// Extra host paths shown read-only.
    public var readOnlyPaths: [String]

    /// A workspace or read-only path under a hidden one would be hidden or,
    /// mounted on top, reveal part of what was meant to be hidden: refused.
    func checkConsistency() throws {
        for (key, path) in [("workspace", workspace)] + readOnlyPaths.map({ ("read_only_paths", $0) }) {
            if let hider = hiddenPaths.first(where: { PolicyValue.path(path, isWithin: $0) }) {
                throw PolicyError(.invalidValue, "\(key): '\(path)' is inside hidden path '\(hider)'")
            }
        }
    }
}

// MARK: - JSON

extension SandboxPolicy: Codable {
    enum CodingKeys: String, CodingKey, CaseIterable {
        case classification, isolation, network, capabilities, filesystem
        case networkAccess = "network_access"
        case cpuLimit = "cpu_limit"
        case memoryLimitBytes = "memory_limit_bytes"
        case pidsLimit = "pids_limit"
        case traceSyscalls = "trace_syscalls"
        /// Derived from capabilities: written for the reader, checked on import.
        case allowedSyscalls = "allowed_syscalls"
        case seccompProfile = "seccomp_profile"
        case onViolation = "on_violation"
    }

    public init(from decoder: Decoder) throws {
        try rejectUnknownKeys(decoder, known: CodingKeys.allCases.map(\.stringValue))
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let classification = try field(CodingKeys.classification) {
            try Classification.named(container.decode(String.self, forKey: .classification))
        }
        let isolation = try field(CodingKeys.isolation) {
            try IsolationLevel.named(container.decode(String.self, forKey: .isolation))
        }
        let network = try field(CodingKeys.network) { try container.decode(NetworkPolicy.self, forKey: .network) }
        let networkAccess = try container.decode([String].self, forKey: .networkAccess)
        try field(CodingKeys.networkAccess) {
            var destinations: [CIDR] = [], ports: [UInt16] = []
            if case .listed(let cidrs, let listedPorts) = network { (destinations, ports) = (cidrs, listedPorts) }
            let classes = try networkAccess.map(NetworkClass.named)
            guard try NetworkPolicy.resolving(classes, destinations: destinations, ports: ports) == network else {
                throw PolicyError(.invalidValue, "\(networkAccess) does not give the network listed under network; make the two agree")
            }
        }
        let cpuLimit = try container.decode(Double.self, forKey: .cpuLimit)
        try field(CodingKeys.cpuLimit) {
            guard try Quantity.millicores(String(cpuLimit)) >= DefaultPolicy.minimumMillicores else {
                throw PolicyError(.invalidValue, "\(cpuLimit) is below the 0.01 cores a cgroup can enforce")
            }
        }
        let memoryLimitBytes = try container.decode(UInt64.self, forKey: .memoryLimitBytes)
        try field(CodingKeys.memoryLimitBytes) {
            guard (DefaultPolicy.minimumBytes...Quantity.maximumBytes).contains(memoryLimitBytes) else {
                throw PolicyError(.invalidValue, "\(memoryLimitBytes) is outside 1MiB to 1PiB")
            }
        }
        let pidsLimit = try field(CodingKeys.pidsLimit) { try PolicyValue.pidsLimit(container.decode(Int.self, forKey: .pidsLimit)) }
        let filesystem = try field(CodingKeys.filesystem) { try container.decode(FilesystemPolicy.self, forKey: .filesystem) }
        let capabilities = try field(CodingKeys.capabilities) {
            try container.decode([String].self, forKey: .capabilities).map(Capability.named)
        }
        self.init(classification: classification, isolation: isolation, networkAccess: networkAccess, network: network,
                  cpuLimit: cpuLimit, memoryLimitBytes: memoryLimitBytes, pidsLimit: pidsLimit, filesystem: filesystem,
                  capabilities: capabilities, traceSyscalls: try container.decode(Bool.self, forKey: .traceSyscalls))
        seccompProfile = try container.decodeIfPresent(String.self, forKey: .seccompProfile)
        onViolation = try field(CodingKeys.onViolation) {
            try container.decodeIfPresent(String.self, forKey: .onViolation).map(ViolationResponse.named) ?? .alert
        }
        if let listed = try container.decodeIfPresent([String].self, forKey: .allowedSyscalls), listed != allowedSyscalls {
            throw PolicyError(.invalidValue, "allowed_syscalls differs from what capabilities \(capabilities.map(\.rawValue)) give in this version of alcub3; change capabilities instead, or remove allowed_syscalls to accept this version's list")
        }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(classification, forKey: .classification)
        try container.encode(isolation, forKey: .isolation)
        try container.encode(networkAccess, forKey: .networkAccess)
        try container.encode(network, forKey: .network)
        try container.encode(cpuLimit, forKey: .cpuLimit)
        try container.encode(memoryLimitBytes, forKey: .memoryLimitBytes)
        try container.encode(pidsLimit, forKey: .pidsLimit)
        try container.encode(filesystem, forKey: .filesystem)
        try container.encode(capabilities, forKey: .capabilities)
        try container.encode(traceSyscalls, forKey: .traceSyscalls)
        try container.encode(allowedSyscalls, forKey: .allowedSyscalls)
        try container.encodeIfPresent(seccompProfile, forKey: .seccompProfile)
        try container.encode(onViolation.rawValue, forKey: .onViolation)
    }
}

extension FilesystemPolicy: Codable {
    enum CodingKeys: String, CodingKey, CaseIterable {
        case workspace
        case workspaceBytes = "workspace_size_bytes"
        case readOnlySystem = "read_only_system"
        case hiddenPaths = "hidden_paths"
        case readOnlyPaths = "read_only_paths"
    }

    public init(from decoder: Decoder) throws {
        try rejectUnknownKeys(decoder, known: CodingKeys.allCases.map(\.stringValue))
        let container = try decoder.container(keyedBy: CodingKeys.self)
        readOnlySystem = try container.decode(Bool.self, forKey: .readOnlySystem)
        guard readOnlySystem else {
            throw PolicyError(.invalidValue, "alcub3 always shows the host's system read-only; set it to true")
                .prefixed(CodingKeys.readOnlySystem.stringValue)
        }
        workspace = try field(CodingKeys.workspace) {
            try PolicyValue.sandboxPath(container.decode(String.self, forKey: .workspace))
        }
        workspaceBytes = try field(CodingKeys.workspaceBytes) {
            let bytes = try container.decodeIfPresent(UInt64.self, forKey: .workspaceBytes) ?? (1 << 30)
            guard (DefaultPolicy.minimumBytes...Quantity.maximumBytes).contains(bytes) else {
                throw PolicyError(.invalidValue, "\(bytes) is outside 1MiB to 1PiB")
            }
            return bytes
        }
        hiddenPaths = try field(CodingKeys.hiddenPaths) {
            try container.decode([String].self, forKey: .hiddenPaths).map(PolicyValue.sandboxPath)
        }
        readOnlyPaths = try field(CodingKeys.readOnlyPaths) {
            try container.decode([String].self, forKey: .readOnlyPaths).map(PolicyValue.sandboxPath)
        }
        try checkConsistency()
    }
}

/// A decoded value whose rule failed, with its key in front of the reason.
func field<T>(_ key: some CodingKey, _ read: () throws -> T) throws -> T {
    do { return try read() } catch let error as PolicyError { throw error.prefixed(key.stringValue) }
}

/// JSON's decoder ignores keys it does not know; an import must not, or a
/// misspelt key would silently keep its default.
func rejectUnknownKeys(_ decoder: Decoder, known: [String]) throws {
    let container = try decoder.container(keyedBy: AnyCodingKey.self)
    let place = decoder.codingPath.isEmpty ? "" : " in \(codingPathText(decoder.codingPath))"
    for key in container.allKeys where !known.contains(key.stringValue) {
        throw PolicyError.unknown("key", key.stringValue, valid: known.sorted(), context: place, kind: .unknownKey)
    }
}

struct AnyCodingKey: CodingKey {
    let stringValue: String
    let intValue: Int?
    init(stringValue: String) { self.stringValue = stringValue; intValue = nil }
    init(intValue: Int) { stringValue = String(intValue); self.intValue = intValue }
}

/// "network.cidrs[0]"
func codingPathText(_ path: [CodingKey]) -> String {
    path.reduce("") { text, key in
        if let index = key.intValue { return text + "[\(index)]" }
        return text.isEmpty ? key.stringValue : text + "." + key.stringValue
    }
}

extension PolicyError {
    /// A JSON decoding failure as one line naming the key.
    public init(decoding error: DecodingError, source: String) {
        func place(_ path: [CodingKey]) -> String { path.isEmpty ? "" : codingPathText(path) + ": " }
        switch error {
        case .keyNotFound(let key, let context):
            self.init(.missingKey, "missing key '\(codingPathText(context.codingPath + [key]))'", source: source)
        case .typeMismatch(_, let context), .valueNotFound(_, let context):
            self.init(.wrongType, "\(place(context.codingPath))\(context.debugDescription)", source: source)
        case .dataCorrupted(let context):
            let underlying = context.underlyingError.map { " (\($0))" } ?? ""
            self.init(.malformedJSON, "\(place(context.codingPath))\(context.debugDescription)\(underlying)", source: source)
        @unknown default:
            self.init(.malformedJSON, "\(error)", source: source)
        }
    }
}
