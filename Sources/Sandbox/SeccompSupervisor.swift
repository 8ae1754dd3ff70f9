#if canImport(Glibc)
import Glibc
#endif
import CAlcub3
import CSeccomp
import Foundation
import KernelSupport

/// One syscall the supervisor refused, with what it asked for.
public struct SeccompNotice: Sendable, Hashable {
    /// The caller, in the supervisor's pid namespace (the host's).
    public let pid: Int32
    public let syscall: String
    public let arguments: [UInt64]
    /// The arguments decoded for a responder: `mount("none", "/mnt", "tmpfs", 0x0)`.
    public let call: String
    /// What the caller got: always a refusal (EPERM).
    public let errno: Int32
    /// CLOCK_BOOTTIME when the notification was received.
    public let receivedAt: UInt64
    /// How long from receiving the notification to answering it.
    public let answerNanos: UInt64
}

/// The user-space half of a sandbox's seccomp filter: the kernel stops each
/// syscall the filter sends here (SCMP_ACT_NOTIFY) until this answers.
/// Following the kernel's rule it only refuses (or would emulate): it never
/// lets a syscall continue after reading its pointer arguments, which the
/// caller could change in between (TOCTOU). Pointer arguments are read only
/// to report them. If the supervisor is gone (its listener closed), the
/// kernel fails every notified syscall with ENOSYS: closed, never open.
public final class SeccompSupervisor: @unchecked Sendable {
    /// Ours alone: closed when `serve` ends (by `stop`, by the sandbox's end or
    /// by an error), so no notified syscall can wait on a supervisor that is gone.
    private var listener: OwnedDescriptor!
    private let wake: OwnedDescriptor
    private let onNotice: @Sendable (SeccompNotice) -> Void
    private var thread: Thread?
    private let finished = DispatchSemaphore(value: 0)
    public let label: String

    /// Takes ownership of `listener` (from `SandboxedProcess.takeSeccompListener()`).
    public init(listener: OwnedDescriptor, label: String, onNotice: @escaping @Sendable (SeccompNotice) -> Void) throws {
        self.listener = listener
        self.label = label
        self.onNotice = onNotice
        self.wake = OwnedDescriptor(try syscallChecked("eventfd", label) { alcub3_eventfd() })
    }

    /// Starts answering on a thread of its own: a blocked caller is woken by
    /// the kernel directly, the shortest path (DESIGN: about 11 us per call
    /// when both run on one CPU).
    public func start() {
        let thread = Thread { [self] in
            serve()
            listener = nil
            finished.signal()
        }
        thread.name = "alcub3-seccomp-\(label)"
        thread.stackSize = 256 << 10
        self.thread = thread
        thread.start()
    }

    /// Stops answering and closes the listener: from then on the sandbox's
    /// notified syscalls fail with ENOSYS.
    public func stop() {
        guard thread != nil else { return }
        var one: UInt64 = 1
        _ = write(wake.raw, &one, 8)
        finished.wait()
        thread = nil
    }

    deinit { stop() }

    private func serve() {
        var request: UnsafeMutablePointer<seccomp_notif>?
        var response: UnsafeMutablePointer<seccomp_notif_resp>?
        guard seccomp_notify_alloc(&request, &response) == 0, let request, let response else { return }
        defer { seccomp_notify_free(request, response) }
        var fds = [pollfd(fd: listener.raw, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: wake.raw, events: Int16(POLLIN), revents: 0)]
        while true {
            let ready = poll(&fds, 2, -1)
            if ready < 0 && errno == EINTR { continue }
            if ready < 0 || fds[1].revents != 0 { return }
            // POLLHUP: no task uses the filter any more; the sandbox has ended.
            if fds[0].revents & Int16(POLLIN) == 0 { return }
            // The kernel refuses a request buffer that is not zeroed.
            request.pointee = seccomp_notif()
            let rc = seccomp_notify_receive(listener.raw, request)
            let received = bootClockNanos()
            if rc == -EINTR || rc == -ENOENT { continue } // the caller went away first
            if rc < 0 { return }
            response.pointee.id = request.pointee.id
            response.pointee.error = -EPERM
            response.pointee.val = 0
            response.pointee.flags = 0
            let notice = describe(request.pointee)
            // The arguments were read before answering; they are valid only if
            // the caller is still the one that asked (its pid may be reused).
            let valid = seccomp_notify_id_valid(listener.raw, request.pointee.id) == 0
            _ = seccomp_notify_respond(listener.raw, response)
            let answered = bootClockNanos()
            onNotice(SeccompNotice(pid: Int32(bitPattern: request.pointee.pid), syscall: notice.name,
                                   arguments: notice.arguments, call: valid ? notice.call : notice.bare,
                                   errno: EPERM, receivedAt: received, answerNanos: answered - received))
        }
    }

