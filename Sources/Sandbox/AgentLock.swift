import Foundation
#if canImport(Glibc)
import Glibc
#endif
import KernelSupport

/// One live sandbox per agent id, across processes: an exclusive flock on
/// /run/alcub3/agents/<id>.lock held for the sandbox's life. The kernel drops
/// the lock when its holder dies, so a crashed run never blocks the id.
public final class AgentLock: Sendable {
    public static let directory = "/run/alcub3/agents"
    public let agentID: String
    private let descriptor: OwnedDescriptor
    private let path: String

    public init(agentID: String, directory: String = AgentLock.directory) throws {
        self.agentID = agentID
        try Self.makeDirectories(directory)
        path = directory + "/" + agentID + ".lock"
        while true {
            let fd = try OwnedDescriptor(path: path, flags: O_RDWR | O_CREAT, mode: 0o600)
            if flock(fd.raw, LOCK_EX | LOCK_NB) != 0 {
                if errno == EWOULDBLOCK {
                    let holder = (try? FileIO.read(path)).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
                    throw SandboxError.agentInUse(agent: agentID, holder: holder.map { "process \($0)" } ?? "another alcub3 process")
                }
                throw SystemError(errno: errno, call: "flock", context: path)
            }
            // The previous holder may have unlinked the file between our open and
            // our flock; then the lock is on a dead inode and we go again.
            var held = stat(), current = stat()
            if fstat(fd.raw, &held) == 0, stat(path, &current) == 0, held.st_ino == current.st_ino {
                let me = "\(getpid())\n"
                _ = ftruncate(fd.raw, 0)
                _ = me.withCString { pwrite(fd.raw, $0, strlen($0), 0) }
                descriptor = fd
                return
            }
        }
    }

    /// Unlinks the lock file while still holding the lock, then lets go.
    public func release() {
        unlink(path)
    }

    static func makeDirectories(_ path: String) throws {
        var prefix = ""
        for part in path.split(separator: "/") {
            prefix += "/" + part
            if mkdir(prefix, 0o755) != 0 && errno != EEXIST {
                throw SystemError(errno: errno, call: "mkdir", context: prefix)
            }
        }
    }
}
