#if canImport(Glibc)
import Glibc
#endif
import Foundation
import KernelSupport

/// The code of one process as it is in memory: its executable mappings with
/// the SHA-256 of their pages, the files behind them, the libraries it has
/// mapped and the loader variables it was started with.
///
/// A baseline describes one process, not a program: address space layout
/// randomisation gives each process its own addresses, stable for its life,
/// so a restarted process (a new pid, or the same pid with a new start time)
/// needs a new baseline. File-backed mappings are matched by file and offset,
/// not by address, so a baseline of a program can still be compared with
/// another run of it (`MemoryValidator.compare(_:_:sameProcess: false)`).
public struct MemoryBaseline: Codable, Sendable, Equatable {
    /// The capture without anonymous memory that is writable and executable
    /// at once: a JIT's code buffer, which its program rewrites by design (a
    /// vm sandbox's QEMU under TCG translates guest code into one). Used for
    /// the VMM, whose file-backed code and libraries are still compared.
    public func droppingJITBuffers() -> MemoryBaseline {
        var copy = self
        copy.mappings = mappings.filter { !($0.isAnonymous && $0.isWritable && $0.permissions.dropFirst(2).first == "x") }
        return copy
    }

    public var pid: Int32
    /// Clock ticks after boot (/proc/PID/stat field 22): with the pid, what
    /// tells this process from a later one that reuses its pid.
    public var startTime: UInt64
    /// /proc/PID/exe as the kernel prints it.
    public var executable: String
    /// ISO 8601, UTC.
    public var capturedAt: String
    /// Every mapping with execute permission, in address order.
    public var mappings: [MemoryMapping]
    /// Paths of the shared objects mapped (any permission), sorted.
    public var libraries: [String]
    /// LD_PRELOAD and LD_AUDIT from /proc/PID/environ when set: the loader
    /// variables that inject a library into every program.
    public var loaderEnvironment: [String: String]

    public var ldPreload: String? { loaderEnvironment["LD_PRELOAD"] }
}

/// One executable mapping of /proc/PID/maps and the hash of its bytes.
public struct MemoryMapping: Codable, Sendable, Equatable {
    /// "start-end" in hex, as /proc/PID/maps prints it.
    public var range: String
    /// "r-xp" and so on.
    public var permissions: String
    public var offset: UInt64
    /// "major:minor" in hex and the inode, as the maps line has them (0 for anonymous memory).
    public var device: String
    public var inode: UInt64
    /// The file, or the kernel's name for the memory ([vdso], [stack], [anon:name]),
    /// or "[anon]" for unnamed anonymous memory. Without " (deleted)".
    public var path: String
    /// The kernel marked the file " (deleted)": its path no longer names the mapped file.
    public var deleted: Bool
    /// SHA-256 of the pages that could be read, in address order.
    public var codeHash: String
    /// Pages that neither process_vm_readv nor /proc/PID/mem could read ([vsyscall]).
    public var unreadablePages: Int
    /// The backing file: what the path names, read through /proc/PID/root; when
    /// the mapping is deleted, the mapped file itself through /proc/PID/map_files.
    public var file: FileIdentity?
    /// For a deleted mapping: what its path names now (nil when nothing), so a
    /// file replaced by rename is told from one removed.
    public var replacement: FileIdentity?

    public var isWritable: Bool { permissions.dropFirst().first == "w" }
    /// Memory no file stands behind: private anonymous memory and the kernel's
    /// own ([vdso]) have no inode; shared anonymous memory is a deleted
    /// /dev/zero, or [anon_shmem:name] when named.
    public var isAnonymous: Bool { inode == 0 || path.hasPrefix("[anon_shmem:") || (deleted && path == "/dev/zero") }
    /// Anonymous memory without a kernel name ([vdso], [stack]) is told apart by its address alone.
    var matchesByAddress: Bool { isAnonymous && (path.hasPrefix("[anon") || path == "/dev/zero") }

    public var start: UInt64 { UInt64(range.prefix { $0 != "-" }, radix: 16) ?? 0 }
    public var end: UInt64 { UInt64(range.drop { $0 != "-" }.dropFirst(), radix: 16) ?? 0 }
}

/// Who a file is (device and inode), what it holds (SHA-256) and, as evidence,
/// its size and modification time.
public struct FileIdentity: Codable, Sendable, Equatable {
    public var device: UInt64
    public var inode: UInt64
    public var size: Int64
    /// ISO 8601, UTC, with nanoseconds.
    public var modified: String
    public var hash: String?
    /// Why the content could not be read (errno name).
    public var unreadable: String?

    /// Same file with the same content; the time alone (a `touch`) is no change.
    func isSameFile(as other: FileIdentity) -> Bool {
        device == other.device && inode == other.inode && size == other.size && hash == other.hash
            && (hash != nil || modified == other.modified)
    }

    /// The evidence a finding shows.
    var summary: String { "\(hash ?? "unreadable (\(unreadable ?? "?"))") inode \(inode) size \(size) modified \(modified)" }
}

