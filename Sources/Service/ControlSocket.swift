#if canImport(Glibc)
import Glibc
#endif
import CAlcub3
import Foundation
import KernelSupport

/// One connected client: reads its request line, writes message lines.
public final class ControlConnection: @unchecked Sendable {
    // @unchecked: used by one thread at a time (the connection's handler);
    // `send` is serialized by `lock` because streaming helpers may write too.
    public let fd: OwnedDescriptor
    public let peer: PeerCredentials
    private let lock = NSLock()
    private var broken = false

    init(fd: OwnedDescriptor, peer: PeerCredentials) {
        self.fd = fd
        self.peer = peer
    }

    /// Reads one line (the request), at most 4 MiB.
    func readLine() -> String? {
        var buffer = [UInt8]()
        var byte: UInt8 = 0
        while buffer.count < 4 << 20 {
            let n = read(fd.raw, &byte, 1)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return buffer.isEmpty ? nil : String(decoding: buffer, as: UTF8.self) }
            if byte == UInt8(ascii: "\n") { return String(decoding: buffer, as: UTF8.self) }
            buffer.append(byte)
        }
        return nil
    }

    /// Sends one message; returns false once the client has gone.
    @discardableResult
    public func send(_ message: ServiceMessage) -> Bool {
        let line = ServiceJSON.encode(message) + "\n"
        return lock.withLock {
            if broken { return false }
            var bytes = Array(line.utf8)
            var offset = 0
            while offset < bytes.count {
                let n = bytes.withUnsafeMutableBytes { Glibc.send(fd.raw, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { broken = true; return false }
                offset += n
            }
            return true
        }
    }

    /// True when the client closed its end (checked without blocking).
    public var clientGone: Bool {
        var p = pollfd(fd: fd.raw, events: Int16(POLLIN | 0x2000 /* POLLRDHUP */), revents: 0)
        guard poll(&p, 1, 0) > 0 else { return false }
        return p.revents & Int16(0x2000 | POLLHUP | POLLERR) != 0
    }
}

/// Who is on the other end of the socket, from SO_PEERCRED (the kernel's word, not the client's).
public struct PeerCredentials: Sendable, CustomStringConvertible {
    public let pid: Int32
    public let uid: UInt32
    public let gid: UInt32

    public var description: String { "pid \(pid) uid \(uid) gid \(gid)" }

    /// The peer's cgroup v2 path, from /proc/<pid>/cgroup ("0::/path").
    public var cgroupPath: String? {
        guard let text = try? FileIO.read("/proc/\(pid)/cgroup") else { return nil }
        return text.split(separator: "\n").first { $0.hasPrefix("0::") }.map { String($0.dropFirst(3)) }
    }

    /// Supplementary groups, from /proc/<pid>/status.
    public var groups: [UInt32] {
        guard let text = try? FileIO.read("/proc/\(pid)/status"),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("Groups:") }) else { return [] }
        return line.dropFirst("Groups:".count).split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { UInt32($0) }
    }
}

/// The service's listening socket. Only root, or members of one configured
/// group, may connect; a process inside any sandbox never may, whatever its uid.
public final class ControlServer: Sendable {
    public let path: String
    private let listener: OwnedDescriptor
    private let allowedGroup: UInt32?

    public init(path: String, allowedGroup: UInt32?) throws {
        self.path = path
        self.allowedGroup = allowedGroup
        let dir = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        if ServiceClient.isListening(path) {
            throw ServiceFailure(ExitCodes.agentInUse, "another alcub3 service is already listening on \(path)")
        }
        unlink(path)  // a socket file left by a service that died
        let fd = OwnedDescriptor(try syscallChecked("socket", path) { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) })
        var address = try unixAddress(path)
        try syscallChecked("bind", path) {
            withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd.raw, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        }
        try syscallChecked("chmod", path) { chmod(path, allowedGroup == nil ? 0o600 : 0o660) }
        if let allowedGroup { try syscallChecked("chown", path) { chown(path, 0, allowedGroup) } }
        try syscallChecked("listen", path) { listen(fd.raw, 64) }
        listener = fd
    }

    /// Why a peer may not talk to the service, or nil when it may.
    public func refusal(for peer: PeerCredentials) -> String? {
        if let cgroup = peer.cgroupPath, cgroup == "/alcub3" || cgroup.hasPrefix("/alcub3/") {
            return "processes inside a sandbox may not use the alcub3 service"
        }
        if peer.uid == 0 { return nil }
        if let allowedGroup, peer.gid == allowedGroup || peer.groups.contains(allowedGroup) { return nil }
        return "uid \(peer.uid) may not use the alcub3 service (root\(allowedGroup.map { " or group \($0)" } ?? "") only)"
    }

    /// Accepts clients until the listener is shut down; each runs on its own thread.
    public func serve(_ handler: @escaping @Sendable (ServiceRequest, ControlConnection) -> Void) {
        while true {
            let client = accept(listener.raw, nil, nil)
            if client < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return  // shut down
            }
            let fd = OwnedDescriptor(client)
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)  // accept4 is not exported to Swift
            var pid: Int32 = 0, uid: UInt32 = 0, gid: UInt32 = 0
            guard alcub3_peer_credentials(client, &pid, &uid, &gid) == 0 else { continue }
            let connection = ControlConnection(fd: fd, peer: PeerCredentials(pid: pid, uid: uid, gid: gid))
            Thread.detachNewThread { [self] in
                if let why = refusal(for: connection.peer) {
                    connection.send(.error(ExitCodes.notAllowed, why))
                    return
                }
                guard let line = connection.readLine() else { return }
                guard let request = try? JSONDecoder().decode(ServiceRequest.self, from: Data(line.utf8)) else {
                    connection.send(.error(ExitCodes.usage, "the service could not read the request"))
                    return
                }
                handler(request, connection)
            }
        }
    }

    /// Stops accepting (serve returns) and removes the socket file.
    public func shutdown() {
        Glibc.shutdown(listener.raw, Int32(SHUT_RDWR))
        unlink(path)
    }
}

func unixAddress(_ path: String) throws -> sockaddr_un {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
        throw SystemError(errno: ENAMETOOLONG, call: "socket path", context: path)
    }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        for (i, b) in bytes.enumerated() { raw[i] = b }
    }
    return address
}

/// The CLI's side of the socket.
public final class ServiceClient: Sendable {
    private let fd: OwnedDescriptor

    public init(path: String) throws {
        let fd = OwnedDescriptor(try syscallChecked("socket", path) { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) })
        var address = try unixAddress(path)
        try syscallChecked("connect", path) {
            withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd.raw, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        }
        self.fd = fd
    }

    public static func isListening(_ path: String) -> Bool { (try? ServiceClient(path: path)) != nil }

    /// Sends the request and hands each message to `body` until a result or an error.
    public func call(_ request: ServiceRequest, _ body: (ServiceMessage) -> Void) throws {
        let line = ServiceJSON.encode(request) + "\n"
        var bytes = Array(line.utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeMutableBytes { send(fd.raw, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { throw SystemError(errno: errno, call: "send", context: "alcub3 service") }
            offset += n
        }
        var pending = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd.raw, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { throw ServiceFailure(ExitCodes.serviceUnavailable, "the alcub3 service closed the connection") }
            pending.append(contentsOf: chunk[0..<n])
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let lineBytes = pending[..<newline]
                pending.removeSubrange(...newline)
                guard let message = try? JSONDecoder().decode(ServiceMessage.self, from: Data(lineBytes)) else { continue }
                body(message)
                if message.type == .result || message.type == .error { return }
            }
        }
    }
}
