#if canImport(Glibc)
import Glibc
#endif
import CAlcub3
import Foundation
import KernelSupport
import Policy

/// A container runtime failure, in one line naming the step and runc's answer.
public struct ContainerError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// What a container sandbox runs, and from which image.
public struct ContainerSpec: Sendable {
    public var sandboxID: String
    /// A root filesystem directory, an OCI image layout directory, or a tar of one.
    public var image: String
    /// The manifest digest the image must have (`--image-digest`); without it
    /// the manifest must be in `allowedImages`.
    public var imageDigest: ImageDigest?
    public var allowedImages: Set<ImageDigest> = []
    /// argv; empty: the image's entrypoint and command.
    public var arguments: [String]
    /// KEY=VALUE over the image's environment.
    public var environment: [String] = []
    public var policy: SandboxPolicy
    /// stdin, stdout, stderr for the container; -1 inherits alcub3's.
    public var stdio: (Int32, Int32, Int32) = (-1, -1, -1)
    /// The service's containers outlive it (a restarted service adopts them);
    /// `alcub3 run`'s die with it: whatever a killed run left is removed by
    /// the next container start on the host.
    public var outlivesOwner = false
    /// Where a keeper (alcub3_keeper.h) writes the container's exit code, so a
    /// restarted service still learns it; nil: alcub3 itself is the init's
    /// subreaper and collects it (`alcub3 run`).
    public var statusFile: String?

    public init(sandboxID: String, image: String, imageDigest: ImageDigest?, arguments: [String], policy: SandboxPolicy) {
        self.sandboxID = sandboxID
        self.image = image
        self.imageDigest = imageDigest
        self.arguments = arguments
        self.policy = policy
    }
}

/// The container level: an OCI bundle alcub3 makes from a validated image and
/// the sandbox's policy, run by runc inside the sandbox's cgroup.
///
/// The bundle is /run/alcub3/containers/<id>: config.json, storage/ (a tmpfs
/// of the policy's `workspace_size`) and rootfs/, an overlay whose writable
/// layer is in that tmpfs over the image's verified tree (ImageCache), so the
/// container's storage is private, size-capped and gone with the sandbox.
/// The container id is the sandbox id; runc keeps its state in
/// /run/runc/<id>. `remove(sandboxID:)` undoes all of it from the id alone.
public final class ContainerSandbox: Sendable {
    public static let stateRoot = "/run/alcub3/containers"
    public static let runcStateRoot = "/run/runc"

    public let id: String
    public let bundle: String
    public let image: ValidatedImage
    public let network: ContainerNetwork?
    /// What runs (the image's entrypoint and command when the spec gave none).
    public let arguments: [String]
    /// The container's cgroup, a child of the sandbox's.
    public let cgroupPath: String
    let runc: String
    let stdio: (Int32, Int32, Int32)
    let statusFile: String?
    /// The container's user namespace slot (its lock held while this object lives); nil without one.
    public let userNamespace: UserNamespace?

    /// runc from Debian's package, or the first on PATH.
    public static func locateRuntime() throws -> String {
        guard let runc = HostCommand.locate("runc", candidates: ["/usr/sbin/runc", "/usr/bin/runc"]) else {
            throw ContainerError("the container level needs runc, which is not installed (Debian: apt-get install runc)")
        }
        return runc
    }

