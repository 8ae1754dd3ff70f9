#if canImport(Glibc)
import Glibc
#endif
import Crypto
import Foundation
import KernelSupport
import Policy

/// A vm sandbox's failure, in one line the user can act on.
public struct VMError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// What the guest holds beyond busybox and the guest agent: the runtime of
/// the policy's capabilities, so the agent's interpreter runs inside the vm.
public enum GuestRuntime: String, Sendable {
    /// CPython 3.11 and its libraries (the python capability): initramfs-python.cpio.
    case python

    /// The runtime a sandbox of these capabilities needs; nil: busybox is enough.
    public static func needed(by capabilities: [Capability]) -> GuestRuntime? {
        capabilities.contains(.python) ? .python : nil
    }
}

/// The vm level's guest: Debian's cloud kernel (an ELF booted through its
/// PVH entry) and an initramfs holding
/// busybox and the guest agent (guest/alcub3-guest.c), or the same with a
/// runtime (GuestRuntime), made by scripts/build-guest.sh into one directory
/// with a MANIFEST of their sha256. The kernel and the initramfs a boot uses
/// are checked against it before every boot: an image changed after it was
/// built is refused, never booted.
public struct GuestImage: Sendable {
    public let directory: String
    public let kernel: String
    /// initramfs.cpio, or initramfs-<runtime>.cpio.
    public let initramfs: String
    public let runtime: GuestRuntime?
    public let kernelSHA256: String
    public let initramfsSHA256: String
    /// The packages the manifest names (kernel-package, busybox-package).
    public let sources: [String: String]

    /// $ALCUB3_GUEST_DIR, else /var/cache/alcub3/guest.
    public static var defaultDirectory: String {
        ProcessInfo.processInfo.environment["ALCUB3_GUEST_DIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/var/cache/alcub3/guest"
    }

    /// The image in `directory`, verified. Missing from the default
    /// directory, or built by an alcub3 that made no initramfs for `runtime`:
    /// built first with scripts/build-guest.sh when alcub3 finds it (beside
    /// its source tree), `progress` hearing one line before the build.
    /// A directory the caller named is never built into.
    public static func prepare(directory: String = defaultDirectory, runtime: GuestRuntime? = nil,
                               progress: ((String) -> Void)? = nil) throws -> GuestImage {
        let manifest = try? FileIO.read(directory + "/MANIFEST")
        let lacksRuntime = runtime.map { manifest?.contains("  initramfs-\($0.rawValue).cpio\n") == false } ?? false
        if (manifest == nil || lacksRuntime) && directory == defaultDirectory {
            guard let script = builderScript() else {
                throw VMError("no vm guest image in \(directory): build it with `make guest` in alcub3's source tree "
                              + "(scripts/build-guest.sh \(directory))")
            }
            progress?("building the vm guest image in \(directory) (once; Debian's cloud kernel, busybox and python, about 80 MB)")
            let result = HostCommand.run(["/bin/sh", script, directory])
            guard result.code == 0 else {
                let last = result.output.split(separator: "\n").suffix(3).joined(separator: "; ")
                throw VMError("building the vm guest image failed (\(script), exit code \(result.code)): \(last)")
            }
        }
        return try load(directory: directory, runtime: runtime)
    }

    /// Reads the manifest and checks the kernel and the initramfs of `runtime` against it.
    public static func load(directory given: String, runtime: GuestRuntime? = nil) throws -> GuestImage {
        // Absolute: QEMU runs in the sandbox's own directory.
        let directory = given.hasPrefix("/") ? given : FileManager.default.currentDirectoryPath + "/" + given
        let manifest: String
        do {
            manifest = try FileIO.read(directory + "/MANIFEST")
        } catch {
            throw VMError("no vm guest image in \(directory) (\(error)): build it with `make guest` or scripts/build-guest.sh \(directory)")
        }
        var hashes: [String: String] = [:]
        var sources: [String: String] = [:]
        for line in manifest.split(separator: "\n") where !line.hasPrefix("#") {
            let parts = line.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2 else { continue }
            let key = String(parts[0]), value = parts[1].trimmingCharacters(in: .whitespaces)
            if key.count == 64, key.allSatisfy(\.isHexDigit) { hashes[value] = key } else { sources[key] = value }
        }
        let initramfsName = runtime.map { "initramfs-\($0.rawValue).cpio" } ?? "initramfs.cpio"
        guard let kernelHash = hashes["vmlinux"], let initramfsHash = hashes[initramfsName] else {
            throw VMError("the vm guest image manifest \(directory)/MANIFEST has no sha256 for vmlinux and \(initramfsName)"
                          + (runtime.map { " (the \($0.rawValue) runtime the policy's capabilities need)" } ?? "")
                          + ": rebuild it with make guest")
        }
        let image = GuestImage(directory: directory, kernel: directory + "/vmlinux", initramfs: directory + "/" + initramfsName,
                               runtime: runtime, kernelSHA256: kernelHash, initramfsSHA256: initramfsHash, sources: sources)
        for (path, expected) in [(image.kernel, kernelHash), (image.initramfs, initramfsHash)] {
            let actual = try sha256(of: path)
            guard actual == expected else {
                throw VMError("vm guest image failed validation: \(path) has sha256 \(actual), its manifest says \(expected); "
                              + "refusing to boot it (rebuild with make guest if the change is yours)")
            }
        }
        return image
    }

    /// The hex SHA-256 of a file, read in 1 MiB pieces.
    public static func sha256(of path: String) throws -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw VMError("cannot read \(path): \(SystemError.name(of: errno))") }
        defer { close(fd) }
        var hasher = SHA256()
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw VMError("cannot read \(path): \(SystemError.name(of: errno))") }
            if n == 0 { break }
            buffer.withUnsafeBytes { hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }

    /// scripts/build-guest.sh of alcub3's source tree: $ALCUB3_SOURCE_DIR, the
    /// tree this binary was built in (.build/<config>/alcub3), or the working directory.
    static func builderScript() -> String? {
        var roots: [String] = []
        if let source = ProcessInfo.processInfo.environment["ALCUB3_SOURCE_DIR"] { roots.append(source) }
        var executable = URL(fileURLWithPath: CommandLine.arguments.first ?? "").resolvingSymlinksInPath()
        for _ in 0..<4 {
            executable.deleteLastPathComponent()
            roots.append(executable.path)
        }
        roots.append(FileManager.default.currentDirectoryPath)
        return roots.map { $0 + "/scripts/build-guest.sh" }.first { FileIO.exists($0) && FileIO.exists(($0 as NSString).deletingLastPathComponent + "/../guest/alcub3-guest.c") }
    }
}
