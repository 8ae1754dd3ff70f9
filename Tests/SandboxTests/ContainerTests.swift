import Foundation
import KernelSupport
import Policy
import Synchronization
import Telemetry
import Testing
@testable import Sandbox

/// config.json from a policy: no kernel needed.
@Suite struct OCIRuntimeConfigTests {
    func config(_ policy: SandboxPolicy, netns: String? = nil) throws -> [String: Any] {
        let seccomp = try SeccompProfile.effective(for: policy, supervised: false).jsonData()
        return try OCIRuntimeConfig(sandboxID: "sb-0123456789ab", policy: policy, arguments: ["/bin/sh"], environment: ["PATH=/bin"],
                                    workingDirectory: policy.filesystem.workspace, cgroupsPath: "/alcub3/sb-0123456789ab/container",
                                    networkNamespacePath: netns, seccomp: seccomp).object()
    }

    @Test func theConfigCarriesThePolicy() throws {
        let policy = SandboxPolicy.builtIn(.confidential)
        let object = try config(policy)
        let process = try #require(object["process"] as? [String: Any])
        #expect(process["noNewPrivileges"] as? Bool == true)
        let capabilities = try #require(process["capabilities"] as? [String: [String]])
        #expect(capabilities.count == 5 && capabilities.values.allSatisfy(\.isEmpty))
        let rlimits = try #require(process["rlimits"] as? [[String: Any]])
        #expect(rlimits.contains { $0["type"] as? String == "RLIMIT_CORE" && $0["hard"] as? Int == 0 })
        #expect((object["root"] as? [String: Any])?["readonly"] as? Bool == true)
        let linux = try #require(object["linux"] as? [String: Any])
        #expect(linux["cgroupsPath"] as? String == "/alcub3/sb-0123456789ab/container")
        let namespaces = try #require(linux["namespaces"] as? [[String: String]]).compactMap { $0["type"] }
        #expect(Set(namespaces) == ["pid", "ipc", "uts", "mount", "cgroup", "network"])
        #expect(linux["maskedPaths"] as? [String] == OCIRuntimeConfig.maskedPaths)
        #expect((linux["readonlyPaths"] as? [String])?.contains("/proc/sys") == true)
        let resources = try #require(linux["resources"] as? [String: Any])
        #expect((resources["memory"] as? [String: Any])?["limit"] as? UInt64 == policy.memoryLimitBytes)
        #expect((resources["pids"] as? [String: Any])?["limit"] as? Int == policy.pidsLimit)
        #expect((resources["cpu"] as? [String: Any])?["quota"] as? Int
                == ResourceLimits(cpuCores: policy.cpuLimit, memoryBytes: 1, pids: 1).cpuQuotaMicroseconds)
        // The policy's seccomp filter in OCI form, as `sandbox export --seccomp` writes it.
        let seccomp = try #require(linux["seccomp"] as? [String: Any])
        #expect(seccomp["defaultAction"] as? String == "SCMP_ACT_ERRNO")
        let rules = try #require(seccomp["syscalls"] as? [[String: Any]])
        #expect(rules.contains { ($0["names"] as? [String])?.contains("mount") == true && $0["action"] as? String == "SCMP_ACT_ERRNO" })
        // The writable areas are size-capped tmpfs.
        let mounts = try #require(object["mounts"] as? [[String: Any]])
        let workspace = try #require(mounts.first { $0["destination"] as? String == policy.filesystem.workspace })
        #expect((workspace["options"] as? [String])?.contains("size=\(policy.filesystem.workspaceBytes)") == true)
    }

    @Test func aNetworkReachingPolicyJoinsTheNamespaceAlcub3Made() throws {
        let object = try config(.builtIn(.unclassified), netns: "/run/netns/alcub3-x")
        let namespaces = try #require((object["linux"] as? [String: Any])?["namespaces"] as? [[String: String]])
        #expect(namespaces.contains { $0["type"] == "network" && $0["path"] == "/run/netns/alcub3-x" })
    }
}

