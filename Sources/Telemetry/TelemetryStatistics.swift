import Foundation
import KernelSupport

/// Kernel and stream counters of finished runs, kept in /run (so: since boot)
/// for `alcub3 doctor`, which must be able to say whether records were lost.
public struct TelemetryStatistics: Codable, Sendable, Equatable {
    public var runs: Int = 0
    public var seen: UInt64 = 0
    public var submitted: UInt64 = 0
    public var kernelDropped: UInt64 = 0
    public var streamDropped: UInt64 = 0
    public var lastRun: KernelCounters?
    public var lastRunStreamDropped: UInt64 = 0
    public var lastRunAt: String?

    public static let defaultPath = "/run/alcub3/telemetry-stats.json"

    public init() {}

    public static func load(from path: String = defaultPath) -> TelemetryStatistics? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return try? JSONDecoder().decode(TelemetryStatistics.self, from: data)
    }

    /// Adds one run's counters; the file is replaced atomically under a lock.
    public static func record(_ counters: KernelCounters, streamDropped: Int, path: String = defaultPath) {
        let lockPath = path + ".lock"
        guard let lock = try? OwnedDescriptor(path: lockPath, flags: O_RDWR | O_CREAT, mode: 0o600) else { return }
        flock(lock.raw, LOCK_EX)
        defer { flock(lock.raw, LOCK_UN) }
        var stats = load(from: path) ?? TelemetryStatistics()
        stats.runs += 1
        stats.seen += counters.seen
        stats.submitted += counters.submitted
        stats.kernelDropped += counters.dropped
        stats.streamDropped += UInt64(streamDropped)
        stats.lastRun = counters
        stats.lastRunStreamDropped = UInt64(streamDropped)
        stats.lastRunAt = WallClock.iso8601(unixNanos: WallClock.nowUnixNanos())
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard let data = try? encoder.encode(stats) else { return }
        let temporary = path + ".tmp"
        if FileManager.default.createFile(atPath: temporary, contents: data, attributes: [.posixPermissions: 0o600]) {
            rename(temporary, path)
        }
    }
}
