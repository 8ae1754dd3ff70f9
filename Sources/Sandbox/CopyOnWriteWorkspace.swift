#if canImport(Glibc)
import Glibc
#endif
import CAlcub3
import Foundation
import KernelSupport

/// `alcub3 run`'s workspace: the caller's directory as a copy-on-write
/// overlay (alcub3_spawn.c, copy_on_write_view). Every change the agent makes
/// lands on a tmpfs of `bytes` that alcub3 mounts on the host, so writing past
/// the workspace size is ENOSPC inside and never fills the host's disk, and
/// nothing reaches the directory while the agent runs. When the sandbox has
/// ended, `changes()` reads that upper layer and `apply` copies it into the
/// directory through descriptors (never a path the agent could have
/// redirected): regular files, directories, symlinks and deletions, owned by
/// the directory's owner, without setuid or setgid bits; anything else (a
/// device, a fifo, a socket) is skipped and named.
public final class CopyOnWriteWorkspace: Sendable {
    public static let parent = "/run/alcub3-workspaces"
    /// The caller's directory.
    public let directory: String
    /// The tmpfs holding upper/, work/ and lower/ (where the lower layer is staged).
    public let root: String
    public let bytes: UInt64
    private let lock: OwnedDescriptor

    /// Mounts the tmpfs for sandbox `sandboxID`. `agentRoot`: the host uid of
    /// the agent's root, who must own the overlay's top directory.
    public init(sandboxID: String, directory: String, bytes: UInt64, agentRoot: UInt32) throws {
        let root = Self.parent + "/" + sandboxID
        if mkdir(Self.parent, 0o700) != 0 && errno != EEXIST { throw SystemError(errno: errno, call: "mkdir", context: Self.parent) }
        var st = stat()
        guard lstat(Self.parent, &st) == 0, st.st_mode & S_IFMT == S_IFDIR, st.st_uid == 0, st.st_mode & 0o077 == 0 else {
            throw SystemError(errno: EPERM, call: "checking the workspace directory (root's, mode 0700)", context: Self.parent)
        }
        Self.removeAbandoned()
        try syscallChecked("mkdir", root) { mkdir(root, 0o700) }
        do {
            try syscallChecked("mount tmpfs", root) {
                mount("tmpfs", root, "tmpfs", UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC),
                      "mode=0700,size=\(bytes),nr_inodes=\(max(1024, min(bytes / 4096, 262_144)))")
            }
            var top = stat()
            try syscallChecked("stat", directory) { stat(directory, &top) }
            for sub in ["upper", "work", "lower"] {
                try syscallChecked("mkdir", root + "/" + sub) { mkdir(root + "/" + sub, 0o700) }
            }
            // The overlay's root takes the upper directory's owner and mode:
            // the agent's root, with the directory's permissions.
            try syscallChecked("chown", root + "/upper") { chown(root + "/upper", agentRoot, agentRoot) }
            try syscallChecked("chmod", root + "/upper") { chmod(root + "/upper", top.st_mode & 0o7777) }
            // Held while the run lives: a workspace whose lock is free was left by a run that died.
            let lock = try OwnedDescriptor(path: root + "/owner.lock", flags: O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600)
            _ = flock(lock.raw, LOCK_EX)
            self.lock = lock
            self.directory = directory
            self.bytes = bytes
            self.root = root
        } catch {
            _ = umount2(root, Int32(MNT_DETACH))
            _ = rmdir(root)
            throw error
        }
    }

    /// Workspaces of runs that died (killed before they could apply or
    /// discard): their lock is free. Their changes are discarded, with a line
    /// on stderr naming the directory each belonged to; returns their paths.
    @discardableResult
    public static func removeAbandoned() -> [String] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: parent) else { return [] }
        var removed: [String] = []
        for name in names where name.hasPrefix("sb-") {
            let root = parent + "/" + name
            guard let lock = try? OwnedDescriptor(path: root + "/owner.lock", flags: O_RDWR | O_NOFOLLOW) else {
                // Not mounted yet (a run between mkdir and mount) or already half removed: only an empty directory goes.
                if (try? FileManager.default.contentsOfDirectory(atPath: root))?.isEmpty == true, rmdir(root) == 0 { removed.append(root) }
                continue
            }
            guard flock(lock.raw, LOCK_EX | LOCK_NB) == 0 else { continue }
            _ = umount2(root, Int32(MNT_DETACH))
            _ = rmdir(root)
            FileHandle.standardError.write(Data("alcub3: removed the workspace of an ended run (\(name)); its changes were never applied\n".utf8))
            removed.append(root)
        }
        return removed
    }

    /// Unmounts the tmpfs (what was not applied is gone) and removes its directory.
    public func remove() {
        _ = umount2(root, Int32(MNT_DETACH))
        _ = rmdir(root)
    }

    /// One change of the agent's, by its path relative to the directory.
    public struct Change: Sendable, Equatable {
        public enum Kind: String, Sendable { case added, modified, deleted, skipped }
        public let path: String
        public let kind: Kind
        public let bytes: UInt64
        public let note: String?
    }

    /// What the agent changed (nothing is touched).
    public func changes() throws -> Report {
        try walk(apply: false, owner: (0, 0))
    }

    /// Applies every change to the directory, files owned by `owner` unless
    /// they replace a file (which keeps its owner); returns what was done.
    public func apply(owner: (uid: UInt32, gid: UInt32)) throws -> Report {
        try walk(apply: true, owner: owner)
    }

    private func walk(apply: Bool, owner: (uid: UInt32, gid: UInt32)) throws -> Report {
        let upper = try OwnedDescriptor(path: root + "/upper", flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
        let target = try OwnedDescriptor(path: directory, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
        var top = stat()
        try syscallChecked("fstat", directory) { fstat(target.raw, &top) }
        var applier = Applier(apply: apply, owner: owner, device: top.st_dev)
        try applier.merge(upper: upper.raw, target: target.raw, prefix: "", depth: 0)
        return Report(listed: applier.changes, counts: applier.counts)
    }

    /// What a walk found: every change counted, the first `listed` of them with their paths.
    public struct Report: Sendable {
        public let listed: [Change]
        public let counts: (added: Int, modified: Int, deleted: Int, skipped: Int, bytes: UInt64)
        public var total: Int { counts.added + counts.modified + counts.deleted + counts.skipped }
    }
}

/// The walk of the upper layer, merging into the target directory.
private struct Applier {
    let apply: Bool
    let owner: (uid: UInt32, gid: UInt32)
    /// The directory's filesystem: another one mounted beneath it (which the agent saw as an
    /// empty directory, the lower layer not being recursive) is never entered, emptied or written.
    let device: dev_t
    var changes: [CopyOnWriteWorkspace.Change] = []
    static let maximumDepth = 64
    /// At most this many changes are listed (each with its path); all are counted and applied.
    static let listed = 10_000
    /// setuid, setgid, sticky and world-write never reach the host: a program the agent wrote
    /// must not run as its owner there, nor may the agent open the caller's files to everyone.
    static let modeBits: mode_t = 0o0775
    var counts = (added: 0, modified: 0, deleted: 0, skipped: 0, bytes: UInt64(0))

    mutating func note(_ change: CopyOnWriteWorkspace.Change) {
        switch change.kind {
        case .added: counts.added += 1
        case .modified: counts.modified += 1
        case .deleted: counts.deleted += 1
        case .skipped: counts.skipped += 1
        }
        counts.bytes += change.bytes
        if changes.count < Self.listed { changes.append(change) }
    }

    mutating func merge(upper: Int32, target: Int32?, prefix: String, depth: Int) throws {
        guard depth < Self.maximumDepth else {
            note(.init(path: prefix, kind: .skipped, bytes: 0, note: "deeper than \(Self.maximumDepth) directories"))
            return
        }
        for name in try Self.entries(upper) {
            let path = prefix.isEmpty ? name : prefix + "/" + name
            var st = stat()
            try syscallChecked("fstatat", path) { fstatat(upper, name, &st, AT_SYMLINK_NOFOLLOW) }
            let existing = target.flatMap { Self.lstat(at: $0, name) }
            if let existing, existing.st_dev != device {
                note(.init(path: path, kind: .skipped, bytes: 0, note: "another filesystem is mounted there"))
                continue
            }
            switch st.st_mode & S_IFMT {
            case S_IFCHR where st.st_rdev == 0:  // an overlay whiteout: the agent deleted it
                if existing != nil {
                    if apply, let target { try Self.removeTree(at: target, name) }
                    note(.init(path: path, kind: .deleted, bytes: 0, note: nil))
                }
            case S_IFDIR:
                let opaque = Self.isOpaque(upper, name)
                let replace = existing.map { opaque || $0.st_mode & S_IFMT != S_IFDIR } ?? false
                if apply, let target {
                    if replace { try Self.removeTree(at: target, name) }
                    if existing == nil || replace {
                        try syscallChecked("mkdirat", path) { mkdirat(target, name, 0o700) }
                        try syscallChecked("fchownat", path) { fchownat(target, name, owner.uid, owner.gid, AT_SYMLINK_NOFOLLOW) }
                    }
                }
                if existing == nil || replace { note(.init(path: path + "/", kind: .added, bytes: 0, note: nil)) }
                let child = try openAt(upper, name, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
                // Applying, the directory exists now; looking, only an existing one is read (all else is new).
                let childTarget: OwnedDescriptor? = apply || (existing != nil && !replace)
                    ? try target.map { try openAt($0, name, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW) } : nil
                // The mode through the opened directory: never through a name a link could stand in for.
                if apply, let childTarget {
                    try syscallChecked("fchmod", path) { fchmod(childTarget.raw, st.st_mode & Self.modeBits) }
                }
                try merge(upper: child.raw, target: childTarget?.raw, prefix: path, depth: depth + 1)
            case S_IFREG, S_IFLNK:
                let kind: CopyOnWriteWorkspace.Change.Kind = existing == nil ? .added : .modified
                if apply, let target {
                    if let existing, existing.st_mode & S_IFMT == S_IFDIR { try Self.removeTree(at: target, name) }
                    let fileOwner = existing.map { ($0.st_uid, $0.st_gid) } ?? owner
                    try Self.place(from: upper, name, mode: st.st_mode, into: target, owner: fileOwner)
                }
                note(.init(path: path, kind: kind, bytes: st.st_mode & S_IFMT == S_IFREG ? UInt64(st.st_size) : 0,
                                     note: st.st_mode & (S_ISUID | S_ISGID) != 0 ? "setuid/setgid bits removed" : nil))
            default:
                note(.init(path: path, kind: .skipped, bytes: 0, note: "not a file, directory or symlink"))
            }
        }
    }

    /// A new file or symlink beside the target, then renamed over it: the
    /// target's name never points at a half-written file or a planted link.
    static func place(from upper: Int32, _ name: String, mode: mode_t, into target: Int32, owner: (UInt32, UInt32)) throws {
        let temporary = ".alcub3-\(UInt64.random(in: 0...UInt64.max))"
        if mode & S_IFMT == S_IFLNK {
            var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            let n = readlinkat(upper, name, &buffer, Int(PATH_MAX))
            guard n >= 0 else { throw SystemError(errno: errno, call: "readlinkat", context: name) }
            let link = String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            try syscallChecked("symlinkat", name) { symlinkat(link, target, temporary) }
            _ = fchownat(target, temporary, owner.0, owner.1, AT_SYMLINK_NOFOLLOW)
        } else {
            let source = try openAt(upper, name, flags: O_RDONLY | O_NOFOLLOW)
            let destination = try openAt(target, temporary, flags: O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW,
                                                  mode: 0o600)
            do {
                var buffer = [UInt8](repeating: 0, count: 1 << 20)
                while true {
                    let n = read(source.raw, &buffer, buffer.count)
                    if n < 0 && errno == EINTR { continue }
                    guard n >= 0 else { throw SystemError(errno: errno, call: "read", context: name) }
                    if n == 0 { break }
                    let written = buffer.withUnsafeBytes { FileIO.writeAll(destination.raw, UnsafeRawBufferPointer(rebasing: $0[..<n])) }
                    guard written else { throw SystemError(errno: errno, call: "write", context: name) }
                }
                try syscallChecked("fchown", name) { fchown(destination.raw, owner.0, owner.1) }
                try syscallChecked("fchmod", name) { fchmod(destination.raw, mode & modeBits) }
            } catch {
                _ = unlinkat(target, temporary, 0)
                throw error
            }
        }
        do {
            try syscallChecked("renameat", name) { renameat(target, temporary, target, name) }
        } catch {
            _ = unlinkat(target, temporary, 0)
            throw error
        }
    }

    static func lstat(at directory: Int32, _ name: String) -> stat? {
        var st = stat()
        return fstatat(directory, name, &st, AT_SYMLINK_NOFOLLOW) == 0 ? st : nil
    }

    static func isOpaque(_ directory: Int32, _ name: String) -> Bool {
        guard let fd = try? openAt(directory, name, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW) else { return false }
        return alcub3_overlay_opaque(fd.raw) == 1
    }

    /// Names in a directory, "." and ".." left out.
    static func entries(_ directory: Int32) throws -> [String] {
        let copy = dup(directory)
        guard copy >= 0, let stream = fdopendir(copy) else { throw SystemError(errno: errno, call: "fdopendir") }
        defer { closedir(stream) }
        rewinddir(stream)
        var names: [String] = []
        while let entry = readdir(stream) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// Removes name (a file, link or whole tree) inside directory, following nothing.
    static func removeTree(at directory: Int32, _ name: String) throws {
        guard let st = lstat(at: directory, name) else { return }
        var parent = stat()
        guard fstat(directory, &parent) == 0, st.st_dev == parent.st_dev else {
            throw SystemError(errno: EXDEV, call: "removing", context: "\(name): another filesystem is mounted there")
        }
        if st.st_mode & S_IFMT == S_IFDIR {
            let child = try openAt(directory, name, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
            for entry in try entries(child.raw) { try removeTree(at: child.raw, entry) }
            try syscallChecked("unlinkat", name) { unlinkat(directory, name, AT_REMOVEDIR) }
        } else {
            try syscallChecked("unlinkat", name) { unlinkat(directory, name, 0) }
        }
    }
}

/// openat relative to a directory descriptor, O_CLOEXEC always added.
private func openAt(_ directory: Int32, _ name: String, flags: Int32, mode: mode_t = 0o600) throws -> OwnedDescriptor {
    OwnedDescriptor(try syscallChecked("openat", name) { openat(directory, name, flags | O_CLOEXEC, mode) })
}
