import CAlcub3

/// Turns one ring buffer record (laid out by alcub3_events.h) into a Swift
/// event. Records shorter than their kind's struct are refused: the kernel is
/// an input like any other.
public enum EventDecoder {
    /// Decodes one record into `events`: most records are one event, a syscall
    /// batch is many. Returns false for a record that is malformed.
    @discardableResult
    public static func decode(_ record: UnsafeRawBufferPointer, into events: inout [TelemetryEvent]) -> Bool {
        guard record.count >= MemoryLayout<alcub3_header>.size, let base = record.baseAddress else { return false }
        if base.loadUnaligned(fromByteOffset: MemoryLayout<alcub3_header>.offset(of: \.kind)!, as: UInt16.self)
            == UInt16(ALCUB3_KIND_SYSCALL_BATCH.rawValue) {
            return decodeBatch(record, into: &events)
        }
        guard let event = decode(record) else { return false }
        events.append(event)
        return true
    }

    /// A syscall batch: one thread's syscalls, in the order they returned. The
    /// record is cut after its last entry; a count that does not fit the record
    /// is refused whole.
    static func decodeBatch(_ record: UnsafeRawBufferPointer, into events: inout [TelemetryEvent]) -> Bool {
        let base = record.baseAddress!
        let entriesOffset = MemoryLayout<alcub3_syscall_batch>.offset(of: \.entries)!
        guard record.count >= entriesOffset else { return false }
        let header = base.loadUnaligned(as: alcub3_header.self)
        let count = Int(base.loadUnaligned(fromByteOffset: MemoryLayout<alcub3_syscall_batch>.offset(of: \.count)!, as: UInt32.self))
        let stride = MemoryLayout<alcub3_syscall_entry>.size
        guard count >= 1, count <= Int(ALCUB3_SYSCALL_BATCH_MAX), entriesOffset + count * stride <= record.count else { return false }
        var origin = EventOrigin(bootNanos: header.ts_ns, sandboxCgroupID: header.sandbox_cgid,
                                 pid: Int32(bitPattern: header.pid), tid: Int32(bitPattern: header.tid), uid: header.uid)
        for i in 0..<count {
            let e = base.loadUnaligned(fromByteOffset: entriesOffset + i * stride, as: alcub3_syscall_entry.self)
            origin.bootNanos = header.ts_ns &+ UInt64(e.ts_delta)
            events.append(.syscall(SyscallEvent(origin: origin, number: exitNumber(e.nr), returnValue: e.ret,
                                                arguments: (e.args.0, e.args.1, e.args.2), isEntry: false)))
        }
        return true
    }

    /// The number of a completed syscall. rt_sigreturn restores the registers
    /// of the interrupted code and sets orig_ax to -1 so nothing restarts: at
    /// its exit the kernel reports -1, which on x86_64 only it can give.
    @inline(__always)
    static func exitNumber(_ nr: UInt32) -> Int32 {
        let number = Int32(bitPattern: nr)
        return number == -1 ? 15 : number  // __NR_rt_sigreturn
    }

