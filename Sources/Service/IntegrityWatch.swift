import Foundation
import Integrity
import Telemetry

/// Event-driven validation of the sandboxes that have a baseline: file-write
/// telemetry marks paths dirty, and each cycle (every `check_interval`)
/// rereads only those, so its cost follows what changed; every tenth cycle
/// rereads the whole tree, for changes telemetry could not see (made from
/// outside the sandbox). Each difference is reported once until the tree
/// matches the baseline again there.
final class IntegrityWatch: @unchecked Sendable {
    struct Watched {
        var baseline: FilesystemBaseline
        var tree: FileTree
        /// The tree's root as the sandbox sees it (file events carry these paths).
        var inside: String
        /// Dirty path -> the event that marked it (the finding's cause).
        var dirty: [String: String] = [:]
        /// Findings already reported ("change path"), so each is reported once.
        var reported: Set<String> = []
        var cycles = 0
        /// The last cycle: paths reread and its time.
        var lastCycle: (reread: Int, microseconds: Int)?
        /// When the baseline was made or last refreshed (CLOCK_MONOTONIC seconds).
        var since = ProcessInfo.processInfo.systemUptime
    }

    /// A cycle's result for one sandbox.
    struct CycleResult {
        let cgroupID: UInt64
        let newFindings: [IntegrityFinding]
        let reread: Int
        let microseconds: Int
        let full: Bool
    }

    /// integrity_monitoring.full_rescan_every (set by the daemon).
    var fullRescanEvery = 10
    private let lock = NSLock()
    private var watched: [UInt64: Watched] = [:]

    func watch(cgroupID: UInt64, baseline: FilesystemBaseline, tree: FileTree) {
        lock.withLock { watched[cgroupID] = Watched(baseline: baseline, tree: tree, inside: baseline.root) }
    }

    func unwatch(cgroupID: UInt64) { lock.withLock { _ = watched.removeValue(forKey: cgroupID) } }

    var isEmpty: Bool { lock.withLock { watched.isEmpty } }

    func isWatching(cgroupID: UInt64) -> Bool { lock.withLock { watched[cgroupID] != nil } }

    /// A file event of a watched sandbox: its paths under the tree become
    /// dirty, remembered with `cause` (the event in words).
    func note(_ event: FileEvent, cause: String) {
        lock.withLock {
            guard var entry = watched[event.origin.sandboxCgroupID] else { return }
            for path in [event.path, event.secondPath].compactMap({ $0 }) {
                if let relative = Self.relative(path, to: entry.inside) { entry.dirty[relative] = cause }
            }
            watched[event.origin.sandboxCgroupID] = entry
        }
    }

    /// The baseline a sandbox is validated against, and whether it is clean
    /// (nothing unresolved) and older than `age` seconds: ready for a refresh.
    func refreshable(olderThan age: Double) -> [UInt64] {
        lock.withLock {
            let now = ProcessInfo.processInfo.systemUptime
            return watched.filter { $0.value.reported.isEmpty && $0.value.dirty.isEmpty && now - $0.value.since >= age }.map(\.key)
        }
    }

    func baselineID(cgroupID: UInt64) -> String? { lock.withLock { watched[cgroupID]?.baseline.id } }

    /// One line for `sandbox monitor`.
    func status(cgroupID: UInt64) -> String {
        lock.withLock {
            guard let entry = watched[cgroupID] else { return "no baseline (alcub3 integrity baseline --agent-id ...)" }
            let state = entry.reported.isEmpty ? "clean" : "\(entry.reported.count) unresolved changes"
            let cycle = entry.lastCycle.map { "; last cycle reread \($0.reread) paths in \($0.microseconds) us" } ?? ""
            return "baseline \(entry.baseline.id): \(state) after \(entry.cycles) cycles\(cycle)"
        }
    }

    static func relative(_ path: String, to root: String) -> String? {
        if path == root { return "" }
        let prefix = root == "/" ? "/" : root + "/"
        return path.hasPrefix(prefix) ? String(path.dropFirst(prefix.count)) : nil
    }

    /// One cycle over every watched sandbox (a few at most: the lock is held
    /// while reading, which the dirty paths keep short).
    func cycle() -> [CycleResult] {
        lock.withLock {
            var results: [CycleResult] = []
            for (cgroupID, var entry) in watched {
                let started = DispatchTime.now().uptimeNanoseconds
                entry.cycles += 1
                let full = entry.cycles % fullRescanEvery == 0
                var findings: [IntegrityFinding]
                let reread: Int
                if full, let fresh = try? FileTree.scan(root: entry.tree.root) {
                    entry.tree = fresh
                    reread = fresh.count
                    findings = FilesystemValidator.compare(entry.baseline, with: fresh, foundBy: "rescan")
                } else {
                    let dirty = entry.dirty
                    entry.tree.rescan(Array(dirty.keys))
                    reread = dirty.count
                    findings = dirty.isEmpty ? []
                        : FilesystemValidator.compare(entry.baseline, with: entry.tree, only: Set(dirty.keys), foundBy: "event")
                    // Each finding names the write that led to it (its path, or the nearest dirty ancestor).
                    for i in findings.indices {
                        var key = Self.relative(findings[i].path, to: entry.inside)
                        while let path = key, dirty[path] == nil, let slash = path.lastIndex(of: "/") { key = String(path[..<slash]) }
                        findings[i].cause = key.flatMap { dirty[$0] }
                    }
                }
                entry.dirty = [:]
                let keys = Set(findings.map { "\($0.change.rawValue) \($0.path)" })
                let fresh = findings.filter { !entry.reported.contains("\($0.change.rawValue) \($0.path)") }
                // A path that matches the baseline again may be reported again when it changes again.
                if full { entry.reported = keys } else { entry.reported.formUnion(keys) }
                let microseconds = Int((DispatchTime.now().uptimeNanoseconds - started) / 1000)
                entry.lastCycle = (reread, microseconds)
                watched[cgroupID] = entry
                results.append(CycleResult(cgroupID: cgroupID, newFindings: fresh, reread: reread,
                                           microseconds: Int((DispatchTime.now().uptimeNanoseconds - started) / 1000), full: full))
            }
            return results
        }
    }
}