/// Image validation and unpacking: files only, but unpacking sets owners (root).
@Suite(.serialized, .enabled(if: runsAsRoot, .init(rawValue: needsRoot)))
struct OCIImageTests {
    func validate(_ path: String, expected: ImageDigest? = TestImages.busybox.digest, allowed: Set<ImageDigest> = [],
                  staging: String) throws -> ValidatedImage {
        try OCIImage.validate(path: path, expected: expected, allowed: allowed, staging: staging)
    }

    func imageError(_ body: () throws -> Void) -> ImageError? {
        do { try body() } catch let error as ImageError { return error } catch { Issue.record("not an ImageError: \(error)") }
        return nil
    }

    @Test func theBusyboxImageValidatesAndUnpacks() throws {
        let dir = try TestImages.scratch("image")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for source in [TestImages.busybox.layout, TestImages.busybox.tar] {
            let staging = dir + "/staging", rootfs = dir + "/rootfs"
            try FileManager.default.createDirectory(atPath: rootfs, withIntermediateDirectories: true)
            let image = try validate(source, staging: staging)
            #expect(image.manifestDigest == TestImages.busybox.digest)
            #expect(image.run.command == ["/bin/sh"])
            try image.unpack(into: rootfs)
            #expect(FileManager.default.isExecutableFile(atPath: rootfs + "/bin/busybox"))
            #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: rootfs + "/bin/sh")) == "busybox")
            #expect(FileManager.default.fileExists(atPath: rootfs + "/etc/passwd"))
            try FileManager.default.removeItem(atPath: rootfs)
            try? FileManager.default.removeItem(atPath: staging)
        }
    }

    @Test func aLayerAlteredByOneByteIsRefusedWithBothDigests() throws {
        let dir = try TestImages.scratch("tampered")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let layout = try TestImages.copyOfBusybox(in: dir)
        let blob = try TestImages.layerBlob(of: layout)
        let handle = try #require(FileHandle(forUpdatingAtPath: blob))
        try handle.seek(toOffset: 1000)
        let byte = try #require(try handle.read(upToCount: 1)?.first)
        try handle.seek(toOffset: 1000)
        try handle.write(contentsOf: [byte ^ 0x01])
        try handle.close()
        let (actual, _) = try ImageDigest.of(file: blob)
        let error = try #require(imageError { _ = try validate(layout, staging: dir + "/staging") })
        #expect(error.kind == .securityValidation)
        #expect(error.message.hasPrefix("Container image failed security validation:"))
        let expected = "sha256:" + (blob as NSString).lastPathComponent
        #expect(error.message.contains(expected) && error.message.contains(actual.description))
        #expect(error.message.contains("layer 1"))
    }

    @Test func aMissingBlobANonOCIPathAndAMissingPathAreClearErrors() throws {
        let dir = try TestImages.scratch("bad")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let layout = try TestImages.copyOfBusybox(in: dir)
        let blob = try TestImages.layerBlob(of: layout)
        try FileManager.default.removeItem(atPath: blob)
        let missing = try #require(imageError { _ = try validate(layout, staging: dir + "/s1") })
        #expect(missing.kind == .missingBlob)
        #expect(missing.message.contains("missing") && missing.message.contains((blob as NSString).lastPathComponent))

        try FileManager.default.removeItem(atPath: layout + "/oci-layout")
        let notOCI = try #require(imageError { _ = try validate(layout, staging: dir + "/s2") })
        #expect(notOCI.kind == .notAnImage && notOCI.message.contains("no oci-layout file"))

        let nowhere = try #require(imageError { _ = try validate(dir + "/nothing-here", staging: dir + "/s3") })
        #expect(nowhere.kind == .notFound && nowhere.message.contains("not found"))

        try Data("not a tar at all".utf8).write(to: URL(fileURLWithPath: dir + "/junk.tar"))
        let junk = try #require(imageError { _ = try validate(dir + "/junk.tar", staging: dir + "/s4") })
        #expect(junk.kind == .notAnImage)
    }

