import Foundation
import Testing
@testable import Policy

/// The repository's root, found from this file's path.
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent()

/// "line:column" of the first occurrence of `marker` in `text`, counted like
/// libyaml, moved `skip` characters on (to point past a key at its value).
func position(of marker: String, in text: String, skip: Int = 0) -> String {
    let range = text.range(of: marker)!
    let before = text[..<range.lowerBound]
    let line = before.filter { $0 == "\n" }.count + 1
    let lineStart = before.lastIndex(of: "\n").map { text.index(after: $0) } ?? text.startIndex
    return "\(line):\(text[lineStart..<range.lowerBound].unicodeScalars.count + 1 + skip)"
}

/// A policy file changing one level's keys, written in flow style.
func levelFile(_ level: String, _ body: String) -> String {
    "sandbox_configuration:\n  default_policies:\n    \(level): {\(body)}\n"
}

func parseError(_ text: String, source: String = "custom.yaml") -> PolicyError? {
    do {
        _ = try PolicyOverrides.parse(text, source: source)
        return nil
    } catch {
        return error as? PolicyError
    }
}

@Suite struct ShippedConfigurationTests {
    @Test func embeddedTextIsTheShippedFileByteForByte() throws {
        let file = try Data(contentsOf: repositoryRoot.appendingPathComponent("config/sandbox_config.yaml"))
        #expect(Data(DefaultConfiguration.yaml.utf8) == file,
                "Sources/Policy/DefaultConfiguration.swift differs from config/sandbox_config.yaml: paste the file in again")
    }

    @Test func shippedFileParsesWithThePublishedValues() throws {
        let text = try String(contentsOf: repositoryRoot.appendingPathComponent("config/sandbox_config.yaml"), encoding: .utf8)
        let configuration = try PolicyConfiguration.parse(text, source: "config/sandbox_config.yaml")
        #expect(configuration == PolicyConfiguration.shipped)

        let unclassified = configuration.defaultPolicies[.unclassified]
        #expect(unclassified.isolation == .process)
        #expect(unclassified.cpuLimit == 2.0)
        #expect(unclassified.memoryLimitBytes == 4_000_000_000)
        #expect(unclassified.networkAccess == [.internet, .intranet])
        let confidential = configuration.defaultPolicies[.confidential]
        #expect(confidential.isolation == .container)
        #expect(confidential.cpuLimit == 1.5)
        #expect(confidential.memoryLimitBytes == 3_000_000_000)
        #expect(confidential.networkAccess == [.intranet])
        let secret = configuration.defaultPolicies[.secret]
        #expect(secret.isolation == .vm)
        #expect(secret.cpuLimit == 1.0)
        #expect(secret.memoryLimitBytes == 2_000_000_000)
        #expect(secret.networkAccess == [.classifiedNetwork])
        let topSecret = configuration.defaultPolicies[.topSecret]
        #expect(topSecret.isolation == .hardware)
        #expect(topSecret.cpuLimit == 0.5)
        #expect(topSecret.memoryLimitBytes == 1_000_000_000)
        #expect(topSecret.networkAccess == [.airGappedOnly])
        #expect(!topSecret.capabilities.contains(.network))

        #expect(configuration.integrityMonitoring.enabled)
        #expect(configuration.integrityMonitoring.checkInterval == .seconds(30))
        #expect(configuration.integrityMonitoring.baselineUpdateInterval == .seconds(24 * 3600))
        #expect(configuration.integrityMonitoring.anomalyThreshold == 0.8)
        #expect(configuration.behavioralAnalysis.enabled)
        #expect(configuration.behavioralAnalysis.observationWindow == .seconds(300))
        #expect(configuration.behavioralAnalysis.mlModel == "behavioral_anomaly_v2")
        #expect(configuration.behavioralAnalysis.sensitivity == .high)

        #expect(configuration.service.socketPath == "/run/alcub3/alcub3.sock")
        #expect(configuration.service.socketGroup == nil)
        #expect(configuration.service.stateDir == "/var/lib/alcub3")
        #expect(configuration.service.metricsAddress.description == "127.0.0.1:9464")
        #expect(configuration.service.retention.maxAge == .seconds(7 * 86400))
        #expect(configuration.service.retention.maxSizeBytes == 1_000_000_000)
    }

    @Test func aCompleteConfigurationNeedsEveryRequiredKey() throws {
        let text = DefaultConfiguration.yaml.replacingOccurrences(of: "      memory_limit: \"2GB\"\n", with: "")
        #expect(text != DefaultConfiguration.yaml)
        let error = #expect(throws: PolicyError.self) { try PolicyConfiguration.parse(text, source: "site.yaml") }
        // Placed at the SECRET mapping, whose first key follows the SECRET: line.
        let secretStart = position(of: "isolation_level: \"vm\"", in: text)
        #expect(error?.description == "site.yaml:\(secretStart): missing key 'memory_limit' in sandbox_configuration.default_policies.SECRET")
        #expect(error?.kind == .missingKey)
    }

    @Test func docsDescribeEveryKey() throws {
        let docs = try String(contentsOf: repositoryRoot.appendingPathComponent("docs/policy.md"), encoding: .utf8)
        let leaves = PolicyConfiguration.schema.flatMap { $0.missing([], $0.name) } + ["service.socket_group"]
        for path in leaves {
            let key = String(path.split(separator: ".").last!)
            let mentioned = docs.contains("`\(key)`")
            #expect(mentioned, "docs/policy.md does not mention `\(key)`")
        }
        let words = Set(docs.split(whereSeparator: { !($0.isLetter || $0.isNumber || $0 == "_") }).map(String.init))
        for capability in Capability.allCases {
            let mentioned = docs.contains("**`\(capability.rawValue)`**")
            #expect(mentioned, "docs/policy.md has no section for `\(capability.rawValue)`")
        }
        let listed = Capability.baseSyscalls + Capability.allCases.flatMap(\.syscalls)
        #expect(Set(listed).subtracting(words).isEmpty, "docs/policy.md does not list \(Set(listed).subtracting(words).sorted())")
    }
}