    /// Validates the image, unpacks it into the bundle's tmpfs, makes the
    /// network (when the policy reaches beyond the sandbox) and writes
    /// config.json. Nothing is started. On a failure everything made is removed.
    /// `report` hears each step with its duration in microseconds.
    public init(spec: ContainerSpec, cgroup: SandboxCgroup,
                report: ((_ step: String, _ microseconds: Int, _ result: String) -> Void)? = nil) throws {
        func step<T>(_ name: String, _ body: () throws -> T) throws -> T {
            let start = DispatchTime.now().uptimeNanoseconds
            do {
                let value = try body()
                report?(name, Int((DispatchTime.now().uptimeNanoseconds - start) / 1000), "ok")
                return value
            } catch {
                report?(name, Int((DispatchTime.now().uptimeNanoseconds - start) / 1000), "\(error)")
                throw error
            }
        }
        let id = spec.sandboxID
        let bundle = Self.stateRoot + "/" + id
        let cgroupPath = cgroup.path + "/container"
        let rootfs = bundle + "/rootfs"
        let runc = try Self.locateRuntime()
        try AgentLock.makeDirectories(Self.stateRoot)
        chmod(Self.stateRoot, 0o711)  // root's alone, but traversable: a container's root (an unprivileged uid) reaches its rootfs
        Self.removeOrphans(layout: cgroup.layout)
        try syscallChecked("mkdir", bundle) { mkdir(bundle, 0o700) }
        do {
            let policy = spec.policy
            // Who made it: a bundle whose owner died and whose sandbox is empty is an orphan.
            try FileIO.write((Self.processIdentity(getpid()) ?? "\(getpid()) 0") + (spec.outlivesOwner ? " outlives" : " dies"),
                             to: bundle + "/owner", create: true)
            let staging = bundle + "/layout"
            let image = try step("validate the image \(spec.image) (manifest, config and every layer against their digests)") {
                try OCIImage.validate(path: spec.image, expected: spec.imageDigest, allowed: spec.allowedImages, staging: staging)
            }
            let tree = try step("the image's tree (unpacked into \(ImageCache.root) on first use)") { try ImageCache.tree(for: image) }
            // The container's own storage: an overlay whose writable layer is a tmpfs of
            // the workspace's size over the shared image. Full means ENOSPC, never the host's disk.
            // The container's root is an unprivileged host uid, as at the process level; the
            // image's tree is idmapped alike so its files are the container's own.
            let userNamespace = try step("make the user namespace (a uid range of alcub3's)") {
                try UserNamespace.forSandbox(policy, writable: nil).0
            }
            self.userNamespace = userNamespace
            try step("mount an overlay on a tmpfs of \(policy.filesystem.workspaceBytes) bytes at \(rootfs)") {
                try Self.mountStorage(bundle: bundle, lower: tree, bytes: policy.filesystem.workspaceBytes, userNamespace: userNamespace)
            }
            try? FileManager.default.removeItem(atPath: staging)
            var environment = image.run.environment
            if !environment.contains(where: { $0.hasPrefix("PATH=") }) {
                environment.insert("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", at: 0)
            }
            for variable in spec.environment + ["HOSTNAME=\(id)"] {
                let key = variable.prefix { $0 != "=" }
                environment.removeAll { $0.prefix { $0 != "=" } == key }
                environment.append(variable)
            }
            let arguments = spec.arguments.isEmpty ? image.run.entrypoint + image.run.command : spec.arguments
            guard let program = arguments.first else {
                throw ContainerError("no command given, and the image names none (no Entrypoint or Cmd in its config)")
            }
            try step("find \(program) in the image") { try Self.checkCommand(program, rootfs: rootfs, environment: environment) }
            let network = try policy.allowsNetwork ? step("make the network namespace, veth and NAT") {
                try ContainerNetwork.create(sandboxID: id)
            } : nil
            let seccomp = try step("export the seccomp profile from the policy") {
                // runc installs it just before execve. Escape syscalls get EPERM: runc
                // hands a notify listener only to a listenerPath agent, not to alcub3.
                // runc 1.1 refuses filter flags, so denials are not logged by the kernel.
                var profile = try SeccompProfile.effective(for: policy, supervised: false)
                profile.logDenials = false
                return try profile.jsonData()
            }
            let relative = String(cgroupPath.dropFirst(cgroup.layout.unifiedRoot.count))
            var config = OCIRuntimeConfig(sandboxID: id, policy: policy, arguments: arguments, environment: environment,
                                          workingDirectory: policy.filesystem.workspace, cgroupsPath: relative,
                                          networkNamespacePath: network?.namespacePath, seccomp: seccomp)
            config.userNamespaceRoot = userNamespace?.hostRoot
            if userNamespace != nil, let network {
                try step("mount the network namespace's sysfs at \(bundle)/sys") {
                    try syscallChecked("mkdir", bundle + "/sys") { mkdir(bundle + "/sys", 0o755) }
                    let rc = alcub3_mount_sysfs_of(network.namespacePath, bundle + "/sys")
                    if rc != 0 { throw SystemError(errno: -rc, call: "mounting sysfs for", context: network.namespacePath) }
                }
                config.sysfs = bundle + "/sys"
            }
            // Names resolve through the host's resolvers the veth and NAT reach (the policy decides which).
            if network != nil, let text = try? FileIO.read("/etc/resolv.conf"), let resolv = OCIRuntimeConfig.containerResolvConf(fromHost: text) {
                try step("write \(bundle)/resolv.conf") {
                    try FileIO.write(resolv, to: bundle + "/resolv.conf", create: true)
                    chmod(bundle + "/resolv.conf", 0o644)  // the container's root is an unprivileged uid
                }
                config.resolvConf = bundle + "/resolv.conf"
            }
            try step("write \(bundle)/config.json") {
                try config.jsonData().write(to: URL(fileURLWithPath: bundle + "/config.json"))
            }
            self.id = id
            self.bundle = bundle
            self.cgroupPath = cgroupPath
            self.runc = runc
            self.stdio = spec.stdio
            self.statusFile = spec.statusFile
            self.image = image
            self.network = network
            self.arguments = arguments
        } catch {
            Self.remove(sandboxID: id, layout: cgroup.layout)
            throw error
        }
    }

