import CAlcub3
import CLibBPF
import Foundation
import KernelSupport
import Synchronization

/// The telemetry pipeline: loads bpf/telemetry.bpf.c, attaches it, keeps the
/// kernel's set of watched sandbox cgroups, and drains both ring buffers on a
/// dedicated thread into one `EventHub`.
///
/// Records are submitted with BPF_RB_NO_WAKEUP and drained with
/// `ring_buffer__consume` every millisecond: a wake-up per event costs the
/// traced process several times more (DESIGN.md), and `ring_buffer__poll`
/// would never wake for NO_WAKEUP records.
public final class TelemetryMonitor: Sendable {
    public let hub = EventHub()
    public let rootCgroupID: UInt64
    /// nil when the programs were adopted from bpffs pins (a restarted service).
    private let object: BPFObject?
    /// True when this monitor took over programs a previous service left attached.
    public let adopted: Bool
    private let sandboxes: BPFMap
    private let countersMap: BPFMap
    private let writeStats: BPFMap
    private let ringFDs: (events: Int32, syscalls: Int32)
    private let entryPrograms: [String]
    private let state = Mutex<ConsumerControl>(ConsumerControl())

    struct ConsumerControl {
        var started = false
        var stopRequested = false
    }
    private let done = DispatchSemaphore(value: 0)

    /// - Parameters:
    ///   - rootCgroupID: cgroup id of alcub3's parent cgroup; sandboxes are its children.
    ///   - rootLevel: level of that parent in the cgroup2 hierarchy.
    ///   - pinDirectory: for the service: maps and links are pinned there, so
    ///     the programs keep recording while the service is down and a restarted
    ///     service adopts them (same object and same parent cgroup) instead of
    ///     loading anew.
    ///   - pinVersionFile: where the pins' version is kept (bpffs holds only pins).
    public init(rootCgroupID: UInt64, rootLevel: UInt32, pinDirectory: String? = nil, pinVersionFile: String? = nil) throws {
        self.rootCgroupID = rootCgroupID
        let image = BPFObjectBytes.decoded(BPFObjectBytes.telemetry)
        let version = "\(Self.fingerprint(image)) root=\(rootCgroupID) level=\(rootLevel)\n"
        let versionFile = pinVersionFile ?? "/run/alcub3/bpf-pins.version"
        if let pinDirectory, let fds = Self.adoptPinned(pinDirectory, version: version, versionFile: versionFile) {
            object = nil
            adopted = true
            entryPrograms = []
            sandboxes = BPFMap(fd: fds["sandboxes"]!, name: "sandboxes")
            countersMap = BPFMap(fd: fds["counters"]!, name: "counters")
            writeStats = BPFMap(fd: fds["write_stats"]!, name: "write_stats")
            ringFDs = (fds["events"]!, fds["syscalls"]!)
            return
        }
        if let pinDirectory { Self.removePins(pinDirectory, versionFile: versionFile) }
        let object = try BPFObject(name: "telemetry", image: image)
        try object.setReadOnlyGlobal("alcub3_root_cgid", to: rootCgroupID)
        try object.setReadOnlyGlobal("alcub3_root_level", to: rootLevel)
        try object.load()
        let programs = object.programs
        let entry = programs.filter { $0.section.hasSuffix("sys_enter") }.map(\.name)
        // Entry records are opt-in per sandbox: their program is attached on demand.
        let always = programs.map(\.name).filter { !entry.contains($0) }
        for name in always { try object.attach(name) }
        if let pinDirectory {
            do {
                try Self.pin(object, programs: always, in: pinDirectory, version: version, versionFile: versionFile)
            } catch {
                Self.removePins(pinDirectory, versionFile: versionFile)
                throw error
            }
        }
        entryPrograms = entry
        self.object = object
        adopted = false
        sandboxes = BPFMap(fd: try object.mapFD("sandboxes"), name: "sandboxes")
        countersMap = BPFMap(fd: try object.mapFD("counters"), name: "counters")
        writeStats = BPFMap(fd: try object.mapFD("write_stats"), name: "write_stats")
        ringFDs = (try object.mapFD("events"), try object.mapFD("syscalls"))
    }

    static let pinnedMaps = ["sandboxes", "counters", "write_stats", "events", "syscalls"]

