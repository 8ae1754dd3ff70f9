#if canImport(Glibc)
import Glibc
#endif
import Enforcement
import Foundation
import Integrity
import KernelSupport
import Policy
import Sandbox
import Store
import Synchronization
import Telemetry

/// The vm level in the service: the same sandbox (cgroup, limits, telemetry,
/// store record) with QEMU in place of the command. QEMU runs in the
/// sandbox's cgroup (watched by the host telemetry like any sandbox); the
/// guest's events arrive over its channel into the same hub with the same
/// cgroup id, so the event pipeline, `events tail` and the analyzers see a vm
/// sandbox like any other. The guest's output goes to the sandbox's
/// output.log, its exit code to exit_status; when the guest powers off QEMU
/// ends, and the sandbox with it.
extension SandboxManager {
    static func isVM(_ record: SandboxRecord) -> Bool { IsolationLevel(rawValue: record.isolation)?.isVirtualMachine ?? false }

    /// Boots the guest and waits until it has exec'ed the command (so a guest
    /// that never boots is this create's error, with the console's last lines).
    /// Whatever it made is undone through `undo` when a later step fails.
    func startVM(_ request: CreateRequest, sandboxID: String, cgroup: SandboxCgroup, v1ProcsFiles: [String],
                 output: Int32, statusFile: String, steps: ((CreationStep) -> Void)?,
                 undo: inout [() -> Void]) throws -> SandboxedProcess {
        func timed<T>(_ name: String, _ body: () throws -> T) throws -> T { try CreationStep.timed(name, steps, body) }
        guard !request.command.isEmpty else { throw ServiceFailure(Alcub3Exit.usage, "a vm sandbox needs a command to run in its guest") }
        let hardware = request.policy.isolation == .hardware
        let choice = try timed("probe KVM (a real-mode loop in a one-page VM)") { VMAccelerator.choose() }
        let vm: VMSandbox
        do {
            let image = try timed("check the guest image (sha256 of kernel and initramfs against MANIFEST)") {
                try GuestImage.prepare(runtime: GuestRuntime.needed(by: request.policy.capabilities))
            }
            var spec = VMSpec(sandboxID: sandboxID, image: image, accelerator: choice.accelerator,
                              memoryLimitBytes: request.policy.memoryLimitBytes, cpuLimit: request.policy.cpuLimit)
            spec.hiddenPaths = request.policy.filesystem.hiddenPaths
            spec.network = VMSpec.guestNetwork(for: request.policy)
            if hardware { HardwareBoot.configure(&spec) }
            vm = try timed("make \(VMSandbox.stateRoot)/\(sandboxID) and the guest channel's socket") { try VMSandbox(spec: spec) }
        } catch let error as VMError {
            let refused = error.message.contains("failed validation")
            throw ServiceFailure(refused ? Alcub3Exit.imageRefused : Alcub3Exit.vmFailed,
                                 (refused && hardware ? "measured boot refused the guest: " : "") + error.message)
        }
        undo.append { VMSandbox.remove(sandboxID: sandboxID) }
        undo.append { _ = Self.liveGuests.withLock { $0.removeValue(forKey: sandboxID) } }
        var boot: HardwareBoot?
        if hardware {
            do {
                boot = try timed("measure kernel, initramfs and command line; start swtpm") { try HardwareBoot(sandbox: vm) }
            } catch let error as BootMeasurementError {
                throw ServiceFailure(Alcub3Exit.imageRefused, error.description)
            } catch {
                throw ServiceFailure(Alcub3Exit.vmFailed, "the hardware level's virtual TPM: \(error)")
            }
            HardwareBoot.register(boot!, sandboxID: sandboxID)
            undo.append { HardwareBoot.release(sandboxID: sandboxID) }
        }
        for attempt in 1...3 {
            let process: SandboxedProcess
            let channel: OwnedDescriptor
            do {
                process = try timed("start QEMU in the sandbox cgroup (\(choice.accelerator.rawValue), \(vm.cpus) vCPU, \(vm.guestMemoryMiB) MiB)") {
                    try vm.start(cgroup: cgroup, v1ProcsFiles: v1ProcsFiles, dieWithParent: false)
                }
                channel = try timed("accept QEMU's connection to the guest channel") { try vm.acceptChannel(process: process) }
            } catch {
                try? FileIO.write("1", to: cgroup.path + "/cgroup.kill")
                throw ServiceFailure(Alcub3Exit.vmFailed, "could not start the vm sandbox: \(error)")
            }
            Self.watchVMM(VMMWatch(vmmPIDs: Set(cgroup.processes()), directory: vm.directory, sandboxCgroupID: cgroup.id,
                                   guestNetwork: vm.spec.network), manager: self)
            undo.append { Self.unwatchVMM(cgroup.id) }

            // The channel is served on a thread of its own for the sandbox's life;
            // create waits for the guest to exec the command, or to fail.
            let out = dup(output)
            let guest = GuestChannel(descriptor: channel, hub: monitor.hub, sandboxCgroupID: cgroup.id, object: GuestChannel.guestObject,
                                     run: GuestChannel.Run(arguments: request.command, environment: Self.guestEnvironment(request, sandboxID: sandboxID),
                                                           syscalls: request.policy.traceSyscalls),
                                     measurement: boot?.channelMeasurement) { _, bytes in
                FileIO.writeAll(out, bytes)
            }
            let started = DispatchSemaphore(value: 0)
            let state = GuestStart()
            let bootTimeout: Double = 60
            // What it boots, for its integrity baselines: at the hardware level the
            // measured boot's values, at the vm level the image's checked hashes.
            let measured = boot?.measurement ?? BootMeasurement(kernel: vm.spec.image.kernelSHA256, initramfs: vm.spec.image.initramfsSHA256,
                                                                commandLine: BootMeasurement.hash(commandLine: vm.kernelCommandLine))
            Thread.detachNewThread { [self] in
                let result = guest.serve(bootTimeout: bootTimeout) { running in
                    let live = LiveGuest(channel: guest, boot: BootRecord(
                        measurement: measured, kernelPath: vm.spec.image.kernel, initramfsPath: vm.spec.image.initramfs,
                        commandLine: vm.kernelCommandLine, pcr: running.pcr))
                    Self.liveGuests.withLock { $0[sandboxID] = live }
                    // For the service after a restart, which takes the channel over (adoptVM).
                    if let offset = running.clockOffset, let pid = running.guestPID {
                        Self.saveGuestState(GuestState(takeover: .init(clockOffset: offset, guestPID: pid), boot: live.boot), sandboxID: sandboxID)
                    }
                    state.commandStarted.store(true, ordering: .sequentiallyConsistent)
                    started.signal()
                }
                state.outcome.withLock { $0 = result }
                finishGuest(result, output: out, statusFile: statusFile, cgroup: cgroup, initProcess: process)
                started.signal()
            }
            let bootStart = DispatchTime.now().uptimeNanoseconds
            started.wait()
            steps?(CreationStep(step: "boot the guest until it exec'ed the command", microseconds: Int((DispatchTime.now().uptimeNanoseconds - bootStart) / 1000),
                                result: state.commandStarted.load(ordering: .sequentiallyConsistent) ? "ok" : "failed"))
            guard !state.commandStarted.load(ordering: .sequentiallyConsistent), let early = state.outcome.withLock({ $0 }) else {
                steps?(CreationStep(step: "vm: guest", microseconds: 0,
                                    result: "booted Debian's cloud kernel with the guest agent (PVH, -M microvm, \(choice.reason)); the command runs"))
                steps?(CreationStep(step: "vm: telemetry", microseconds: 0,
                                    result: "the telemetry programs in the guest (bpf/telemetry_guest.bpf.c), records over virtio-serial; the host watches QEMU"))
                steps?(CreationStep(step: "vm: runtime", microseconds: 0,
                                    result: vm.spec.image.runtime.map { "\($0.rawValue) in \(PathText.lastComponent(of: vm.spec.image.initramfs))" } ?? "busybox only"))
                steps?(CreationStep(step: "vm: network", microseconds: 0,
                                    result: vm.spec.network ? "QEMU's user-mode network (eth0 10.0.2.15); its host sockets in the sandbox cgroup, destinations by cgroup BPF"
                                        : "none: loopback only, QEMU in a network namespace of its own"))
                if let boot {
                    let m = boot.measurement
                    steps?(CreationStep(step: "hardware: measured boot", microseconds: 0,
                                        result: "PCR 9 = \(m.expectedPCR), quoted by the guest's TPM (swtpm) over a fresh nonce and signed by the "
                                            + "attestation key the host derived from it, from kernel \(m.kernel.prefix(16)), "
                                            + "initramfs \(m.initramfs.prefix(16)), command line \(m.commandLine.prefix(16))"))
                    try? store.appendAudit(.service, action: "sandbox.measured_boot", subject: sandboxID,
                                           details: ServiceJSON.encode(["kernel": m.kernel, "initramfs": m.initramfs,
                                                                        "command_line": m.commandLine, "pcr9": m.expectedPCR]))
                }
                return process
            }
            // The guest ended before exec'ing the command, or the exchange failed: QEMU is being ended.
            _ = process.wait()
            // Under TCG on a loaded host the guest kernel sometimes oopses in an interrupt while
            // booting; before the agent's HELLO nothing of the command has run, so it is booted again.
            let panic = early.helloNanos == nil ? vm.panicLine() : nil
            if attempt < 3, panic != nil {
                steps?(CreationStep(step: "the guest kernel panicked while booting (nothing ran)", microseconds: 0, result: "booting it again"))
                do { try boot?.restart() } catch { throw ServiceFailure(Alcub3Exit.vmFailed, "the hardware level's virtual TPM: \(error)") }
                continue
            }
            switch early.outcome {
            case .bootTimeout:
                let tail = vm.consoleTail(8)
                throw ServiceFailure(Alcub3Exit.vmFailed, "the vm guest did not boot within \(Int(bootTimeout)) s (\(choice.accelerator.rawValue)); "
                                     + "console's last lines: \(tail.isEmpty ? "(empty)" : tail.joined(separator: " | "))")
            case .failed(let message):
                throw ServiceFailure(Alcub3Exit.vmFailed, "the vm guest agent failed: \(message)")
            case .closed, .exited:
                if let panic { throw ServiceFailure(Alcub3Exit.vmFailed, "the guest kernel panicked before the guest agent started: \(panic)") }
                throw ServiceFailure(Alcub3Exit.vmFailed, "QEMU ended before the guest ran the command\(vm.qemuWords())")
            }
        }
        throw ServiceFailure(Alcub3Exit.vmFailed, "the vm guest could not be booted")
    }

