#if canImport(Glibc)
import Glibc
#endif
import CAlcub3
import Foundation
import KernelSupport
import Policy

/// How QEMU runs guest code: KVM when it really runs it, else TCG.
public enum VMAccelerator: String, Sendable, Codable {
    case kvm, tcg

    public struct Choice: Sendable {
        public let accelerator: VMAccelerator
        /// Why, in words, for `doctor` and the start line.
        public let reason: String
    }

    /// A 200,000-turn loop runs in well under a millisecond on hardware
    /// virtualization; emulated, it takes hundreds (590 ms for 1 M turns on the
    /// PVM hosts of DESIGN.md). 20 ms separates the two with a wide margin.
    static let emulatedThresholdNanos: UInt64 = 20_000_000

    /// Probes /dev/kvm by running a real-mode loop in a one-page VM: /dev/kvm
    /// answering is not enough (a PVM host creates VMs whose ordinary guests
    /// run fully emulated and die with KVM emulation failures).
    public static func choose() -> Choice {
        var probe = alcub3_kvm_result()
        alcub3_kvm_run_probe(&probe)
        if let step = probe.step {
            let why = probe.error == ENOENT && String(cString: step) == "open /dev/kvm" ? "no /dev/kvm"
                : "\(String(cString: step)) failed with \(SystemError.name(of: probe.error))"
            return Choice(accelerator: .tcg, reason: "KVM unusable (\(why)): TCG, software emulation")
        }
        let ms = String(format: "%.1f", Double(probe.loop_ns) / 1e6)
        guard probe.halted != 0 else {
            return Choice(accelerator: .tcg, reason: "KVM (API \(probe.api_version)) did not run a test guest to its hlt: TCG, software emulation")
        }
        guard probe.loop_ns < emulatedThresholdNanos else {
            return Choice(accelerator: .tcg, reason: "KVM (API \(probe.api_version)) runs guest code emulated "
                          + "(a \(probe.iterations)-turn loop took \(ms) ms; hardware virtualization takes < 1 ms): TCG, software emulation")
        }
        return Choice(accelerator: .kvm, reason: "KVM runs guest code natively (a \(probe.iterations)-turn loop took \(ms) ms)")
    }
}

/// What a vm sandbox boots and with how much of the host.
public struct VMSpec: Sendable {
    public var sandboxID: String
    public var image: GuestImage
    public var accelerator: VMAccelerator
    /// The policy's memory limit: the cgroup's, which QEMU itself lives in; the
    /// guest gets it less `vmmOverheadBytes`.
    public var memoryLimitBytes: UInt64
    /// The policy's cpu limit; the guest gets it rounded up as vCPUs.
    public var cpuLimit: Double
    /// The guest kernel's command line beyond alcub3's.
    public var kernelArguments: [String] = []
    /// More QEMU arguments, appended as given: devices of a stronger level
    /// (the hardware level's `-chardev socket,... -tpmdev emulator,... -device tpm-tis,...`).
    public var extraArguments: [String] = []
    /// Paths the VMM must not see (the policy's hidden paths).
    public var hiddenPaths: [String] = []
    /// A network for the guest: QEMU's user-mode network (slirp), whose host
    /// side is QEMU's own sockets in the host's network namespace, made from
    /// the sandbox's cgroup, so the cgroup BPF network policy decides every
    /// destination the guest reaches. False: no network device, and QEMU in a
    /// network namespace of its own.
    public var network = false

    /// Whether a sandbox of `policy` gets a guest network: when a process of
    /// the same policy could reach beyond its loopback (the network capability
    /// and a network class other than air_gapped_only).
    public static func guestNetwork(for policy: SandboxPolicy) -> Bool {
        policy.allowsNetwork && policy.capabilities.contains(.network)
    }

    public init(sandboxID: String, image: GuestImage, accelerator: VMAccelerator, memoryLimitBytes: UInt64, cpuLimit: Double) {
        self.sandboxID = sandboxID
        self.image = image
        self.accelerator = accelerator
        self.memoryLimitBytes = memoryLimitBytes
        self.cpuLimit = cpuLimit
    }
}