    @Test func anUnsupportedArchitectureIsNamed() throws {
        let dir = try TestImages.scratch("arch")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var layer = TarBuilder()
        layer.add("bin/", type: "5", mode: 0o755)
        let digest = try TestImages.makeLayout(at: dir + "/arm", layers: [layer.archive], architecture: "arm64")
        let error = try #require(imageError { _ = try validate(dir + "/arm", expected: digest, staging: dir + "/s") })
        #expect(error.kind == .unsupportedArchitecture)
        #expect(error.message.contains("unsupported architecture arm64/linux"))
    }

    @Test func theManifestMustBePinned() throws {
        let dir = try TestImages.scratch("pin")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let unpinned = try #require(imageError { _ = try validate(TestImages.busybox.layout, expected: nil, staging: dir + "/s1") })
        #expect(unpinned.kind == .securityValidation && unpinned.message.contains("--image-digest \(TestImages.busybox.digest)"))
        let other = try #require(ImageDigest("sha256:" + String(repeating: "ab", count: 32)))
        let wrong = try #require(imageError { _ = try validate(TestImages.busybox.layout, expected: other, staging: dir + "/s2") })
        #expect(wrong.kind == .securityValidation && wrong.message.contains(other.description))
        // The allow-list stands in for --image-digest.
        _ = try validate(TestImages.busybox.layout, expected: nil, allowed: [TestImages.busybox.digest], staging: dir + "/s3")
    }

    @Test(arguments: [
        ("/etc/evil", "0", "is an absolute path"),
        ("../evil", "0", "'..' component"),
        ("a/../../evil", "0", "'..' component"),
        ("dev/sda", "4", "block device"),
        ("dev/mem", "3", "character device"),
    ])
    func unsafeEntriesAreRefused(name: String, type: String, why: String) throws {
        let dir = try TestImages.scratch("unsafe")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var layer = TarBuilder()
        layer.add("ok", content: "fine")
        layer.add(name, type: Character(type), content: "x")
        let digest = try TestImages.makeLayout(at: dir + "/image", layers: [layer.archive])
        let image = try validate(dir + "/image", expected: digest, staging: dir + "/s")
        try FileManager.default.createDirectory(atPath: dir + "/rootfs", withIntermediateDirectories: true)
        let error = try #require(imageError { try image.unpack(into: dir + "/rootfs") })
        #expect(error.kind == .securityValidation)
        #expect(error.message.hasPrefix(ImageError.securityPrefix) && error.message.contains(why))
        #expect(!FileManager.default.fileExists(atPath: dir + "/evil"))
    }

    @Test func whiteoutsAndSymlinksStayInsideTheRoot() throws {
        let dir = try TestImages.scratch("whiteout")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var lower = TarBuilder()
        lower.add("a/", type: "5", mode: 0o755)
        lower.add("a/x", content: "x")
        lower.add("a/y", content: "y")
        lower.add("b", content: "b")
        lower.add("keep", content: "k")
        // A symlink to the host's root: later entries through it must land in the image.
        lower.add("escape", type: "2", link: "/")
        lower.add("up", type: "2", link: "../../../../..")
        var upper = TarBuilder()
        upper.add("a/.wh..wh..opq", content: "")
        upper.add("a/z", content: "z")
        upper.add(".wh.b", content: "")
        upper.add("escape/alcub3-escaped", content: "inside")
        upper.add("up/alcub3-up", content: "inside")
        let digest = try TestImages.makeLayout(at: dir + "/image", layers: [lower.archive, upper.archive])
        let rootfs = dir + "/rootfs"
        try FileManager.default.createDirectory(atPath: rootfs, withIntermediateDirectories: true)
        try validate(dir + "/image", expected: digest, staging: dir + "/s").unpack(into: rootfs)
        #expect(try FileManager.default.contentsOfDirectory(atPath: rootfs + "/a") == ["z"])
        #expect(!FileManager.default.fileExists(atPath: rootfs + "/b"))
        #expect(FileManager.default.fileExists(atPath: rootfs + "/keep"))
        #expect(FileManager.default.fileExists(atPath: rootfs + "/alcub3-escaped"))
        #expect(FileManager.default.fileExists(atPath: rootfs + "/alcub3-up"))
        #expect(!FileManager.default.fileExists(atPath: "/alcub3-escaped") && !FileManager.default.fileExists(atPath: "/alcub3-up"))
    }
}

