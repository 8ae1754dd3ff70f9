import Enforcement
import Foundation
import KernelSupport
import Service
import Integrity
import Policy
import Sandbox
import Synchronization
import Telemetry

/// `alcub3 run --isolation-level vm`: what the vm level needs beyond the
/// sandbox cgroup, the host telemetry and the renderer that `run` makes for
/// every level.
struct VMOptions: Sendable {
    /// The guest image's directory (GuestImage.defaultDirectory unless given).
    var guestDirectory = GuestImage.defaultDirectory
    /// Seconds from QEMU's start to the guest agent's HELLO.
    var bootTimeout: Double = 60
    /// The hardware level: a virtual TPM and measured boot (HardwareBoot).
    var hardware = false
}

/// Whether the guest agent said HELLO (then the command may have run: no second boot).
final class HelloFlag: Sendable {
    let said = Mutex(false)
}

/// One vm sandbox of `run`: made before the sandbox starts, then started and
/// served to its end. Errors are one line each (exit code 76, or 74 for an
/// image that fails validation).
final class VMLaunch: Sendable {
    let sandbox: VMSandbox
    let accelerator: VMAccelerator.Choice
    let options: VMOptions
    /// The hardware level's TPM and measurements (stopped with the sandbox).
    let hardware: HardwareBoot?

    init(sandbox: VMSandbox, accelerator: VMAccelerator.Choice, options: VMOptions, hardware: HardwareBoot? = nil) {
        self.sandbox = sandbox
        self.accelerator = accelerator
        self.options = options
        self.hardware = hardware
    }

    /// How the guest went, for the start line and the summary.
    struct Timing: Sendable {
        var spawned: UInt64
        var hello: UInt64?
        var started: UInt64?
    }
}

extension RunSession {
    /// The guest image (built once if missing), the accelerator, the host's
    /// checks (QEMU installed, memory and cpus it can give) and the channel's socket.
    func prepareVM(_ options: VMOptions, quiet: Bool) throws -> VMLaunch {
        let choice = VMAccelerator.choose()
        let image: GuestImage
        do {
            image = try GuestImage.prepare(directory: options.guestDirectory, runtime: GuestRuntime.needed(by: policy.capabilities),
                                           progress: quiet ? nil : { Output.err("alcub3: \($0)\n") })
        } catch let error as VMError {
            let refused = error.message.contains("failed validation")
            // At the hardware level the image check is the measured boot's first step.
            throw fail(refused ? Alcub3Exit.imageRefused : Alcub3Exit.vmFailed,
                       (refused && options.hardware ? "measured boot refused the guest: " : "") + error.message)
        }
        var spec = VMSpec(sandboxID: sandboxID, image: image, accelerator: choice.accelerator,
                          memoryLimitBytes: policy.memoryLimitBytes, cpuLimit: policy.cpuLimit)
        spec.hiddenPaths = policy.filesystem.hiddenPaths
        spec.network = VMSpec.guestNetwork(for: policy)
        if options.hardware { HardwareBoot.configure(&spec) }
        do {
            let sandbox = try VMSandbox(spec: spec)
            do {
                let hardware = options.hardware ? try HardwareBoot(sandbox: sandbox) : nil
                return VMLaunch(sandbox: sandbox, accelerator: choice, options: options, hardware: hardware)
            } catch let error as BootMeasurementError {
                VMSandbox.remove(sandboxID: sandbox.id)
                throw fail(Alcub3Exit.imageRefused, error.description)
            } catch {
                VMSandbox.remove(sandboxID: sandbox.id)
                throw fail(Alcub3Exit.vmFailed, "the hardware level's virtual TPM: \(error)")
            }
        } catch let error as VMError {
            throw fail(Alcub3Exit.vmFailed, error.message)
        } catch {
            throw fail(Alcub3Exit.vmFailed, "could not prepare the vm sandbox: \(error)")
        }
    }

    /// For the start line: what isolates the sandbox.
    static func describe(_ vm: VMLaunch) -> String {
        let s = vm.sandbox
        return "vm isolation: QEMU \(vm.accelerator.accelerator == .kvm ? "KVM" : "TCG"), \(s.cpus) vCPU, \(s.guestMemoryMiB) MiB, "
            + "kernel \(s.spec.image.sources["kernel-package"].map { String($0.split(separator: "_").first ?? "") } ?? "vmlinuz")"
            + (s.spec.image.runtime.map { ", \($0.rawValue) runtime" } ?? "")
            + (s.spec.network ? ", user-mode network (destinations by the cgroup network policy)" : ", no network")
            + (vm.hardware.map { ", virtual TPM, measured boot (PCR 9 expected \($0.measurement.expectedPCR.prefix(16))...)" } ?? "")
    }

