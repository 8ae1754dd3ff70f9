#if canImport(Glibc)
import Glibc
#endif
import CAlcub3
import Crypto
import Foundation
import KernelSupport

/// A scanned directory tree: an entry per path and the Merkle hashes that tie
/// them to one root hash. `scan` reads everything once; `rescan(_:)` reads
/// only the paths given (the ones file-write telemetry marked dirty) and
/// rehashes the directories above them, so a cycle costs what changed, not
/// the size of the tree.
public struct FileTree: Sendable {
    /// The host path that was scanned (e.g. /proc/PID/root/workspace).
    public let root: String
    public internal(set) var entries: [String: FileEntry] = [:]
    /// Directory -> the relative paths directly in it.
    private var children: [String: Set<String>] = [:]

    public var rootHash: String { entries[""]?.hash ?? "" }
    public var count: Int { entries.count }

    /// Reads the whole tree below `root` (symlinks recorded, not followed;
    /// devices and FIFOs recorded, never opened). `progress` is called every
    /// 1000 entries with the count so far.
    public static func scan(root: String, progress: ((Int) -> Void)? = nil) throws -> FileTree {
        var tree = FileTree(root: root)
        var st = stat()
        guard lstat(root, &st) == 0 else { throw SystemError(errno: errno, call: "lstat", context: root) }
        guard (st.st_mode & S_IFMT) == S_IFDIR else {
            throw SystemError(errno: ENOTDIR, call: "scan", context: "\(root) is not a directory")
        }
        var seen = 0
        let buffer = ReadBuffer()
        tree.scanDirectory("", buffer: buffer, progress: { seen += 1; if seen % 1000 == 0 { progress?(seen) } })
        return tree
    }

    init(root: String) { self.root = root }

    private func absolute(_ relative: String) -> String { relative.isEmpty ? root : root + "/" + relative }

    static func parent(of relative: String) -> String? {
        guard !relative.isEmpty else { return nil }
        guard let slash = relative.lastIndex(of: "/") else { return "" }
        return String(relative[..<slash])
    }

