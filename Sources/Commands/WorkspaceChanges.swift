#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser

/// `run --changes`: what becomes of the agent's changes to the caller's directory.
enum WorkspaceChanges: String, ExpressibleByArgument, CaseIterable, Sendable {
    /// Copied into the directory when the sandbox ends (the default).
    case apply
    /// Listed on the operator's terminal, applied only if the operator says yes.
    case review
    /// Thrown away with the sandbox; the directory stays as it was.
    case discard
}

/// The operator's own terminal (alcub3's controlling tty), never the agent's.
enum OperatorTerminal {
    static var available: Bool {
        let fd = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY)
        if fd >= 0 { close(fd) }
        return fd >= 0
    }

    /// Asks a yes/no question; anything but y or yes (or no terminal) is no.
    static func confirm(_ question: String) -> Bool {
        let fd = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        _ = question.withCString { write(fd, $0, strlen($0)) }
        var answer: [UInt8] = []
        var byte: UInt8 = 0
        while answer.count < 16, read(fd, &byte, 1) == 1, byte != UInt8(ascii: "\n") { answer.append(byte) }
        let text = String(decoding: answer, as: UTF8.self).lowercased()
        return text == "y" || text == "yes"
    }
}