    /// Serves the guest channel until the command's exit, then lets QEMU power
    /// off (or kills it). The guest's output goes to alcub3's stdout and
    /// stderr; its events into `hub` under the sandbox's cgroup id. On any
    /// failure QEMU is killed and reaped before the error is thrown.
    func serveVM(_ vm: VMLaunch, process first: SandboxedProcess, cgroup: SandboxCgroup, hub: EventHub, v1ProcsFiles: [String],
                 syscalls: Bool, onFinding: @escaping @Sendable (EscapeFinding) -> Void) async throws -> ExitStatus {
        var process = first
        for attempt in 1...3 {
            let hello = HelloFlag()
            do {
                return try await serveVMOnce(vm, process: process, cgroup: cgroup, hub: hub, syscalls: syscalls, hello: hello,
                                             onFinding: onFinding)
            } catch let failure as Failure where attempt < 3 && failure.code == Alcub3Exit.vmFailed && !hello.said.withLock({ $0 })
                && Self.panicked(vm.sandbox) {
                // The guest kernel died before the agent said HELLO: nothing of the
                // command has run. Under TCG on a loaded host this kernel sometimes
                // oopses in an interrupt while booting; one more boot is safe.
                if format == .table { Output.err("alcub3: the guest kernel panicked while booting (nothing ran); booting it again\n") }
                do {
                    try vm.hardware?.restart()
                    process = try vm.sandbox.start(cgroup: cgroup, v1ProcsFiles: v1ProcsFiles)
                } catch {
                    throw fail(Alcub3Exit.vmFailed, "could not start the vm sandbox again after a kernel panic: \(error)")
                }
            }
        }
        throw fail(Alcub3Exit.vmFailed, "the vm guest could not be booted")
    }

    /// Whether the guest's console shows a kernel panic.
    static func panicked(_ sandbox: VMSandbox) -> Bool { sandbox.panicLine() != nil }

