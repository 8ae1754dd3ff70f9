#if canImport(Glibc)
import Glibc
#endif
import Foundation
import KernelSupport

/// The hardware level's virtual TPM: one swtpm (Debian's) per sandbox, its
/// state in a directory of the sandbox's own, reached by QEMU through a Unix
/// control socket. swtpm runs with `--terminate`, so it ends when QEMU lets
/// go of it; `stop` ends it in any case and removes its files.
public final class VirtualTPM: @unchecked Sendable {
    // @unchecked: `pid` is cleared only by `stop`, which its owner calls once.
    public let directory: String
    public let controlSocket: String
    public private(set) var pid: pid_t

    /// $ALCUB3_SWTPM, else swtpm from Debian's package or the first on PATH.
    public static func locateSwtpm() throws -> String {
        switch HostCommand.locate("swtpm", overriddenBy: "ALCUB3_SWTPM", candidates: ["/usr/bin/swtpm"]) {
        case .found(let swtpm): return swtpm
        case .notExecutable(let chosen):
            throw VirtualTPMError("the hardware level needs swtpm: \(chosen) (ALCUB3_SWTPM) is not an executable; install swtpm or unset ALCUB3_SWTPM")
        case .notInstalled:
            throw VirtualTPMError("swtpm is not installed (Debian package swtpm): the hardware level needs a virtual TPM")
        }
    }

    /// Starts swtpm in `directory` (created, 0700) and waits for its socket.
    public init(directory: String, timeoutSeconds: Double = 5) throws {
        let swtpm = try Self.locateSwtpm()
        self.directory = directory
        controlSocket = Self.controlSocket(in: directory)
        try FileManager.default.createDirectory(atPath: directory + "/state", withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        let log = directory + "/swtpm.log"
        guard let pid = HostCommand.spawn([swtpm, "socket", "--tpm2", "--tpmstate", "dir=\(directory)/state",
                                           "--ctrl", "type=unixio,path=\(controlSocket)", "--terminate",
                                           "--log", "file=\(log),level=1"], stdio: (-1, -1, -1)) else {
            let reason = String(cString: strerror(errno))
            try? FileManager.default.removeItem(atPath: directory)
            throw VirtualTPMError("could not start swtpm: \(reason)")
        }
        self.pid = pid
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while !FileManager.default.fileExists(atPath: controlSocket) {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                self.pid = 0
                let said = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
                try? FileManager.default.removeItem(atPath: directory)
                throw VirtualTPMError("swtpm exited at start: \(said.split(separator: "\n").suffix(3).joined(separator: "; "))")
            }
            guard Date() < deadline else {
                stop()
                throw VirtualTPMError("swtpm did not open its control socket within \(Int(timeoutSeconds)) s")
            }
            usleep(10_000)
        }
    }

    public static func controlSocket(in directory: String) -> String { directory + "/swtpm.ctrl" }

    /// QEMU's arguments for a TPM reached at `controlSocket`: a TIS device,
    /// which the guest sees as /dev/tpm0.
    public static func qemuArguments(controlSocket: String) -> [String] {
        ["-chardev", "socket,id=chrtpm,path=\(controlSocket)", "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
         "-device", "tpm-tis,tpmdev=tpm0"]
    }

    public var qemuArguments: [String] { Self.qemuArguments(controlSocket: controlSocket) }

    /// Ends swtpm (if QEMU has not already) and removes its state: a sandbox's
    /// TPM lives as long as the sandbox.
    public func stop() {
        if pid > 0 {
            kill(pid, SIGTERM)
            var status: Int32 = 0
            var waited = 0
            while waitpid(pid, &status, WNOHANG) == 0 && waited < 100 {
                usleep(10_000)
                waited += 1
            }
            if waited == 100 {
                kill(pid, SIGKILL)
                _ = HostCommand.wait(pid)
            }
            pid = 0
        }
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// Why the virtual TPM could not be had: one line.
public struct VirtualTPMError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}
