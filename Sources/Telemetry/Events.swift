/// Decoded telemetry records: plain Swift values, no C types, so the analyzers
/// can work on them without importing any C module.

/// Who did it, when, in which sandbox. Carried by every event.
public struct EventOrigin: Sendable, Hashable {
    /// CLOCK_BOOTTIME nanoseconds; `WallClock` turns it into real time.
    public var bootNanos: UInt64
    public var sandboxCgroupID: UInt64
    public var pid: Int32
    public var tid: Int32
    public var uid: UInt32
    public var truncated: Bool

    public init(bootNanos: UInt64, sandboxCgroupID: UInt64, pid: Int32, tid: Int32, uid: UInt32, truncated: Bool = false) {
        self.bootNanos = bootNanos
        self.sandboxCgroupID = sandboxCgroupID
        self.pid = pid
        self.tid = tid
        self.uid = uid
        self.truncated = truncated
    }
}

public struct SyscallEvent: Sendable, Hashable {
    public var origin: EventOrigin
    public var number: Int32
    public var returnValue: Int64
    public var arguments: (UInt64, UInt64, UInt64)
    /// Taken at entry (split mode) rather than at exit with the result.
    public var isEntry: Bool

    public static func == (a: Self, b: Self) -> Bool {
        a.origin == b.origin && a.number == b.number && a.returnValue == b.returnValue && a.isEntry == b.isEntry
            && a.arguments.0 == b.arguments.0 && a.arguments.1 == b.arguments.1 && a.arguments.2 == b.arguments.2
    }
    public func hash(into h: inout Hasher) { h.combine(origin); h.combine(number); h.combine(returnValue) }
}

public enum ProcessActivity: Sendable, Hashable {
    case fork(childPID: Int32, childTID: Int32, isThread: Bool, name: String)
    case exec(filename: String, arguments: [String], parentPID: Int32, effectiveUID: UInt32, name: String)
    case exit(status: Int32, parentPID: Int32, isThread: Bool, name: String)
    case namespaceChange(syscall: Int32, flags: UInt64, fd: Int32, result: Int64)
    case credentialChange(syscall: Int32, result: Int64, uid: UInt32, euid: UInt32, gid: UInt32, egid: UInt32,
                          capEffective: UInt64, capPermitted: UInt64)
}

public struct ProcessEvent: Sendable, Hashable {
    public var origin: EventOrigin
    public var activity: ProcessActivity

    public init(origin: EventOrigin, activity: ProcessActivity) {
        self.origin = origin
        self.activity = activity
    }
}

public enum NetworkOperation: String, Sendable, Hashable {
    case connect, bind, listen, accept, sendto, sendmsg
}

public struct SocketAddress: Sendable, Hashable, CustomStringConvertible {
    public var family: UInt16
    public var address: [UInt8]     // 4 or 16 bytes; empty when unknown
    public var port: UInt16
    public var unixPath: String?

    public static let inet: UInt16 = 2
    public static let inet6: UInt16 = 10
    public static let unix: UInt16 = 1

    public var ip: String? {
        switch family {
        case Self.inet where address.count >= 4:
            return address[0..<4].map(String.init).joined(separator: ".")
        case Self.inet6 where address.count >= 16:
            return Self.formatIPv6(address)
        default: return nil
        }
    }

    public var description: String {
        if let unixPath { return "unix:" + unixPath }
        guard let ip else { return "family \(family)" }
        return family == Self.inet6 ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }

    static func formatIPv6(_ b: [UInt8]) -> String {
        let groups = stride(from: 0, to: 16, by: 2).map { UInt16(b[$0]) << 8 | UInt16(b[$0 + 1]) }
        if groups[0..<5].allSatisfy({ $0 == 0 }) && groups[5] == 0xffff {
            return "::ffff:" + b[12..<16].map(String.init).joined(separator: ".")
        }
        // Compress the longest run of zero groups (RFC 5952).
        var bestStart = -1, bestLength = 0, start = -1
        for i in 0...8 {
            if i < 8 && groups[i] == 0 { if start < 0 { start = i } } else if start >= 0 {
                if i - start > bestLength && i - start > 1 { bestStart = start; bestLength = i - start }
                start = -1
            }
        }
        let hex = groups.map { String($0, radix: 16) }
        if bestStart < 0 { return hex.joined(separator: ":") }
        let head = hex[0..<bestStart].joined(separator: ":")
        let tail = hex[(bestStart + bestLength)...].joined(separator: ":")
        return head + "::" + tail
    }
}

