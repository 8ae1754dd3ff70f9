#if canImport(Glibc)
import Glibc
#endif
import CAlcub3
import Crypto
import Foundation
import KernelSupport
import Synchronization

/// File hashes by identity (device, inode, size, modification and change
/// times), shared by the captures of one validation cycle so the libc behind
/// every process of a sandbox is read once. Writing a file moves its ctime,
/// which no caller can set back; a change the cache cannot see (a raw write
/// to the block device) still shows in the hash of the mapped pages.
public final class FileHashCache: Sendable {
    struct Key: Hashable, Sendable {
        var device, inode: UInt64
        var size: Int64
        var modified, modifiedNanoseconds, changed, changedNanoseconds: Int

        init(_ st: stat) {
            device = UInt64(st.st_dev)
            inode = UInt64(st.st_ino)
            size = Int64(st.st_size)
            (modified, modifiedNanoseconds) = (st.st_mtim.tv_sec, st.st_mtim.tv_nsec)
            (changed, changedNanoseconds) = (st.st_ctim.tv_sec, st.st_ctim.tv_nsec)
        }
    }

    private let hashes = Mutex<[Key: String]>([:])

    public init() {}

    func hash(_ key: Key) -> String? { hashes.withLock { $0[key] } }
    func store(_ hash: String, for key: Key) { hashes.withLock { $0[key] = hash } }
}

/// Reads another process's pages and the files behind them, for one capture:
/// the buffers are reused from mapping to mapping.
final class ProcessMemoryReader {
    let pid: Int32
    private let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
    /// process_vm_readv reads this much at once; a short read is retried page by page.
    private let chunkSize = 1 << 20
    private var buffer: UnsafeMutableRawBufferPointer
    /// /proc/PID/mem, opened on the first page process_vm_readv refuses.
    private var memory: Int32?

    private let cache: FileHashCache?

    init(pid: Int32, cache: FileHashCache?) {
        self.pid = pid
        self.cache = cache
        buffer = .allocate(byteCount: chunkSize, alignment: Int(sysconf(Int32(_SC_PAGESIZE))))
    }

    deinit {
        buffer.deallocate()
        if let memory, memory >= 0 { close(memory) }
    }

    /// SHA-256 of the pages in [start, end) that can be read, and how many could not.
    /// process_vm_readv cannot read an execute-only page (it asks for read
    /// permission, where /proc/PID/mem forces access as ptrace does), so a page
    /// it refuses is tried there before it counts as unreadable.
    func hashPages(start: UInt64, end: UInt64) throws(SystemError) -> (hash: String, unreadable: Int) {
        var hasher = SHA256()
        var unreadable = 0
        var address = start
        while address < end {
            let length = Int(min(UInt64(chunkSize), end - address))
            let n = alcub3_read_process(pid, address, buffer.baseAddress, length)
            // Gone, or not ours to read: no page would be readable, and saying so beats a baseline of unreadable pages.
            if n < 0, errno == ESRCH || errno == EPERM { throw SystemError(errno: errno, call: "process_vm_readv", context: "pid \(pid)") }
            let whole = n > 0 ? n - n % pageSize : 0
            hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer[0..<whole]))
            var page = address + UInt64(whole)
            while page < address + UInt64(length) {
                if readPage(page) {
                    hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer[0..<pageSize]))
                } else {
                    unreadable += 1
                }
                page += UInt64(pageSize)
            }
            address += UInt64(length)
        }
        return (Hex.string(hasher.finalize()), unreadable)
    }

    private func readPage(_ address: UInt64) -> Bool {
        if alcub3_read_process(pid, address, buffer.baseAddress, pageSize) == pageSize { return true }
        if memory == nil { memory = open("/proc/\(pid)/mem", O_RDONLY | O_CLOEXEC) }
        guard let memory, memory >= 0 else { return false }
        // Offsets above 2^63 ([vsyscall]) are valid here: /proc/PID/mem takes unsigned offsets.
        return pread(memory, buffer.baseAddress, pageSize, off_t(Int64(bitPattern: address))) == pageSize
    }

    /// The file at `path` (followed: /proc/PID/root and map_files are magic
    /// links), nil when there is none. Identity and content come from one
    /// open, so they describe the same file; only a regular file is opened.
    func identity(of path: String) -> FileIdentity? {
        var st = stat()
        guard stat(path, &st) == 0 else {
            return errno == ENOENT || errno == ENOTDIR ? nil : FileIdentity(device: 0, inode: 0, size: 0, modified: "",
                                                                             unreadable: SystemError.name(of: errno))
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else { return Self.identity(st, unreadable: "not a regular file") }
        if let hash = cache?.hash(FileHashCache.Key(st)) {
            var identity = Self.identity(st, unreadable: nil)
            identity.hash = hash
            return identity
        }
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return Self.identity(st, unreadable: SystemError.name(of: errno)) }
        defer { close(fd) }
        guard fstat(fd, &st) == 0 else { return Self.identity(st, unreadable: SystemError.name(of: errno)) }
        var hasher = SHA256()
        while true {
            let n = read(fd, buffer.baseAddress, buffer.count)
            if n < 0 {
                if errno == EINTR { continue }
                return Self.identity(st, unreadable: SystemError.name(of: errno))
            }
            if n == 0 { break }
            hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
        var identity = Self.identity(st, unreadable: nil)
        identity.hash = Hex.string(hasher.finalize())
        cache?.store(identity.hash!, for: FileHashCache.Key(st))
        return identity
    }

    private static func identity(_ st: stat, unreadable: String?) -> FileIdentity {
        var time = st.st_mtim.tv_sec
        var parts = tm()
        gmtime_r(&time, &parts)
        let modified = String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%09dZ", parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday,
                              parts.tm_hour, parts.tm_min, parts.tm_sec, Int(st.st_mtim.tv_nsec))
        return FileIdentity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino), size: Int64(st.st_size), modified: modified,
                            hash: nil, unreadable: unreadable)
    }
}