    /// Records `relative` and, for a directory, everything below it, then its Merkle hash.
    private mutating func scanDirectory(_ relative: String, buffer: ReadBuffer, progress: () -> Void) {
        guard var entry = Self.readEntry(absolute(relative), relative: relative, buffer: buffer) else { return }
        progress()
        guard entry.kind == .directory else {
            entries[relative] = entry
            return
        }
        var names: Set<String> = []
        if let dir = opendir(absolute(relative)) {
            while let item = readdir(dir) {
                let name = withUnsafeBytes(of: item.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
                if name == "." || name == ".." { continue }
                names.insert(relative.isEmpty ? name : relative + "/" + name)
            }
            closedir(dir)
        } else {
            entry.unreadable = SystemError.name(of: errno)
        }
        children[relative] = names
        for child in names.sorted() { scanDirectory(child, buffer: buffer, progress: progress) }
        children[relative] = Set(names.filter { entries[$0] != nil })
        entry.hash = merkleHash(of: relative)
        entries[relative] = entry
    }

    mutating func insertChild(_ path: String, of directory: String) { children[directory, default: []].insert(path) }

    mutating func rehashDirectory(_ path: String) {
        let hash = merkleHash(of: path)
        entries[path]?.hash = hash
    }

    private func merkleHash(of directory: String) -> String {
        var hasher = SHA256()
        for child in (children[directory] ?? []).sorted() {
            if let line = entries[child]?.merkleLine { hasher.update(data: Data((line + "\n").utf8)) }
        }
        return Hex.string(hasher.finalize())
    }

    /// Reads the paths given (relative, as the baseline records them) again,
    /// whatever happened to them: changed, created (a new directory is read
    /// whole), deleted (with everything below). Then rehashes the directories
    /// above them, deepest first. Returns the paths whose entry changed.
    @discardableResult
    public mutating func rescan(_ paths: [String]) -> Set<String> {
        var changed: Set<String> = []
        var dirty: Set<String> = []
        let buffer = ReadBuffer()
        for requested in Set(paths) {
            // A path in a directory that is new itself: read from the first ancestor the tree knows.
            var path = requested
            while let parent = Self.parent(of: path), entries[parent] == nil, !parent.isEmpty { path = parent }
            let before = entries[path]
            removeSubtree(path)
            scanDirectory(path, buffer: buffer, progress: {})
            if let parent = Self.parent(of: path) {
                if entries[path] != nil { children[parent, default: []].insert(path) } else { children[parent]?.remove(path) }
                var up: String? = parent
                while let directory = up {
                    dirty.insert(directory)
                    up = Self.parent(of: directory)
                }
            }
            if entries[path] != before { changed.insert(path) }
        }
        for directory in dirty.sorted(by: { $0.split(separator: "/").count > $1.split(separator: "/").count }) {
            guard var entry = entries[directory] else { continue }
            entry.hash = merkleHash(of: directory)
            entries[directory] = entry
        }
        return changed
    }

    /// `path` and every path the tree has below it.
    public func paths(under path: String) -> [String] {
        guard entries[path] != nil else { return [] }
        var result = [path]
        for child in children[path] ?? [] { result += paths(under: child) }
        return result
    }

    private mutating func removeSubtree(_ path: String) {
        for child in children[path] ?? [] { removeSubtree(child) }
        children[path] = nil
        entries[path] = nil
    }

    /// lstat, and the content hash of a regular file (streamed in 1 MiB reads,
    /// so a huge file costs no memory). nil when the path does not exist.
    static func readEntry(_ path: String, relative: String, buffer: ReadBuffer) -> FileEntry? {
        var st = stat()
        guard lstat(path, &st) == 0 else { return nil }
        let kind: FileEntry.Kind
        switch st.st_mode & S_IFMT {
        case S_IFREG: kind = .file
        case S_IFDIR: kind = .directory
        case S_IFLNK: kind = .symlink
        case S_IFIFO: kind = .fifo
        case S_IFSOCK: kind = .socket
        case S_IFCHR: kind = .characterDevice
        default: kind = .blockDevice
        }
        var entry = FileEntry(path: relative, kind: kind, mode: UInt32(st.st_mode) & 0o7777, uid: st.st_uid, gid: st.st_gid,
                              size: kind == .file ? UInt64(st.st_size) : 0)
        switch kind {
        case .symlink:
            var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            let n = readlink(path, &buffer, Int(PATH_MAX))
            entry.target = n >= 0 ? String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : nil
        case .characterDevice, .blockDevice:
            entry.device = UInt64(st.st_rdev)
        case .file:
            switch contentHash(path, buffer: buffer) {
            case .success(let hash): entry.hash = hash
            case .failure(let error): entry.unreadable = SystemError.name(of: error.errno)
            }
        default:
            break
        }
        entry.xattrs = extendedAttributes(path)
        return entry
    }

    struct ReadFailure: Error { let errno: Int32 }

    /// One 1 MiB read buffer for a whole scan (a fresh zeroed one per file cost
    /// more than hashing it).
    final class ReadBuffer {
        let bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)
        deinit { bytes.deallocate() }
    }

    static func contentHash(_ path: String, buffer: ReadBuffer) -> Result<String, ReadFailure> {
        // O_NOFOLLOW: a file replaced by a symlink since lstat is not followed.
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return .failure(ReadFailure(errno: errno)) }
        defer { close(fd) }
        var hasher = SHA256()
        while true {
            let n = Glibc.read(fd, buffer.bytes.baseAddress, buffer.bytes.count)
            if n < 0 {
                if errno == EINTR { continue }
                return .failure(ReadFailure(errno: errno))
            }
            if n == 0 { break }
            hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer.bytes[..<n]))
        }
        return .success(Hex.string(hasher.finalize()))
    }

    static func extendedAttributes(_ path: String) -> [String: String]? {
        let size = alcub3_llistxattr(path, nil, 0)
        guard size > 0 else { return nil }
        var names = [CChar](repeating: 0, count: size)
        let got = alcub3_llistxattr(path, &names, size)
        guard got > 0 else { return nil }
        var result: [String: String] = [:]
        for raw in names[..<got].split(separator: 0) {
            let name = String(decoding: raw.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let length = alcub3_lgetxattr(path, name, nil, 0)
            guard length >= 0 else { continue }
            var value = [UInt8](repeating: 0, count: length)
            let read = alcub3_lgetxattr(path, name, &value, length)
            result[name] = Hex.string(SHA256.hash(data: Data(value[..<max(read, 0)])))
        }
        return result.isEmpty ? nil : result
    }
}
