#if canImport(Glibc)
import Glibc
#endif

/// An owned file descriptor: closed exactly once, when the owner goes away.
public final class OwnedDescriptor: Sendable {
    public let raw: Int32

    public init(_ raw: Int32) {
        precondition(raw >= 0)
        self.raw = raw
    }

    /// Opens `path` with O_CLOEXEC always added.
    public convenience init(path: String, flags: Int32, mode: mode_t = 0o600) throws(SystemError) {
        let fd = try syscallChecked("open", path) { open(path, flags | O_CLOEXEC, mode) }
        self.init(fd)
    }

    deinit { close(raw) }

    /// The directory at the absolute `path`, opened one component at a time
    /// from "/" with O_NOFOLLOW: a symlink anywhere on the way (one a sandbox
    /// planted in its workspace) is refused with ELOOP, never followed. With
    /// `create`, missing directories are made with `mode`.
    public static func directoryWithoutSymlinks(_ path: String, create: Bool = false,
                                                mode: mode_t = 0o755) throws(SystemError) -> OwnedDescriptor {
        guard path.hasPrefix("/") else { throw SystemError(errno: EINVAL, call: "open", context: "\(path): not an absolute path") }
        var current = try OwnedDescriptor(path: "/", flags: O_RDONLY | O_DIRECTORY)
        var walked = ""
        for component in path.split(separator: "/") where component != "." {
            let name = String(component)
            walked += "/" + name
            let flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
            var fd = openat(current.raw, name, flags)
            if fd < 0 && errno == ENOENT && create {
                if mkdirat(current.raw, name, mode) != 0 && errno != EEXIST {
                    throw SystemError(errno: errno, call: "mkdirat", context: walked)
                }
                fd = openat(current.raw, name, flags)
            }
            if fd < 0 {
                let code = errno
                // O_DIRECTORY can win over O_NOFOLLOW (ENOTDIR): say plainly it is a symlink.
                var st = stat()
                if fstatat(current.raw, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && (st.st_mode & S_IFMT) == S_IFLNK {
                    throw SystemError(errno: ELOOP, call: "openat", context: "\(walked) is a symlink (not followed)")
                }
                throw SystemError(errno: code, call: "openat", context: walked)
            }
            current = OwnedDescriptor(fd)
        }
        return current
    }
}

public enum FileIO {
    /// Writes every byte to `fd` (a pipe, a socket, a log), retrying on EINTR
    /// and short writes. False when the descriptor fails first (its reader went away).
    @discardableResult
    public static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            offset += n
        }
        return true
    }

    /// Writes a whole string to a file (cgroup and proc knobs take one write).
    public static func write(_ text: String, to path: String, create: Bool = false) throws(SystemError) {
        let fd = try OwnedDescriptor(path: path, flags: create ? O_WRONLY | O_CREAT | O_TRUNC : O_WRONLY)
        var bytes = Array(text.utf8)
        let count = bytes.count
        let written = try syscallChecked("write", path) { bytes.withUnsafeMutableBytes { Glibc.write(fd.raw, $0.baseAddress, count) } }
        if written != count { throw SystemError(errno: EIO, call: "write", context: "\(path): short write") }
    }

    /// Writes `text` to a new file `name` in `directory`, `name` one path
    /// component. O_CREAT|O_EXCL|O_NOFOLLOW: a file or a symlink already at
    /// that name (planted by a sandbox) is never written through; EEXIST instead.
    public static func writeNew(_ text: String, named name: String, in directory: OwnedDescriptor,
                                mode: mode_t = 0o644, context: String = "") throws(SystemError) {
        let subject = context.isEmpty ? name : context
        guard !name.isEmpty, name != ".", name != "..", !name.contains("/") else {
            throw SystemError(errno: EINVAL, call: "openat", context: "\(subject): not a file name")
        }
        let fd = OwnedDescriptor(try syscallChecked("openat", subject) {
            openat(directory.raw, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
        })
        let bytes = Array(text.utf8)
        let complete = bytes.withUnsafeBytes { writeAll(fd.raw, $0) }
        if !complete { throw SystemError(errno: errno == 0 ? EIO : errno, call: "write", context: subject) }
    }

    /// Reads a small file (proc, sysfs, cgroupfs) as text.
    public static func read(_ path: String, limit: Int = 1 << 20) throws(SystemError) -> String {
        let fd = try OwnedDescriptor(path: path, flags: O_RDONLY)
        var data = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while data.count < limit {
            let n = try syscallChecked("read", path) { chunk.withUnsafeMutableBytes { Glibc.read(fd.raw, $0.baseAddress, $0.count) } }
            if n == 0 { break }
            data.append(contentsOf: chunk[0..<n])
        }
        return String(decoding: data, as: UTF8.self)
    }

    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    /// The inode number of a path (for a cgroup2 directory: its cgroup id).
    public static func inode(of path: String) throws(SystemError) -> UInt64 {
        var st = stat()
        try syscallChecked("stat", path) { stat(path, &st) }
        return UInt64(st.st_ino)
    }
}