/// One bad document and the exact line alcub3 answers it with.
struct BadInput: Sendable, CustomTestStringConvertible {
    let yaml: String
    let expected: String
    let kind: PolicyError.Kind
    var testDescription: String { expected }

    /// `marker` locates the error (`skip` characters into it); "custom.yaml:L:C: "
    /// is put in front of `message`.
    init(_ yaml: String, at marker: String, skip: Int = 0, _ message: String, _ kind: PolicyError.Kind) {
        self.yaml = yaml
        self.expected = "custom.yaml:" + position(of: marker, in: yaml, skip: skip) + ": " + message
        self.kind = kind
    }

    /// A value under SECRET, located at the value.
    static func secret(_ key: String, _ value: String, _ message: String, _ kind: PolicyError.Kind = .invalidValue) -> BadInput {
        BadInput(levelFile("SECRET", "\(key): \(value)"), at: "\(key): \(value)", skip: key.count + 2, "\(key): \(message)", kind)
    }

    static func section(_ section: String, _ key: String, _ value: String, _ message: String,
                        _ kind: PolicyError.Kind = .invalidValue) -> BadInput {
        let yaml = section == "service"
            ? "service: {\(key): \(value)}\n" : "sandbox_configuration:\n  \(section): {\(key): \(value)}\n"
        return BadInput(yaml, at: "\(key): \(value)", skip: key.count + 2, "\(key): \(message)", kind)
    }
}

