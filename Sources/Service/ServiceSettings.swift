import Foundation
import KernelSupport
import Policy
import Store
#if canImport(Glibc)
import Glibc
#endif

/// Where the service keeps its things. Defaults follow the FHS; the tests
/// point them at temporary directories.
public struct ServiceSettings: Sendable, Codable, Equatable {
    public var socketPath: String
    public var stateDirectory: String
    public var pinDirectory: String
    /// A group allowed on the socket besides root (by gid).
    public var allowedGroup: UInt32?
    /// host:port for the Prometheus text endpoint; nil disables it.
    public var metricsAddress: String?
    public var retentionMaxAgeSeconds: Double?
    public var retentionMaxBytes: UInt64?
    /// service.baseline_key: the operator's signing key; nil: STATE_DIR/baseline.key.
    public var baselineKeyPath: String?
    /// service.output_limit: how much of a sandbox's stdout and stderr output.log keeps.
    public var outputLimitBytes: UInt64 = 16 << 20

    public init(socketPath: String = "/run/alcub3/alcub3.sock", stateDirectory: String = "/var/lib/alcub3",
                pinDirectory: String = "/sys/fs/bpf/alcub3", allowedGroup: UInt32? = nil,
                metricsAddress: String? = "127.0.0.1:9464", retentionMaxAgeSeconds: Double? = 7 * 86400,
                retentionMaxBytes: UInt64? = 1 << 30) {
        self.socketPath = socketPath
        self.stateDirectory = stateDirectory
        self.pinDirectory = pinDirectory
        self.allowedGroup = allowedGroup
        self.metricsAddress = metricsAddress
        self.retentionMaxAgeSeconds = retentionMaxAgeSeconds
        self.retentionMaxBytes = retentionMaxBytes
    }

    public var databasePath: String { stateDirectory + "/alcub3.db" }
    /// The audit log's MAC key: outside the database, in the state directory every sandbox has hidden.
    public var auditKeyPath: String { stateDirectory + "/" + AuditKey.fileName }
    /// What no sandbox may see: the socket's directory, the state directory
    /// (database, audit key, the default baseline key), the BPF pins and an
    /// operator's baseline key kept elsewhere.
    public var hiddenPaths: [String] {
        [PathText.parent(of: socketPath), stateDirectory, pinDirectory] + (baselineKeyPath.map { [$0] } ?? [])
    }
    /// Which object and parent cgroup the pins belong to (bpffs itself holds only pins).
    public var pinVersionFile: String { stateDirectory + "/bpf-pins.version" }
    public func sandboxDirectory(_ sandboxID: String) -> String { stateDirectory + "/sandboxes/" + sandboxID }

    /// The `service:` section of the configuration (shipped defaults, then the
    /// file given to `alcub3 daemon --config`), then the environment.
    public static func from(_ policy: PolicyConfiguration) throws -> ServiceSettings {
        let section = policy.service
        var c = locations(of: policy)
        c.outputLimitBytes = section.outputLimitBytes
        c.metricsAddress = section.metricsAddress.port == 0 ? nil : "\(section.metricsAddress.host):\(section.metricsAddress.port)"
        c.retentionMaxAgeSeconds = section.retention.maxAge == .zero ? nil
            : Double(section.retention.maxAge.components.seconds) + Double(section.retention.maxAge.components.attoseconds) / 1e18
        c.retentionMaxBytes = section.retention.maxSizeBytes == 0 ? nil : section.retention.maxSizeBytes
        if let group = section.socketGroup {
            guard let entry = getgrnam(group) else {
                throw ServiceFailure(Alcub3Exit.invalidPolicy, "service.socket_group '\(group)' is not a group on this host")
            }
            c.allowedGroup = entry.pointee.gr_gid
        }
        return c.applyingEnvironment()
    }

    /// Where the service of `policy` keeps its things (socket, state, pins,
    /// baseline key), before the environment: what `alcub3 run` hides, with
    /// the same after the environment (`hiddenPaths(of:)`).
    static func locations(of policy: PolicyConfiguration) -> ServiceSettings {
        var c = ServiceSettings()
        c.socketPath = policy.service.socketPath
        c.stateDirectory = policy.service.stateDir
        c.baselineKeyPath = policy.service.baselineKey
        return c
    }

    /// Every path of an alcub3 service that `policy` and this process's
    /// environment (ALCUB3_SOCKET, ALCUB3_STATE_DIR, ALCUB3_PIN_DIR) point at: the
    /// configured service and the overriding one may both run, and a sandbox
    /// must see neither.
    public static func hiddenPaths(of policy: PolicyConfiguration) -> [String] {
        let configured = locations(of: policy)
        return Array(Set(configured.hiddenPaths + configured.applyingEnvironment().hiddenPaths)).sorted()
    }

    /// Environment overrides (ALCUB3_SOCKET, ALCUB3_STATE_DIR, ALCUB3_PIN_DIR), for tests and side-by-side services.
    public static func fromEnvironment() -> ServiceSettings {
        (try? from(.shipped)) ?? ServiceSettings().applyingEnvironment()
    }

    func applyingEnvironment() -> ServiceSettings {
        let env = ProcessInfo.processInfo.environment
        var c = self
        if let v = env["ALCUB3_SOCKET"], !v.isEmpty { c.socketPath = v }
        if let v = env["ALCUB3_STATE_DIR"], !v.isEmpty { c.stateDirectory = v }
        if let v = env["ALCUB3_PIN_DIR"], !v.isEmpty { c.pinDirectory = v }
        if let v = env["ALCUB3_METRICS"] { c.metricsAddress = v.isEmpty || v == "off" ? nil : v }
        return c
    }
}