    /// bundle/storage: a tmpfs with the overlay's upper and work directories;
    /// bundle/rootfs: the overlay of them over the image's tree.
    static func mountStorage(bundle: String, lower: String, bytes: UInt64, userNamespace: UserNamespace? = nil) throws {
        guard !lower.contains(where: { $0 == "," || $0 == ":" || $0 == "\\" }) else {
            throw ImageError(.unsupported, "\(lower): a root filesystem path with ',', ':' or '\\' cannot be an overlay layer")
        }
        let storage = bundle + "/storage", rootfs = bundle + "/rootfs"
        for dir in [storage, rootfs] { try syscallChecked("mkdir", dir) { mkdir(dir, 0o700) } }
        try syscallChecked("mount", storage) {
            mount("tmpfs", storage, "tmpfs", UInt(MS_NOSUID | MS_NODEV), "mode=700,size=\(bytes)")
        }
        for dir in ["upper", "work"] { try syscallChecked("mkdir", dir) { mkdir(storage + "/" + dir, 0o755) } }
        var layer = lower
        if let userNamespace {
            // The image's tree seen through the container's ids (on-disk 0 is its root), staged
            // in the storage tmpfs; the overlay keeps its own copy of the mount, the staging one goes.
            layer = storage + "/lower"
            try syscallChecked("mkdir", layer) { mkdir(layer, 0o700) }
            let rc = alcub3_mount_idmapped(lower, layer, userNamespace.namespace.raw)
            if rc != 0 { throw SystemError(errno: -rc, call: "idmapped mount of the image's tree", context: lower) }
            try syscallChecked("chown", storage + "/upper") { chown(storage + "/upper", userNamespace.hostRoot, userNamespace.hostRoot) }
            // The container's root (an unprivileged uid) must reach its rootfs: traverse only.
            chmod(bundle, 0o711)
        }
        defer { if userNamespace != nil { umount2(layer, Int32(MNT_DETACH)) } }
        try syscallChecked("mount", rootfs) {
            mount("overlay", rootfs, "overlay", UInt(MS_NOSUID | MS_NODEV),
                  "lowerdir=\(layer),upperdir=\(storage)/upper,workdir=\(storage)/work")
        }
    }