@Suite struct BadInputTests {
    static let documents: [BadInput] = [
        // Keys
        BadInput(levelFile("SECRET", "isolation_level: vm, memroy_limit: 2GB"), at: "memroy_limit",
                 "unknown key 'memroy_limit' in sandbox_configuration.default_policies.SECRET; did you mean 'memory_limit'?", .unknownKey),
        BadInput("sandbox_configuration:\n  integrity_monitoring:\n    check_interal: 30s\n", at: "check_interal",
                 "unknown key 'check_interal' in sandbox_configuration.integrity_monitoring; did you mean 'check_interval'?", .unknownKey),
        BadInput("sandbox:\n  default_policies: {}\n", at: "sandbox",
                 "unknown top-level key 'sandbox' (valid: sandbox_configuration, service)", .unknownKey),
        BadInput("service:\n  socket_path: /run/a/a.sock\n  socket_path: /run/b/b.sock\n", at: "socket_path: /run/b",
                 "key 'socket_path' appears twice in service (first at 2:3); keep one", .duplicateKey),
        BadInput(levelFile("COSMIC", "cpu_limit: 1"), at: "COSMIC",
                 "unknown classification 'COSMIC' in sandbox_configuration.default_policies (valid: UNCLASSIFIED, CONFIDENTIAL, SECRET, TOP_SECRET)", .unknownName),
        BadInput(levelFile("secret", "cpu_limit: 1"), at: "secret",
                 "unknown classification 'secret' in sandbox_configuration.default_policies; did you mean 'SECRET'? (valid: UNCLASSIFIED, CONFIDENTIAL, SECRET, TOP_SECRET)", .unknownName),
        // Names from closed sets
        .secret("isolation_level", "vn", "unknown isolation level 'vn'; did you mean 'vm'? (valid: process, container, vm, hardware)", .unknownName),
        .secret("isolation_level", "sandbox", "unknown isolation level 'sandbox' (valid: process, container, vm, hardware)", .unknownName),
        BadInput(levelFile("SECRET", "network_access: [intranet, internt]"), at: "internt",
                 "network_access: unknown network class 'internt'; did you mean 'internet'? (valid: internet, intranet, classified_network, air_gapped_only)", .unknownName),
        BadInput(levelFile("SECRET", "capabilities: [python, netwrok]"), at: "netwrok",
                 "capabilities: unknown capability 'netwrok'; did you mean 'network'? (valid: network, filesystem_write, subprocess, python, jit)", .unknownName),
        .section("behavioral_analysis", "sensitivity", "hgih", "unknown sensitivity 'hgih'; did you mean 'high'? (valid: low, medium, high)", .unknownName),
        // Wrong types
        .secret("memory_limit", "[4GB]", "expected a single value, found a list", .wrongType),
        .secret("network_access", "internet", "expected a list such as [a, b], found 'internet'", .wrongType),
        .secret("pids_limit", "1.5", "expected a whole number, found '1.5'", .wrongType),
        .secret("pids_limit", "many", "expected a whole number, found 'many'", .wrongType),
        .section("integrity_monitoring", "enabled", "\"yes\"", "expected true or false, found 'yes'", .wrongType),
        .section("behavioral_analysis", "enabled", "1", "expected true or false, found '1'", .wrongType),
        BadInput("sandbox_configuration:\n  default_policies: [SECRET]\n", at: "[SECRET]",
                 "sandbox_configuration.default_policies: expected a mapping of keys, found a list", .wrongType),
        BadInput(levelFile("SECRET", "memory_limit: "), at: "}",
                 "memory_limit: no value given", .wrongType),
        // Memory
        .secret("memory_limit", "\"0\"", "'0' is zero; it must be more than zero"),
        .secret("memory_limit", "0GB", "'0GB' is zero; it must be more than zero"),
        .secret("memory_limit", "-1GB", "'-1GB' is negative; it must be more than zero"),
        .secret("memory_limit", "abc", "'abc' is not a size; write e.g. 4GB or 512MiB"),
        .secret("memory_limit", "1.5.2GB", "'1.5.2GB' is not a size; write e.g. 4GB or 512MiB"),
        .secret("memory_limit", "\"4 GB\"", "'4 GB' contains a space; write '4GB'"),
        .secret("memory_limit", "4gb", "unit 'gb' in '4gb': units are case-sensitive; use 'GB'"),
        .secret("memory_limit", "4XB", "unknown unit 'XB' in '4XB': use B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"),
        .secret("memory_limit", "1.0000000001K", "'1.0000000001K' is not a whole number of bytes"),
        .secret("memory_limit", "20000000000GB", "'20000000000GB' is too large"),
        .secret("memory_limit", "99999999999999999999999", "'99999999999999999999999' is too large"),
        .secret("memory_limit", "2000TB", "'2000TB' is more than 1PiB, larger than any host"),
        .secret("memory_limit", "1MB", "1000000 bytes is 600000 after SECRET's 0.6 multiplier, below the 1MiB a process needs"),
        // CPU
        .secret("cpu_limit", "0", "'0' is zero; it must be more than zero"),
        .secret("cpu_limit", "\"-1\"", "'-1' is negative; it must be more than zero"),
        .secret("cpu_limit", "two", "'two' is not a number of cores; write e.g. 2.0 or 0.5"),
        .secret("cpu_limit", "2000", "'2000' is more than 1024 cores"),
        .secret("cpu_limit", "0.0005", "'0.0005' is not a whole number of thousandths of a core"),
        .secret("cpu_limit", "500m", "'500m' is not a number of cores; write a plain number such as 2.0 or 0.5"),
        .secret("cpu_limit", "1e3", "'1e3' is not a number of cores; write a plain number such as 2.0 or 0.5"),
        BadInput(levelFile("TOP_SECRET", "cpu_limit: 0.02"), at: "0.02",
                 "cpu_limit: 0.02 cores is 0.008 after TOP_SECRET's 0.4 multiplier, below the 0.01 a cgroup can enforce", .invalidValue),
        // Other limits
        .secret("pids_limit", "0", "0 must be more than zero"),
        .secret("pids_limit", "-5", "-5 must be more than zero"),
        .secret("pids_limit", "5000000", "5000000 is more than 4194304, the most processes a Linux host can have"),
        BadInput(levelFile("SECRET", "allowed_ports: [443, 0]"), at: "0]", "allowed_ports: port 0 is outside 1 to 65535", .invalidValue),
        BadInput(levelFile("SECRET", "allowed_ports: [70000]"), at: "70000", "allowed_ports: port 70000 is outside 1 to 65535", .invalidValue),
        .section("integrity_monitoring", "anomaly_threshold", "1.5", "1.5 is outside the range above 0 up to 1"),
        .section("integrity_monitoring", "anomaly_threshold", "0", "0.0 is outside the range above 0 up to 1"),
        .section("integrity_monitoring", "anomaly_threshold", ".nan", "'.nan' is not a number; write e.g. 0.8"),
        // Durations
        .section("integrity_monitoring", "check_interval", "0s", "'0s' is zero; it must be more than zero"),
        .section("integrity_monitoring", "check_interval", "30", "'30' has no unit; write e.g. 30s, 30m, 30h or 30d"),
        .section("integrity_monitoring", "check_interval", "30x", "unknown unit 'x' in '30x': use ms, s, m, h or d"),
        .section("behavioral_analysis", "observation_window", "soon", "'soon' is not a duration; write e.g. 30s, 5m, 24h or 7d"),
        .section("behavioral_analysis", "observation_window", "4000d", "'4000d' is more than 3650d"),
        // Networks
        BadInput(levelFile("SECRET", "network_access: []"), at: "[]",
                 "network_access: the list is empty; write [air_gapped_only] for no network", .invalidValue),
        BadInput(levelFile("SECRET", "network_access: [air_gapped_only, internet]"), at: "[air",
                 "network_access: air_gapped_only cannot be combined with other classes; it means no network at all", .invalidValue),
        BadInput(levelFile("SECRET", "network_access: [intranet, classified_network]"), at: "[intranet",
                 "network_access: intranet and classified_network cannot be combined; list the intranet ranges you need in allowed_destinations instead", .invalidValue),
        BadInput(levelFile("SECRET", "allowed_destinations: [10.0.0.0/8, 10.0.0.1/8]"), at: "10.0.0.1",
                 "allowed_destinations: '10.0.0.1/8' has bits set beyond its /8 prefix; did you mean 10.0.0.0/8?", .invalidValue),
        BadInput(levelFile("SECRET", "allowed_destinations: [10.0.0.0/33]"), at: "10.0",
                 "allowed_destinations: '10.0.0.0/33' has prefix length '33'; use 0 to 32", .invalidValue),
        BadInput(levelFile("SECRET", "allowed_destinations: [300.1.2.0/24]"), at: "300",
                 "allowed_destinations: '300.1.2.0/24' is not a network; write e.g. 10.0.0.0/8 or fd00::/8", .invalidValue),
        BadInput(levelFile("SECRET", "allowed_destinations: [\"fd00::/129\"]"), at: "\"fd00",
                 "allowed_destinations: 'fd00::/129' has prefix length '129'; use 0 to 128", .invalidValue),
        // Paths
        .secret("workspace", "work", "'work' is not absolute; write a path starting with /"),
        .secret("workspace", "/", "'/' is the whole filesystem; name a directory or file under it"),
        BadInput(levelFile("SECRET", "hidden_paths: [/etc/shadow, /srv/../etc]"), at: "/srv",
                 "hidden_paths: '/srv/../etc' has a '.' or '..' component; write the path it means plainly", .invalidValue),
        .section("service", "socket_path", "/alcub3.sock",
                 "'/alcub3.sock' is directly in /; put the socket in a directory of its own, such as /run/alcub3"),
        .section("service", "socket_path", "/run/" + String(repeating: "s", count: 110),
                 "'/run/" + String(repeating: "s", count: 75) + "...' is 115 bytes; a Unix socket path has at most 107"),
        .section("service", "state_dir", "var/lib/alcub3", "'var/lib/alcub3' is not absolute; write a path starting with /"),
        // Service
        .section("service", "metrics_address", "localhost:9464",
                 "'localhost:9464' is not an address; write an IP and a port such as 127.0.0.1:9464 or [::1]:9464"),
        .section("service", "metrics_address", "\"::1:9464\"", "'::1:9464': write an IPv6 address in brackets, such as [::1]:9464"),
        .section("service", "metrics_address", "\"127.0.0.1:0\"", "port 0 is outside 1 to 65535"),
        .section("service", "socket_group", "\"-wheel\"", "'-wheel' is not a group name: it contains '-'; use letters, digits, '.', '_' and '-'"),
        .section("behavioral_analysis", "ml_model", "../model", "'../model' is not a model name: it contains '.'; use letters, digits, '.', '_' and '-'"),
    ]