/// The vm level: QEMU boots the guest image; the guest agent runs the command
/// and reports over a virtio-serial port whose host end is a Unix socket
/// alcub3 listens on (QEMU connects at start-up, so there is no race to win).
///
/// QEMU runs inside the sandbox's cgroup (its limits apply, and the host
/// telemetry watches it: what the VMM does is the vm layer's escape signal),
/// started by the process launcher with its own mount, pid, network, ipc and
/// uts namespaces, a read-only view of the host but for its directory
/// (/run/alcub3/vms/<id>: the socket, the console log, QEMU's log), and
/// `-sandbox on` (QEMU's seccomp filter). Without `spec.network` no network
/// device: the guest has loopback only; with it QEMU stays in the host's
/// network namespace and its user-mode network's sockets meet the sandbox
/// cgroup's network policy. `remove(sandboxID:)` undoes everything from the id alone.
public final class VMSandbox: Sendable {
    public static let stateRoot = "/run/alcub3/vms"
    /// QEMU's own memory beside the guest's (its code, the TCG translation
    /// buffer capped at 64 MiB, device state), all in the sandbox's cgroup.
    public static let vmmOverheadBytes: UInt64 = 160 << 20
    public static let minimumGuestBytes: UInt64 = 128 << 20

    public let id: String
    public let directory: String
    public let socketPath: String
    public let consolePath: String
    public let logPath: String
    public let guestMemoryMiB: UInt64
    public let cpus: Int
    public let arguments: [String]
    public let spec: VMSpec
    let qemu: String
    private let listener: OwnedDescriptor

    /// $ALCUB3_QEMU, else qemu-system-x86_64 from Debian's package or the first on PATH.
    public static func locateQEMU() throws -> String {
        switch HostCommand.locate("qemu-system-x86_64", overriddenBy: "ALCUB3_QEMU", candidates: ["/usr/bin/qemu-system-x86_64"]) {
        case .found(let qemu): return qemu
        case .notExecutable(let chosen):
            throw VMError("the vm level needs QEMU: \(chosen) (ALCUB3_QEMU) is not an executable; install qemu-system-x86 or unset ALCUB3_QEMU")
        case .notInstalled:
            throw VMError("the vm level needs qemu-system-x86_64, which is not installed (Debian: apt-get install qemu-system-x86)")
        }
    }

    /// Checks what the host can give, makes the directory and the channel's
    /// listening socket. Nothing is started; on a failure nothing is left.
    public init(spec: VMSpec) throws {
        let qemu = try Self.locateQEMU()
        guard spec.memoryLimitBytes >= Self.minimumGuestBytes + Self.vmmOverheadBytes else {
            throw VMError("memory limit \(spec.memoryLimitBytes >> 20) MiB is below the \((Self.minimumGuestBytes + Self.vmmOverheadBytes) >> 20) MiB "
                          + "a vm sandbox needs (\(Self.minimumGuestBytes >> 20) MiB guest + \(Self.vmmOverheadBytes >> 20) MiB for QEMU)")
        }
        let guestBytes = spec.memoryLimitBytes - Self.vmmOverheadBytes
        if let available = Self.availableMemoryBytes(), spec.memoryLimitBytes > available {
            throw VMError("memory limit \(spec.memoryLimitBytes >> 20) MiB: the host has only \(available >> 20) MiB available for a vm sandbox")
        }
        let cpus = max(1, Int(spec.cpuLimit.rounded(.up)))
        let online = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        guard cpus <= online else {
            throw VMError("cpu limit \(spec.cpuLimit): a guest of \(cpus) vCPUs needs more than the host's \(online) CPUs")
        }
        let directory = Self.stateRoot + "/" + spec.sandboxID
        try AgentLock.makeDirectories(Self.stateRoot)
        chmod(Self.stateRoot, 0o700)
        try syscallChecked("mkdir", directory) { mkdir(directory, 0o700) }
        do {
            self.listener = try Self.listen(at: directory + "/channel.sock")
        } catch {
            Self.remove(sandboxID: spec.sandboxID)
            throw error
        }
        self.id = spec.sandboxID
        self.directory = directory
        self.socketPath = directory + "/channel.sock"
        self.consolePath = directory + "/console.log"
        self.logPath = directory + "/qemu.log"
        self.guestMemoryMiB = guestBytes >> 20
        self.cpus = cpus
        self.qemu = qemu
        self.spec = spec
        self.arguments = Self.qemuArguments(spec: spec, memoryMiB: guestBytes >> 20, cpus: cpus,
                                            socketPath: socketPath, consolePath: consolePath)
    }

