import Foundation
import KernelSupport
import Testing
@testable import Sandbox

/// Kernel tests start real sandboxes: root, cgroups, namespaces.
let runsAsRoot = geteuid() == 0
let needsRoot = "needs root: cgroups, namespaces, capabilities and Landlock (the kernel refuses them to uid \(geteuid()))"

/// What a sandboxed command printed and how it ended.
struct SandboxOutput {
    let status: Sandbox.ExitStatus
    let output: String
    let landlockABI: Int?
}

/// One cgroup for a test's sandboxes, removed at the end.
final class TestCgroup {
    let parent: CgroupParentLock
    let cgroup: SandboxCgroup

    init(_ label: String) throws {
        let layout = try CgroupLayout.detect()
        parent = try CgroupParentLock(layout: layout)
        cgroup = try SandboxCgroup(layout: layout, name: "\(label)-\(getpid())-" + String(UInt32.random(in: 0...UInt32.max), radix: 16))
    }

    deinit {
        try? cgroup.destroy()
        parent.releaseAndRemoveParentIfUnused()
    }

    /// A spec for `arguments` (argv[0] an absolute path), no seccomp filter,
    /// stdout and stderr to the returned pipe.
    static func spec(_ arguments: [String], namespaces: NamespaceSet) -> ProcessSpec {
        ProcessSpec(executable: arguments[0], arguments: arguments,
                    environment: ["PATH=/usr/bin:/bin", "HOME=/tmp", "LANG=C.UTF-8"], workingDirectory: "/",
                    hostname: "test", namespaces: namespaces, seccomp: nil, dieWithParent: true)
    }

    /// Runs `arguments` in a new sandbox of this cgroup (or inside `joining`) and collects its output.
    func run(_ arguments: [String], namespaces: NamespaceSet = [.mount, .pid, .ipc, .uts, .cgroup],
             joining sandboxInit: SandboxedProcess? = nil,
             configure: (inout ProcessSpec) -> Void = { _ in }) throws -> SandboxOutput {
        var spec = Self.spec(arguments, namespaces: namespaces)
        configure(&spec)
        var fds: [Int32] = [-1, -1]
        try syscallChecked("pipe") { pipe(&fds) }
        let reader = OwnedDescriptor(fds[0])
        let process: SandboxedProcess
        do {
            defer { close(fds[1]) }  // the child has its copy; ours would hold off EOF
            spec.stdio = (-1, fds[1], fds[1])
            process = try sandboxInit.map { try SandboxedProcess(spec: spec, cgroup: cgroup, joining: $0) }
                ?? SandboxedProcess(spec: spec, cgroup: cgroup)
        }
        var output = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(reader.raw, &buffer, buffer.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            output += buffer[0..<n]
        }
        return SandboxOutput(status: process.wait(), output: String(decoding: output, as: UTF8.self),
                             landlockABI: process.landlockABI)
    }
}

/// Runs a Python snippet in a sandbox: the usual way these tests make syscalls inside.
extension TestCgroup {
    func python(_ script: String, namespaces: NamespaceSet = [.mount, .pid, .ipc, .uts, .cgroup],
                configure: (inout ProcessSpec) -> Void = { _ in }) throws -> SandboxOutput {
        try run(["/usr/bin/python3", "-c", script], namespaces: namespaces, configure: configure)
    }
}

/// A process outside every sandbox, started with posix_spawn (it is SIGKILLed at the end,
/// which Foundation's Process does not expect) and reaped with waitpid.
final class OutsideProcess {
    let pid: pid_t

    init(_ arguments: [String]) throws {
        var pid: pid_t = 0
        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let rc = posix_spawn(&pid, arguments[0], nil, nil, argv, environ)
        guard rc == 0 else { throw SystemError(errno: rc, call: "posix_spawn", context: arguments[0]) }
        self.pid = pid
    }

    var isAlive: Bool { kill(pid, 0) == 0 }

    deinit {
        kill(pid, SIGKILL)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    }
}

func makeTemporaryDirectory(_ label: String) throws -> String {
    let path = NSTemporaryDirectory() + "alcub3-\(label)-" + UUID().uuidString
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}
