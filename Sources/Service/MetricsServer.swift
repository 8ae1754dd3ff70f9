#if canImport(Glibc)
import Glibc
#endif
import Foundation
import KernelSupport
import Synchronization
import Store
import Telemetry

/// Prometheus text format on a local TCP address (GET /metrics). Loopback
/// only unless configured otherwise. Each scrape runs on its own short-lived
/// thread, at most `maxScrapes` at once, and a client gets `requestSeconds` to
/// send its request line: an idle or slow client cannot stall the others.
final class MetricsServer: @unchecked Sendable {
    // @unchecked: `listener` is set once; `stopped` guarded by the kernel (shutdown).
    private let listener: OwnedDescriptor
    private weak var daemon: Daemon?
    static let maxScrapes = 8
    static let requestSeconds = 2.0
    private let scrapes = Mutex(0)

    init(address: String, daemon: Daemon) throws {
        let parts = address.split(separator: ":")
        guard parts.count == 2, let port = UInt16(parts[1]) else {
            throw ServiceFailure(Alcub3Exit.usage, "metrics address '\(address)' is not host:port")
        }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        guard inet_pton(AF_INET, String(parts[0]), &addr.sin_addr) == 1 else {
            throw ServiceFailure(Alcub3Exit.usage, "metrics address '\(address)' is not an IPv4 address and port")
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
                if errno == EINTR || errno == ECONNABORTED { continue }
                return
            }
            let fd = OwnedDescriptor(client)
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            // The answer too gets a deadline: a client that never reads cannot hold a thread.
            var timeout = timeval(tv_sec: Int(Self.requestSeconds), tv_usec: 0)
            setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            let admitted = scrapes.withLock { count in
                guard count < Self.maxScrapes else { return false }
                count += 1
                return true
            }
            guard admitted else { continue }  // closed at once; a scraper retries
            Thread.detachNewThread { [self] in
                defer { scrapes.withLock { $0 -= 1 } }
                answer(fd)
            }
        }
    }

    /// Reads the request line (within `requestSeconds` in all) and answers it.
    private func answer(_ fd: OwnedDescriptor) {
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(Self.requestSeconds * 1e9)
        var request = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 4096)
        while request.count < 4096 && !request.contains(UInt8(ascii: "\n")) {
            let now = DispatchTime.now().uptimeNanoseconds
            guard now < deadline else { return }
            var p = pollfd(fd: fd.raw, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, Int32((deadline - now) / 1_000_000) + 1)
            if ready < 0 && errno == EINTR { continue }
            guard ready > 0 else { return }
            let n = chunk.withUnsafeMutableBytes { recv(fd.raw, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            request.append(contentsOf: chunk[0..<n])
        }
        let isMetrics = String(decoding: request, as: UTF8.self).hasPrefix("GET /metrics")
        let body = isMetrics ? render() : "not found: alcub3 serves /metrics\n"
        let head = "HTTP/1.1 \(isMetrics ? "200 OK" : "404 Not Found")\r\nContent-Type: text/plain; version=0.0.4\r\n"
            + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n"
        let bytes = Array((head + body).utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd.raw, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }  // gone, or not reading within the deadline
            offset += n
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
        let alerts = (try? manager.store.alertCount()) ?? 0
        metric("alcub3_alerts", "Alerts in the store.", "gauge", [("", Double(alerts))])
        let counters = manager.monitor.counters()
        metric("alcub3_kernel_records_seen_total", "Records the BPF programs wanted to send.", "counter", [("", Double(counters.seen))])
        metric("alcub3_kernel_records_dropped_total", "Records lost because a ring buffer was full.", "counter", [("", Double(counters.dropped))])
        metric("alcub3_uptime_seconds", "Seconds since the service started.", "gauge",
               [("", Double(WallClock.nowUnixNanos() - daemon.startedNs) / 1e9)])
        return lines.joined(separator: "\n") + "\n"
    }
}
