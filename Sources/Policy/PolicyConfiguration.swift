import Foundation
import Yams

/// The sandbox configuration file (config/sandbox_config.yaml, docs/policy.md):
/// the default policy of each classification level, integrity monitoring,
/// behavioral analysis and the service's own settings.
///
/// Only a complete document becomes a configuration (`parse`); partial
/// documents are `PolicyOverrides` merged onto one. The field values below are
/// placeholders until a document sets them: the real defaults are the shipped
/// YAML, so they live in one place.
public struct PolicyConfiguration: Sendable, Equatable {
    public internal(set) var defaultPolicies = DefaultPolicies()
    public internal(set) var integrityMonitoring = IntegrityMonitoring()
    public internal(set) var behavioralAnalysis = BehavioralAnalysis()
    public internal(set) var service = ServiceConfiguration()

    /// The configuration compiled into alcub3 (`DefaultConfiguration.yaml`).
    /// A test parses the same text, so failing here is a build defect.
    public static let shipped: PolicyConfiguration = {
        do {
            return try parse(DefaultConfiguration.yaml, source: "defaults")
        } catch {
            preconditionFailure("the embedded default configuration is invalid: \(error)")
        }
    }()

    /// A complete configuration: every required key present.
    public static func parse(_ text: String, source: String) throws -> PolicyConfiguration {
        let document = try PolicyOverrides.parse(text, source: source)
        let required = schema.flatMap { $0.missing(document.assigned, $0.name) }
        if let path = required.first {
            throw document.missingKeyError(path)
        }
        try document.values.checkConsistency(source: source)
        return document.values
    }

    /// `defaults` with each file's overrides applied in order (later files win).
    public static func load(defaults: PolicyConfiguration = .shipped, overrides files: [URL]) throws -> PolicyConfiguration {
        try files.reduce(defaults) { configuration, file in
            try configuration.merging(PolicyOverrides.load(contentsOf: file))
        }
    }

    /// This configuration with the keys `overrides` sets replaced; lists are
    /// replaced whole, never appended to.
    public func merging(_ overrides: PolicyOverrides) throws -> PolicyConfiguration {
        var merged = self
        for key in Self.schema { key.merge(overrides.values, &merged, overrides.assigned, key.name) }
        try merged.checkConsistency(source: overrides.source)
        return merged
    }

    /// Refuses what single keys cannot show wrong: a workspace or read-only
    /// path that its own policy hides.
    func checkConsistency(source: String) throws {
        for level in Classification.allCases {
            do {
                try filesystemPolicy(for: defaultPolicies[level]).checkConsistency()
            } catch let error as PolicyError {
                throw error.prefixed("default_policies.\(level.rawValue)").located(source: source, line: nil, column: nil)
            }
        }
    }

    /// The level's filesystem view; hidden besides its own list is what no
    /// sandbox may reach: the service's socket directory and state directory.
    func filesystemPolicy(for policy: DefaultPolicy) -> FilesystemPolicy {
        let hidden = Set(policy.hiddenPaths + [PolicyValue.directory(of: service.socketPath), service.stateDir])
        return FilesystemPolicy(readOnlySystem: true, workspace: policy.workspace, workspaceBytes: policy.workspaceBytes,
                                hiddenPaths: hidden.sorted(), readOnlyPaths: policy.readOnlyPaths)
    }

    /// The effective policy of a sandbox at `classification`: that level's
    /// default policy, its cpu and memory scaled by the level's multiplier,
    /// `isolation` if given (weaker than the level's default only because a
    /// caller asked explicitly), and `capabilities` if given, each of which the
    /// level must permit (nil: the level's own list).
    public func sandboxPolicy(for classification: Classification, isolation: IsolationLevel? = nil,
                              capabilities requested: [Capability]? = nil) throws -> SandboxPolicy {
        let policy = defaultPolicies[classification]
        if let refused = requested?.first(where: { !policy.capabilities.contains($0) }) {
            throw PolicyError(.notPermitted, "capability '\(refused.rawValue)' is not permitted at \(classification.rawValue) (permitted: \(policy.capabilities.map(\.rawValue).joined(separator: ", "))); an operator can permit it in a policy file")
        }
        return SandboxPolicy(
            classification: classification,
            isolation: isolation ?? policy.isolation,
            networkAccess: policy.networkAccess.map(\.rawValue),
            // Validated when the configuration was read, so this cannot fail.
            network: try NetworkPolicy.resolving(policy.networkAccess, destinations: policy.allowedDestinations,
                                                 ports: policy.allowedPorts),
            cpuLimit: Double(classification.scaled(millicores: policy.cpuMillicores)) / 1000,
            memoryLimitBytes: classification.scaled(bytes: policy.memoryLimitBytes),
            pidsLimit: policy.pidsLimit,
            filesystem: filesystemPolicy(for: policy),
            capabilities: Array(Set(requested ?? policy.capabilities)).sorted(),
            traceSyscalls: behavioralAnalysis.enabled, onViolation: policy.onViolation)
    }
}