    /// The counters of the programs pinned in `dir` (a running or stopped
    /// service's), read without loading anything; nil when nothing is pinned there.
    public static func pinnedCounters(_ dir: String) -> (counters: KernelCounters, sandboxes: Int)? {
        let countersFD = bpf_obj_get(dir + "/maps/counters")
        guard countersFD >= 0 else { return nil }
        defer { close(countersFD) }
        let sandboxesFD = bpf_obj_get(dir + "/maps/sandboxes")
        defer { if sandboxesFD >= 0 { close(sandboxesFD) } }
        let counters = BPFMap(fd: countersFD, name: "counters").perCPUValues(as: alcub3_counters.self)
            .reduce(into: KernelCounters()) { sum, c in
                sum.seen += c.seen
                sum.submitted += c.submitted
                sum.dropped += c.dropped
                sum.syscallDropped += c.syscall_dropped
            }
        let watched = sandboxesFD >= 0 ? BPFMap(fd: sandboxesFD, name: "sandboxes").keys(UInt64.self).count : 0
        return (counters, watched)
    }

    /// FNV-1a of the object: which programs a pin directory holds.
    static func fingerprint(_ bytes: [UInt8]) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes { hash = (hash ^ UInt64(b)) &* 0x100_0000_01b3 }
        return String(hash, radix: 16)
    }

    /// Opens the pinned maps when the pins are of this object and parent cgroup.
    static func adoptPinned(_ dir: String, version: String, versionFile: String) -> [String: Int32]? {
        guard (try? FileIO.read(versionFile)) == version else { return nil }
        var fds: [String: Int32] = [:]
        for name in pinnedMaps {
            let fd = bpf_obj_get(dir + "/maps/" + name)
            if fd < 0 {
                fds.values.forEach { close($0) }
                return nil
            }
            fds[name] = fd
        }
        return fds
    }

    static func pin(_ object: BPFObject, programs: [String], in dir: String, version: String, versionFile: String) throws {
        try BPFFilesystem.ensureMounted()
        for sub in ["", "/maps", "/links"] {
            if mkdir(dir + sub, 0o700) != 0 && errno != EEXIST {
                throw SystemError(errno: errno, call: "mkdir", context: dir + sub)
            }
        }
        for name in pinnedMaps { try object.pinMap(name, at: dir + "/maps/" + name) }
        for name in programs { try object.pinLink(name, at: dir + "/links/" + name) }
        try FileIO.write(version, to: versionFile, create: true)
    }

    /// Removes a pin directory: its links detach once no process holds them.
    public static func removePins(_ dir: String, versionFile: String) {
        for sub in ["/links", "/maps"] {
            if let names = try? FileManager.default.contentsOfDirectory(atPath: dir + sub) {
                for name in names { unlink(dir + sub + "/" + name) }
            }
            rmdir(dir + sub)
        }
        unlink(versionFile)
        rmdir(dir)
    }

    /// Options for one watched sandbox.
    public struct WatchOptions: Sendable {
        public var syscalls: Bool
        public var syscallEntry: Bool
        public init(syscalls: Bool = true, syscallEntry: Bool = false) {
            self.syscalls = syscalls
            self.syscallEntry = syscallEntry
        }
    }

    /// Starts sending records for the tasks in this cgroup and its descendants.
    public func watch(sandboxCgroupID: UInt64, options: WatchOptions = WatchOptions()) throws {
        if options.syscallEntry {
            guard let object else {
                throw BPFError(errno: EOPNOTSUPP, operation: "attach syscall entry program",
                               subject: "programs adopted from a previous service; restart the service with no sandbox to reload")
            }
            for name in entryPrograms { try object.attach(name) }
        }
        var config = alcub3_sandbox_config()
        config.flags = (options.syscalls ? UInt32(ALCUB3_SANDBOX_SYSCALLS) : 0)
            | (options.syscallEntry ? UInt32(ALCUB3_SANDBOX_SYSCALL_ENTRY) : 0)
        try sandboxes.update(key: sandboxCgroupID, value: config)
    }

    /// Stops watching and forgets the sandbox's write-volume entries.
    public func unwatch(sandboxCgroupID: UInt64) {
        sandboxes.delete(key: sandboxCgroupID)
        for key in writeStats.keys(UInt64.self) {
            if let stats = writeStats.lookup(key: key, as: alcub3_write_stats.self), stats.sandbox_cgid == sandboxCgroupID {
                writeStats.delete(key: key)
            }
        }
    }

    public var watchedSandboxes: [UInt64] { sandboxes.keys(UInt64.self) }

    /// The ring buffer of process, file and network records: other programs
    /// (the device filter's) send their refusals there, into the same stream.
    public var eventsRingFD: Int32 { ringFDs.events }

    /// The kernel side's counters summed over CPUs.
    public func counters() -> KernelCounters {
        countersMap.perCPUValues(as: alcub3_counters.self).reduce(into: KernelCounters()) { sum, c in
            sum.seen += c.seen
            sum.submitted += c.submitted
            sum.dropped += c.dropped
            sum.syscallDropped += c.syscall_dropped
        }
    }

    /// Starts the consumer thread.
    public func start() throws {
        let consumer = try RingConsumer(eventsFD: ringFDs.events, syscallsFD: ringFDs.syscalls,
                                        hub: hub, writeStats: writeStats, counters: { [unowned self] in self.counters() })
        let thread = Thread { [self] in
            consumer.run(shouldStop: { self.state.withLock { $0.stopRequested } })
            self.done.signal()
        }
        thread.name = "alcub3-telemetry"
        thread.qualityOfService = .userInteractive
        state.withLock { $0.started = true }
        thread.start()
    }

    /// Drains what is left, ends every subscriber's stream and joins the thread.
    public func stop() {
        let wasRunning = state.withLock { s -> Bool in
            defer { s.stopRequested = true }
            return s.started && !s.stopRequested
        }
        if wasRunning { done.wait() }
        hub.finishAll()
    }
}

