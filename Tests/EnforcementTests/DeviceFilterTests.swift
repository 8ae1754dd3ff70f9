import CLibBPF
import Foundation
import KernelSupport
import Policy
import Sandbox
import Synchronization
import Testing
@testable import Enforcement
@testable import Telemetry

/// The cgroup device filter on the real kernel (audit H4 and L6): a sandboxed
/// root process cannot read a host block device or a console through any
/// node, a minimal /dev's devices work, every refusal becomes a finding, and
/// nothing stays attached or pinned afterwards.
@Suite(.serialized, .enabled(if: geteuid() == 0, "needs root: cgroup BPF programs, losetup, mknod"))
struct DeviceFilterKernelTests {
    /// Char devices of the audit's L6 and H4 list (those this host has).
    static let refusedCharDevices = ["/dev/vcs1", "/dev/ttyS0", "/dev/kmsg", "/dev/console", "/dev/mem", "/dev/tty1"]
        .filter { FileIO.exists($0) }

    /// A loop device backed by a file whose first bytes are a canary, and a
    /// node for it in a directory the sandbox can see (not under /dev):
    /// the audit's H4 reproduction. Removed by `detach`.
    struct Loop {
        let directory: String
        let device: String
        let node: String
        static let canary = "HIDDEN-ROOT-FILE-CANARY"

        init() throws {
            directory = NSTemporaryDirectory() + "alcub3-devices-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
            try Data((Self.canary + String(repeating: "\0", count: 4096 - Self.canary.count)).utf8).write(to: URL(fileURLWithPath: directory + "/loopimg"))
            device = try Self.command("/usr/sbin/losetup", ["-f", "--show", directory + "/loopimg"])
                .trimmingCharacters(in: .whitespacesAndNewlines)
            node = directory + "/blk"
            var st = stat()
            try #require(stat(device, &st) == 0, "stat \(device): errno \(errno)")
            try #require(mknod(node, S_IFBLK | 0o600, st.st_rdev) == 0, "mknod \(node): errno \(errno)")
        }

        func detach() {
            _ = try? Self.command("/usr/sbin/losetup", ["-d", device])
            try? FileManager.default.removeItem(atPath: directory)
        }