public struct NetworkEvent: Sendable, Hashable {
    public var origin: EventOrigin
    public var operation: NetworkOperation
    public var fd: Int32
    public var result: Int64
    public var socketType: UInt16
    public var proto: UInt16
    public var remote: SocketAddress
    public var local: SocketAddress
}

public enum FileOperation: String, Sendable, Hashable {
    case open, truncate, rename, unlink, mkdir, rmdir, link, symlink, chmod, chown
    /// A read-only open: the sandbox's first of each file, or a refused one
    /// (the kernel keeps the files each sandbox read and reports no repeat).
    case read

    /// Everything but `read` changes the filesystem.
    public var changesFilesystem: Bool { self != .read }
}

public struct FileEvent: Sendable, Hashable {
    public var origin: EventOrigin
    public var operation: FileOperation
    public var syscall: Int32
    public var result: Int64
    public var openFlags: UInt32
    public var mode: UInt32
    public var ownerUID: UInt32
    public var ownerGID: UInt32
    /// Key of the kernel's write-volume entry for a file opened for writing.
    public var fileID: UInt64
    public var path: String
    /// The second path of rename, link and symlink (for symlink: the link itself).
    public var secondPath: String?

    public init(origin: EventOrigin, operation: FileOperation, syscall: Int32, result: Int64, openFlags: UInt32, mode: UInt32,
                ownerUID: UInt32, ownerGID: UInt32, fileID: UInt64, path: String, secondPath: String?) {
        self.origin = origin
        self.operation = operation
        self.syscall = syscall
        self.result = result
        self.openFlags = openFlags
        self.mode = mode
        self.ownerUID = ownerUID
        self.ownerGID = ownerGID
        self.fileID = fileID
        self.path = path
        self.secondPath = secondPath
    }
}

/// Bytes written through one open file, aggregated in the kernel.
public struct WriteVolumeEvent: Sendable, Hashable {
    public var sandboxCgroupID: UInt64
    public var pid: Int32
    public var fileID: UInt64
    public var totalBytes: UInt64
    public var totalWrites: UInt64
    public var newBytes: UInt64
}

/// A device open or mknod the cgroup device filter refused (EPERM).
public struct DeviceEvent: Sendable, Hashable {
    public enum Kind: String, Sendable, Hashable {
        case block, character
    }
    public var origin: EventOrigin
    public var kind: Kind
    public var major: UInt32
    public var minor: UInt32
    /// What was asked: any of "mknod", "read", "write".
    public var access: [String]

    public init(origin: EventOrigin, kind: Kind, major: UInt32, minor: UInt32, access: [String]) {
        self.origin = origin
        self.kind = kind
        self.major = major
        self.minor = minor
        self.access = access
    }

    /// As ls -l shows it: "block 7:0".
    public var device: String { "\(kind == .block ? "block" : "char") \(major):\(minor)" }
}

/// The kernel side's counters, summed over CPUs.
public struct KernelCounters: Sendable, Hashable, Codable {
    public var seen: UInt64
    public var submitted: UInt64
    public var dropped: UInt64
    public var syscallDropped: UInt64

    public init(seen: UInt64 = 0, submitted: UInt64 = 0, dropped: UInt64 = 0, syscallDropped: UInt64 = 0) {
        self.seen = seen
        self.submitted = submitted
        self.dropped = dropped
        self.syscallDropped = syscallDropped
    }
}

public enum TelemetryEvent: Sendable, Hashable {
    case syscall(SyscallEvent)
    case process(ProcessEvent)
    case network(NetworkEvent)
    case file(FileEvent)
    case writeVolume(WriteVolumeEvent)
    /// A device access refused by the cgroup device filter.
    case device(DeviceEvent)
    /// The kernel dropped records (ring buffer full) since the last report: never silent.
    case drops(KernelCounters, newlyDropped: UInt64)

    public var sandboxCgroupID: UInt64? {
        switch self {
        case .syscall(let e): return e.origin.sandboxCgroupID
        case .process(let e): return e.origin.sandboxCgroupID
        case .network(let e): return e.origin.sandboxCgroupID
        case .file(let e): return e.origin.sandboxCgroupID
        case .writeVolume(let e): return e.sandboxCgroupID
        case .device(let e): return e.origin.sandboxCgroupID
        case .drops: return nil
        }
    }
}
