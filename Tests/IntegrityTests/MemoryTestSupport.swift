#if canImport(Glibc)
import Glibc
#endif
import Foundation

struct MemoryTestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The programs the memory tests inspect, compiled with /usr/bin/cc into a
/// scratch directory at test time (SwiftPM would try to build C files kept
/// in the test target): a helper that changes its own memory on command,
/// and a library it was not linked with.
final class MemoryFixture {
    let directory: String
    var helper: String { directory + "/helper" }
    var library: String { directory + "/libinjected.so" }
    /// The helper linked at a fixed address (maps pads its addresses, map_files does not).
    var helperWithoutPIE: String { directory + "/helper-nopie" }

    static let helperSource = #"""
    #include <dlfcn.h>
    #include <stdio.h>
    #include <string.h>
    #include <sys/mman.h>
    #include <unistd.h>

    /* One command a line on stdin, one reply a line on stdout:
       rwx [shared] -> maps a read-write-execute anonymous page; dlopen PATH -> loads a library. */
    int main(int argc, char **argv) {
        char line[4096];
        setvbuf(stdout, NULL, _IONBF, 0);
        if (argc > 1 && strcmp(argv[1], "xonly") == 0) {
            /* An execute-only page: process_vm_readv cannot read it, /proc/PID/mem can. */
            unsigned char *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            memset(page, 0x90, 4096);
            mprotect(page, 4096, PROT_EXEC);
            printf("ready %p\n", (void *)page);
        } else {
            printf("ready\n");
        }
        while (fgets(line, sizeof line, stdin)) {
            line[strcspn(line, "\n")] = 0;
            if (strcmp(line, "rwx") == 0 || strcmp(line, "rwx shared") == 0) {
                int flags = (line[3] ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS;
                unsigned char *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, flags, -1, 0);
                memset(page, 0xc3, 4096);
                printf("%p\n", (void *)page);
            } else if (strncmp(line, "dlopen ", 7) == 0) {
                printf("%s\n", dlopen(line + 7, RTLD_NOW) ? "loaded" : dlerror());
            } else {
                printf("unknown\n");
            }
        }
        return 0;
    }
    """#

    static let librarySource = "int alcub3_injected(int x) { return x * 3 + 1; }\n"

    init() throws {
        directory = NSTemporaryDirectory() + "alcub3-memory-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try Self.helperSource.write(toFile: directory + "/helper.c", atomically: false, encoding: .utf8)
        try Self.librarySource.write(toFile: directory + "/injected.c", atomically: false, encoding: .utf8)
        try Self.compile(["-O1", "-o", helper, directory + "/helper.c"])
        try Self.compile(["-O1", "-shared", "-fPIC", "-o", library, directory + "/injected.c"])
        try Self.compile(["-O1", "-no-pie", "-o", helperWithoutPIE, directory + "/helper.c"])
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    private static func compile(_ arguments: [String]) throws {
        let cc = try SpawnedProcess(["/usr/bin/cc"] + arguments, environment: ["PATH": "/usr/bin:/bin"], ready: false)
        let status = cc.wait()
        guard status == 0 else { throw MemoryTestFailure("cc \(arguments.joined(separator: " ")): exit status \(status)") }
    }
}

/// A child started with posix_spawn, talked to through pipes on its stdin and
/// stdout, SIGKILLed and reaped when dropped (Foundation's Process does not
/// expect a SIGKILLed child; see CommandsTests' TestService).
final class SpawnedProcess {
    let pid: pid_t
    private let input: Int32
    private let output: Int32
    private var reaped = false
    /// The first line the child wrote ("ready ..."), when waited for.
    private(set) var greeting = ""

    init(_ arguments: [String], environment: [String: String] = [:], ready: Bool = true) throws {
        var toChild: [Int32] = [0, 0], fromChild: [Int32] = [0, 0]
        guard pipe(&toChild) == 0, pipe(&fromChild) == 0 else { throw MemoryTestFailure("pipe: errno \(errno)") }
        for fd in toChild + fromChild { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, toChild[0], 0)
        posix_spawn_file_actions_adddup2(&actions, fromChild[1], 1)
        let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, arguments[0], &actions, nil, argv, envp)
        close(toChild[0])
        close(fromChild[1])
        input = toChild[1]
        output = fromChild[0]
        guard rc == 0 else {
            close(input)
            close(output)
            throw MemoryTestFailure("posix_spawn \(arguments[0]): \(rc)")
        }
        self.pid = pid
        if ready { greeting = try readLine() }
    }

    /// Sends one command and returns the child's one-line reply.
    func send(_ line: String) throws -> String {
        let bytes = Array((line + "\n").utf8)
        guard write(input, bytes, bytes.count) == bytes.count else { throw MemoryTestFailure("write to \(pid): errno \(errno)") }
        return try readLine()
    }

    func readLine(timeoutMilliseconds: Int32 = 10_000) throws -> String {
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while true {
            var ready = pollfd(fd: output, events: Int16(POLLIN), revents: 0)
            guard poll(&ready, 1, timeoutMilliseconds) == 1 else { throw MemoryTestFailure("no reply from pid \(pid)") }
            guard read(output, &byte, 1) == 1 else { throw MemoryTestFailure("pid \(pid) closed its output") }
            if byte == UInt8(ascii: "\n") { return String(decoding: line, as: UTF8.self) }
            line.append(byte)
        }
    }

    /// Waits for the child to exit on its own; its exit status (128+n for signal n).
    func wait() -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        reaped = true
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    deinit {
        close(input)
        close(output)
        if !reaped {
            kill(pid, SIGKILL)
            _ = wait()
        }
    }
}