    public static func decode(_ record: UnsafeRawBufferPointer) -> TelemetryEvent? {
        guard record.count >= MemoryLayout<alcub3_header>.size, let base = record.baseAddress else { return nil }
        let header = base.loadUnaligned(as: alcub3_header.self)
        let origin = EventOrigin(
            bootNanos: header.ts_ns, sandboxCgroupID: header.sandbox_cgid,
            pid: Int32(bitPattern: header.pid), tid: Int32(bitPattern: header.tid), uid: header.uid,
            truncated: header.flags & UInt16(ALCUB3_FLAG_TRUNCATED) != 0)
        let isThread = header.flags & UInt16(ALCUB3_FLAG_THREAD) != 0

        func load<T>(_ type: T.Type) -> T? {
            record.count >= MemoryLayout<T>.size ? base.loadUnaligned(as: T.self) : nil
        }
        func string<T>(_ type: T.Type, _ field: PartialKeyPath<T>, length: Int) -> String {
            guard let offset = MemoryLayout<T>.offset(of: field) else { return "" }
            return cString(base + offset, maxLength: length)
        }

        switch Int32(header.kind) {
        case Int32(ALCUB3_KIND_SYSCALL.rawValue), Int32(ALCUB3_KIND_SYSCALL_ENTER.rawValue):
            guard let e = load(alcub3_syscall_event.self) else { return nil }
            let entry = header.kind == UInt16(ALCUB3_KIND_SYSCALL_ENTER.rawValue)
            return .syscall(SyscallEvent(
                origin: origin, number: entry ? Int32(bitPattern: e.nr) : exitNumber(e.nr), returnValue: e.ret,
                arguments: (e.args.0, e.args.1, e.args.2),
                isEntry: entry))

        case Int32(ALCUB3_KIND_FORK.rawValue):
            guard let e = load(alcub3_fork_event.self) else { return nil }
            return .process(ProcessEvent(origin: origin, activity: .fork(
                childPID: Int32(bitPattern: e.child_pid), childTID: Int32(bitPattern: e.child_tid), isThread: isThread,
                name: string(alcub3_fork_event.self, \.comm, length: Int(ALCUB3_COMM_LEN)))))

        case Int32(ALCUB3_KIND_EXEC.rawValue):
            guard let e = load(alcub3_exec_event.self) else { return nil }
            let argvOffset = MemoryLayout<alcub3_exec_event>.offset(of: \.argv)!
            let argvLength = min(Int(e.argv_len), Int(ALCUB3_ARGV_LEN))
            let argvBytes = UnsafeRawBufferPointer(start: base + argvOffset, count: argvLength)
            let arguments = argvBytes.split(separator: 0, omittingEmptySubsequences: false)
                .map { String(decoding: $0, as: UTF8.self) }
            return .process(ProcessEvent(origin: origin, activity: .exec(
                filename: string(alcub3_exec_event.self, \.filename, length: Int(ALCUB3_PATH_LEN)),
                arguments: arguments.last == "" ? Array(arguments.dropLast()) : arguments,
                parentPID: Int32(bitPattern: e.ppid), effectiveUID: e.euid,
                name: string(alcub3_exec_event.self, \.comm, length: Int(ALCUB3_COMM_LEN)))))

        case Int32(ALCUB3_KIND_EXIT.rawValue):
            guard let e = load(alcub3_exit_event.self) else { return nil }
            return .process(ProcessEvent(origin: origin, activity: .exit(
                status: e.exit_code, parentPID: Int32(bitPattern: e.ppid), isThread: isThread,
                name: string(alcub3_exit_event.self, \.comm, length: Int(ALCUB3_COMM_LEN)))))

        case Int32(ALCUB3_KIND_NAMESPACE.rawValue):
            guard let e = load(alcub3_namespace_event.self) else { return nil }
            return .process(ProcessEvent(origin: origin, activity: .namespaceChange(
                syscall: Int32(bitPattern: e.nr), flags: e.flags, fd: e.fd, result: e.ret)))

        case Int32(ALCUB3_KIND_CREDENTIALS.rawValue):
            guard let e = load(alcub3_credentials_event.self) else { return nil }
            return .process(ProcessEvent(origin: origin, activity: .credentialChange(
                syscall: Int32(bitPattern: e.nr), result: e.ret, uid: e.new_uid, euid: e.new_euid,
                gid: e.new_gid, egid: e.new_egid, capEffective: e.cap_effective, capPermitted: e.cap_permitted)))

        case Int32(ALCUB3_KIND_NETWORK.rawValue):
            guard let e = load(alcub3_network_event.self),
                  let operation = networkOperations[e.op] else { return nil }
            let unixPath: String? = e.family == SocketAddress.unix
                ? unixSocketPath(base + MemoryLayout<alcub3_network_event>.offset(of: \.unix_path)!) : nil
            let remote = SocketAddress(family: e.family, address: withUnsafeBytes(of: e.addr) { Array($0) },
                                       port: e.port, unixPath: unixPath)
            let local = SocketAddress(family: e.family, address: withUnsafeBytes(of: e.local_addr) { Array($0) },
                                      port: e.local_port, unixPath: nil)
            return .network(NetworkEvent(origin: origin, operation: operation, fd: e.fd, result: e.ret,
                                         socketType: e.sock_type, proto: e.protocol, remote: remote, local: local))

        case Int32(ALCUB3_KIND_FILE.rawValue):
            guard let e = load(alcub3_file_event.self), let operation = fileOperations[e.op] else { return nil }
            let length = Int(ALCUB3_PATH_LEN)
            let path = joinPath(dir: string(alcub3_file_event.self, \.dir, length: length),
                                name: string(alcub3_file_event.self, \.name, length: length))
            let second = joinPath(dir: string(alcub3_file_event.self, \.dir2, length: length),
                                  name: string(alcub3_file_event.self, \.name2, length: length))
            return .file(FileEvent(origin: origin, operation: operation, syscall: Int32(bitPattern: e.nr),
                                   result: e.ret, openFlags: e.open_flags, mode: e.mode, ownerUID: e.owner_uid,
                                   ownerGID: e.owner_gid, fileID: e.file_id, path: path,
                                   secondPath: second.isEmpty ? nil : second))

        case Int32(ALCUB3_KIND_DEVICE.rawValue):
            guard let e = load(alcub3_device_event.self) else { return nil }
            let kind: DeviceEvent.Kind
            switch e.type {
            case UInt32(ALCUB3_DEVICE_BLOCK): kind = .block
            case UInt32(ALCUB3_DEVICE_CHAR): kind = .character
            default: return nil
            }
            let access = [(ALCUB3_DEVICE_MKNOD, "mknod"), (ALCUB3_DEVICE_READ, "read"), (ALCUB3_DEVICE_WRITE, "write")]
                .filter { e.access & UInt32($0.0) != 0 }.map(\.1)
            return .device(DeviceEvent(origin: origin, kind: kind, major: e.major, minor: e.minor, access: access))
        default:
            return nil
        }
    }