        static func command(_ path: String, _ arguments: [String]) throws -> String {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: path)
            p.arguments = arguments
            let out = Pipe()
            p.standardOutput = out
            try p.run()
            let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            try #require(p.terminationStatus == 0, "\(path) \(arguments) exited \(p.terminationStatus)")
            return text
        }
    }

    /// Opens, reads and mknods inside the cgroup; writes {path: errno (0: worked)} as JSON to `results`.
    static func probeScript(loop: Loop, results: String) -> String {
        """
        import json, os, errno
        r = {}
        def attempt(name, f):
            try:
                f(); r[name] = 0
            except OSError as e:
                r[name] = e.errno
        def read(path, n=23):
            def f():
                fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
                try:
                    r[path + ':data'] = os.read(fd, n).decode('latin-1')
                finally:
                    os.close(fd)
            return f
        def rw(path):
            return lambda: os.close(os.open(path, os.O_RDWR | os.O_NOCTTY))
        for p in [\(([loop.node, loop.device] + refusedCharDevices).map { "'\($0)'" }.joined(separator: ", "))]:
            attempt(p, read(p))
        attempt('mknod mem', lambda: os.mknod('\(loop.directory)/mem', 0o600 | 0o020000, os.makedev(1, 1)))
        attempt('mknod null', lambda: os.mknod('\(loop.directory)/null', 0o600 | 0o020000, os.makedev(1, 3)))
        for p in ['/dev/null', '/dev/zero', '/dev/full', '/dev/random', '/dev/urandom', '/dev/ptmx']:
            attempt(p, rw(p))
        attempt('/dev/tty', rw('/dev/tty'))
        def pty():
            m, s = os.openpty(); os.write(m, b'x'); os.close(s); os.close(m)
        attempt('openpty', pty)
        r['v1 devices cgroup'] = [l.split(':', 2)[2] for l in open('/proc/self/cgroup').read().splitlines() if ':devices:' in l]
        json.dump(r, open('\(results)', 'w'))
        """
    }

    /// Runs python `script` in the cgroup, uid 0 with CAP_MKNOD kept (a sandbox drops it and its
    /// seccomp filter refuses device mknod: here the filter alone must refuse it).
    static func runPython(_ script: String, in cgroup: SandboxCgroup) throws -> Sandbox.ExitStatus {
        var spec = ProcessSpec(executable: "/usr/bin/python3", arguments: ["/usr/bin/python3", "-c", script], environment: [],
                               workingDirectory: "/", hostname: "t", namespaces: [], seccomp: nil, dieWithParent: true)
        spec.keepCapabilities = ["CAP_MKNOD"]
        return try SandboxedProcess(spec: spec, cgroup: cgroup).wait()
    }

    /// Programs of `type` attached to the cgroup itself (BPF_PROG_QUERY).
    static func attachedPrograms(_ cgroup: SandboxCgroup) throws -> UInt32 {
        let directory = try cgroup.openDirectory()
        var ids = [UInt32](repeating: 0, count: 16)
        var count = UInt32(ids.count)
        var flags: UInt32 = 0
        let rc = bpf_prog_query(directory.raw, BPF_CGROUP_DEVICE, 0, &flags, &ids, &count)
        try #require(rc == 0, "bpf_prog_query: \(rc)")
        return count
    }

    /// The cgroup id a pinned cgroup link is attached to (0: detached, nil: no pin).
    static func pinnedLinkCgroupID(_ path: String) -> UInt64? {
        let fd = bpf_obj_get(path)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var info = bpf_link_info()
        var length = UInt32(MemoryLayout<bpf_link_info>.size)
        return bpf_obj_get_info_by_fd(fd, &info, &length) == 0 ? info.cgroup.cgroup_id : nil
    }

    /// Polls `condition` for up to 5 s.
    static func eventually(_ condition: () -> Bool) -> Bool {
        for _ in 0..<500 {
            if condition() { return true }
            usleep(10_000)
        }
        return condition()
    }

    /// H4/L6: inside, every host device but a minimal /dev's gets EPERM, a
    /// block device's node made outside /dev included; outside the cgroup the
    /// same node reads the canary. On this hybrid host the task sits in the
    /// root of the v1 devices hierarchy (everything allowed there): the BPF
    /// program on its v2 cgroup is what refuses.
    @Test func onlyTheMinimalDevOpensInside() throws {
        let layout = try CgroupLayout.detect()
        let parent = try CgroupParentLock(layout: layout)
        defer { parent.releaseAndRemoveParentIfUnused() }
        let loop = try Loop()
        defer { loop.detach() }
        let cgroup = try SandboxCgroup(layout: layout, name: "devtest-\(getpid())-\(UInt16.random(in: 0...UInt16.max))")
        defer { try? cgroup.destroy() }
        let filter = try DeviceFilter(rootLevel: layout.alcub3RootLevel, eventsRingFD: nil)
        try filter.apply(to: cgroup)
        #expect(try Self.attachedPrograms(cgroup) == 1)

        let results = loop.directory + "/results.json"
        let status = try Self.runPython(Self.probeScript(loop: loop, results: results), in: cgroup)
        #expect(status.shellCode == 0)
        let r = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: results))) as? [String: Any])
        for path in [loop.node, loop.device] + Self.refusedCharDevices {
            #expect(r[path] as? Int == Int(EPERM), "\(path): \(String(describing: r[path]))")
        }
        #expect(r["\(loop.node):data"] == nil, "the canary was read through the block device")
        #expect(r["mknod mem"] as? Int == Int(EPERM))
        #expect(r["mknod null"] as? Int == 0)
        for path in ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/ptmx", "openpty"] {
            #expect(r[path] as? Int == 0, "\(path): \(String(describing: r[path]))")
        }
        // No controlling terminal gives ENXIO: the tty layer's answer, not the filter's.
        #expect([0, Int(ENXIO)].contains(r["/dev/tty"] as? Int), "/dev/tty: \(String(describing: r["/dev/tty"]))")
        if layout.isHybrid, let v1 = r["v1 devices cgroup"] as? [String], let path = v1.first {
            print("v1 devices cgroup of the sandboxed task: \(path) (the BPF program on the v2 cgroup refused regardless)")
        }
        let counts = filter.refusals(sandboxCgroupID: cgroup.id)
        #expect(counts.refused >= UInt64(2 + Self.refusedCharDevices.count + 1), "\(counts)")

        // Outside the sandbox cgroup the same node opens and reads the canary.
        let fd = open(loop.node, O_RDONLY)
        #expect(fd >= 0, "outside: open \(loop.node): errno \(errno)")
        if fd >= 0 {
            var buffer = [UInt8](repeating: 0, count: 23)
            #expect(read(fd, &buffer, 23) == 23)
            close(fd)
            #expect(String(decoding: buffer, as: UTF8.self) == Loop.canary)
        }
        if let vcs = Self.refusedCharDevices.first {
            let outside = open(vcs, O_RDONLY | O_NOCTTY | O_NONBLOCK)
            #expect(outside >= 0, "outside: open \(vcs): errno \(errno)")
            if outside >= 0 { close(outside) }
        }

        filter.remove(cgroup)
        #expect(try Self.attachedPrograms(cgroup) == 0, "the program stayed attached after remove")
        #expect(filter.refusals(sandboxCgroupID: cgroup.id).refused == 0, "the sandbox's map entry stayed")
    }

    /// A refusal reaches the telemetry's stream and becomes a device-access finding.
    @Test func refusalsBecomeDeviceAccessFindings() throws {
        let layout = try CgroupLayout.detect()
        let parent = try CgroupParentLock(layout: layout)
        defer { parent.releaseAndRemoveParentIfUnused() }
        let loop = try Loop()
        defer { loop.detach() }
        let monitor = try TelemetryMonitor(rootCgroupID: try FileIO.inode(of: layout.alcub3Root), rootLevel: layout.alcub3RootLevel)
        let cgroup = try SandboxCgroup(layout: layout, name: "devfind-\(getpid())-\(UInt16.random(in: 0...UInt16.max))")
        defer { try? cgroup.destroy() }
        try monitor.watch(sandboxCgroupID: cgroup.id, options: .init(syscalls: false))
        let filter = try DeviceFilter(rootLevel: layout.alcub3RootLevel, eventsRingFD: monitor.eventsRingFD)
        try filter.apply(to: cgroup)
        defer { filter.remove(cgroup) }
        let subscription = monitor.hub.subscribe()
        let collected = Mutex<[TelemetryEvent]>([])
        let done = DispatchSemaphore(value: 0)
        Task.detached {
            for await batch in subscription.events { collected.withLock { $0 += batch } }
            done.signal()
        }
        try monitor.start()
        let status = try Self.runPython(Self.probeScript(loop: loop, results: loop.directory + "/results.json"), in: cgroup)
        #expect(status.shellCode == 0)
        try cgroup.destroy()
        monitor.stop()  // drains the ring buffer, ends the subscription
        done.wait()
        let events = collected.withLock { $0 }
        let loopMinor = try #require(Int(loop.device.dropFirst("/dev/loop".count)), "\(loop.device)")
        let findings = events.compactMap { EscapeDetector.finding(for: $0) }.filter { $0.technique.id == "device-access" }
        let evidence = findings.map(\.evidence)
        #expect(evidence.contains("read of block 7:\(loopMinor) refused with EPERM"), "\(evidence)")
        #expect(evidence.contains("mknod of char 1:1 refused with EPERM"), "\(evidence)")
        #expect(evidence.contains("read of char 7:1 refused with EPERM") || !FileIO.exists("/dev/vcs1"), "\(evidence)")
        #expect(findings.allSatisfy { $0.sandboxCgroupID == cgroup.id && $0.pid > 0 && $0.refusedBy == "cgroup BPF device filter" })
        #expect(findings.first?.technique.mitre == "T1006")
        // The kernel's count and the records agree: none was lost.
        let counts = filter.refusals(sandboxCgroupID: cgroup.id)
        #expect(counts.unreported == 0 && counts.refused == UInt64(findings.count), "\(counts) vs \(findings.count) findings")
    }

    /// The service's case: a pinned link holds the cgroup after its object is
    /// gone; the next object takes the link over, removes it on demand, and
    /// the pin directory goes with nothing left.
    @Test func pinnedLinksOutliveTheirObjectAndAreTakenOver() throws {
        let layout = try CgroupLayout.detect()
        let parent = try CgroupParentLock(layout: layout)
        defer { parent.releaseAndRemoveParentIfUnused() }
        let cgroup = try SandboxCgroup(layout: layout, name: "devpin-\(getpid())-\(UInt16.random(in: 0...UInt16.max))")
        defer { try? cgroup.destroy() }
        let pins = BPFFilesystem.mountPoint + "/alcub3-devtest-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { DeviceFilter.removePins(pins) }
        // A console (vcs1 here), which uid 0 without capabilities opens when no filter refuses it.
        let console = try #require(Self.refusedCharDevices.first { $0 != "/dev/kmsg" && $0 != "/dev/mem" }, "no console device on this host")
        let openConsole = "import os,sys\ntry: os.close(os.open('\(console)', os.O_RDONLY|os.O_NOCTTY|os.O_NONBLOCK))\nexcept OSError as e: sys.exit(e.errno)"

        do {
            let first = try DeviceFilter(rootLevel: layout.alcub3RootLevel, eventsRingFD: nil, pinDirectory: pins)
            try first.apply(to: cgroup)
        }  // the object is gone, as when the service stops
        #expect(FileIO.exists(pins + "/links/" + cgroup.name))
        #expect(try Self.runPython(openConsole, in: cgroup).shellCode == EPERM, "the pinned link no longer held the cgroup")

        // A gone cgroup's leftover pin is dropped by the next object.
        let gone = try SandboxCgroup(layout: layout, name: "devgone-\(getpid())-\(UInt16.random(in: 0...UInt16.max))")
        do {
            let other = try DeviceFilter(rootLevel: layout.alcub3RootLevel, eventsRingFD: nil, pinDirectory: pins)
            try other.apply(to: gone)
        }
        try gone.destroy()
        // The kernel detaches a removed cgroup's programs from a work queue, shortly after the rmdir.
        #expect(Self.eventually { Self.pinnedLinkCgroupID(pins + "/links/" + gone.name) == 0 }, "the removed cgroup's link stayed attached")

        let second = try DeviceFilter(rootLevel: layout.alcub3RootLevel, eventsRingFD: nil, pinDirectory: pins)
        #expect(!FileIO.exists(pins + "/links/" + gone.name), "the pin of a removed cgroup was kept")
        #expect(try Self.attachedPrograms(cgroup) == 1)
        #expect(try Self.runPython(openConsole, in: cgroup).shellCode == EPERM)
        // The count kept in the pinned map carries over.
        #expect(second.refusals(sandboxCgroupID: cgroup.id).refused == 2)
        second.remove(cgroup)
        #expect(!FileIO.exists(pins + "/links/" + cgroup.name))
        #expect(try Self.attachedPrograms(cgroup) == 0)
        #expect(try Self.runPython(openConsole, in: cgroup).shellCode == 0)
        DeviceFilter.removePins(pins)
        #expect(!FileIO.exists(pins))
    }
}