/// The default policy of each classification level.
public struct DefaultPolicies: Sendable, Equatable {
    var unclassified = DefaultPolicy()
    var confidential = DefaultPolicy()
    var secret = DefaultPolicy()
    var topSecret = DefaultPolicy()

    public subscript(level: Classification) -> DefaultPolicy { self[keyPath: Self.keyPath(level)] }

    static func keyPath(_ level: Classification) -> WritableKeyPath<DefaultPolicies, DefaultPolicy> {
        switch level {
        case .unclassified: return \.unclassified
        case .confidential: return \.confidential
        case .secret: return \.secret
        case .topSecret: return \.topSecret
        }
    }
}

/// One level's entry under `default_policies`, before the level's multiplier.
public struct DefaultPolicy: Sendable, Equatable {
    public internal(set) var isolation: IsolationLevel = .process
    /// Thousandths of a core, so multipliers stay exact.
    var cpuMillicores = 0
    public internal(set) var memoryLimitBytes: UInt64 = 0
    public internal(set) var networkAccess: [NetworkClass] = []
    public internal(set) var pidsLimit = 0
    /// What sandboxes at this level get when they name none, and the most they may ask for.
    public internal(set) var capabilities: [Capability] = []
    public internal(set) var allowedDestinations: [CIDR] = []
    public internal(set) var allowedPorts: [UInt16] = []
    public internal(set) var workspace = ""
    public internal(set) var workspaceBytes: UInt64 = 1 << 30
    public internal(set) var hiddenPaths: [String] = []
    public internal(set) var readOnlyPaths: [String] = []
    public internal(set) var onViolation: ViolationResponse = .alert

    /// Cores before the multiplier.
    public var cpuLimit: Double { Double(cpuMillicores) / 1000 }
}

public struct IntegrityMonitoring: Sendable, Equatable {
    public internal(set) var enabled = false
    public internal(set) var checkInterval = Duration.zero
    public internal(set) var baselineUpdateInterval = Duration.zero
    /// Every how many cycles the whole tree is read again (for changes telemetry could not see).
    public internal(set) var fullRescanEvery = 10
    /// Above 0, at most 1.
    public internal(set) var anomalyThreshold = 0.0
}

public struct BehavioralAnalysis: Sendable, Equatable {
    public internal(set) var enabled = false
    public internal(set) var observationWindow = Duration.zero
    /// How often the analyzer scores what happened (after the observation window).
    public internal(set) var analysisWindow = Duration.zero
    public internal(set) var mlModel = ""
    public internal(set) var sensitivity = Sensitivity.high
}

public enum Sensitivity: String, NamedCase, Codable {
    case low, medium, high

    public static let noun = "sensitivity"
}

/// The `service:` section: how `alcub3 daemon` is reached and keeps its state.
public struct ServiceConfiguration: Sendable, Equatable {
    public internal(set) var socketPath = ""
    /// A group whose members may use the socket besides root; nil: root only.
    public internal(set) var socketGroup: String?
    /// The Ed25519 key baselines are signed with, when the operator gives one;
    /// nil: the service's own, STATE_DIR/baseline.key.
    public internal(set) var baselineKey: String?
    public internal(set) var stateDir = ""
    public internal(set) var metricsAddress = ListenAddress(host: "", port: 0)
    public internal(set) var retention = Retention()
    /// The first bytes of a service sandbox's stdout and stderr kept in its output.log.
    public internal(set) var outputLimitBytes: UInt64 = 16 << 20
}

public struct Retention: Sendable, Equatable {
    public internal(set) var maxAge = Duration.zero
    public internal(set) var maxSizeBytes: UInt64 = 0
}

/// A partial configuration from a `--policy-file`: the same schema, only the
/// keys to change. Every value is checked as it is read.
public struct PolicyOverrides: Sendable {
    public let source: String
    /// Values for the keys in `assigned`; the other fields are placeholders.
    let values: PolicyConfiguration
    let assigned: Set<String>
    let mappingPositions: [String: Position]

    /// The dotted keys this document sets, e.g. "sandbox_configuration.default_policies.SECRET.memory_limit".
    public var keys: [String] { assigned.sorted() }