extension MemoryBaseline {
    /// Reads the process's maps, hashes its executable mappings and their
    /// files. Throws when the process cannot be read at all (gone: ENOENT or
    /// ESRCH; not ours: EACCES or EPERM); a page or file that cannot be read
    /// is recorded as such. `cache`: file hashes to reuse (see `FileHashCache`);
    /// a baseline is best made without one.
    public static func capture(pid: Int32, cache: FileHashCache? = nil) throws(SystemError) -> MemoryBaseline {
        let reader = ProcessMemoryReader(pid: pid, cache: cache)
        let lines = try MemoryMapping.parse(maps: FileIO.read("/proc/\(pid)/maps", limit: 64 << 20))
        let startTime = try Self.startTime(pid: pid)
        var mappings: [MemoryMapping] = []
        var libraries: Set<String> = []
        for var mapping in lines {
            if mapping.inode != 0, Self.isSharedObject(mapping.path) { libraries.insert(mapping.path) }
            guard mapping.permissions.dropFirst(2).first == "x" else { continue }
            let (start, end) = (mapping.start, mapping.end)
            (mapping.codeHash, mapping.unreadablePages) = try reader.hashPages(start: start, end: end)
            if !mapping.isAnonymous {
                let atPath = reader.identity(of: "/proc/\(pid)/root" + mapping.path)
                if mapping.deleted {
                    // map_files names are unpadded hex, where maps pads to 8 digits (a non-PIE 00400000).
                    let name = String(start, radix: 16) + "-" + String(end, radix: 16)
                    mapping.file = reader.identity(of: "/proc/\(pid)/map_files/" + name)
                    mapping.replacement = atPath
                } else {
                    mapping.file = atPath
                }
            }
            mappings.append(mapping)
        }
        var executable = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = readlink("/proc/\(pid)/exe", &executable, Int(PATH_MAX))
        return MemoryBaseline(
            pid: pid, startTime: startTime,
            executable: length > 0 ? String(decoding: executable[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self) : "",
            capturedAt: ISO8601DateFormatter().string(from: Date()), mappings: mappings, libraries: libraries.sorted(),
            loaderEnvironment: Self.loaderEnvironment(pid: pid))
    }

    /// "libc.so.6", "ld-linux-x86-64.so.2", "_ssl.cpython-311-x86_64-linux-gnu.so".
    static func isSharedObject(_ path: String) -> Bool {
        let name = path.split(separator: "/").last ?? ""
        return name.hasSuffix(".so") || name.contains(".so.")
    }

    static func startTime(pid: Int32) throws(SystemError) -> UInt64 {
        let stat = try FileIO.read("/proc/\(pid)/stat")
        // The command name is in parentheses and may hold spaces: count fields after the last ')'.
        guard let close = stat.lastIndex(of: ")") else { throw SystemError(errno: EINVAL, call: "parse", context: "/proc/\(pid)/stat") }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 19, let ticks = UInt64(fields[19]) else {
            throw SystemError(errno: EINVAL, call: "parse", context: "/proc/\(pid)/stat")
        }
        return ticks
    }

    /// The environment the process was started with (a later setenv does not show here, nor does it matter to the loader).
    static func loaderEnvironment(pid: Int32) -> [String: String] {
        guard let environ = try? FileIO.read("/proc/\(pid)/environ", limit: 4 << 20) else { return [:] }
        var found: [String: String] = [:]
        for variable in environ.split(separator: "\u{0}") {
            for name in ["LD_PRELOAD", "LD_AUDIT"] where variable.hasPrefix(name + "=") {
                found[name] = String(variable.dropFirst(name.count + 1))
            }
        }
        return found
    }
}

extension MemoryMapping {
    /// Every line of /proc/PID/maps, not yet hashed. "start-end perms offset
    /// dev inode   path": the path runs to the end of the line and may hold
    /// spaces (the kernel escapes only newlines).
    static func parse(maps text: String) throws(SystemError) -> [MemoryMapping] {
        var mappings: [MemoryMapping] = []
        for raw in text.split(separator: "\n") {
            var rest = raw[...]
            func field() -> Substring {
                rest = rest.drop { $0 == " " }
                let value = rest.prefix { $0 != " " }
                rest = rest.dropFirst(value.count)
                return value
            }
            let range = field(), permissions = field(), offset = field(), device = field(), inode = field()
            var path = String(rest.drop { $0 == " " })
            let bounds = range.split(separator: "-")
            guard bounds.count == 2, UInt64(bounds[0], radix: 16) != nil, UInt64(bounds[1], radix: 16) != nil,
                  permissions.count == 4, let offsetValue = UInt64(offset, radix: 16), let inodeValue = UInt64(inode)
            else { throw SystemError(errno: EINVAL, call: "parse", context: "maps line '\(raw)'") }
            let deleted = inodeValue != 0 && path.hasSuffix(" (deleted)")
            if deleted { path.removeLast(" (deleted)".count) }
            if path.isEmpty { path = "[anon]" }
            mappings.append(MemoryMapping(range: String(range), permissions: String(permissions), offset: offsetValue,
                                          device: String(device), inode: inodeValue, path: path, deleted: deleted,
                                          codeHash: "", unreadablePages: 0))
        }
        return mappings
    }
}
