#!/bin/sh
# make bench: builds release binaries and measures alcub3 side by side with the
# tools a user would pick instead; writes docs/benchmarks.md.
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
command -v swift >/dev/null 2>&1 || PATH="/opt/swift/usr/bin:$PATH"
[ "$(id -u)" -eq 0 ] || { echo "make bench needs root (BPF, cgroups)" >&2; exit 77; }
swift build -c release --product alcub3-bench >/dev/null
swift build -c release --product alcub3 >/dev/null
work="$(mktemp -d /tmp/alcub3-bench.XXXXXX)"
mounted_tracefs=""
cleanup() {
    rm -rf "$work"
    if [ -n "$mounted_tracefs" ]; then umount /sys/kernel/tracing 2>/dev/null || true; fi
}
trap cleanup EXIT
cc -O2 -o "$work/getppid_loop" bench/getppid_loop.c
# bpftrace finds tracepoints through tracefs; mount it for the run if it is not there.
if [ ! -d /sys/kernel/tracing/events ]; then
    mount -t tracefs nodev /sys/kernel/tracing && mounted_tracefs=1
fi
.build/release/alcub3-bench "$work/getppid_loop" "$work/telemetry.md" "$root/.build/release/alcub3"
{
    echo "# Benchmarks"
    echo
    echo "Every figure here comes from \`make bench\` (scripts/bench.sh, Sources/alcub3-bench), run as root;"
    echo "rerun it to reproduce. Each table compares alcub3 with the tool a user would pick instead, in one run."
    echo
    cat "$work/telemetry.md"
} > docs/benchmarks.md
echo "wrote docs/benchmarks.md"