    /// After the guest's command ended or the channel failed: the exit code to
    /// the status file, a failure to the output, malformed frames as a
    /// guest-channel finding; then QEMU is given 5 s to power off, and ended.
    func finishGuest(_ result: GuestChannel.Result, output out: Int32, statusFile: String, cgroup: SandboxCgroup,
                     initProcess process: SandboxedProcess) {
        switch result.outcome {
        case .exited(let status):
            let code = status < 0 ? 127 : HostCommand.shellCode(waitStatus: status)
            try? FileIO.write("\(code)\n", to: statusFile, create: true)
        case .failed(let message):
            Self.writeAll(out, "alcub3: the vm guest agent failed: \(message)\n")
        case .bootTimeout, .closed:
            break
        }
        if result.malformed > 0, let live = sandbox(cgroupID: cgroup.id) {
            raise(EscapeFinding(technique: EscapeTechnique.named("guest-channel")!, sandboxCgroupID: cgroup.id, pid: process.pid,
                                evidence: "\(result.malformed) malformed frames or records from the guest",
                                refusedBy: "the host's decoder (records dropped)", observedNanos: bootClockNanos()),
                  in: live, processes: live.processes)
        }
        close(out)
        // The guest powers off after EXIT; a guest that failed is ended here.
        for _ in 0..<500 where process.isRunning { usleep(10_000) }
        if process.isRunning { try? FileIO.write("1", to: cgroup.path + "/cgroup.kill") }
    }