    /// The QEMU command line (without argv[0]). `-M microvm` booting the
    /// kernel's ELF through its PVH entry: no firmware, no PCI, no kernel
    /// decompression (3 s to the guest's /init under TCG here, against 4.5-6 s
    /// for `-M pc` with the bzImage). The kernel cannot calibrate the TSC there
    /// without `tsc_early_khz` (DESIGN.md). Devices of a stronger level come
    /// from `spec.extraArguments` and `spec.kernelArguments`.
    public static func qemuArguments(spec: VMSpec, memoryMiB: UInt64, cpus: Int, socketPath: String, consolePath: String,
                                     tscKHz: Int = hostTSCKHz()) -> [String] {
        let accel = spec.accelerator == .kvm ? ["-accel", "kvm", "-cpu", "host"] : ["-accel", "tcg,tb-size=64"]
        let append = kernelCommandLine(spec: spec, tscKHz: tscKHz)
        return accel + [
            "-M", "microvm", "-m", "\(memoryMiB)M", "-smp", "\(cpus)",
            "-nographic", "-nodefaults", "-no-user-config", "-no-reboot", "-sandbox", "on",
            "-kernel", spec.image.kernel, "-initrd", spec.image.initramfs, "-append", append,
            "-serial", "file:" + consolePath,
            "-device", "virtio-serial-device",
            // reconnect=1: a restarted service listens again and QEMU comes back to it.
            "-chardev", "socket,id=alcub3,path=" + socketPath + ",reconnect=1",
            "-device", "virtserialport,chardev=alcub3,name=org.alcub3.guest",
        ] + networkArguments(spec) + spec.extraArguments
    }

    /// The guest kernel's command line this sandbox boots with (QEMU's `-append`).
    public var kernelCommandLine: String { arguments.firstIndex(of: "-append").map { arguments[$0 + 1] } ?? "" }

    /// The guest kernel's command line (what the hardware level measures);
    /// alcub3.net=user tells the guest agent to bring eth0 up.
    /// cryptomgr.notests skips the kernel's crypto self-tests at boot (under
    /// TCG here the kernel reached /init in 1.57 s against 2.03 s, medians of 6
    /// interleaved boots, its own printk times):
    /// nothing alcub3 relies on uses the guest kernel's crypto (the host
    /// measures and checks the boot; the guest agent hashes in user space).
    public static func kernelCommandLine(spec: VMSpec, tscKHz: Int = hostTSCKHz()) -> String {
        (["console=ttyS0", "quiet", "panic=-1", "rdinit=/init", "tsc_early_khz=\(tscKHz)", "tsc=reliable", "cryptomgr.notests"]
            + (spec.network ? ["alcub3.net=user"] : []) + spec.kernelArguments)
            .joined(separator: " ")
    }

    /// A virtio-net device on QEMU's user-mode network (IPv4: the guest is
    /// 10.0.2.15, the gateway 10.0.2.2 is the host's loopback, 10.0.2.3
    /// forwards DNS to the host's resolver), or no network device at all.
    static func networkArguments(_ spec: VMSpec) -> [String] {
        guard spec.network else { return ["-nic", "none"] }
        return ["-netdev", "user,id=net0,ipv6=off", "-device", "virtio-net-device,netdev=net0"]
    }

