#if canImport(Glibc)
import Glibc
#endif
import Foundation
import KernelSupport
import Store
import Telemetry

/// Prometheus text format on a local TCP address (GET /metrics). Loopback
/// only unless configured otherwise; one short-lived thread per scrape.
final class MetricsServer: @unchecked Sendable {
    // @unchecked: `listener` is set once; `stopped` guarded by the kernel (shutdown).
    private let listener: OwnedDescriptor
    private weak var daemon: Daemon?

    init(address: String, daemon: Daemon) throws {
        let parts = address.split(separator: ":")
        guard parts.count == 2, let port = UInt16(parts[1]) else {
            throw ServiceFailure(ExitCodes.usage, "metrics address '\(address)' is not host:port")
        }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        guard inet_pton(AF_INET, String(parts[0]), &addr.sin_addr) == 1 else {
            throw ServiceFailure(ExitCodes.usage, "metrics address '\(address)' is not an IPv4 address and port")
        }
        let fd = OwnedDescriptor(try syscallChecked("socket") { socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) })
        var one: Int32 = 1
        setsockopt(fd.raw, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        try syscallChecked("bind", address) {
            withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd.raw, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        }
        try syscallChecked("listen", address) { listen(fd.raw, 16) }
        listener = fd
        self.daemon = daemon
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    func stop() { shutdown(listener.raw, Int32(SHUT_RDWR)) }

    private func acceptLoop() {
        while true {
            let client = accept(listener.raw, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return
            }
            let fd = OwnedDescriptor(client)
            var request = [UInt8](repeating: 0, count: 4096)
            _ = request.withUnsafeMutableBytes { recv(fd.raw, $0.baseAddress, $0.count, 0) }
            let isMetrics = String(decoding: request.prefix(while: { $0 != 0 }), as: UTF8.self).hasPrefix("GET /metrics")
            let body = isMetrics ? render() : "not found: alcub3 serves /metrics\n"
            let head = "HTTP/1.1 \(isMetrics ? "200 OK" : "404 Not Found")\r\nContent-Type: text/plain; version=0.0.4\r\n"
                + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n"
            var bytes = Array((head + body).utf8)
            _ = bytes.withUnsafeMutableBytes { Glibc.send(fd.raw, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        }
    }

    func render() -> String {
        guard let daemon, let manager = daemon.manager else { return "" }
        var lines: [String] = []
        func metric(_ name: String, _ help: String, _ type: String, _ samples: [(String, Double)]) {
            lines.append("# HELP \(name) \(help)")
            lines.append("# TYPE \(name) \(type)")
            for (labels, value) in samples { lines.append("\(name)\(labels) \(value)") }
        }
        let all = (try? manager.store.sandboxes(states: Set(SandboxState.allCases))) ?? []
        metric("alcub3_sandboxes", "Sandboxes by state.", "gauge",
               SandboxState.allCases.map { state in ("{state=\"\(state.rawValue)\"}", Double(all.filter { $0.state == state }.count)) })
        if let pipeline = daemon.pipeline {
            let stats = pipeline.statistics.withLock { $0 }
            metric("alcub3_events_total", "Events stored since the service started, by kind (rate() gives events/s).", "counter",
                   stats.eventsByKind.sorted { $0.key < $1.key }.map { ("{kind=\"\($0.key)\"}", Double($0.value)) })
            metric("alcub3_syscalls_total", "Syscall records received since the service started.", "counter", [("", Double(stats.syscalls))])
            metric("alcub3_event_stream_dropped_total", "Events the store writer lost because it fell behind.", "counter",
                   [("", Double(pipeline.subscription.dropped))])
            metric("alcub3_store_last_batch_seconds", "Time the last batch took to reach the store (store lag).", "gauge",
                   [("", stats.lastBatchSeconds)])
            metric("alcub3_store_errors_total", "Batches the store refused.", "counter", [("", Double(stats.storeErrors))])
        }
        let alerts = (try? manager.store.alerts(AlertFilter(limit: 100_000)).count) ?? 0
        metric("alcub3_alerts", "Alerts in the store (up to 100,000).", "gauge", [("", Double(alerts))])
        let counters = manager.monitor.counters()
        metric("alcub3_kernel_records_seen_total", "Records the BPF programs wanted to send.", "counter", [("", Double(counters.seen))])
        metric("alcub3_kernel_records_dropped_total", "Records lost because a ring buffer was full.", "counter", [("", Double(counters.dropped))])
        metric("alcub3_uptime_seconds", "Seconds since the service started.", "gauge",
               [("", Double(WallClock.nowUnixNanos() - daemon.startedNs) / 1e9)])
        return lines.joined(separator: "\n") + "\n"
    }
}
