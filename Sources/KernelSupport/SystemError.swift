#if canImport(Glibc)
import Glibc
#endif

/// The one error every syscall wrapper throws: which call failed, with which
/// errno, on what (a path, a pid, a program name).
public struct SystemError: Error, CustomStringConvertible, Sendable, Equatable {
    public let errno: Int32
    public let call: String
    public let context: String

    public init(errno: Int32, call: String, context: String = "") {
        self.errno = errno
        self.call = call
        self.context = context
    }

    public var errnoName: String { Self.name(of: errno) }

    /// EPERM for 1, and so on; "errno N" for a number without a name here.
    public static func name(of code: Int32) -> String { errnoNames[code] ?? "errno \(code)" }

    public var description: String {
        let message = String(cString: strerror(errno))
        let subject = context.isEmpty ? "" : " \(context)"
        return "\(call)\(subject): \(message) (\(errnoName))"
    }
}

private let errnoNames: [Int32: String] = [
    EPERM: "EPERM", ENOENT: "ENOENT", ESRCH: "ESRCH", EINTR: "EINTR", EIO: "EIO",
    E2BIG: "E2BIG", EBADF: "EBADF", EAGAIN: "EAGAIN", ENOMEM: "ENOMEM", EACCES: "EACCES",
    EFAULT: "EFAULT", EBUSY: "EBUSY", EEXIST: "EEXIST", ENOTDIR: "ENOTDIR", EISDIR: "EISDIR",
    EINVAL: "EINVAL", ENOSPC: "ENOSPC", EROFS: "EROFS", ENOSYS: "ENOSYS", ENOTSUP: "EOPNOTSUPP",
    ENOEXEC: "ENOEXEC", ENOTEMPTY: "ENOTEMPTY", ELOOP: "ELOOP", ENAMETOOLONG: "ENAMETOOLONG",
    EADDRINUSE: "EADDRINUSE", EADDRNOTAVAIL: "EADDRNOTAVAIL", ENETUNREACH: "ENETUNREACH",
    ETIMEDOUT: "ETIMEDOUT", ECONNREFUSED: "ECONNREFUSED", EHOSTUNREACH: "EHOSTUNREACH", EINPROGRESS: "EINPROGRESS",
]

/// Runs a call that returns -1 and sets errno, retrying on EINTR: the only
/// place in alcub3 that retries EINTR.
@discardableResult
public func syscallChecked<T: BinaryInteger>(
    _ call: String, _ context: @autoclosure () -> String = "", _ body: () -> T
) throws(SystemError) -> T {
    while true {
        let result = body()
        if result >= 0 { return result }
        let code = Glibc.errno
        if code == EINTR { continue }
        // EBADF and EFAULT are alcub3's own bugs, not the world's.
        precondition(code != EBADF && code != EFAULT, "\(call) \(context()): our bug (errno \(code))")
        throw SystemError(errno: code, call: call, context: context())
    }
}

/// For libbpf-style calls that return -errno.
@discardableResult
public func negativeErrnoChecked(
    _ call: String, _ context: @autoclosure () -> String = "", _ body: () -> Int32
) throws(SystemError) -> Int32 {
    let result = body()
    if result < 0 { throw SystemError(errno: -result, call: call, context: context()) }
    return result
}