    @Test(arguments: documents)
    func answersWithOneLine(_ input: BadInput) {
        let error = parseError(input.yaml)
        #expect(error?.description == input.expected)
        #expect(error?.kind == input.kind)
        #expect(error.map { !$0.description.contains("\n") } ?? false)
    }

    @Test func malformedYAMLNamesFileLineAndColumn() {
        let unclosed = "sandbox_configuration:\n  default_policies:\n    SECRET: {memory_limit: 2GB\n"
        let error = parseError(unclosed)
        #expect(error?.kind == .malformedYAML)
        #expect(error?.line == 4)
        #expect(error?.description.hasPrefix("custom.yaml:4:1: malformed YAML: did not find expected ',' or '}'") == true)
        #expect(error.map { !$0.description.contains("\n") } ?? false)

        let tab = "service:\n\tsocket_path: /run/a/a.sock\n"
        #expect(parseError(tab)?.description.hasPrefix("custom.yaml:2:1: malformed YAML: found character that cannot start any token") == true)

        let twoDocuments = "service: {}\n---\nservice: {}\n"
        #expect(parseError(twoDocuments)?.kind == .malformedYAML)
        #expect(parseError(twoDocuments)?.line == 2)
    }

    @Test func controlCharactersAreRefusedWithAPosition() {
        let error = parseError("service:\n  state_dir: /var/\u{1}lib\n")
        #expect(error?.kind == .malformedYAML)
        #expect(error?.line == 2)
        #expect(error.map { !$0.description.contains("\n") } ?? false)
    }