    /// Starts QEMU in `cgroup` (joining `v1ProcsFiles` on hybrid hosts), as
    /// the process launcher starts any sandbox: its init is the returned
    /// process, QEMU its child. `dieWithParent` ends it with the calling
    /// thread (right for `run`; the service's sandboxes outlive the request's thread).
    public func start(cgroup: SandboxCgroup, v1ProcsFiles: [String], dieWithParent: Bool = true) throws -> SandboxedProcess {
        let log = try OwnedDescriptor(path: logPath, flags: O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode: 0o600)
        let devNull = try OwnedDescriptor(path: "/dev/null", flags: O_RDONLY | O_CLOEXEC)
        let roots = [directory, spec.image.directory, qemu]
        var process = ProcessSpec(
            executable: qemu, arguments: [qemu] + arguments, environment: ["PATH=/usr/bin:/bin", "LANG=C"],
            workingDirectory: directory, hostname: id,
            namespaces: spec.network ? [.mount, .pid, .ipc, .uts, .cgroup] : [.mount, .pid, .ipc, .uts, .cgroup, .network],
            seccomp: nil, dieWithParent: dieWithParent)
        process.readOnlyRoot = true
        // The VMM's /tmp is a private tmpfs: an image kept beneath the host's /tmp is bound in at its own path.
        let imageUnderTmp = spec.image.directory.hasPrefix("/tmp/") ? [spec.image.directory] : []
        process.writablePaths = [directory] + imageUnderTmp + (spec.accelerator == .kvm ? ["/dev/kvm"] : [])
        process.hiddenPaths = spec.hiddenPaths.filter { hidden in !roots.contains { $0 == hidden || $0.hasPrefix(hidden + "/") } }
        process.v1ProcsFiles = v1ProcsFiles
        process.stdio = (devNull.raw, log.raw, log.raw)
        return try SandboxedProcess(spec: process, cgroup: cgroup)
    }

    /// The host's CPU clock in kHz (cpuinfo's "cpu MHz"), what the guest's TSC runs at.
    public static func hostTSCKHz() -> Int {
        let text = (try? FileIO.read("/proc/cpuinfo")) ?? ""
        let mhz = text.split(separator: "\n").first { $0.hasPrefix("cpu MHz") }
            .flatMap { $0.split(separator: ":").last }.flatMap { Double($0.trimmingCharacters(in: .whitespaces)) }
        return Int((mhz ?? 2000) * 1000)
    }

    /// The channel's socket of a running vm sandbox listened on again (by a
    /// service that restarted): the old file is replaced.
    public static func listenAgain(sandboxID: String) throws -> OwnedDescriptor {
        let path = stateRoot + "/" + sandboxID + "/channel.sock"
        unlink(path)
        return try listen(at: path)
    }

    /// The next connection to `listener` within `timeout` seconds (QEMU reconnecting).
    public static func acceptAgain(on listener: OwnedDescriptor, timeout: Double) throws -> OwnedDescriptor {
        var p = pollfd(fd: listener.raw, events: Int16(POLLIN), revents: 0)
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(timeout * 1e9)
        while DispatchTime.now().uptimeNanoseconds < deadline {
            if poll(&p, 1, 100) > 0 {
                let fd = Glibc.accept(listener.raw, nil, nil)
                if fd >= 0 {
                    _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                    return OwnedDescriptor(fd)
                }
            }
        }
        throw VMError("QEMU did not connect to the guest channel again within \(Int(timeout)) s")
    }

