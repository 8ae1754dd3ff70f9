import Foundation
import Synchronization
import Integrity
import Sandbox
import Telemetry

/// The hardware level: a vm sandbox with a virtual TPM (swtpm) and measured
/// boot. alcub3 boots its guests directly, so it acts as the boot loader: it
/// measures the kernel, the initramfs and the command line, refuses an image
/// whose hashes are not the ones its manifest recorded when it was built, and
/// has the guest extend the measurements into PCR 9 before anything runs;
/// the command starts only when the guest's TPM quotes the PCR value the
/// host's replay gives, over a fresh nonce, signed by the attestation key the
/// host derived from the sandbox's swtpm itself (GuestChannel.Measurement).
public final class HardwareBoot: Sendable {
    /// The sandbox's swtpm; a new one for each boot (swtpm ends with the QEMU that held it).
    private let current: Mutex<VirtualTPM>
    public var tpm: VirtualTPM { current.withLock { $0 } }
    public let measurement: BootMeasurement
    private let directory: String

    /// Kernel arguments the guest needs to find the TPM on a microvm (no ACPI).
    public static let kernelArguments = ["tpm_tis.force=1", "tpm_tis.interrupts=0"]

    /// The TPM's directory inside the vm sandbox's own (QEMU reaches nothing else).
    public static func tpmDirectory(sandboxID: String) -> String { VMSandbox.stateRoot + "/" + sandboxID + "/tpm" }

    /// Adds the TPM device and its kernel arguments to `spec`, and takes the
    /// guest's network away whatever the policy allows (the hardware level has
    /// none: nothing but the channel leaves the guest); call before `VMSandbox(spec:)`.
    public static func configure(_ spec: inout VMSpec) {
        spec.network = false
        spec.kernelArguments += kernelArguments
        let directory = tpmDirectory(sandboxID: spec.sandboxID)
        spec.extraArguments += VirtualTPM.qemuArguments(controlSocket: VirtualTPM.controlSocket(in: directory))
    }

    /// Measures what `sandbox` will boot against its image's manifest and
    /// starts the TPM. A mismatch throws before anything runs.
    public init(sandbox: VMSandbox) throws {
        let image = sandbox.spec.image
        let measured = try BootMeasurement.measure(kernel: image.kernel, initramfs: image.initramfs,
                                                   commandLine: sandbox.kernelCommandLine)
        let baseline = BootMeasurement(kernel: image.kernelSHA256, initramfs: image.initramfsSHA256, commandLine: measured.commandLine)
        if let first = measured.mismatches(against: baseline).first {
            throw BootMeasurementError.mismatch(component: first.component, expected: first.expected, measured: first.measured)
        }
        measurement = measured
        directory = Self.tpmDirectory(sandboxID: sandbox.id)
        current = Mutex(try VirtualTPM(directory: directory))
    }

    /// A fresh TPM for another boot of the same guest (the measurements stay).
    public func restart() throws {
        try current.withLock { tpm in
            tpm.stop()
            tpm = try VirtualTPM(directory: directory)
        }
    }

    /// What the guest channel sends and checks: the quote must be signed by
    /// the attestation key of the TPM this boot uses, derived by the host.
    public var channelMeasurement: GuestChannel.Measurement {
        let key = tpm.attestationKey
        let pcr9 = measurement.expectedPCRValue
        return GuestChannel.Measurement(digests: measurement.digestBytes, expectedPCR: measurement.expectedPCR) { quote, nonce in
            key.refusal(ofQuote: quote, nonce: nonce, pcr9: pcr9)?.description
        }
    }

    public func stop() { current.withLock { $0.stop() } }

    /// The service's TPMs by sandbox, stopped (and their swtpm reaped) when the sandbox ends.
    private static let running = Mutex<[String: HardwareBoot]>([:])
    static func register(_ boot: HardwareBoot, sandboxID: String) { running.withLock { $0[sandboxID] = boot } }
    static func release(sandboxID: String) { running.withLock { $0.removeValue(forKey: sandboxID) }?.stop() }
}