/// Lives on the consumer thread only; the C callback reaches it through `ctx`.
final class RingConsumer: @unchecked Sendable {
    // @unchecked: every mutable field is touched only by the consumer thread.
    private var ring: OpaquePointer?
    private let hub: EventHub
    private let writeStats: BPFMap
    private let counters: @Sendable () -> KernelCounters
    var pending: [TelemetryEvent] = []
    var malformed = 0
    private var lastWriteBytes: [UInt64: UInt64] = [:]
    private var lastDropped: UInt64 = 0

    init(eventsFD: Int32, syscallsFD: Int32, hub: EventHub, writeStats: BPFMap,
         counters: @escaping @Sendable () -> KernelCounters) throws {
        self.hub = hub
        self.writeStats = writeStats
        self.counters = counters
        let context = Unmanaged.passUnretained(self).toOpaque()
        guard let ring = ring_buffer__new(eventsFD, ringSample, context, nil) else {
            throw BPFError(errno: errno, operation: "ring_buffer__new", subject: "events")
        }
        self.ring = ring
        let rc = ring_buffer__add(ring, syscallsFD, ringSample, context)
        if rc < 0 {
            ring_buffer__free(ring)
            throw BPFError(errno: -rc, operation: "ring_buffer__add", subject: "syscalls")
        }
    }

    deinit { ring_buffer__free(ring) }

    func run(shouldStop: () -> Bool) {
        var lastChecks = DispatchTime.now().uptimeNanoseconds
        var pause: UInt32 = 1000
        while !shouldStop() {
            let consumed = drainOnce()
            let now = DispatchTime.now().uptimeNanoseconds
            if now - lastChecks >= 100_000_000 {
                sweepWriteStats()
                checkDrops()
                flush()
                lastChecks = now
            }
            // 1 ms while records come (polling faster costs the traced tasks more,
            // measured: the ring's cache lines bounce between CPUs); each empty
            // drain doubles the pause up to 8 ms, so an idle service wakes rarely.
            // The 32 MiB syscall ring absorbs about 150 ms at full speed.
            pause = consumed > 0 ? 1000 : min(pause * 2, 8000)
            usleep(pause)
        }
        drainOnce()
        sweepWriteStats()
        checkDrops()
        flush()
    }

    @discardableResult
    private func drainOnce() -> Int32 {
        let consumed = ring_buffer__consume(ring)
        flush()
        return consumed
    }

    private func flush() {
        guard !pending.isEmpty else { return }
        hub.publish(pending)
        pending.removeAll(keepingCapacity: true)
    }

    private func checkDrops() {
        let current = counters()
        if current.dropped > lastDropped {
            pending.append(.drops(current, newlyDropped: current.dropped - lastDropped))
            lastDropped = current.dropped
        }
    }

    /// Reports the growth of each write-volume entry since the last sweep.
    private func sweepWriteStats() {
        for key in writeStats.keys(UInt64.self) {
            guard let stats = writeStats.lookup(key: key, as: alcub3_write_stats.self) else { continue }
            let last = lastWriteBytes[key] ?? 0
            guard stats.bytes != last else { continue }
            let fresh = stats.bytes > last ? stats.bytes - last : stats.bytes
            lastWriteBytes[key] = stats.bytes
            pending.append(.writeVolume(WriteVolumeEvent(
                sandboxCgroupID: stats.sandbox_cgid, pid: Int32(bitPattern: stats.pid), fileID: key,
                totalBytes: stats.bytes, totalWrites: stats.writes, newBytes: fresh)))
        }
    }
}

/// Ring buffer callback: never throws, never exits; a negative return would stop the drain.
private let ringSample: ring_buffer_sample_fn = { context, data, size in
    guard let context, let data else { return 0 }
    let consumer = Unmanaged<RingConsumer>.fromOpaque(context).takeUnretainedValue()
    if !EventDecoder.decode(UnsafeRawBufferPointer(start: data, count: size), into: &consumer.pending) {
        consumer.malformed += 1
    }
    return 0
}