/// Containers on the real kernel with Debian's runc: root, cgroups, namespaces.
@Suite(.serialized, .enabled(if: runsAsRoot, .init(rawValue: needsRoot)))
struct ContainerKernelTests {
    /// A sandbox cgroup (with its limits) and the parent lock, removed at the end.
    final class Harness {
        let layout: CgroupLayout
        let parent: CgroupParentLock
        let cgroup: SandboxCgroup
        let applied: AppliedLimits
        let id: String

        init(policy: SandboxPolicy) throws {
            layout = try CgroupLayout.detect()
            parent = try CgroupParentLock(layout: layout)
            id = "sb-" + String(format: "%012llx", UInt64.random(in: 0...0xffff_ffff_ffff))
            cgroup = try SandboxCgroup(layout: layout, name: id)
            applied = try cgroup.apply(ResourceLimits(cpuCores: policy.cpuLimit, memoryBytes: policy.memoryLimitBytes, pids: policy.pidsLimit))
        }

        func spec(_ arguments: [String], policy: SandboxPolicy, image: String = TestImages.busybox.layout) -> ContainerSpec {
            ContainerSpec(sandboxID: id, image: image, imageDigest: TestImages.busybox.digest, arguments: arguments, policy: policy)
        }

        /// Everything a container sandbox leaves on the host, its cgroups included.
        func leftovers() -> [String] {
            var found = ContainerSandbox.leftovers(sandboxID: id)
            if FileIO.exists(cgroup.path) { found.append(cgroup.path) }
            found += applied.v1Directories.filter(FileIO.exists)
            return found
        }

        func tearDown() {
            ContainerSandbox.remove(sandboxID: id, layout: layout)
            try? cgroup.destroy()
            SandboxCgroup.removeV1(applied)
        }

        deinit {
            tearDown()
            parent.releaseAndRemoveParentIfUnused()
        }
    }

