#if canImport(Glibc)
import Glibc
#endif

/// CLOCK_BOOTTIME in nanoseconds: the clock of BPF records
/// (bpf_ktime_get_boot_ns), seccomp notices and findings, so they compare.
public func bootClockNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_BOOTTIME, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