    private func describe(_ request: seccomp_notif) -> (name: String, arguments: [UInt64], call: String, bare: String) {
        let name = SyscallNames.name(Int(request.data.nr))
        let a = withUnsafeBytes(of: request.data.args) { Array($0.bindMemory(to: UInt64.self)) }
        let pid = Int32(bitPattern: request.pid)
        let bare = "\(name)(" + a.map { "0x" + String($0, radix: 16) }.joined(separator: ", ") + ")"
        func text(_ i: Int) -> String { a[i] == 0 ? "NULL" : "\"\(readString(pid: pid, address: a[i]) ?? "?")\"" }
        func hex(_ i: Int) -> String { "0x" + String(a[i], radix: 16) }
        let call: String
        switch name {
        case "mount": call = "mount(\(text(0)), \(text(1)), \(text(2)), \(hex(3)))"
        case "umount2", "chroot", "swapon", "swapoff", "acct": call = "\(name)(\(text(0)))"
        case "pivot_root": call = "pivot_root(\(text(0)), \(text(1)))"
        case "fsopen": call = "fsopen(\(text(0)), \(hex(1)))"
        case "open_tree": call = "open_tree(\(Int32(truncatingIfNeeded: a[0])), \(text(1)), \(hex(2)))"
        case "add_key", "request_key": call = "\(name)(\(text(0)), \(text(1)), ...)"
        case "mknod": call = "mknod(\(text(0)), 0o\(String(a[1], radix: 8)), \(hex(2)))"
        case "mknodat": call = "mknodat(\(Int32(truncatingIfNeeded: a[0])), \(text(1)), 0o\(String(a[2], radix: 8)), \(hex(3)))"
        case "memfd_create": call = "memfd_create(\(text(0)), \(hex(1)))"
        case "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kill":
            call = "\(name)(" + a.prefix(2).map { String(Int64(bitPattern: $0)) }.joined(separator: ", ") + ", ...)"
        default: call = bare
        }
        return (name, a, call, bare)
    }

    /// A NUL-terminated string of the caller, at most 256 bytes, for the report only.
    private func readString(pid: Int32, address: UInt64) -> String? {
        var buffer = [UInt8](repeating: 0, count: 256)
        // Read up to the end of the page first: the string may end right before an unmapped page.
        let pageLeft = 4096 - Int(address % 4096)
        var got = 0
        for chunk in [min(pageLeft, 256), 256 - min(pageLeft, 256)] where chunk > 0 {
            let n = buffer.withUnsafeMutableBytes {
                alcub3_read_process(pid, address + UInt64(got), $0.baseAddress! + got, chunk)
            }
            if n <= 0 { break }
            got += n
            if buffer[..<got].contains(0) { break }
        }
        guard got > 0 else { return nil }
        let end = buffer[..<got].firstIndex(of: 0) ?? got
        return String(decoding: buffer[..<end], as: UTF8.self).unicodeScalars
            .map { $0.value < 0x20 || $0.value == 0x7f ? "\\u{\(String($0.value, radix: 16))}" : String($0) }.joined()
    }
}