    /// What a restarted service needs to take a running guest's channel over.
    struct GuestState: Codable {
        var takeover: GuestChannel.Takeover
        var boot: BootRecord
    }

    static func guestStatePath(_ sandboxID: String) -> String { VMSandbox.stateRoot + "/" + sandboxID + "/guest.json" }

    static func saveGuestState(_ state: GuestState, sandboxID: String) {
        guard let data = try? JSONEncoder().encode(state) else { return }
        try? FileIO.write(String(decoding: data, as: UTF8.self), to: guestStatePath(sandboxID), create: true)
    }

    /// A vm sandbox whose QEMU outlived the service before this one: its guest
    /// channel is listened on again (QEMU reconnects within about a second,
    /// `reconnect=1`), taken over (RESYNC), and served as at creation: events
    /// into the hub, output to output.log, the exit code to exit_status. The
    /// VMM watch and integrity scans come back with it. Throws when the guest
    /// cannot be reached; the caller then ends the sandbox.
    func adoptVM(_ sandbox: LiveSandbox) throws {
        let id = sandbox.record.sandboxID
        let state: GuestState
        do {
            state = try JSONDecoder().decode(GuestState.self, from: Data(FileIO.read(Self.guestStatePath(id)).utf8))
        } catch {
            throw ServiceFailure(Alcub3Exit.vmFailed, "no guest state to take the channel of \(id) over: \(error)")
        }
        let listener = try VMSandbox.listenAgain(sandboxID: id)
        let channel = try VMSandbox.acceptAgain(on: listener, timeout: 10)
        let directory = configuration.sandboxDirectory(id)
        let out = OutputCopier.writer(directory: directory)
        let guest = GuestChannel(descriptor: channel, hub: monitor.hub, sandboxCgroupID: sandbox.cgroup.id, object: [],
                                 run: GuestChannel.Run(arguments: [], environment: [], syscalls: false)) { _, bytes in
            FileIO.writeAll(out, bytes)
        }
        Self.liveGuests.withLock { $0[id] = LiveGuest(channel: guest, boot: state.boot) }
        let network = sandbox.policy.isolation == .vm && VMSpec.guestNetwork(for: sandbox.policy)
        Self.watchVMM(VMMWatch(vmmPIDs: Set(sandbox.cgroup.processes()), directory: VMSandbox.stateRoot + "/" + id,
                               sandboxCgroupID: sandbox.cgroup.id, guestNetwork: network), manager: self)
        let (cgroup, initProcess) = (sandbox.cgroup, sandbox.initProcess)
        Thread.detachNewThread { [self] in
            let result = guest.serve(takingOver: state.takeover)
            finishGuest(result, output: out, statusFile: directory + "/exit_status", cgroup: cgroup, initProcess: initProcess)
        }
    }