    /// The contract of alcub3_events.h: name if absolute or dir is empty; dir if
    /// name is empty; else dir/name.
    public static func joinPath(dir: String, name: String) -> String {
        if name.hasPrefix("/") || dir.isEmpty { return name }
        if name.isEmpty { return dir }
        return dir.hasSuffix("/") ? dir + name : dir + "/" + name
    }

    static let networkOperations: [UInt32: NetworkOperation] = [
        UInt32(ALCUB3_NET_CONNECT.rawValue): .connect, UInt32(ALCUB3_NET_BIND.rawValue): .bind,
        UInt32(ALCUB3_NET_LISTEN.rawValue): .listen, UInt32(ALCUB3_NET_ACCEPT.rawValue): .accept,
        UInt32(ALCUB3_NET_SENDTO.rawValue): .sendto, UInt32(ALCUB3_NET_SENDMSG.rawValue): .sendmsg,
    ]

    static let fileOperations: [UInt32: FileOperation] = [
        UInt32(ALCUB3_FILE_OPEN.rawValue): .open, UInt32(ALCUB3_FILE_TRUNCATE.rawValue): .truncate,
        UInt32(ALCUB3_FILE_RENAME.rawValue): .rename, UInt32(ALCUB3_FILE_UNLINK.rawValue): .unlink,
        UInt32(ALCUB3_FILE_MKDIR.rawValue): .mkdir, UInt32(ALCUB3_FILE_RMDIR.rawValue): .rmdir,
        UInt32(ALCUB3_FILE_LINK.rawValue): .link, UInt32(ALCUB3_FILE_SYMLINK.rawValue): .symlink,
        UInt32(ALCUB3_FILE_CHMOD.rawValue): .chmod, UInt32(ALCUB3_FILE_CHOWN.rawValue): .chown,
        UInt32(ALCUB3_FILE_READ.rawValue): .read,
    ]

    /// A bounded C string; invalid UTF-8 is repaired, never trusted.
    static func cString(_ pointer: UnsafeRawPointer, maxLength: Int) -> String {
        let bytes = UnsafeRawBufferPointer(start: pointer, count: maxLength)
        let end = bytes.firstIndex(of: 0) ?? maxLength
        return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[0..<end]), as: UTF8.self)
    }

    /// Abstract unix socket names start with NUL; shown with a leading '@'.
    static func unixSocketPath(_ pointer: UnsafeRawPointer) -> String {
        let first = pointer.load(as: UInt8.self)
        if first == 0 {
            let rest = cString(pointer + 1, maxLength: 107)
            return rest.isEmpty ? "" : "@" + rest
        }
        return cString(pointer, maxLength: 108)
    }
}
