#if canImport(Glibc)
import Glibc
#endif

/// Event times are CLOCK_BOOTTIME (bpf_ktime_get_boot_ns); people read UTC.
public struct WallClock: Sendable {
    /// realtime - boottime, in nanoseconds, taken once.
    public let offsetNanos: Int64

    public init() {
        var real = timespec(), boot = timespec()
        clock_gettime(CLOCK_REALTIME, &real)
        clock_gettime(CLOCK_BOOTTIME, &boot)
        offsetNanos = (Int64(real.tv_sec) - Int64(boot.tv_sec)) * 1_000_000_000 + Int64(real.tv_nsec) - Int64(boot.tv_nsec)
    }

    public func unixNanos(boot: UInt64) -> Int64 { Int64(bitPattern: boot) &+ offsetNanos }

    /// ISO 8601 in UTC with nanoseconds: 2026-11-29T04:24:01.123456789Z.
    public func iso8601(boot: UInt64) -> String { Self.iso8601(unixNanos: unixNanos(boot: boot)) }

    public static func iso8601(unixNanos: Int64) -> String {
        var seconds = time_t(unixNanos / 1_000_000_000)
        let nanos = Int(unixNanos % 1_000_000_000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ v: Int, _ width: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(pad(Int(parts.tm_year) + 1900, 4))-\(pad(Int(parts.tm_mon) + 1, 2))-\(pad(Int(parts.tm_mday), 2))T"
            + "\(pad(Int(parts.tm_hour), 2)):\(pad(Int(parts.tm_min), 2)):\(pad(Int(parts.tm_sec), 2)).\(pad(nanos, 9))Z"
    }

    public static func nowUnixNanos() -> Int64 {
        var real = timespec()
        clock_gettime(CLOCK_REALTIME, &real)
        return Int64(real.tv_sec) * 1_000_000_000 + Int64(real.tv_nsec)
    }
}
