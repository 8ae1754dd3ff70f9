import Crypto
import Foundation

/// Measured boot for the hardware isolation level. alcub3 boots its guests
/// directly (QEMU `-kernel`/`-initrd`/`-append`), so it is the boot loader: it
/// hashes what it is about to boot, compares the hashes with the ones recorded
/// when the image was built (or with the sandbox's baseline), refuses a
/// mismatch before anything starts, and has the guest extend the same
/// hashes into the virtual TPM's PCR so a quote of that PCR attests them.
public struct BootMeasurement: Codable, Sendable, Equatable {
    /// The PCR the components are extended into, in this order: kernel,
    /// initramfs, command line (PCR 9 is where Linux boot loaders put the
    /// kernel and initrd; the order is what the replay below assumes).
    public static let pcr = 9

    public var kernel: String
    public var initramfs: String
    public var commandLine: String

    public init(kernel: String, initramfs: String, commandLine: String) {
        self.kernel = kernel
        self.initramfs = initramfs
        self.commandLine = commandLine
    }

    /// Hashes the files and the command line (SHA-256, hex).
    public static func measure(kernel: String, initramfs: String, commandLine: String) throws -> BootMeasurement {
        BootMeasurement(kernel: try hashFile(kernel), initramfs: try hashFile(initramfs), commandLine: hash(commandLine: commandLine))
    }

    /// The command line's SHA-256 (hex), as `measure` takes it.
    public static func hash(commandLine: String) -> String { Hex.string(SHA256.hash(data: Data(commandLine.utf8))) }

    static func hashFile(_ path: String) throws -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw BootMeasurementError.unreadable(path: path, reason: String(cString: strerror(errno)))
        }
        defer { try? handle.close() }
        var hasher = SHA256()
        while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty { hasher.update(data: chunk) }
        return Hex.string(hasher.finalize())
    }

    /// The three digests as bytes, in extend order (what the guest extends).
    public var digestBytes: [UInt8] { Hex.bytes(kernel) + Hex.bytes(initramfs) + Hex.bytes(commandLine) }

    /// The PCR's value after the three extends from its reset value (32 zero
    /// bytes): PCR = SHA-256(PCR || digest), once per component.
    public var expectedPCR: String { Hex.string(expectedPCRValue) }

    /// The same, as the 32 bytes a TPM quote digests.
    public var expectedPCRValue: [UInt8] {
        var value = [UInt8](repeating: 0, count: 32)
        for digest in [kernel, initramfs, commandLine] {
            value = Array(SHA256.hash(data: value + Hex.bytes(digest)))
        }
        return value
    }

    /// What differs from `baseline`, by component (empty when it matches).
    public func mismatches(against baseline: BootMeasurement) -> [(component: String, expected: String, measured: String)] {
        [("kernel", baseline.kernel, kernel), ("initramfs", baseline.initramfs, initramfs),
         ("command line", baseline.commandLine, commandLine)].filter { $0.1 != $0.2 }
    }
}

/// What a vm or hardware sandbox booted, as its integrity baseline records
/// it: the three measurements and the files they were taken of, and at the
/// hardware level the PCR the guest's TPM reported (validation compares the
/// image on disk with it, since later boots of the image would use it).
public struct BootRecord: Codable, Sendable, Equatable {
    public var measurement: BootMeasurement
    public var kernelPath: String
    public var initramfsPath: String
    /// The kernel command line itself (its hash is in `measurement`).
    public var commandLine: String
    /// The hardware level: PCR 9 as the guest's TPM quoted it (signed, fresh, equal to `measurement.expectedPCR`, or nothing ran).
    public var pcr: String?

    public init(measurement: BootMeasurement, kernelPath: String, initramfsPath: String, commandLine: String, pcr: String?) {
        self.measurement = measurement
        self.kernelPath = kernelPath
        self.initramfsPath = initramfsPath
        self.commandLine = commandLine
        self.pcr = pcr
    }

    /// The image files measured again: what differs from the record, by component, in words (empty: unchanged).
    public func changesOnDisk() -> [(component: String, expected: String, found: String)] {
        var changes: [(String, String, String)] = []
        for (component, path, expected) in [("kernel", kernelPath, measurement.kernel), ("initramfs", initramfsPath, measurement.initramfs)] {
            let found: String
            do { found = try BootMeasurement.hashFile(path) } catch { found = "unreadable (\(error))" }
            if found != expected { changes.append((component, expected, found)) }
        }
        return changes
    }
}

public enum BootMeasurementError: Error, CustomStringConvertible, Equatable {
    case unreadable(path: String, reason: String)
    /// The image is not what its baseline says: it is never booted.
    case mismatch(component: String, expected: String, measured: String)
    /// The guest's TPM reported another PCR value than the measurements make.
    case pcrMismatch(expected: String, reported: String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason): "cannot measure \(path): \(reason)"
        case .mismatch(let component, let expected, let measured):
            "measured boot: the \(component) is not the one in the baseline (sha256 \(measured), expected \(expected)); the guest was not started"
        case .pcrMismatch(let expected, let reported):
            "measured boot: the guest's TPM reports PCR \(BootMeasurement.pcr) = \(reported), expected \(expected) from the measurements"
        }
    }
}

extension Hex {
    /// Bytes of a hex string (pairs of hex digits; anything else ends it).
    static func bytes(_ text: String) -> [UInt8] {
        var bytes: [UInt8] = []
        var high: UInt8?
        for c in text.utf8 {
            let v: UInt8
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): v = c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): v = c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): v = c - UInt8(ascii: "A") + 10
            default: return bytes
            }
            if let h = high { bytes.append(h << 4 | v); high = nil } else { high = v }
        }
        return bytes
    }
}