    private func serveVMOnce(_ vm: VMLaunch, process: SandboxedProcess, cgroup: SandboxCgroup, hub: EventHub,
                             syscalls: Bool, hello: HelloFlag,
                             onFinding: @escaping @Sendable (EscapeFinding) -> Void) async throws -> ExitStatus {
        let sandbox = vm.sandbox
        let spawned = bootClockNanos()
        func abort(_ message: String) async -> Failure {
            try? FileIO.write("1", to: cgroup.path + "/cgroup.kill")
            _ = await Self.reap(process)
            return fail(Alcub3Exit.vmFailed, message)
        }
        let channel: OwnedDescriptor
        do {
            channel = try await Self.onThread { try sandbox.acceptChannel(process: process) }
        } catch {
            throw await abort("could not start the vm sandbox: \(error)")
        }
        // From here what the VMM does on the host is judged: QEMU never execs, connects or writes outside its directory.
        let watch = VMMWatch(vmmPIDs: Set(cgroup.processes()), directory: sandbox.directory, sandboxCgroupID: cgroup.id,
                             guestNetwork: sandbox.spec.network)
        hub.observe { batch in for finding in watch.findings(in: batch) { onFinding(finding) } }

        let run = GuestChannel.Run(arguments: arguments, environment: Self.guestEnvironment(hostname: sandboxID), syscalls: syscalls)
        let json = format == .json
        let guest = GuestChannel(descriptor: channel, hub: hub, sandboxCgroupID: cgroup.id, object: GuestChannel.guestObject,
                                 run: run, measurement: vm.hardware?.channelMeasurement) { stream, bytes in
            // With --format json stdout carries alcub3's records only: the guest's output goes to stderr.
            FileIO.writeAll(stream == .stdout && !json ? 1 : 2, bytes)
        }
        let timeout = vm.options.bootTimeout
        let table = format == .table
        let accelerator = vm.accelerator.accelerator.rawValue
        let result = await Self.onThread {
            guest.serve(bootTimeout: timeout) { started in
                // Said when it happens: the guest is up and the command runs.
                guard table, let hello = started.helloNanos, let exec = started.startedNanos else { return }
                if let pcr = started.pcr {
                    Output.err("alcub3: measured boot attested: the guest's TPM quoted PCR 9 = \(pcr.prefix(16))... over this boot's nonce, "
                               + "signed by the key the host derived from the sandbox's swtpm\n")
                }
                Output.err(String(format: "alcub3: guest %@ up in %.2f s (%@), command exec'ed at %.2f s\n", started.kernelRelease ?? "?",
                                  Double(hello &- spawned) / 1e9, accelerator, Double(exec &- spawned) / 1e9))
            }
        }
        hello.said.withLock { $0 = result.helloNanos != nil }
        if result.malformed > 0 {
            onFinding(EscapeFinding(technique: EscapeTechnique.named("guest-channel")!, sandboxCgroupID: cgroup.id, pid: process.pid,
                                    evidence: "\(result.malformed) malformed frames or records from the guest",
                                    refusedBy: "the host's decoder (records dropped)", observedNanos: bootClockNanos()))
        }
        if table, let c = result.counters {
            Output.err("alcub3: guest kernel \(c.seen) records seen, \(c.submitted) submitted, \(c.dropped) dropped; \(result.events) events received\n")
        }
        switch result.outcome {
        case .exited(let status):
            // The guest powers off after EXIT; give QEMU a moment to end on its own.
            let ended = await Self.onThread { () -> Bool in
                for _ in 0..<500 where process.isRunning { usleep(10_000) }
                return !process.isRunning
            }
            if !ended { try? FileIO.write("1", to: cgroup.path + "/cgroup.kill") }
            _ = await Self.reap(process)
            guard status >= 0 else { throw fail(Alcub3Exit.vmFailed, "the vm guest could not start the command") }
            let signal = status & 0x7f
            return signal == 0 ? .exited((status >> 8) & 0xff) : .signaled(signal)
        case .failed(let message):
            // The hardware layer: the guest's quote was refused (forged, replayed, another PCR), or its TPM failed.
            if result.attestationRefused || message.hasPrefix("measured boot") {
                let id = result.attestationRefused ? "measured-boot-mismatch" : "tpm-failure"
                onFinding(EscapeFinding(technique: EscapeTechnique.named(id)!, sandboxCgroupID: cgroup.id, pid: process.pid,
                                        evidence: message, refusedBy: "measured boot (the command was not started)",
                                        observedNanos: bootClockNanos()))
            }
            throw await abort("the vm guest agent failed: \(message)")
        case .bootTimeout:
            let tail = sandbox.consoleTail(8)
            throw await abort("the vm guest did not boot within \(String(format: "%g", timeout)) s (\(vm.accelerator.accelerator.rawValue)); "
                              + "console's last lines: \(tail.isEmpty ? "(empty)" : tail.joined(separator: " | "))")
        case .closed:
            // The channel closes when QEMU ends: on its own (an error in its log), or killed from the host
            // (Ctrl-C, the policy's on_violation, the OOM killer), and then the run ends as killed.
            let ended = await Self.onThread { () -> Bool in
                for _ in 0..<300 where process.isRunning { usleep(10_000) }
                return !process.isRunning
            }
            if !ended { try? FileIO.write("1", to: cgroup.path + "/cgroup.kill") }
            let status = await Self.reap(process)
            if ended, case .signaled = status { return status }
            if !hello.said.withLock({ $0 }), let panic = sandbox.panicLine() {
                throw fail(Alcub3Exit.vmFailed, "the guest kernel panicked before the guest agent started: \(panic)")
            }
            let tail = sandbox.consoleTail(5)
            throw fail(Alcub3Exit.vmFailed, "QEMU ended before the guest reported the command's exit\(sandbox.qemuWords())"
                       + (tail.isEmpty ? "" : "; console's last lines: " + tail.joined(separator: " | ")))
        }
    }

    /// What the command sees in the guest: not the host's environment, which
    /// names paths and sockets that do not exist there.
    static func guestEnvironment(hostname: String) -> [String] {
        ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "TERM=dumb", "HOSTNAME=\(hostname)"]
    }

    static func reap(_ process: SandboxedProcess) async -> ExitStatus {
        await onThread { process.wait() }
    }

    /// Blocking work on a thread of its own, awaited.
    static func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread { continuation.resume(with: Result { try body() }) }
        }
    }

    static func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            Thread.detachNewThread { continuation.resume(returning: body()) }
        }
    }
}
