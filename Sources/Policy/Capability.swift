/// What an agent may do beyond the base every process needs; each capability
/// adds a group of x86_64 syscalls to the sandbox's allow-list. The groups
/// were taken from strace of coreutils, sh and CPython 3.11 doing each kind
/// of work (docs/policy.md lists them with the reasons).
public enum Capability: String, NamedCase, Codable {
    case network
    case filesystemWrite = "filesystem_write"
    case subprocess
    case python
    /// Just-in-time compilers (node's V8, the JVM, LuaJIT, PyPy, .NET) write
    /// machine code and then execute it: the sandbox's write-xor-execute
    /// memory rule (PR_SET_MDWE) is lifted for them. No syscalls of its own.
    case jit

    public static let noun = "capability"

    /// The sorted, duplicate-free allow-list for a set of capabilities.
    public static func allowedSyscalls(for capabilities: some Sequence<Capability>) -> [String] {
        var names = Set(baseSyscalls)
        for capability in capabilities { names.formUnion(capability.syscalls) }
        return names.sorted()
    }

    /// Every process: the dynamic loader and libc start-up, reading files and
    /// directories, memory, signals, time, waiting on descriptors, and execve
    /// (the sandbox starts its agent with it; replacing oneself makes no new
    /// process). openat is here because nothing runs without opening files;
    /// whether a file may be opened for writing is the filesystem policy's
    /// decision (read-only system view, Landlock), and without filesystem_write
    /// enforcement may also refuse openat's write flags, which seccomp can see.
    /// sysinfo is here because glibc's qsort asks it for the memory size.
    public static let baseSyscalls: [String] = [
        // descriptors and plain I/O
        "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
        "lseek", "close", "close_range", "dup", "dup2", "dup3", "fcntl", "ioctl", "flock", "fadvise64",
        "pipe", "pipe2", "eventfd", "eventfd2",
        // reading the filesystem
        "open", "openat", "access", "faccessat", "faccessat2", "stat", "fstat", "lstat", "newfstatat", "statx",
        "statfs", "fstatfs", "readlink", "readlinkat", "getdents", "getdents64", "getcwd", "chdir", "fchdir",
        "getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr", "umask",
        // memory
        "brk", "mmap", "munmap", "mprotect", "mremap", "madvise",
        // program start and end
        "execve", "execveat", "exit", "exit_group", "arch_prctl", "set_tid_address", "set_robust_list",
        "get_robust_list", "rseq", "prlimit64", "getrlimit", "getrusage", "times", "uname", "sysinfo", "getrandom",
        // identity
        "getpid", "getppid", "gettid", "getuid", "geteuid", "getgid", "getegid", "getgroups", "getresuid",
        "getresgid", "getpgrp", "getpgid", "getsid",
        // signals (tgkill: abort() and raise() signal the calling thread)
        "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigsuspend", "rt_sigtimedwait",
        "sigaltstack", "tgkill",
        // time and waiting
        "futex", "sched_yield", "sched_getaffinity", "nanosleep", "clock_nanosleep", "clock_gettime",
        "clock_getres", "gettimeofday", "time", "alarm", "getitimer", "setitimer",
        "timerfd_create", "timerfd_settime", "timerfd_gettime",
        "poll", "ppoll", "select", "pselect6", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait",
        "epoll_pwait", "epoll_pwait2",
    ]

    public var syscalls: [String] {
        switch self {
        case .network:
            // Sockets of every family, and the calls that use them.
            return ["socket", "socketpair", "connect", "bind", "listen", "accept", "accept4", "getsockname",
                    "getpeername", "setsockopt", "getsockopt", "sendto", "recvfrom", "sendmsg", "recvmsg",
                    "sendmmsg", "recvmmsg", "shutdown"]
        case .filesystemWrite:
            // Calls that only change the filesystem: names, contents, metadata.
            return ["mkdir", "mkdirat", "rmdir", "rename", "renameat", "renameat2", "unlink", "unlinkat",
                    "link", "linkat", "symlink", "symlinkat", "creat", "truncate", "ftruncate", "fallocate",
                    "chmod", "fchmod", "fchmodat", "chown", "fchown", "lchown", "fchownat",
                    "utime", "utimes", "utimensat", "futimesat", "fsync", "fdatasync", "sync_file_range",
                    "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr",
                    "sendfile", "copy_file_range"]
        case .subprocess:
            // New processes and their control. clone3 is in no group: its flags sit in
            // memory seccomp cannot read, so it is answered ENOSYS and libc falls back to clone.
            return ["clone", "fork", "vfork", "wait4", "waitid", "kill", "setpgid", "setsid",
                    "pidfd_open", "pidfd_send_signal", "prctl"]
        case .python:
            // CPython beyond the base: threads (clone; its flags are a register seccomp
            // can read, so enforcement can hold a sandbox without subprocess to
            // CLONE_THREAD) and asyncio's self-pipe, a socketpair it sends one byte over.
            return ["clone", "socketpair", "getsockname", "sendto", "recvfrom", "shutdown"]
        case .jit:
            return []
        }
    }
}
