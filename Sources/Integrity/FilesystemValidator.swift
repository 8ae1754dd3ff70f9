import Foundation

/// One difference between a baseline and the tree now, with its evidence.
public struct IntegrityFinding: Codable, Sendable, Equatable {
    public enum Change: String, Codable, Sendable {
        case created, deleted, content, permissions, owner, kind, target, xattrs, unreadable
        /// Behaviour unlike the baseline's profile (new program, destination, syscall mix).
        case behaviour
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
}

/// Compares a baseline with the tree as it is now.
public enum FilesystemValidator {
    /// Every difference, or only those at `paths` (and below them) when given.
    public static func compare(_ baseline: FilesystemBaseline, with tree: FileTree, only paths: Set<String>? = nil,
                               foundBy: String) -> [IntegrityFinding] {
        let before = Dictionary(baseline.entries.map { ($0.path, $0) }, uniquingKeysWith: { a, _ in a })
        func wanted(_ path: String) -> Bool {
            guard let paths else { return true }
            return paths.contains { path == $0 || path.hasPrefix($0 + "/") }
        }
        func shown(_ path: String) -> String {
            path.isEmpty ? baseline.root : (baseline.root == "/" ? "/" : baseline.root + "/") + path
        }
        var findings: [IntegrityFinding] = []
        let allPaths = Set(before.keys).union(tree.entries.keys).filter(wanted).sorted()
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
