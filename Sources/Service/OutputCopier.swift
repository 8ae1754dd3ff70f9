#if canImport(Glibc)
import Glibc
#endif
import Foundation
import KernelSupport
import Synchronization

/// A service sandbox's stdout and stderr. The agent writes into a FIFO in the
/// sandbox's state directory (root's alone, hidden from every sandbox); this
/// copier moves it into output.log and stops writing at the quota: the first
/// `quota` bytes are kept, then one line saying so, and the rest is read and
/// discarded so the agent never blocks on a full pipe. `onQuota` is called
/// once, when the quota is first reached.
///
/// A FIFO, not an anonymous pipe: the agent holds it open read-write, so its
/// writes never fail with EPIPE (or SIGPIPE) while no service runs, and a
/// restarted service opens it again by name and goes on copying.
final class OutputCopier: Sendable {
    static let fifoName = "output.fifo"
    static let logName = "output.log"

    private let reader: OwnedDescriptor
    private let log: OwnedDescriptor
    private let quota: UInt64
    private let stopper: (read: OwnedDescriptor, write: OwnedDescriptor)
    private let finished = DispatchSemaphore(value: 0)
    private let onQuota: @Sendable (String) -> Void

    /// Makes the FIFO in `directory` and returns the agent's end (read-write).
    static func agentEnd(directory: String) throws -> OwnedDescriptor {
        let path = directory + "/" + fifoName
        try syscallChecked("mkfifo", path) { mkfifo(path, 0o600) }
        let fd = try OwnedDescriptor(path: path, flags: O_RDWR | O_NOFOLLOW)
        _ = fcntl(fd.raw, 1031 /* F_SETPIPE_SZ */, 1 << 20)  // fewer wake-ups for a chatty agent; the default 64 KiB where refused
        return fd
    }

    /// The service's own writer for a taken-over vm guest's output: the FIFO
    /// (so the quota holds), or output.log for a sandbox made before it.
    static func writer(directory: String) -> Int32 {
        let fifo = open(directory + "/" + fifoName, O_RDWR | O_NOFOLLOW | O_CLOEXEC)
        return fifo >= 0 ? fifo : open(directory + "/" + logName, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
    }

    /// Opens the FIFO and output.log of the sandbox in `directory`; nil for a
    /// sandbox made before output went through a FIFO.
    init?(directory: String, quota: UInt64, onQuota: @escaping @Sendable (String) -> Void) {
        let fifo = open(directory + "/" + Self.fifoName, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC)
        guard fifo >= 0 else { return nil }
        reader = OwnedDescriptor(fifo)
        var st = stat()
        guard fstat(fifo, &st) == 0, st.st_mode & S_IFMT == S_IFIFO,
              let log = try? OwnedDescriptor(path: directory + "/" + Self.logName, flags: O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW),
              let stopper = try? SandboxManager.pipe() else { return nil }
        self.log = log
        self.stopper = (stopper.0, OwnedDescriptor(stopper.1))
        self.quota = quota
        self.onQuota = onQuota
    }

    /// Copies on a thread of its own until every writer has gone or `stop`.
    func start() {
        Thread.detachNewThread { [self] in
            copy()
            finished.signal()
        }
    }

    /// Ends the copy after what the FIFO still holds; waits for it (2 s at most).
    func stop() {
        var byte: UInt8 = 1
        _ = write(stopper.write.raw, &byte, 1)
        _ = finished.wait(timeout: .now() + 2)
    }

    private func copy() {
        var st = stat()
        var written = fstat(log.raw, &st) == 0 ? UInt64(st.st_size) : 0  // a restarted service goes on where it was
        var chunk = [UInt8](repeating: 0, count: 65536)
        var stopping = false
        var drains = 0  // after stop: what the FIFO holds, not a writer that goes on for ever
        while drains < 256 {
            var fds = [pollfd(fd: reader.raw, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: stopper.read.raw, events: Int16(POLLIN), revents: 0)]
            if !stopping {
                if poll(&fds, 2, -1) < 0 {
                    if errno == EINTR { continue }
                    return
                }
                stopping = fds[1].revents != 0
            } else {
                drains += 1
            }
            let n = chunk.withUnsafeMutableBytes { read(reader.raw, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == EAGAIN {
                if stopping { return }  // drained
                continue
            }
            if n <= 0 { return }  // every writer has gone (the sandbox ended)
            if written < quota {
                let keep = Int(min(UInt64(n), quota - written))
                _ = chunk.withUnsafeBytes { FileIO.writeAll(log.raw, UnsafeRawBufferPointer(rebasing: $0[0..<keep])) }
                written += UInt64(keep)
                if written >= quota {
                    let note = "\n[alcub3: output quota of \(quota) bytes reached; further output is discarded]\n"
                    _ = Array(note.utf8).withUnsafeBytes { FileIO.writeAll(log.raw, $0) }
                    written += UInt64(note.utf8.count)
                    onQuota("stdout and stderr reached the output quota of \(quota) bytes (output.log); the rest is discarded")
                }
            }
        }
    }
}
