import Foundation

/// One difference between a baseline and the tree now, with its evidence.
public struct IntegrityFinding: Codable, Sendable, Equatable {
    public enum Change: String, Codable, Sendable {
        case created, deleted, content, permissions, owner, kind, target, xattrs, unreadable
        /// Behaviour unlike the baseline's profile (new program, destination, syscall mix).
        case behaviour
        /// Executable memory unlike the baseline's (the kind is in `cause`).
        case memory
    }

    public var dimension = "filesystem"
    public var change: Change
    /// As the sandbox sees it (the baseline's root joined with the entry's path).
    public var path: String
    public var old: String?
    public var new: String?
    /// How the change was found: `event` (a path file-write telemetry marked
    /// dirty) or `rescan` (the periodic full read, for what telemetry could miss).
    public var foundBy: String
    /// For `event`: the write that marked the path ("rename by pid 42 (python3) at 2026-...Z").
    public var cause: String?
    /// When the change was found (ISO 8601, UTC).
    public var time: String? = Date().ISO8601Format()

    public init(change: Change, path: String, old: String?, new: String?, foundBy: String, cause: String? = nil) {
        self.change = change
        self.path = path
        self.old = old
        self.new = new
        self.foundBy = foundBy
        self.cause = cause
    }
}

/// Compares a baseline with the tree as it is now.
public enum FilesystemValidator {
    /// Every difference, or only those at `paths` (and below them) when given:
    /// then only those paths are looked up (binary search in the baseline's
    /// sorted entries, the tree's own children), so a cycle costs what changed.
    public static func compare(_ baseline: FilesystemBaseline, with tree: FileTree, only paths: Set<String>? = nil,
                               foundBy: String) -> [IntegrityFinding] {
        let allPaths: [String]
        var before: [String: FileEntry] = [:]
        if let paths {
            var candidates = Set<String>()
            for path in paths {
                candidates.formUnion(tree.paths(under: path))
                for entry in baseline.entries(under: path) {
                    candidates.insert(entry.path)
                    before[entry.path] = entry
                }
            }
            allPaths = candidates.sorted()
        } else {
            before = Dictionary(baseline.entries.map { ($0.path, $0) }, uniquingKeysWith: { a, _ in a })
            allPaths = Set(before.keys).union(tree.entries.keys).sorted()
        }
        func shown(_ path: String) -> String {
            path.isEmpty ? baseline.root : (baseline.root == "/" ? "/" : baseline.root + "/") + path
        }
        var findings: [IntegrityFinding] = []
        for path in allPaths {
            let old = before[path], new = tree.entries[path]
            func add(_ change: IntegrityFinding.Change, _ a: String?, _ b: String?) {
                findings.append(IntegrityFinding(change: change, path: shown(path), old: a, new: b, foundBy: foundBy))
            }
            switch (old, new) {
            case (nil, let new?):
                add(.created, nil, new.kind == .file ? new.hash : new.kind.rawValue)
            case (let old?, nil):
                add(.deleted, old.kind == .file ? old.hash : old.kind.rawValue, nil)
            case (let old?, let new?):
                if old.kind != new.kind {
                    add(.kind, old.kind.rawValue, new.kind.rawValue + (new.target.map { " -> \($0)" } ?? ""))
                    continue
                }
                // A directory's own hash changes with anything below it: its children speak for themselves.
                if old.kind == .file, old.hash != new.hash { add(.content, old.hash, new.hash) }
                if old.mode != new.mode { add(.permissions, String(old.mode, radix: 8), String(new.mode, radix: 8)) }
                if old.uid != new.uid || old.gid != new.gid { add(.owner, "\(old.uid):\(old.gid)", "\(new.uid):\(new.gid)") }
                if old.target != new.target { add(.target, old.target, new.target) }
                if old.xattrs != new.xattrs { add(.xattrs, old.xattrs?.keys.sorted().joined(separator: ","), new.xattrs?.keys.sorted().joined(separator: ",")) }
                if old.unreadable == nil, let why = new.unreadable { add(.unreadable, nil, why) }
            default:
                break
            }
        }
        return findings
    }
}

extension FilesystemBaseline {
    /// The entry at `path` and those below it, from `entries` (sorted by path:
    /// every path with a given prefix lies in one run, found by binary search).
    func entries(under path: String) -> [FileEntry] {
        if path.isEmpty { return entries }
        var found: [FileEntry] = []
        let exact = entries.partitionPoint(where: { $0.path >= path })
        if exact < entries.endIndex, entries[exact].path == path { found.append(entries[exact]) }
        // Not contiguous with `path` itself ("a-b" and "a.c" sort between "a" and "a/x").
        let prefix = path + "/"
        var i = entries.partitionPoint(where: { $0.path >= prefix })
        while i < entries.endIndex, entries[i].path.hasPrefix(prefix) {
            found.append(entries[i])
            i += 1
        }
        return found
    }
}