    @Test func anEmptyFileIsRefused() {
        #expect(parseError("")?.description == "custom.yaml: the file holds no settings; write the keys to change, as in config/sandbox_config.yaml")
        #expect(parseError("# only a comment\n")?.kind == .invalidValue)
        #expect(parseError("just text\n")?.description == "custom.yaml:1:1: expected a mapping of keys, found 'just text'")
    }

    @Test func aWorkspaceInsideAHiddenPathIsRefused() throws {
        let overrides = try PolicyOverrides.parse(levelFile("CONFIDENTIAL", "workspace: /home/agent"), source: "custom.yaml")
        let error = #expect(throws: PolicyError.self) { try PolicyConfiguration.shipped.merging(overrides) }
        #expect(error?.description == "custom.yaml: default_policies.CONFIDENTIAL: workspace: '/home/agent' is inside hidden path '/home'")

        let stateDir = try PolicyOverrides.parse(levelFile("SECRET", "read_only_paths: [/var/lib/alcub3/models]"), source: "custom.yaml")
        let hidden = #expect(throws: PolicyError.self) { try PolicyConfiguration.shipped.merging(stateDir) }
        #expect(hidden?.description == "custom.yaml: default_policies.SECRET: read_only_paths: '/var/lib/alcub3/models' is inside hidden path '/var/lib/alcub3'")
    }
}