    /// Runs a container in the foreground with its output in a pipe.
    func run(_ harness: Harness, _ arguments: [String], policy: SandboxPolicy,
             beforeStart: () throws -> Void = {}) throws -> (Sandbox.ExitStatus, String) {
        var fds: [Int32] = [-1, -1]
        try syscallChecked("pipe") { pipe(&fds) }
        let reader = OwnedDescriptor(fds[0])
        var spec = harness.spec(arguments, policy: policy)
        spec.stdio = (-1, fds[1], fds[1])
        let container: ContainerSandbox
        let process: SandboxedProcess
        do {
            defer { close(fds[1]) }  // runc and the container have their copies; ours would hold off EOF
            container = try ContainerSandbox(spec: spec, cgroup: harness.cgroup)
            process = try container.create()
        }
        let collected = Mutex<[UInt8]>([])
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = read(reader.raw, &buffer, buffer.count)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                collected.withLock { $0 += buffer[0..<n] }
            }
            done.signal()
        }
        try beforeStart()
        try container.start()
        let status = process.wait()
        done.wait()
        return (status, String(decoding: collected.withLock { $0 }, as: UTF8.self))
    }

    static var airGapped: SandboxPolicy {
        var policy = SandboxPolicy.builtIn(.topSecret)
        policy.isolation = .container
        return policy
    }

    @Test func echoInAContainerGivesItsOutputAndExitCode() throws {
        let harness = try Harness(policy: Self.airGapped)
        let (status, output) = try run(harness, ["sh", "-c", "echo hello from the container; exit 7"], policy: Self.airGapped)
        #expect(status == .exited(7))
        #expect(output == "hello from the container\n")
        harness.tearDown()
        #expect(harness.leftovers().isEmpty)
    }

    @Test func theContainerIsConfined() throws {
        let policy = Self.airGapped
        let harness = try Harness(policy: policy)
        let script = """
            grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status
            cat /proc/self/cgroup | tail -1
            touch /bin/x 2>/dev/null && echo root-writable || echo root-read-only
            echo data > \(policy.filesystem.workspace)/f && echo workspace-writable
            ls /sys/class/net | tr '\\n' ' '; echo
            hostname
            """
        let (status, output) = try run(harness, ["sh", "-c", script], policy: policy)
        #expect(status == .exited(0), "\(output)")
        #expect(output.contains("CapEff:\t0000000000000000") && output.contains("CapBnd:\t0000000000000000"))
        #expect(output.contains("NoNewPrivs:\t1") && output.contains("Seccomp:\t2"))
        #expect(output.contains("0::/\n"))                  // its own cgroup namespace
        #expect(output.contains("root-read-only") && output.contains("workspace-writable"))
        #expect(output.contains("\nlo \n"))                 // air-gapped: loopback only
        #expect(output.contains(harness.id))
    }

    @Test func aTamperedImageNeverStartsAndLeavesNothing() throws {
        let dir = try TestImages.scratch("tampered-run")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let layout = try TestImages.copyOfBusybox(in: dir)
        let blob = try TestImages.layerBlob(of: layout)
        let handle = try #require(FileHandle(forUpdatingAtPath: blob))
        try handle.seek(toOffset: 4096)
        let byte = try #require(try handle.read(upToCount: 1)?.first)
        try handle.seek(toOffset: 4096)
        try handle.write(contentsOf: [byte ^ 0x80])
        try handle.close()
        let harness = try Harness(policy: .builtIn(.unclassified))
        var policy = SandboxPolicy.builtIn(.unclassified)
        policy.isolation = .container
        do {
            _ = try ContainerSandbox(spec: harness.spec(["echo", "never"], policy: policy, image: layout), cgroup: harness.cgroup)
            Issue.record("a tampered image was accepted")
        } catch let error as ImageError {
            #expect(error.message.hasPrefix("Container image failed security validation:"))
        }
        #expect(ContainerSandbox.leftovers(sandboxID: harness.id).isEmpty)
        #expect(harness.cgroup.processes().isEmpty)
    }

    @Test func aCommandMissingFromTheImageFailsBeforeStart() throws {
        let harness = try Harness(policy: Self.airGapped)
        #expect(throws: SandboxError.self) {
            _ = try ContainerSandbox(spec: harness.spec(["python3", "-c", "1"], policy: Self.airGapped), cgroup: harness.cgroup)
        }
        #expect(ContainerSandbox.leftovers(sandboxID: harness.id).isEmpty)
    }

    @Test func aDetachedContainerRunsInTheSandboxCgroupAndIsRemovedWholly() throws {
        var policy = SandboxPolicy.builtIn(.unclassified)   // internet: a veth into its own namespace
        policy.isolation = .container
        let harness = try Harness(policy: policy)
        let container = try ContainerSandbox(spec: harness.spec(["sleep", "60"], policy: policy), cgroup: harness.cgroup)
        let process = try container.create()
        try container.start()
        #expect(process.isRunning)
        let cgroupLine = try FileIO.read("/proc/\(process.pid)/cgroup").split(separator: "\n").first { $0.hasPrefix("0::") } ?? ""
        let unified = String(harness.cgroup.path.dropFirst(harness.layout.unifiedRoot.count))
        #expect(cgroupLine == "0::\(unified)/container")
        #expect(harness.cgroup.processes().contains(process.pid))
        let network = try #require(container.network)
        #expect(FileIO.exists("/sys/class/net/" + network.hostInterface))
        #expect(!ContainerSandbox.leftovers(sandboxID: harness.id).isEmpty)
        // What the service does at terminate: the runtime, then the sandbox cgroup.
        ContainerSandbox.remove(sandboxID: harness.id, layout: harness.layout)
        try harness.cgroup.destroy()
        SandboxCgroup.removeV1(harness.applied)
        #expect(process.wait() == .signaled(SIGKILL))
        #expect(harness.leftovers().isEmpty, "\(harness.leftovers())")
        #expect(kill(process.pid, 0) != 0)
    }

    @Test func aContainerWithNetworkAccessReachesTheHostThroughItsVeth() throws {
        var policy = SandboxPolicy.builtIn(.unclassified)
        policy.isolation = .container
        let harness = try Harness(policy: policy)
        // A listener on the host side of the veth once it exists: the container connects to it.
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) } }
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) } }
        listen(listener, 4)
        let port = UInt16(bigEndian: address.sin_port)
        let received = Mutex("")
        Thread.detachNewThread {
            let client = accept(listener, nil, nil)
            guard client >= 0 else { return }
            var buffer = [UInt8](repeating: 0, count: 256)
            let n = read(client, &buffer, buffer.count)
            if n > 0 { received.withLock { $0 = String(decoding: buffer[0..<n], as: UTF8.self) } }
            close(client)
        }
        let (status, output) = try run(harness, ["sh", "-c",
            "gw=$(ip route | awk '/default/ {print $3}'); echo hello-host | nc -w 3 $gw \(port); ls /sys/class/net | tr '\\n' ' '; "
            + "cat /etc/resolv.conf"], policy: policy)
        #expect(status == .exited(0), "\(output)")
        #expect(output.contains("eth0"))
        // The host's resolvers (loopback ones left out) in the container's /etc/resolv.conf.
        if let expected = OCIRuntimeConfig.containerResolvConf(fromHost: (try? String(contentsOfFile: "/etc/resolv.conf", encoding: .utf8)) ?? "") {
            #expect(output.contains(expected), "\(output)")
        }
        for _ in 0..<100 where received.withLock({ $0.isEmpty }) { usleep(10_000) }
        #expect(received.withLock { $0 } == "hello-host\n")
        harness.tearDown()
        #expect(harness.leftovers().isEmpty, "\(harness.leftovers())")
    }

    @Test func eventsFromInsideTheContainerCarryItsSandboxCgroupID() throws {
        let policy = Self.airGapped
        let harness = try Harness(policy: policy)
        let monitor = try TelemetryMonitor(rootCgroupID: try FileIO.inode(of: harness.layout.alcub3Root),
                                           rootLevel: harness.layout.alcub3RootLevel)
        let subscription = monitor.hub.subscribe()
        let events = Mutex<[TelemetryEvent]>([])
        let done = DispatchSemaphore(value: 0)
        Task.detached {
            for await batch in subscription.events { events.withLock { $0 += batch } }
            done.signal()
        }
        try monitor.start()
        // Armed once runc has set the container up, as alcub3 run and the service do.
        let (status, _) = try run(harness, ["sh", "-c", "echo marker > /tmp/alcub3-marker; cat /tmp/alcub3-marker"], policy: policy) {
            try monitor.watch(sandboxCgroupID: harness.cgroup.id, options: .init(syscalls: false))
        }
        #expect(status == .exited(0))
        usleep(50_000)
        monitor.stop()
        done.wait()
        let all = events.withLock { $0 }
        let execs = all.compactMap { event -> (String, UInt64?)? in
            if case .process(let p) = event, case .exec(let filename, _, _, _, _) = p.activity { return (filename, p.origin.sandboxCgroupID) }
            return nil
        }
        #expect(execs.contains { $0.0.hasSuffix("sh") || $0.0.hasSuffix("busybox") }, "\(execs)")
        #expect(!all.isEmpty && all.allSatisfy { $0.sandboxCgroupID == nil || $0.sandboxCgroupID == harness.cgroup.id })
        let files = all.compactMap { event -> String? in if case .file(let f) = event { return "\(f)" } else { return nil } }
        #expect(files.contains { $0.contains("alcub3-marker") }, "\(files.prefix(5))")
        harness.tearDown()
        #expect(harness.leftovers().isEmpty)
    }
}