    public static func parse(_ text: String, source: String) throws -> PolicyOverrides {
        guard let root = try DocumentReader.compose(text, source: source) else {
            throw PolicyError(.invalidValue, "the file holds no settings; write the keys to change, as in config/sandbox_config.yaml", source: source)
        }
        var reader = DocumentReader(source: source)
        var values = PolicyConfiguration()
        try readMapping(root, into: &values, keys: PolicyConfiguration.schema, reader: &reader, path: "",
                        noun: ("top-level key", .unknownKey))
        return PolicyOverrides(source: source, values: values, assigned: reader.assigned,
                               mappingPositions: reader.mappingPositions)
    }

    /// Reads a policy file: at most 1 MiB of UTF-8 YAML.
    public static func load(contentsOf url: URL) throws -> PolicyOverrides {
        let source = url.isFileURL ? url.relativePath : url.absoluteString
        func refuse(_ why: String) -> PolicyError { PolicyError(.unreadableFile, "policy file '\(printable(source))' \(why)") }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) else { throw refuse("does not exist") }
        guard !isDirectory.boolValue else { throw refuse("is a directory") }
        let limit = 1 << 20
        let data: Data
        do {
            let handle = try FileHandle(forReadingFrom: url)
            defer { try? handle.close() }
            data = try handle.read(upToCount: limit + 1) ?? Data()
        } catch {
            throw refuse("cannot be read: \(error.localizedDescription)")
        }
        guard data.count <= limit else { throw refuse("is larger than 1 MiB; a policy file is a few lines of YAML") }
        guard let text = String(validating: data, as: UTF8.self) else { throw refuse("is not UTF-8 text") }
        return try parse(text, source: source)
    }

    /// "missing key 'memory_limit' in sandbox_configuration.default_policies.SECRET",
    /// placed at the nearest mapping the document has.
    func missingKeyError(_ path: String) -> PolicyError {
        var components = path.split(separator: ".").map(String.init)
        let key = components.removeLast()
        let parent = components.joined(separator: ".")
        let message = parent.isEmpty ? "missing top-level key '\(key)'" : "missing key '\(key)' in \(parent)"
        while !components.isEmpty, mappingPositions[components.joined(separator: ".")] == nil { components.removeLast() }
        let position = mappingPositions[components.joined(separator: ".")]
        return PolicyError(.missingKey, message, source: source, line: position?.line, column: position?.column)
    }
}

// MARK: - The schema

extension PolicyConfiguration {
    /// Every key of the file, its type and rule; docs/policy.md describes the same table.
    static var schema: [SchemaKey<PolicyConfiguration>] {
        [
            .section("sandbox_configuration", \.self, [
                .section("default_policies", \.defaultPolicies, noun: ("classification", .unknownName),
                         Classification.allCases.map { level in
                             .section(level.rawValue, DefaultPolicies.keyPath(level), DefaultPolicy.schema(for: level))
                         }),
                .section("integrity_monitoring", \.integrityMonitoring, IntegrityMonitoring.schema),
                .section("behavioral_analysis", \.behavioralAnalysis, BehavioralAnalysis.schema),
            ]),
            .section("service", \.service, ServiceConfiguration.schema),
        ]
    }
}

extension DefaultPolicy {
    /// The least a multiplied limit may be: a cgroup cpu quota below 1 ms per
    /// 100 ms period is refused by the kernel, and no process starts in less than 1 MiB.
    static let minimumMillicores = 10
    static let minimumBytes: UInt64 = 1 << 20