    /// A command for a running container (`sandbox exec`): its path inside
    /// the container, found on the container's PATH, and the container's environment.
    public static func resolveForExec(_ program: String, sandboxID: String) throws -> (String, [String]) {
        let bundle = stateRoot + "/" + sandboxID
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: bundle + "/config.json")))
        let environment = ((config as? [String: Any])?["process"] as? [String: Any])?["env"] as? [String] ?? []
        return (try checkCommand(program, rootfs: bundle + "/rootfs", environment: environment), environment)
    }

    /// An absolute program must exist in the image; a bare name must be on the
    /// image's PATH. Resolved inside the root filesystem, as runc will; the path found.
    @discardableResult
    static func checkCommand(_ program: String, rootfs: String, environment: [String]) throws -> String {
        let root = try OwnedDescriptor(path: rootfs, flags: O_RDONLY | O_DIRECTORY)
        let path = environment.first { $0.hasPrefix("PATH=") }.map { String($0.dropFirst(5)) } ?? "/usr/bin:/bin"
        let candidates = program.contains("/") ? [program] : path.split(separator: ":").map { "\($0)/\(program)" }
        for candidate in candidates {
            let fd = alcub3_open_in_root(root.raw, candidate, ALCUB3_O_PATH | O_CLOEXEC, 0)
            guard fd >= 0 else { continue }
            let file = OwnedDescriptor(fd)
            var st = stat()
            if fstat(file.raw, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG {
                if st.st_mode & 0o111 == 0 { throw SandboxError.commandNotExecutable("\(program) (in the image)") }
                return candidate
            }
        }
        throw SandboxError.commandNotFound("\(program) (not in the image\(program.contains("/") ? "" : ", PATH \(path)"))")
    }

    // MARK: running

    /// `runc create`: runc sets the container up (namespaces, mounts, cgroup,
    /// capabilities, seccomp) and leaves its init waiting on the exec FIFO.
    /// alcub3 is a child subreaper, so that init, orphaned when runc create
    /// exits, becomes its child: `wait()` on the returned process gives the
    /// command's exit status. With a `statusFile` (the service) a keeper
    /// process is that subreaper instead, and writes the status there. Telemetry is armed between this and `start()`,
    /// so what it reports is the agent, not runc's set-up (which unshares and
    /// changes credentials in the sandbox's cgroup, as an escape would).
    public func create() throws -> SandboxedProcess {
        let pidFile = bundle + "/init.pid", log = bundle + "/runc.log"
        let arguments = [runc, "--log", log, "create", "--bundle", bundle, "--pid-file", pidFile, id]
        let code: Int32
        var keeper: pid_t = 0
        if let statusFile {
            // A keeper runs runc create and stays the init's parent, beyond alcub3's own life.
            var runcCode: Int32 = 0
            let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
            defer { argv.forEach { free($0) } }
            keeper = alcub3_keeper_start(runc, argv, environ, stdio.0 >= 0 ? stdio.0 : 0, stdio.1 >= 0 ? stdio.1 : 1, stdio.2 >= 0 ? stdio.2 : 2,
                                         pidFile, statusFile, &runcCode)
            guard keeper > 0 else { throw ContainerError("could not start the container's keeper: \(String(cString: strerror(errno)))") }
            code = runcCode
            if code != 0 { _ = HostCommand.wait(keeper) }
            try? FileIO.write("\(keeper)", to: bundle + "/keeper.pid", create: true)
        } else {
            guard alcub3_set_child_subreaper() == 0 else { throw SystemError(errno: errno, call: "prctl", context: "PR_SET_CHILD_SUBREAPER") }
            guard let pid = HostCommand.spawn(arguments, stdio: stdio) else {
                throw ContainerError("could not start \(runc): \(String(cString: strerror(errno)))")
            }
            code = HostCommand.wait(pid)
        }
        guard code == 0 else {
            let lines = ((try? FileIO.read(log)) ?? "").split(separator: "\n").suffix(2)
                .map { $0.replacingOccurrences(of: "\\\"", with: "\"") }.joined(separator: "; ")
            throw ContainerError("runc create failed (exit code \(code))\(lines.isEmpty ? "" : ": \(lines)")")
        }
        guard let initPID = (try? FileIO.read(pidFile)).flatMap({ Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) else {
            throw ContainerError("runc create wrote no pid file for \(id)")
        }
        guard Self.parent(of: initPID) == (keeper > 0 ? keeper : getpid()) else {
            throw ContainerError("the container's init (pid \(initPID)) is not \(keeper > 0 ? "its keeper's" : "alcub3's") child; its exit status would be lost")
        }
        return try SandboxedProcess(adopting: initPID)
    }

    /// Lets the created container exec its command: what `runc start` does,
    /// without a second runtime process (about 6 ms here): read runc's exec
    /// FIFO to its end, which releases the init, and remove it, which marks
    /// the container running. Falls back to `runc start` when there is no FIFO.
    public func start() throws {
        let fifo = Self.runcStateRoot + "/" + id + "/exec.fifo"
        let fd = open(fifo, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let code = HostCommand.run([runc, "start", id])
            guard code.code == 0 else { throw ContainerError("runc start failed: \(code.output)") }
            return
        }
        var byte: UInt8 = 0
        while read(fd, &byte, 1) > 0 {}
        close(fd)
        unlink(fifo)
    }

    /// Create, start and wait for the end (the tests' and the benchmark's way).
    public func run() throws -> ExitStatus {
        let process = try create()
        try start()
        return process.wait()
    }

    static func parent(of pid: Int32) -> Int32? {
        guard let stat = try? FileIO.read("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 1 ? Int32(fields[1]) : nil
    }

    // MARK: clean-up

    /// Removes everything a container sandbox has on the host besides its
    /// sandbox cgroup: runc's state (killing what runs), the bundle and its
    /// tmpfs, the network, and the v1 cgroup directories runc made beneath
    /// the sandbox's. Idempotent, from the id alone.
    public static func remove(sandboxID: String, layout: CgroupLayout) {
        let bundle = stateRoot + "/" + sandboxID
        let keeper = (try? FileIO.read(bundle + "/keeper.pid")).flatMap { Int32($0) }
        removeRuntimeState(sandboxID: sandboxID, layout: layout)
        // A keeper of ours ends with the container's init: reaped, not left a zombie (ECHILD: not ours).
        if let keeper {
            var status: Int32 = 0
            for _ in 0..<100 {
                let done = waitpid(keeper, &status, WNOHANG)
                if done == keeper || (done < 0 && errno != EINTR) { break }
                usleep(10_000)
            }
        }
        if FileIO.exists(bundle) {
            // Detached: a process still inside keeps nothing of the host busy.
            umount2(bundle + "/rootfs", Int32(MNT_DETACH))
            umount2(bundle + "/sys", Int32(MNT_DETACH))
            umount2(bundle + "/storage", Int32(MNT_DETACH))
            try? FileManager.default.removeItem(atPath: bundle)
        }
        if FileIO.exists("/run/netns/" + ContainerNetwork.namespaceName(sandboxID))
            || FileIO.exists("/sys/class/net/" + ContainerNetwork.hostInterface(sandboxID)) {
            ContainerNetwork.remove(sandboxID: sandboxID)
        } else {
            ContainerNetwork.releaseSlots(of: sandboxID)
        }
        // runc creates the container's cgroup in every v1 hierarchy (named ones
        // too) beneath alcub3/<id>, more than the sandbox's limits made.
        for mount in v1Mounts() {
            let dir = mount + "/alcub3/" + sandboxID
            guard FileIO.exists(dir) else { continue }
            rmdir(dir)  // EBUSY while a process is left: destroying the sandbox cgroup comes first
        }
    }

    /// What `runc delete --force` does, without a runtime process (about 7 ms
    /// here): kill the container's cgroup, remove it and runc's state. The
    /// bundle stays (the benchmark runs it again).
    public static func removeRuntimeState(sandboxID: String, layout: CgroupLayout) {
        let container = layout.alcub3Root + "/" + sandboxID + "/container"
        if FileIO.exists(container) {
            if (try? FileIO.write("1", to: container + "/cgroup.kill")) == nil {
                for pid in SandboxCgroup.processes(under: container) { kill(pid, SIGKILL) }
            }
            var waited = 0
            while !SandboxCgroup.processes(under: container).isEmpty && waited < 5000 {
                usleep(2000)
                waited += 2
            }
            while rmdir(container) != 0 && errno == EBUSY && waited < 5000 {
                usleep(2000)
                waited += 2
            }
        }
        for mount in v1Mounts() { rmdir(mount + "/alcub3/" + sandboxID + "/container") }
        try? FileManager.default.removeItem(atPath: runcStateRoot + "/" + sandboxID)
    }

    /// Removes the containers whose owner was killed (SIGKILL gives no chance
    /// to clean up). Called before each container start and by the first
    /// owner of the cgroup parent; an owner that lives is never touched.
    static func removeOrphans(layout: CgroupLayout) {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: stateRoot) else { return }
        for id in names {
            let bundle = stateRoot + "/" + id
            let owner = ((try? FileIO.read(bundle + "/owner")) ?? "").split(separator: " ").map(String.init)
            guard !ownerLives(owner) else { continue }
            // A dead run's container goes, running or not; a service's only when
            // nothing runs in it or its command never started (init on the exec FIFO).
            let outlives = owner.count > 2 && owner[2] == "outlives"
            if !outlives || SandboxCgroup.processes(under: layout.alcub3Root + "/" + id).isEmpty
                || FileIO.exists(runcStateRoot + "/" + id + "/exec.fifo") {
                remove(sandboxID: id, layout: layout)
            }
        }
    }

    /// "pid start-time" of this process (field 22 of /proc/PID/stat), so a
    /// reused pid is not taken for the owner.
    static func processIdentity(_ pid: Int32) -> String? {
        guard let stat = try? FileIO.read("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 19 ? "\(pid) \(fields[19])" : nil
    }

    /// Whether the process that made a bundle (its `owner` file: pid, start time) still runs.
    static func ownerLives(_ owner: [String]) -> Bool {
        guard owner.count >= 2, let pid = Int32(owner[0]) else { return false }
        return processIdentity(pid) == "\(owner[0]) \(owner[1])"
    }

    /// What is left of a container sandbox on the host (empty once `remove` ran): for the tests.
    public static func leftovers(sandboxID: String) -> [String] {
        var found: [String] = []
        if FileIO.exists(runcStateRoot + "/" + sandboxID) { found.append(runcStateRoot + "/" + sandboxID) }
        if FileIO.exists(stateRoot + "/" + sandboxID) { found.append(stateRoot + "/" + sandboxID) }
        for mount in v1Mounts() where FileIO.exists(mount + "/alcub3/" + sandboxID) { found.append(mount + "/alcub3/" + sandboxID) }
        return found + ContainerNetwork.leftovers(sandboxID: sandboxID)
    }

    /// Mount points of every cgroup v1 hierarchy, named ones (name=systemd) included.
    static func v1Mounts() -> [String] {
        guard let text = try? FileIO.read("/proc/self/mountinfo") else { return [] }
        return text.split(separator: "\n").compactMap { line in
            let halves = line.split(separator: " - ", maxSplits: 1)
            guard halves.count == 2, halves[1].hasPrefix("cgroup ") else { return nil }
            let left = halves[0].split(separator: " ")
            return left.count >= 5 ? String(left[4]) : nil
        }
    }
}