    /// The channel, once QEMU has connected to it; QEMU ending first, or not
    /// connecting within `timeout` seconds, is an error naming QEMU's last words.
    public func acceptChannel(process: SandboxedProcess, timeout: Double = 20) throws -> OwnedDescriptor {
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(timeout * 1e9)
        while true {
            var fds = [pollfd(fd: listener.raw, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: process.descriptor, events: Int16(POLLIN), revents: 0)]
            let now = DispatchTime.now().uptimeNanoseconds
            guard now < deadline else {
                throw VMError("QEMU did not connect to the guest channel within \(Int(timeout)) s\(qemuWords())")
            }
            let rc = poll(&fds, 2, Int32(min(1000, (deadline - now) / 1_000_000 + 1)))
            if rc < 0 && errno == EINTR { continue }
            if fds[0].revents & Int16(POLLIN) != 0 {
                let fd = Glibc.accept(listener.raw, nil, nil)
                if fd >= 0 {
                    _ = fcntl(fd, F_SETFD, FD_CLOEXEC)  // accept4 needs _GNU_SOURCE, which Glibc's module lacks
                    return OwnedDescriptor(fd)
                }
                if errno == EINTR || errno == EAGAIN { continue }
                throw VMError("accepting the guest channel: \(SystemError.name(of: errno))")
            }
            if fds[1].revents != 0 {
                throw VMError("QEMU ended before the guest started\(qemuWords())")
            }
        }
    }

    /// ": <QEMU's last log lines>" or "".
    public func qemuWords() -> String {
        let lines = Self.lastLines(of: logPath, count: 3)
        return lines.isEmpty ? "" : ": " + lines.joined(separator: "; ")
    }

    /// The console's last lines (the guest kernel's and the agent's messages), cleaned of escapes.
    public func consoleTail(_ count: Int = 10) -> [String] { Self.lastLines(of: consolePath, count: count) }

    /// The console's "Kernel panic - ..." line, if the guest kernel panicked.
    public func panicLine() -> String? {
        Self.lastLines(of: consolePath, count: 400).first { $0.contains("Kernel panic") }
            .map { $0.replacingOccurrences(of: #"^\[ *[0-9.]+\] *"#, with: "", options: .regularExpression) }
    }

    static func lastLines(of path: String, count: Int) -> [String] {
        guard let data = FileManager.default.contents(atPath: path) else { return [] }
        let bytes = [UInt8](data)
        let text = String(decoding: bytes[max(0, bytes.count - 65536)...], as: UTF8.self)
        // SeaBIOS and the kernel write escape sequences and carriage returns; keep the words.
        let cleaned = text.replacingOccurrences(of: "\u{1b}\\[[0-9;?]*[A-Za-z]|\u{1b}c|\r", with: "", options: .regularExpression)
        let lines: [String] = cleaned.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        return Array(lines.suffix(count))
    }

    /// MemAvailable of /proc/meminfo.
    static func availableMemoryBytes() -> UInt64? {
        guard let text = try? FileIO.read("/proc/meminfo"),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("MemAvailable:") }),
              let kib = UInt64(line.split(separator: " ").dropFirst().first ?? "") else { return nil }
        return kib * 1024
    }

    static func listen(at path: String) throws -> OwnedDescriptor {
        let fd = try syscallChecked("socket", path) { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        let owned = OwnedDescriptor(fd)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw VMError("socket path too long: \(path)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw SystemError(errno: errno, call: "bind", context: path) }
        chmod(path, 0o600)
        guard Glibc.listen(fd, 1) == 0 else { throw SystemError(errno: errno, call: "listen", context: path) }
        return owned
    }

    // MARK: clean-up

    /// Kills a VMM still running (its cgroup is the sandbox's: destroying it
    /// comes first) and removes the directory. Idempotent, from the id alone.
    public static func remove(sandboxID: String) {
        try? FileManager.default.removeItem(atPath: stateRoot + "/" + sandboxID)
    }

    /// What is left of a vm sandbox on the host (empty once `remove` ran and
    /// its cgroup was destroyed): for the tests.
    public static func leftovers(sandboxID: String) -> [String] {
        var found: [String] = []
        if FileIO.exists(stateRoot + "/" + sandboxID) { found.append(stateRoot + "/" + sandboxID) }
        for pid in runningQEMUs(sandboxID: sandboxID) { found.append("qemu pid \(pid)") }
        return found
    }

    /// QEMU processes whose command line names this sandbox's directory.
    public static func runningQEMUs(sandboxID: String) -> [Int32] {
        let marker = stateRoot + "/" + sandboxID + "/"
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap(Int32.init).filter { pid in
            guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            return String(decoding: data, as: UTF8.self).contains(marker)
        }
    }
}
