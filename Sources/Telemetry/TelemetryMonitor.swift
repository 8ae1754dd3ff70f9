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
    private let object: BPFObject
    private let sandboxes: BPFMap
    private let countersMap: BPFMap
    private let writeStats: BPFMap
    private let ringFDs: (events: Int32, syscalls: Int32)
    private let entryPrograms: [String]
    private let state = Mutex<ConsumerControl>(ConsumerControl())

    struct ConsumerControl {
        var started = false
        var stopRequested = false
        var stopped = false
    }
    private let done = DispatchSemaphore(value: 0)

    /// - Parameters:
    ///   - rootCgroupID: cgroup id of alcub3's parent cgroup; sandboxes are its children.
    ///   - rootLevel: level of that parent in the cgroup2 hierarchy.
    public init(rootCgroupID: UInt64, rootLevel: UInt32) throws {
        self.rootCgroupID = rootCgroupID
        let object = try BPFObject(name: "telemetry", image: BPFObjectBytes.decoded(BPFObjectBytes.telemetry))
        try object.setReadOnlyGlobal("alcub3_root_cgid", to: rootCgroupID)
        try object.setReadOnlyGlobal("alcub3_root_level", to: rootLevel)
        try object.load()
        let programs = object.programs
        entryPrograms = programs.filter { $0.section.hasSuffix("sys_enter") }.map(\.name)
        // Entry records are opt-in per sandbox: their program is attached on demand.
        for program in programs where !entryPrograms.contains(program.name) {
            try object.attach(program.name)
        }
        self.object = object
        sandboxes = BPFMap(fd: try object.mapFD("sandboxes"), name: "sandboxes")
        countersMap = BPFMap(fd: try object.mapFD("counters"), name: "counters")
        writeStats = BPFMap(fd: try object.mapFD("write_stats"), name: "write_stats")
        ringFDs = (try object.mapFD("events"), try object.mapFD("syscalls"))
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
        var idleRounds = 0
        while !shouldStop() {
            let consumed = drainOnce()
            let now = DispatchTime.now().uptimeNanoseconds
            if now - lastChecks >= 100_000_000 {
                sweepWriteStats()
                checkDrops()
                flush()
                lastChecks = now
            }
            idleRounds = consumed > 0 ? 0 : idleRounds + 1
            // 1 ms while busy; 5 ms after a second of silence, to keep an idle service cheap.
            usleep(idleRounds > 1000 ? 5000 : 1000)
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
    if let event = EventDecoder.decode(UnsafeRawBufferPointer(start: data, count: size)) {
        consumer.pending.append(event)
    } else {
        consumer.malformed += 1
    }
    return 0
}
