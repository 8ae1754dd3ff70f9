import Foundation
import KernelSupport
import Integrity
import Sandbox
import Telemetry

/// A sandbox's behaviour as the event pipeline sees it, since it started or
/// since its last baseline: the profile a baseline keeps and a validation
/// compares against.
final class BehaviourRecorder: @unchecked Sendable {
    private let lock = NSLock()
    private var profile = BehaviourProfile()
    /// Syscall counts by number: the event path runs once per syscall, so no
    /// name lookup there; names are given when a profile is taken.
    private var syscallCounts = [UInt64](repeating: 0, count: 1024)
    private var since = ProcessInfo.processInfo.systemUptime

    /// Adds the pipeline's counts by syscall number, and zeroes them.
    func add(syscalls counts: inout [UInt64]) {
        guard counts.contains(where: { $0 > 0 }) else { return }
        lock.withLock {
            for nr in counts.indices where counts[nr] > 0 && nr < syscallCounts.count { syscallCounts[nr] += counts[nr] }
        }
        for nr in counts.indices { counts[nr] = 0 }
    }

    /// Everything but syscalls (see `add(syscalls:)`).
    func record(_ event: TelemetryEvent) {
        lock.withLock {
            switch event {
            case .process(let p):
                if case .exec(let filename, _, _, _, _) = p.activity { profile.add(executable: filename) }
            case .network(let n) where n.operation == .connect || n.operation == .sendto || n.operation == .sendmsg:
                if n.remote.ip != nil || n.remote.unixPath != nil { profile.add(destination: n.remote.description) }
            case .file(let f) where f.operation.changesFilesystem:
                let parent = PathText.parent(of: f.path)
                profile.add(writtenDirectory: parent.isEmpty ? "/" : parent)
            default:
                break
            }
        }
    }

    /// The profile so far, covering the seconds since it began.
    func current() -> BehaviourProfile { lock.withLock { snapshot() } }

    /// The profile so far, and a new one begins (at a baseline).
    func takeAndRestart() -> BehaviourProfile {
        lock.withLock {
            let taken = snapshot()
            profile = BehaviourProfile()
            syscallCounts = [UInt64](repeating: 0, count: syscallCounts.count)
            since = ProcessInfo.processInfo.systemUptime
            return taken
        }
    }

    /// Called with the lock held.
    private func snapshot() -> BehaviourProfile {
        var copy = profile
        copy.windowSeconds = ProcessInfo.processInfo.systemUptime - since
        for (nr, count) in syscallCounts.enumerated() where count > 0 { copy.syscalls[SyscallNames.name(nr)] = count }
        return copy
    }
}
