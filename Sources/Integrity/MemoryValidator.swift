import Foundation

/// One difference between a process's memory baseline and its memory now, with its evidence.
public struct MemoryFinding: Codable, Sendable, Equatable {
    public enum Change: String, Codable, Sendable {
        /// The pages of an executable mapping (same file and offset, or same anonymous address) hash differently.
        case codeModified
        /// Executable memory no file stands behind, not there at baseline.
        case newAnonymousExecutable
        /// An executable mapping of a file, not there at baseline and not part of an injected library
        /// (a memfd, a file mapped by hand, a known file mapped at another offset).
        case newExecutableMapping
        /// Writable and executable at once, and not so at baseline.
        case writableExecutable
        /// The file behind a mapping is gone from its path.
        case backingFileDeleted
        /// The file behind a mapping is another file now, or its content changed.
        case backingFileReplaced
        /// A shared object mapped now that was not at baseline, or LD_PRELOAD / LD_AUDIT set or changed.
        case libraryInjected
        /// An executable mapping of the baseline is gone (unmapped, or made non-executable).
        case mappingRemoved
        /// The pid belongs to another process now (or the process restarted): its baseline no longer applies.
        case processReplaced
    }

    public var dimension = "memory"
    public var change: Change
    public var pid: Int32
    /// The mapping file or pseudo name ([anon], [vdso]), the library, or the variable (LD_PRELOAD).
    public var path: String
    /// "start-end perms offset" of the mapping now (of the baseline's, for a removed one).
    public var mapping: String?
    public var old: String?
    public var new: String?
}

/// Compares a process's memory baseline with a capture of it now.
public enum MemoryValidator {
    /// Every difference: the loader's and the libraries' first, then the
    /// mappings' in address order, then the removed ones. With `sameProcess` (the default) a
    /// capture of another process (other pid or start time) yields only
    /// `processReplaced`: its addresses mean nothing against this baseline.
    /// Without it (a program's baseline applied to a new run of the program),
    /// file-backed mappings still match by file and offset.
    public static func compare(_ baseline: MemoryBaseline, _ current: MemoryBaseline, sameProcess: Bool = true) -> [MemoryFinding] {
        if sameProcess, baseline.pid != current.pid || baseline.startTime != current.startTime {
            return [MemoryFinding(change: .processReplaced, pid: current.pid, path: current.executable,
                                  old: "pid \(baseline.pid) started at tick \(baseline.startTime)",
                                  new: "pid \(current.pid) started at tick \(current.startTime)")]
        }
        var findings: [MemoryFinding] = []
        func add(_ change: MemoryFinding.Change, _ path: String, _ mapping: MemoryMapping?, _ old: String?, _ new: String?) {
            findings.append(MemoryFinding(change: change, pid: current.pid, path: path, mapping: mapping.map(describe), old: old, new: new))
        }

        let injected = Set(current.libraries).subtracting(baseline.libraries)
        for name in ["LD_PRELOAD", "LD_AUDIT"] where baseline.loaderEnvironment[name] != current.loaderEnvironment[name] {
            add(.libraryInjected, name, nil, baseline.loaderEnvironment[name], current.loaderEnvironment[name])
        }
        for library in injected.sorted() {
            let file = current.mappings.first { $0.path == library }?.file
            add(.libraryInjected, library, nil, nil, file?.hash ?? "mapped, not executable")
        }

        var before = Dictionary(grouping: baseline.mappings, by: key)
        var reportedFiles: Set<String> = []
        for mapping in current.mappings {
            let old = before[key(mapping)]?.first
            if old != nil { before[key(mapping)]?.removeFirst() }
            if mapping.isWritable, old?.isWritable != true {
                add(.writableExecutable, mapping.path, mapping, old.map { $0.permissions }, mapping.permissions)
            }
            guard let old else {
                if mapping.isAnonymous {
                    add(.newAnonymousExecutable, mapping.path, mapping, nil, mapping.codeHash)
                } else if !injected.contains(mapping.path) {
                    add(.newExecutableMapping, mapping.path, mapping, nil, mapping.file?.hash ?? mapping.codeHash)
                }
                continue
            }
            if old.codeHash != mapping.codeHash || old.unreadablePages != mapping.unreadablePages {
                add(.codeModified, mapping.path, mapping, pages(old), pages(mapping))
            }
            guard !mapping.isAnonymous, !reportedFiles.contains(mapping.path) else { continue }
            if let (change, was, now) = fileChange(old, mapping) {
                reportedFiles.insert(mapping.path)
                add(change, mapping.path, mapping, was, now)
            }
        }
        for gone in baseline.mappings where before[key(gone)]?.contains(gone) == true {
            add(.mappingRemoved, gone.path, gone, gone.codeHash, nil)
        }
        return findings
    }

    /// File-backed memory matches by file and offset (stable across runs of a
    /// program, whatever ASLR chose), named kernel memory ([vdso]) by its name,
    /// anonymous memory by its start address.
    private static func key(_ mapping: MemoryMapping) -> String {
        if mapping.matchesByAddress { return "\(mapping.path)@\(mapping.start)" }
        return "\(mapping.path)+\(mapping.offset)"
    }

    private static func describe(_ mapping: MemoryMapping) -> String {
        "\(mapping.range) \(mapping.permissions) \(String(mapping.offset, radix: 16))"
    }

    private static func pages(_ mapping: MemoryMapping) -> String {
        mapping.unreadablePages == 0 ? mapping.codeHash : "\(mapping.codeHash) (\(mapping.unreadablePages) pages unreadable)"
    }

    /// Deleted: the path names nothing now. Replaced: it names another file, or
    /// the same file with other content.
    private static func fileChange(_ old: MemoryMapping, _ new: MemoryMapping) -> (MemoryFinding.Change, String?, String?)? {
        if new.deleted, !old.deleted {
            guard let replacement = new.replacement else { return (.backingFileDeleted, old.file?.summary, nil) }
            return (.backingFileReplaced, old.file?.summary, replacement.summary)
        }
        switch (old.file, new.file) {
        case (let was?, let now?) where !was.isSameFile(as: now): return (.backingFileReplaced, was.summary, now.summary)
        case (let was?, nil): return (.backingFileDeleted, was.summary, nil)
        default: return nil
        }
    }
}
