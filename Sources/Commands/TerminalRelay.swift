#if canImport(Glibc)
import Glibc
#endif
import CAlcub3
import Foundation
import KernelSupport

/// The agent's own terminal, as `docker run -t` gives one: a new pty whose
/// slave is the agent's stdin (and stdout, stderr when those are the
/// operator's terminal too) and controlling terminal, and whose master
/// alcub3 relays to the operator's terminal, set raw meanwhile. The agent
/// never holds the operator's terminal, so TIOCSTI and friends act on the
/// agent's own input only; its ^C is the pty's, for the agent's processes.
final class TerminalRelay: @unchecked Sendable {
    // @unchecked: `saved` is written once before the threads start and read after they end.
    let master: OwnedDescriptor
    /// The slave, for the sandbox's stdio; the caller closes it after the spawn (`releaseSlave`).
    private(set) var slave: OwnedDescriptor?
    private var saved = termios()
    private let wake: (read: OwnedDescriptor, write: OwnedDescriptor)
    private var threads: [Thread] = []
    private let done = DispatchGroup()
    private var resize: DispatchSourceSignal?

    /// Where the agent's output goes: 1, or 2 when stdout carries alcub3's JSON records.
    let output: Int32

    /// The operator's terminal among stdin, stdout and stderr; nil when none is
    /// one (nothing to protect, nothing to relay). A terminal on stdout alone is
    /// relayed too: it is open for reading as well, and its modes are the operator's.
    static func forOperator(output: Int32) throws -> TerminalRelay? {
        guard isatty(0) == 1 || isatty(output) == 1 || isatty(2) == 1 else { return nil }
        return try TerminalRelay(output: output)
    }

    /// Whether the agent's stdin is the pty (it then makes it its controlling terminal).
    var relaysInput: Bool { isatty(0) == 1 }
    /// The operator's terminal whose modes and size the pty takes.
    private var operatorTerminal: Int32 { isatty(0) == 1 ? 0 : isatty(output) == 1 ? output : 2 }

    private init(output: Int32) throws {
        self.output = output
        var m: Int32 = -1, s: Int32 = -1
        let rc = alcub3_open_pty(&m, &s)
        guard rc == 0 else { throw SystemError(errno: -rc, call: "opening a pty", context: "/dev/ptmx") }
        master = OwnedDescriptor(m)
        slave = OwnedDescriptor(s)
        var fds: [Int32] = [-1, -1]
        try syscallChecked("pipe") { pipe(&fds) }
        _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        wake = (OwnedDescriptor(fds[0]), OwnedDescriptor(fds[1]))
        // The agent's terminal starts as the operator's: same modes, same size.
        var modes = termios()
        if tcgetattr(isatty(0) == 1 ? 0 : isatty(output) == 1 ? output : 2, &modes) == 0 {
            saved = modes
            _ = tcsetattr(slave!.raw, TCSANOW, &modes)
        }
        copyWindowSize()
    }

    /// The descriptors for the agent's stdin, stdout, stderr: the slave where
    /// the operator's side is a terminal, the operator's own otherwise.
    var stdio: (Int32, Int32, Int32) {
        let s = slave?.raw ?? 0
        return (isatty(0) == 1 ? s : 0, isatty(output) == 1 ? s : output, isatty(2) == 1 ? s : 2)
    }

    func releaseSlave() { slave = nil }

    /// Raw mode on the operator's terminal, then the two copies.
    func start() {
        if relaysInput {  // keystrokes pass to the agent's pty as they come
            var raw = saved
            cfmakeraw(&raw)
            raw.c_oflag = saved.c_oflag  // output processing kept: alcub3's own lines end in \r\n still
            _ = tcsetattr(0, TCSANOW, &raw)
        }
        signal(SIGWINCH, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGWINCH, queue: .global())
        source.setEventHandler { [weak self] in self?.copyWindowSize() }
        source.resume()
        resize = source
        let (master, wake, output) = (self.master.raw, self.wake.read.raw, self.output)
        done.enter()
        let drain = Thread { [done] in
            // Until the agent's side is closed everywhere (EIO) or alcub3 stops it.
            Self.copy(from: master, to: output, stop: wake)
            done.leave()
        }
        let input = Thread { Self.copy(from: 0, to: master, stop: wake) }
        threads = relaysInput ? [drain, input] : [drain]
        threads.forEach { $0.start() }
    }

    /// Waits for the agent's output to drain (bounded), stops the copies and restores the terminal.
    func finish() {
        _ = done.wait(timeout: .now() + 2)
        var byte: UInt8 = 1
        _ = write(wake.write.raw, &byte, 1)
        resize?.cancel()
        if relaysInput { _ = tcsetattr(0, TCSANOW, &saved) }
    }

    private func copyWindowSize() {
        _ = alcub3_copy_window_size(operatorTerminal, master.raw)
    }

    private static func copy(from source: Int32, to destination: Int32, stop: Int32) {
        var buffer = [UInt8](repeating: 0, count: 16 << 10)
        var fds = [pollfd(fd: source, events: Int16(POLLIN), revents: 0), pollfd(fd: stop, events: Int16(POLLIN), revents: 0)]
        while true {
            if poll(&fds, 2, -1) < 0 { if errno == EINTR { continue } else { return } }
            if fds[1].revents != 0 { return }
            let n = read(source, &buffer, buffer.count)
            if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            if n <= 0 { return }  // EOF, or EIO: the agent's side closed
            let ok = buffer.withUnsafeBytes { FileIO.writeAll(destination, UnsafeRawBufferPointer(rebasing: $0[..<n])) }
            if !ok { return }
        }
    }
}