@Suite struct ContainerResolvConfTests {
    @Test func loopbackResolversAreLeftOutAndNoneLeftMeansTheImagesOwn() {
        let host = "# generated\nnameserver 127.0.0.53\nnameserver 10.255.255.53\nsearch corp.example\noptions edns0 trust-ad\nnameserver ::1\n"
        #expect(OCIRuntimeConfig.containerResolvConf(fromHost: host)
                == "# made by alcub3 from the host's /etc/resolv.conf\nnameserver 10.255.255.53\nsearch corp.example\noptions edns0 trust-ad\n")
        #expect(OCIRuntimeConfig.containerResolvConf(fromHost: "nameserver 127.0.0.53\noptions edns0\n") == nil)
    }
}

/// The image cache keeps within its budget: least recently used trees go
/// first, never the one just unpacked nor one a mounted overlay stands on.
@Suite(.enabled(if: getuid() == 0, "needs root: mounts an overlay"))
struct ImageCacheEvictionTests {
    @Test func leastRecentlyUsedTreesGoButNotOneInUse() throws {
        let root = NSTemporaryDirectory() + "alcub3-cache-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: root) }
        let trees = (0..<4).map { root + "/" + String(repeating: String($0), count: 64) }
        for (i, tree) in trees.enumerated() {
            try FileManager.default.createDirectory(atPath: tree + "/bin", withIntermediateDirectories: true)
            try Data(repeating: 0x5a, count: 1 << 20).write(to: URL(fileURLWithPath: tree + "/bin/tool"))
            try "".write(toFile: tree + ".used", atomically: false, encoding: .utf8)
            let used = Date(timeIntervalSinceNow: Double(i - 10) * 60)  // trees[0] is the oldest
            try FileManager.default.setAttributes([.modificationDate: used], ofItemAtPath: tree + ".used")
        }
        // trees[0], the oldest, is a running container's lower layer.
        let upper = root + "/overlay", merged = root + "/merged"
        for dir in [upper + "/upper", upper + "/work", merged] { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        try #require(mount("overlay", merged, "overlay", 0, "lowerdir=\(trees[0]),upperdir=\(upper)/upper,workdir=\(upper)/work") == 0,
                     "overlay mount: \(String(cString: strerror(errno)))")
        defer { umount2(merged, Int32(MNT_DETACH)) }
        // Room for two of the four: trees[1] (oldest not in use) and trees[2] go; trees[3] is the one kept.
        let removed = ImageCache.evict(root: root, keeping: trees[3], budget: (2 << 20) + (512 << 10))
        #expect(removed == [trees[1], trees[2]], "\(removed)")
        #expect(FileManager.default.fileExists(atPath: trees[0] + "/bin/tool") && FileManager.default.fileExists(atPath: trees[3] + "/bin/tool"))
        #expect(!FileManager.default.fileExists(atPath: trees[1]) && !FileManager.default.fileExists(atPath: trees[1] + ".size"))
        #expect(ImageCache.evict(root: root, keeping: trees[3], budget: 1 << 40).isEmpty, "nothing to evict within budget")
    }
}
