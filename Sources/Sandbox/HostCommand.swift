#if canImport(Glibc)
import Glibc
#endif
import KernelSupport

/// Runs a host tool (runc, ip, iptables) with posix_spawn and waits for that
/// pid alone. Not Foundation's Process: its reaper misses children here (see
/// the tests' TestService), and a service that is a child subreaper must not
/// let anything reap with waitpid(-1).
public enum HostCommand {
    public struct Status: Sendable {
        /// The exit code, or 128 + the signal that ended it; 127 when it could not start.
        public var code: Int32
        /// stdout and stderr together (empty when they were not captured).
        public var output: String
    }

    /// Runs `arguments` (argv[0] an absolute path), captures its output, waits.
    /// `input` is written to its stdin (for `ip -batch -`).
    public static func run(_ arguments: [String], input: String? = nil) -> Status {
        var outFDs: [Int32] = [-1, -1], inFDs: [Int32] = [-1, -1]
        guard pipe(&outFDs) == 0 else { return Status(code: 127, output: "pipe: errno \(errno)") }
        if input != nil, pipe(&inFDs) != 0 {
            close(outFDs[0]); close(outFDs[1])
            return Status(code: 127, output: "pipe: errno \(errno)")
        }
        for fd in outFDs + inFDs where fd >= 0 { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { if devNull >= 0 { close(devNull) } }
        let pid = spawn(arguments, stdio: (input != nil ? inFDs[0] : devNull, outFDs[1], outFDs[1]))
        close(outFDs[1])
        if input != nil { close(inFDs[0]) }
        guard let pid else {
            close(outFDs[0])
            if input != nil { close(inFDs[1]) }
            return Status(code: 127, output: "\(arguments[0]): could not start (errno \(errno))")
        }
        if let input {
            var bytes = Array(input.utf8)
            var offset = 0
            while offset < bytes.count {
                let n = bytes.withUnsafeMutableBytes { write(inFDs[1], $0.baseAddress! + offset, $0.count - offset) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                offset += n
            }
            close(inFDs[1])
        }
        var output = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 16384)
        while true {
            let n = read(outFDs[0], &buffer, buffer.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            output.append(contentsOf: buffer[0..<n])
        }
        close(outFDs[0])
        return Status(code: wait(pid), output: String(decoding: output, as: UTF8.self))
    }

    /// Starts `arguments` with `stdio` (-1 inherits alcub3's) and every signal at its default disposition and
    /// unblocked (alcub3 run ignores SIGINT while it cleans up; runc and the
    /// container must not inherit that). Returns the pid, or nil and errno.
    public static func spawn(_ arguments: [String], stdio: (Int32, Int32, Int32)) -> pid_t? {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if stdio.0 >= 0 { posix_spawn_file_actions_adddup2(&actions, stdio.0, 0) }
        if stdio.1 >= 0 { posix_spawn_file_actions_adddup2(&actions, stdio.1, 1) }
        if stdio.2 >= 0 { posix_spawn_file_actions_adddup2(&actions, stdio.2, 2) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var all = sigset_t(), none = sigset_t()
        sigfillset(&all)
        sigemptyset(&none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
        let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, arguments[0], &actions, &attributes, argv, environ)
        if rc != 0 {
            errno = rc
            return nil
        }
        return pid
    }

    /// Waits for one child; its exit code, or 128 + the signal that ended it.
    public static func wait(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno == EINTR { continue }
            return 127
        }
        return shellCode(waitStatus: status)
    }

    /// A wait status as a shell reports it: the exit code, or 128 + the signal that ended the process.
    public static func shellCode(waitStatus status: Int32) -> Int32 {
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : 128 + signal
    }

    /// Where a host tool alcub3 runs is: the path `$variable` names (for a
    /// test or an unusual install), else `locate(name, candidates:)`.
    public enum Tool: Equatable {
        case found(String)
        /// `$variable` names this path, which is not an executable.
        case notExecutable(String)
        case notInstalled
    }

    public static func locate(_ name: String, overriddenBy variable: String, candidates: [String]) -> Tool {
        if let value = getenv(variable), value.pointee != 0 {
            let chosen = String(cString: value)
            return access(chosen, X_OK) == 0 ? .found(chosen) : .notExecutable(chosen)
        }
        return locate(name, candidates: candidates).map(Tool.found) ?? .notInstalled
    }

    /// The first of `candidates` that is an executable file, or the name found on PATH.
    public static func locate(_ name: String, candidates: [String] = []) -> String? {
        let path = (getenv("PATH").map { String(cString: $0) } ?? "") + ":/usr/sbin:/usr/bin:/sbin:/bin"
        for candidate in candidates + path.split(separator: ":").map({ "\($0)/\(name)" }) where access(candidate, X_OK) == 0 {
            return candidate
        }
        return nil
    }
}
