#if canImport(Glibc)
import Glibc
#endif
import CAlcub3
import Foundation
import KernelSupport
import Sandbox
import Synchronization

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

    /// Reads one line (the request), at most 4 MiB, in 64 KiB reads. nil
    /// when the line is longer, or when the client sends nothing before the
    /// receive timeout (SO_RCVTIMEO, set by the server).
    func readLine(limit: Int = 4 << 20) -> String? {
        var buffer = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while buffer.count <= limit {
            let n = chunk.withUnsafeMutableBytes { recv(fd.raw, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { return nil }  // EAGAIN: the receive timeout passed
            if n == 0 { return buffer.isEmpty ? nil : String(decoding: buffer, as: UTF8.self) }
            if let newline = chunk[0..<n].firstIndex(of: UInt8(ascii: "\n")) {
                buffer.append(contentsOf: chunk[0..<newline])
                return buffer.count <= limit ? String(decoding: buffer, as: UTF8.self) : nil
            }
            buffer.append(contentsOf: chunk[0..<n])
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

/// Who is on the other end of the socket, from SO_PEERCRED and SO_PEERGROUPS:
/// the kernel's word about the process that called connect(), taken when it
/// did, not the client's.
public struct PeerCredentials: Sendable, CustomStringConvertible {
    public let pid: Int32
    public let uid: UInt32
    public let gid: UInt32
    /// Supplementary groups at connect time.
    public let groups: [UInt32]

    public init(pid: Int32, uid: UInt32, gid: UInt32, groups: [UInt32] = []) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.groups = groups
    }

    public var description: String { "pid \(pid) uid \(uid) gid \(gid)" }

    /// Root is trusted with every request; anyone else (a member of
    /// service.socket_group) is held to PeerAccess's rules.
    public var isRoot: Bool { uid == 0 }

    public func isMember(of group: UInt32) -> Bool { gid == group || groups.contains(group) }
}

/// The process that connected, pinned by a pidfd: what /proc says about it is
/// believed only if that process is still alive after the reads, so neither
/// an early exit nor a reused pid can stand in for it. Everything that cannot
/// be established refuses the peer (fail closed).
struct PeerProcess {
    /// SO_PEERPIDFD (Linux 6.5) and SO_PEERGROUPS (4.13); Debian's headers lack the first.
    static let peerPidfdOption: Int32 = 77
    static let peerGroupsOption: Int32 = 59

    /// A pidfd of the connecting process. Before Linux 6.5 (ENOPROTOOPT),
    /// pidfd_open on its pid: that could name a process that reused the pid of
    /// a peer which exited before this call, a narrow window the liveness check
    /// does not close. nil when the peer has already exited and been reaped.
    static func pidfd(socket: Int32, pid: Int32) -> OwnedDescriptor? {
        var fd: Int32 = -1
        var length = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(socket, SOL_SOCKET, peerPidfdOption, &fd, &length) == 0 && fd >= 0 { return OwnedDescriptor(fd) }
        guard errno == ENOPROTOOPT, pid > 0 else { return nil }
        let opened = alcub3_pidfd_open(pid)
        return opened >= 0 ? OwnedDescriptor(opened) : nil
    }

    /// The supplementary groups the peer had when it connected.
    static func groups(socket: Int32) -> [UInt32] {
        var groups = [gid_t](repeating: 0, count: 256)
        var length = socklen_t(groups.count * MemoryLayout<gid_t>.size)
        guard getsockopt(socket, SOL_SOCKET, peerGroupsOption, &groups, &length) == 0 else { return [] }
        return Array(groups.prefix(Int(length) / MemoryLayout<gid_t>.size))
    }

    /// A namespace's identity: the device and inode of its nsfs file.
    struct Namespace: Equatable {
        let device: UInt64
        let inode: UInt64

        init?(_ path: String) {
            var st = stat()
            guard stat(path, &st) == 0 else { return nil }
            device = UInt64(st.st_dev)
            inode = UInt64(st.st_ino)
        }
    }

    /// Why the peer is not an unconfined process of the service's own host
    /// view, or nil. `sandboxCgroup` is the parent of every sandbox cgroup as
    /// /proc/<pid>/cgroup names it ("/alcub3": the same relative path in the
    /// cgroup2 tree and, on hybrid and v1 hosts, in each v1 hierarchy).
    static func confinement(pid: Int32, pidfd: OwnedDescriptor?, sandboxCgroup: String,
                            own: (pid: Namespace?, mount: Namespace?)) -> String? {
        let exited = "the process that connected has already exited; the service answers only the process that connects"
        guard pid > 0 else { return "the connecting process is not visible from the service's pid namespace" }
        guard let pidfd else { return exited }
        let cgroups = try? FileIO.read("/proc/\(pid)/cgroup")
        let namespaces = (pid: Namespace("/proc/\(pid)/ns/pid"), mount: Namespace("/proc/\(pid)/ns/mnt"))
        // Only now: if the process still runs, the reads above were about it (its pid cannot have been reused).
        var p = pollfd(fd: pidfd.raw, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, 0) == 0 else { return exited }
        guard let cgroups, let ownPid = own.pid, let ownMount = own.mount,
              let peerPid = namespaces.pid, let peerMount = namespaces.mount else {
            return "the service could not determine where the connecting process runs (cgroup and namespaces)"
        }
        // Lines are "hierarchy:controllers:path"; a v1-only host has no "0::" line, a hybrid one has both.
        let paths = cgroups.split(separator: "\n").compactMap { line in line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false).last }
        guard !paths.isEmpty else { return "the service could not determine the cgroup of the connecting process" }
        for path in paths {
            if path == sandboxCgroup || path.hasPrefix(sandboxCgroup + "/") {
                return "processes inside a sandbox may not use the alcub3 service"
            }
            // Outside the service's cgroup namespace: where it is cannot be told.
            if !path.hasPrefix("/") || path.contains("/..") {
                return "the service could not determine the cgroup of the connecting process (\(path))"
            }
        }
        if peerPid != ownPid || peerMount != ownMount {
            return "processes in another pid or mount namespace than the service's (a sandbox or a container) may not use the alcub3 service"
        }
        return nil
    }
}

/// The service's listening socket. Only root, or members of one configured
/// group, may connect; a process inside any sandbox never may, whatever its uid.
public final class ControlServer: Sendable {
    public let path: String
    private let listener: OwnedDescriptor
    private let allowedGroup: UInt32?
    /// "/alcub3": the sandboxes' parent cgroup, relative to the cgroup roots.
    private let sandboxCgroup: String
    private let ownNamespaces: (pid: PeerProcess.Namespace?, mount: PeerProcess.Namespace?)
    /// How long a client may take to send its request line.
    public static let requestTimeoutSeconds = 5
    /// Connections served at once; more are told so and closed.
    public static let maxConnections = 128
    private let connections = Mutex(0)

    public init(path: String, allowedGroup: UInt32?, layout: CgroupLayout) throws {
        self.path = path
        self.allowedGroup = allowedGroup
        sandboxCgroup = String(layout.alcub3Root.dropFirst(layout.unifiedRoot.count))
        ownNamespaces = (PeerProcess.Namespace("/proc/self/ns/pid"), PeerProcess.Namespace("/proc/self/ns/mnt"))
        let dir = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        if ServiceClient.isListening(path) {
            throw ServiceFailure(Alcub3Exit.agentInUse, "another alcub3 service is already listening on \(path)")
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

    /// Why a peer may not talk to the service, or nil when it may. `process`
    /// is the pidfd taken at accept (PeerProcess.pidfd).
    func refusal(for peer: PeerCredentials, process: OwnedDescriptor?) -> String? {
        if let why = PeerProcess.confinement(pid: peer.pid, pidfd: process, sandboxCgroup: sandboxCgroup, own: ownNamespaces) {
            return why
        }
        if peer.isRoot { return nil }
        if let allowedGroup, peer.isMember(of: allowedGroup) { return nil }
        return "uid \(peer.uid) may not use the alcub3 service (root\(allowedGroup.map { " or group \($0)" } ?? "") only)"
    }

    /// Accepts clients until the listener is shut down; each runs on its own
    /// thread, at most `maxConnections` at once.
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
            // Pinned now, while the socket still names the process that connected.
            let process = PeerProcess.pidfd(socket: client, pid: pid)
            let connection = ControlConnection(fd: fd, peer: PeerCredentials(pid: pid, uid: uid, gid: gid,
                                                                             groups: PeerProcess.groups(socket: client)))
            var timeout = timeval(tv_sec: Self.requestTimeoutSeconds, tv_usec: 0)
            setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            let admitted = connections.withLock { count in
                guard count < Self.maxConnections else { return false }
                count += 1
                return true
            }
            guard admitted else {
                connection.send(.error(Alcub3Exit.serviceUnavailable, "the alcub3 service is serving \(Self.maxConnections) connections; try again"))
                continue
            }
            Thread.detachNewThread { [self] in
                defer { connections.withLock { $0 -= 1 } }
                if let why = refusal(for: connection.peer, process: process) {
                    connection.send(.error(Alcub3Exit.notAllowed, why))
                    return
                }
                guard let line = connection.readLine() else { return }
                guard let request = try? JSONDecoder().decode(ServiceRequest.self, from: Data(line.utf8)) else {
                    connection.send(.error(Alcub3Exit.usage, "the service could not read the request"))
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
            // A refused client is told why and closed before its request is read: the reason is still there to read.
            if n < 0 && (errno == EPIPE || errno == ECONNRESET) { break }
            if n <= 0 { throw SystemError(errno: errno, call: "send", context: "alcub3 service") }
            offset += n
        }
        var pending = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd.raw, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { throw ServiceFailure(Alcub3Exit.serviceUnavailable, "the alcub3 service closed the connection") }
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
