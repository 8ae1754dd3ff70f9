#if canImport(Glibc)
import Glibc
#endif

/// A small file holding a key: a regular file, owned by this process's user,
/// that nobody else can read or write. Used for the baseline signing key and the
/// audit log's MAC key; both live outside the database, in the state directory
/// every sandbox has hidden (or where the operator put them).
public enum SecretFile {
    /// Why an existing key file is not used: it is not a regular file, it is a
    /// symbolic link, or others could read or change it.
    public struct Refused: Error, CustomStringConvertible, Equatable {
        public let description: String
        public init(description: String) { self.description = description }
    }

    /// The file's bytes. Opened with O_NOFOLLOW and checked on the open
    /// descriptor (fstat), so the file checked is the file read.
    /// Throws `Refused` for a lax file, `SystemError` when it cannot be opened or read.
    public static func read(_ path: String, what: String) throws -> [UInt8] {
        // O_NONBLOCK: a FIFO planted at the path must not block the open.
        let raw = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        if raw < 0 {
            if errno == ELOOP { throw Refused(description: "\(path): \(what) is a symbolic link; give the file itself") }
            throw SystemError(errno: errno, call: "open", context: path)
        }
        let fd = OwnedDescriptor(raw)
        var st = stat()
        try syscallChecked("fstat", path) { fstat(fd.raw, &st) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw Refused(description: "\(path): \(what) is not a regular file") }
        guard st.st_mode & 0o077 == 0, st.st_uid == geteuid() else {
            throw Refused(description: "\(path): \(what) is readable by others (mode \(String(st.st_mode & 0o777, radix: 8)), "
                          + "owner \(st.st_uid)); make it 0600 and owned by the service's user")
        }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count < 1 << 16 {
            let n = try syscallChecked("read", path) { chunk.withUnsafeMutableBytes { Glibc.read(fd.raw, $0.baseAddress, $0.count) } }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return bytes
    }

    /// The file's bytes; when there is no file, `contents()` written to a new one
    /// (O_CREAT | O_EXCL | O_NOFOLLOW, mode 0600, fsynced: records made with the
    /// key must not outlive it). Of two processes creating it at once, one
    /// creates and the other reads what it wrote.
    public static func readOrCreate(_ path: String, what: String, contents: () -> [UInt8]) throws -> [UInt8] {
        do {
            return try read(path, what: what)
        } catch let error as SystemError where error.errno == ENOENT {
            // No key yet: made below.
        }
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        if fd < 0 {
            if errno == EEXIST { return try read(path, what: what) }
            throw SystemError(errno: errno, call: "open", context: "\(path) (creating \(what))")
        }
        let owned = OwnedDescriptor(fd)
        let bytes = contents()
        let written = bytes.withUnsafeBytes { FileIO.writeAll(owned.raw, $0) }
        if !written { throw SystemError(errno: errno, call: "write", context: path) }
        try syscallChecked("fsync", path) { fsync(owned.raw) }
        return bytes
    }
}
