#if canImport(Glibc)
import Glibc
#endif

/// stdout and stderr for the commands. A reader that goes away (`| head`)
/// must not kill alcub3 before it has cleaned up: SIGPIPE is ignored and a
/// broken stream is simply no longer written.
enum Output {
    static func ignoreBrokenPipes() { signal(SIGPIPE, SIG_IGN) }

    static func out(_ text: String) { write(1, text) }
    static func err(_ text: String) { write(2, text) }

    private static func write(_ fd: Int32, _ text: String) {
        var bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            offset += n
        }
    }
}