    /// A running vm sandbox's guest: its channel (for requests such as
    /// integrity scans) and what it booted.
    struct LiveGuest: Sendable {
        let channel: GuestChannel
        let boot: BootRecord
    }

    /// The service's running guests by sandbox id, from the command's start to the sandbox's end.
    static let liveGuests = Mutex<[String: LiveGuest]>([:])

    static func liveGuest(_ sandboxID: String) -> LiveGuest? { liveGuests.withLock { $0[sandboxID] } }

    /// At the end of a vm sandbox (after its cgroup is destroyed, which ends QEMU).
    func finishVM(_ sandbox: LiveSandbox) {
        _ = Self.liveGuests.withLock { $0.removeValue(forKey: sandbox.record.sandboxID) }
        Self.unwatchVMM(sandbox.cgroup.id)
        HardwareBoot.release(sandboxID: sandbox.record.sandboxID)
        VMSandbox.remove(sandboxID: sandbox.record.sandboxID)
    }

    /// The guest does not get the client's environment (its paths are the host's): TERM and LANG only.
    static func guestEnvironment(_ request: CreateRequest, sandboxID: String) -> [String] {
        guestEnvironment(request.environment, sandboxID: sandboxID)
    }

    /// What a command in the guest sees: not the caller's environment, which names paths that do not exist there.
    static func guestEnvironment(_ caller: [String], sandboxID: String) -> [String] {
        ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "HOSTNAME=\(sandboxID)"]
            + caller.filter { $0.hasPrefix("TERM=") || $0.hasPrefix("LANG=") }
    }

    /// `sandbox exec` in a vm sandbox: the command runs in the guest, in the
    /// agent's cgroup (its events are the sandbox's), in /root; its output
    /// streams back, its exit code passes through (126 when the guest agent
    /// could not start it, 127 when the guest has no such command).
    func execInGuest(_ sandbox: LiveSandbox, command: [String], environment: [String],
                     output: (String, [UInt8]) -> Bool) throws -> Int32 {
        guard let guest = Self.liveGuest(sandbox.record.sandboxID) else {
            throw ServiceFailure(Alcub3Exit.notFound, "the guest of \(sandbox.record.sandboxID) is not running its command: nothing can be run beside it")
        }
        let status: Int32
        do {
            status = try guest.channel.exec(command, environment: Self.guestEnvironment(environment, sandboxID: sandbox.record.sandboxID)) { stream, bytes in
                _ = output(stream == .stdout ? "stdout" : "stderr", bytes)
            }
        } catch {
            throw ServiceFailure(Alcub3Exit.vmFailed, "sandbox exec in the guest of \(sandbox.record.sandboxID): \(error)")
        }
        return status < 0 ? 126 : HostCommand.shellCode(waitStatus: status)
    }

    static func writeAll(_ fd: Int32, _ text: String) {
        Array(text.utf8).withUnsafeBytes { FileIO.writeAll(fd, $0) }
    }

    // MARK: the VMM's host activity

    /// One observer on the hub for every vm sandbox (observers cannot be removed): each batch is judged by the watch of its cgroup.
    private static let vmmWatches = Mutex<(installed: Bool, watches: [UInt64: VMMWatch])>((false, [:]))

    static func watchVMM(_ watch: VMMWatch, manager: SandboxManager) {
        let install = vmmWatches.withLock { state -> Bool in
            state.watches[watch.sandboxCgroupID] = watch
            defer { state.installed = true }
            return !state.installed
        }
        guard install else { return }
        manager.monitor.hub.observe { [weak manager] batch in
            let watches = vmmWatches.withLock { $0.watches }
            guard !watches.isEmpty, let manager else { return }
            for event in batch {
                guard let id = event.sandboxCgroupID, let watch = watches[id], let finding = watch.finding(for: event),
                      let live = manager.sandbox(cgroupID: id) else { continue }
                manager.raise(finding, in: live, processes: ProcessTable())
            }
        }
    }

    static func unwatchVMM(_ cgroupID: UInt64) {
        vmmWatches.withLock { _ = $0.watches.removeValue(forKey: cgroupID) }
    }
}

/// What the channel's thread tells `startVM` while it waits.
private final class GuestStart: Sendable {
    let outcome = Mutex<GuestChannel.Result?>(nil)
    let commandStarted = Atomic<Bool>(false)
}