@Suite struct OverrideTests {
    @Test func replacesOnlyTheGivenKeys() throws {
        let text = """
            sandbox_configuration:
              default_policies:
                SECRET:
                  memory_limit: 3GiB
              integrity_monitoring:
                check_interval: 1m
            """
        let overrides = try PolicyOverrides.parse(text, source: "custom.yaml")
        #expect(overrides.keys == [
            "sandbox_configuration.default_policies.SECRET.memory_limit",
            "sandbox_configuration.integrity_monitoring.check_interval",
        ])
        let shipped = PolicyConfiguration.shipped
        let merged = try shipped.merging(overrides)
        #expect(merged.defaultPolicies[.secret].memoryLimitBytes == 3 << 30)
        #expect(merged.integrityMonitoring.checkInterval == .seconds(60))

        // Everything else is as shipped.
        var expected = shipped
        expected.defaultPolicies.secret.memoryLimitBytes = 3 << 30
        expected.integrityMonitoring.checkInterval = .seconds(60)
        #expect(merged == expected)
    }

    @Test func listsAreReplacedWholeAndNullClearsTheSocketGroup() throws {
        let first = try PolicyOverrides.parse("""
            service: {socket_group: alcub3}
            sandbox_configuration:
              default_policies:
                UNCLASSIFIED: {hidden_paths: [/srv]}
            """, source: "a.yaml")
        let merged = try PolicyConfiguration.shipped.merging(first)
        #expect(merged.service.socketGroup == "alcub3")
        #expect(merged.defaultPolicies[.unclassified].hiddenPaths == ["/srv"])
        let cleared = try merged.merging(PolicyOverrides.parse("service: {socket_group: null}", source: "b.yaml"))
        #expect(cleared.service.socketGroup == nil)
    }

    @Test func loadsFilesInOrderLaterWinning() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("alcub3-policy-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let first = directory.appendingPathComponent("first.yaml")
        let second = directory.appendingPathComponent("second.yaml")
        try levelFile("SECRET", "memory_limit: 512MiB, pids_limit: 64").write(to: first, atomically: true, encoding: .utf8)
        try levelFile("SECRET", "memory_limit: 768MiB").write(to: second, atomically: true, encoding: .utf8)

        let configuration = try PolicyConfiguration.load(overrides: [first, second])
        #expect(configuration.defaultPolicies[.secret].memoryLimitBytes == 768 << 20)
        #expect(configuration.defaultPolicies[.secret].pidsLimit == 64)
        #expect(try PolicyConfiguration.load(overrides: []) == .shipped)
    }

    @Test func refusesFilesThatCannotBeRead() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("alcub3-policy-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }

        let missing = directory.appendingPathComponent("nope.yaml")
        let error = #expect(throws: PolicyError.self) { try PolicyConfiguration.load(overrides: [missing]) }
        #expect(error?.description == "policy file '\(missing.path)' does not exist")
        #expect(error?.kind == .unreadableFile)

        let notDirectory = #expect(throws: PolicyError.self) { try PolicyOverrides.load(contentsOf: directory) }
        #expect(notDirectory?.description == "policy file '\(directory.path)' is a directory")

        let binary = directory.appendingPathComponent("binary.yaml")
        try Data([0x73, 0x3a, 0xff, 0xfe]).write(to: binary)
        #expect(throws: PolicyError(.unreadableFile, "policy file '\(binary.path)' is not UTF-8 text")) {
            try PolicyOverrides.load(contentsOf: binary)
        }

        let huge = directory.appendingPathComponent("huge.yaml")
        try Data(repeating: 0x20, count: (1 << 20) + 1).write(to: huge)
        #expect(throws: PolicyError(.unreadableFile, "policy file '\(huge.path)' is larger than 1 MiB; a policy file is a few lines of YAML")) {
            try PolicyOverrides.load(contentsOf: huge)
        }

        let bad = directory.appendingPathComponent("bad.yaml")
        try levelFile("SECRET", "memory_limit: lots").write(to: bad, atomically: true, encoding: .utf8)
        let badError = #expect(throws: PolicyError.self) { try PolicyOverrides.load(contentsOf: bad) }
        #expect(badError?.source == bad.path)
        #expect(badError?.line == 3)
    }
}