    static func schema(for level: Classification) -> [SchemaKey<DefaultPolicy>] {
        let multiplier = "after \(level.rawValue)'s \(level.resourceMultiplier) multiplier"
        return [
            .value("isolation_level", \.isolation) { try IsolationLevel.named(YAMLValue.text($0)) },
            .value("cpu_limit", \.cpuMillicores) { node in
                let millicores = try Quantity.millicores(YAMLValue.text(node))
                let effective = level.scaled(millicores: millicores)
                guard effective >= minimumMillicores else {
                    throw PolicyError(.invalidValue, "\(Double(millicores) / 1000) cores is \(Double(effective) / 1000) \(multiplier), below the 0.01 a cgroup can enforce")
                }
                return millicores
            },
            .value("memory_limit", \.memoryLimitBytes) { node in
                let bytes = try Quantity.bytes(YAMLValue.text(node))
                let effective = level.scaled(bytes: bytes)
                guard effective >= minimumBytes else {
                    throw PolicyError(.invalidValue, "\(bytes) bytes is \(effective) \(multiplier), below the 1MiB a process needs")
                }
                return bytes
            },
            .value("network_access", \.networkAccess) { node in
                let classes = try YAMLValue.list(node) { try NetworkClass.named(YAMLValue.text($0)) }
                try NetworkClass.checkCombination(classes)
                return classes.reduce(into: []) { unique, next in if !unique.contains(next) { unique.append(next) } }
            },
            .value("pids_limit", \.pidsLimit) { try PolicyValue.pidsLimit(YAMLValue.integer($0)) },
            .value("capabilities", \.capabilities) { node in
                Array(Set(try YAMLValue.list(node) { try Capability.named(YAMLValue.text($0)) })).sorted()
            },
            .value("allowed_destinations", \.allowedDestinations) { node in
                try YAMLValue.list(node) { try CIDR(YAMLValue.text($0)) }
            },
            .value("allowed_ports", \.allowedPorts) { node in
                try PolicyValue.ports(YAMLValue.list(node) { try PolicyValue.port(YAMLValue.integer($0)) })
            },
            .value("workspace", \.workspace) { try PolicyValue.sandboxPath(YAMLValue.text($0)) },
            .value("workspace_size", \.workspaceBytes) { node in
                let bytes = try Quantity.bytes(YAMLValue.text(node))
                guard bytes >= minimumBytes else { throw PolicyError(.invalidValue, "\(bytes) bytes is below the 1MiB a workspace needs") }
                return bytes
            },
            .value("hidden_paths", \.hiddenPaths, YAMLValue.paths),
            .value("read_only_paths", \.readOnlyPaths, YAMLValue.paths),
            .value("on_violation", \.onViolation) { try ViolationResponse.named(YAMLValue.text($0)) },
        ]
    }
}

extension IntegrityMonitoring {
    static var schema: [SchemaKey<IntegrityMonitoring>] {
        [
            .value("enabled", \.enabled, YAMLValue.bool),
            .value("check_interval", \.checkInterval, YAMLValue.duration),
            .value("baseline_update_interval", \.baselineUpdateInterval, YAMLValue.duration),
            .value("full_rescan_every", \.fullRescanEvery) { node in
                let cycles = try YAMLValue.integer(node)
                guard (1...1_000_000).contains(cycles) else {
                    throw PolicyError(.invalidValue, "\(cycles) is not a number of cycles from 1 to 1000000")
                }
                return cycles
            },
            .value("anomaly_threshold", \.anomalyThreshold) { node in
                let text = try YAMLValue.text(node)
                guard DecimalNumber(Substring(text)) != nil, let value = Double(text) else {
                    throw PolicyError(.invalidValue, "'\(printable(text))' is not a number; write e.g. 0.8")
                }
                return try PolicyValue.fraction(value)
            },
        ]
    }
}

extension BehavioralAnalysis {
    static var schema: [SchemaKey<BehavioralAnalysis>] {
        [
            .value("enabled", \.enabled, YAMLValue.bool),
            .value("observation_window", \.observationWindow, YAMLValue.duration),
            .value("analysis_window", \.analysisWindow) { node in
                let text = try YAMLValue.text(node)
                let window = try Quantity.duration(text)
                guard window >= .milliseconds(100), window <= .seconds(3600) else {
                    throw PolicyError(.invalidValue, "'\(printable(text))' is not a window from 100ms to 1h")
                }
                return window
            },
            .value("ml_model", \.mlModel) { node in
                let name = try YAMLValue.text(node)
                if let problem = Identifier.validate(name) {
                    throw PolicyError(.invalidValue, "'\(printable(name))' is not a model name: \(problem)")
                }
                return name
            },
            .value("sensitivity", \.sensitivity) { try Sensitivity.named(YAMLValue.text($0)) },
        ]
    }
}

extension ServiceConfiguration {
    static var schema: [SchemaKey<ServiceConfiguration>] {
        [
            .value("socket_path", \.socketPath) { try PolicyValue.socketPath(YAMLValue.text($0)) },
            // null clears a group an earlier file set.
            .value("socket_group", \.socketGroup, required: false) { node in
                YAMLValue.isNull(node) ? nil : try PolicyValue.groupName(YAMLValue.text(node))
            },
            .value("baseline_key", \.baselineKey, required: false) { node in
                YAMLValue.isNull(node) ? nil : try PolicyValue.sandboxPath(YAMLValue.text(node))
            },
            .value("state_dir", \.stateDir) { try PolicyValue.sandboxPath(YAMLValue.text($0)) },
            .value("metrics_address", \.metricsAddress) { try ListenAddress(YAMLValue.text($0)) },
            .section("retention", \.retention, [
                .value("max_age", \.maxAge, YAMLValue.duration),
                .value("max_size", \.maxSizeBytes) { try Quantity.bytes(YAMLValue.text($0)) },
            ]),
            .value("output_limit", \.outputLimitBytes) { try Quantity.bytes(YAMLValue.text($0)) },
        ]
    }
}
