#if canImport(Glibc)
import Glibc
#endif
import Foundation
import KernelSupport
import Enforcement
import Logging
import Policy
import Sandbox
import Store
import Telemetry

/// `alcub3 daemon`: owns the BPF programs, the sandboxes it launched, the
/// store and the event pipeline; serves the CLI on a Unix socket.
public final class Daemon: @unchecked Sendable {
    // @unchecked: set up once in `start`, then read-only; requests run on their own threads.
    public let configuration: ServiceSettings
    /// The configuration sandboxes' policies start from (shipped defaults and --config).
    public let policyConfiguration: PolicyConfiguration
    let log: Logger
    private(set) var manager: SandboxManager!
    private var server: ControlServer!
    private var parentLock: CgroupParentLock!
    private var pipelineTask: Task<Void, Never>?
    private(set) var pipeline: EventPipeline?
    private var metrics: MetricsServer?
    let startedNs = WallClock.nowUnixNanos()

    public init(configuration: ServiceSettings, policyConfiguration: PolicyConfiguration = .shipped, log: Logger) {
        self.configuration = configuration
        self.policyConfiguration = policyConfiguration
        self.log = log
    }

    /// Sets everything up; throws (with nothing left behind) if any part fails.
    public func start() throws {
        guard geteuid() == 0 else { throw ServiceFailure(Alcub3Exit.notAllowed, "alcub3 daemon needs root (BPF, cgroups, namespaces)") }
        try FileManager.default.createDirectory(atPath: configuration.stateDirectory, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        // The audit key is made before the store opens: an existing unkeyed log
        // gets its `audit.keyed` record now, and every later record a MAC.
        let auditKey: AuditKey
        do {
            auditKey = try AuditKey.loadOrCreate(at: configuration.auditKeyPath)
        } catch let refused as SecretFile.Refused {
            throw ServiceFailure(Alcub3Exit.notAllowed, refused.description)
        }
        let log = self.log
        // Each append's head (seq, MAC) goes to the log, the journal under systemd: a
        // copy outside the database that a truncated or rewritten tail can be checked against.
        let store = try EventStore(path: configuration.databasePath, auditKey: auditKey) { record in
            log.notice("audit head", metadata: ["seq": "\(record.seq)", "mac": "\(record.mac ?? "none")", "action": "\(record.action)"])
        }
        let layout = try CgroupLayout.detect()
        parentLock = try CgroupParentLock(layout: layout)
        let monitor = try TelemetryMonitor(rootCgroupID: try FileIO.inode(of: layout.alcub3Root),
                                           rootLevel: layout.alcub3RootLevel, pinDirectory: configuration.pinDirectory,
                                           pinVersionFile: configuration.pinVersionFile)
        log.info("telemetry \(monitor.adopted ? "adopted from" : "loaded and pinned in") \(configuration.pinDirectory)")
        let network = try NetworkEnforcer(rootLevel: layout.alcub3RootLevel, pinDirectory: configuration.pinDirectory + "/net")
        manager = try SandboxManager(configuration: configuration, store: store, monitor: monitor, network: network,
                                     layout: layout, log: log)
        manager.devices = try DeviceFilter(rootLevel: layout.alcub3RootLevel, eventsRingFD: monitor.eventsRingFD,
                                           pinDirectory: configuration.pinDirectory + "/dev")
        manager.anomalyThreshold = policyConfiguration.integrityMonitoring.anomalyThreshold
        manager.integrityWatch.fullRescanEvery = policyConfiguration.integrityMonitoring.fullRescanEvery
        manager.behaviourSettings = BehaviourSettings(policyConfiguration.behavioralAnalysis)
        // BPF-LSM where the kernel allows it; where it refuses, say so once and go on without.
        do {
            manager.lsm = try LSMEnforcer(rootLevel: layout.alcub3RootLevel)
            log.info("BPF-LSM programs loaded and attached")
        } catch {
            log.notice("BPF-LSM not used: \(error); seccomp, Landlock and cgroup BPF carry the policy")
        }
        let pipeline = EventPipeline(manager: manager, log: log)
        self.pipeline = pipeline
        pipelineTask = Task.detached { await pipeline.run() }
        try monitor.start()
        let adopted = try manager.adoptRunningSandboxes(serviceStartNs: startedNs)
        if !adopted.isEmpty { log.info("re-adopted sandboxes: \(adopted.joined(separator: ", "))") }
        _ = try? store.appendAudit(.service, action: "service.start", subject: "alcub3",
                               details: ServiceJSON.encode(["pid": String(getpid()), "adopted": adopted.joined(separator: ",")]))
        server = try ControlServer(path: configuration.socketPath, allowedGroup: configuration.allowedGroup, layout: layout)
        if let address = configuration.metricsAddress {
            do {
                metrics = try MetricsServer(address: address, daemon: self)
            } catch {
                log.warning("metrics endpoint \(address) not started: \(error)")
            }
        }
        startRetention(store)
        startIntegrityCycles()
        manager.startBehaviourWindows()
        log.info("listening on \(configuration.socketPath)")
    }

    /// Validates the sandboxes that have a baseline every `check_interval`
    /// (integrity_monitoring in the configuration; off when disabled).
    private func startIntegrityCycles() {
        let settings = policyConfiguration.integrityMonitoring
        func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }
        let interval = seconds(settings.checkInterval), refresh = seconds(settings.baselineUpdateInterval)
        guard settings.enabled, interval > 0, let manager else { return }
        Thread.detachNewThread {
            while true {
                usleep(UInt32(min(interval, 3600) * 1e6))
                manager.runIntegrityCycle()
                if refresh > 0 { manager.refreshBaselines(olderThan: refresh) }
            }
        }
    }

    /// Applies the configured retention now and every 10 minutes (never to the audit log).
    private func startRetention(_ store: EventStore) {
        let maxAge = configuration.retentionMaxAgeSeconds.map { Int64($0 * 1e9) }
        let maxBytes = configuration.retentionMaxBytes.map { Int64(clamping: $0) }
        guard maxAge != nil || maxBytes != nil else { return }
        let log = self.log
        Thread.detachNewThread {
            while true {
                do {
                    let result = try store.applyRetention(maxAgeNs: maxAge, maxBytes: maxBytes, requester: .service)
                    if result.deletedEvents > 0 { log.info("retention removed \(result.deletedEvents) events") }
                } catch {
                    log.error("retention failed: \(error)")
                }
                sleep(600)
            }
        }
    }

    /// Serves until `stop` (SIGTERM); blocks the calling thread.
    public func serve() {
        let handler = RequestHandler(daemon: self)
        server.serve { request, connection in handler.handle(request, connection) }
    }

    /// Clean shutdown: no new clients, the last events drained into the store.
    /// Running sandboxes keep running, enforced, and their programs stay pinned
    /// for the next service to adopt; with none left, the pins are removed.
    public func stop() {
        server?.shutdown()
        metrics?.stop()
        manager?.monitor.stop()
        if let pipelineTask {
            let done = DispatchSemaphore(value: 0)
            Task.detached { await pipelineTask.value; done.signal() }
            done.wait()
        }
        if let manager, manager.liveSandboxes.isEmpty {
            NetworkEnforcer.removePins(configuration.pinDirectory + "/net")
            DeviceFilter.removePins(configuration.pinDirectory + "/dev")
            TelemetryMonitor.removePins(configuration.pinDirectory, versionFile: configuration.pinVersionFile)
        }
        _ = try? manager?.store.appendAudit(.service, action: "service.stop", subject: "alcub3",
                                        details: ServiceJSON.encode(["sandboxes_left_running": String(manager?.liveSandboxes.count ?? 0)]))
        parentLock?.releaseAndRemoveParentIfUnused()
        log.info("stopped")
    }
}
