#if canImport(Glibc)
import Glibc
#endif
import CAlcub3
import Foundation
import KernelSupport

/// The hardware level's virtual TPM: one swtpm (Debian's) per sandbox, its
/// state in a directory of the sandbox's own, reached by QEMU through a Unix
/// control socket. swtpm runs with `--terminate`, so it ends when QEMU lets
/// go of it; `stop` ends it in any case and removes its files. Before that,
/// the host has its own swtpm on the fresh state derive the attestation key
/// that the guest's quotes must be signed with (`attestationKey`).
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

    /// The key the guest's quotes must be signed with, derived by the host on the fresh state.
    public let attestationKey: AttestationKey

    /// Makes the TPM's state in `directory` (created, 0700), derives its
    /// attestation key there, then starts swtpm for QEMU on that state and
    /// waits for its control socket.
    public init(directory: String, timeoutSeconds: Double = 5) throws {
        let swtpm = try Self.locateSwtpm()
        self.directory = directory
        controlSocket = Self.controlSocket(in: directory)
        try FileManager.default.createDirectory(atPath: directory + "/state", withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        do {
            attestationKey = try Self.withDataSocket(swtpm: swtpm, directory: directory, timeoutSeconds: timeoutSeconds) { tpm in
                try tpm.createAttestationKey().key
            }
        } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
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

extension VirtualTPM {
    /// Runs `body` with a swtpm of its own on the state in `directory`/state,
    /// reached on a data socket (QEMU is not running: nothing else holds the
    /// state), then shuts the TPM down in order and waits for swtpm to end.
    /// The first run on an empty state manufactures the TPM: its seeds are
    /// made then and kept in the state, so the QEMU's swtpm that follows
    /// derives the same primary keys.
    public static func withDataSocket<T>(swtpm: String? = nil, directory: String, timeoutSeconds: Double = 5,
                                         _ body: (TPMConnection) throws -> T) throws -> T {
        let swtpm = try swtpm ?? locateSwtpm()
        // A listening socket handed to swtpm as its stdin: connect() is queued
        // before swtpm accepts, so there is no socket file to wait for.
        let path = directory + "/swtpm.data"
        unlink(path)
        let listening = try VMSandbox.listen(at: path)
        defer { unlink(path) }
        guard let pid = HostCommand.spawn([swtpm, "socket", "--tpm2", "--tpmstate", "dir=\(directory)/state",
                                           "--server", "type=unixio,fd=0", "--flags", "not-need-init,startup-clear",
                                           "--terminate", "--log", "file=\(directory)/swtpm-host.log,level=1"],
                                          stdio: (listening.raw, -1, -1)) else {
            throw VirtualTPMError("could not start swtpm: \(String(cString: strerror(errno)))")
        }
        var connection: TPMConnection?
        defer {
            // Its state saved, swtpm ends with the connection (--terminate); a swtpm that does not is killed.
            if let connection { try? connection.shutdown() }
            connection = nil
            reap(pid, within: timeoutSeconds)
        }
        connection = try TPMConnection(path: path, timeoutSeconds: timeoutSeconds)
        return try body(connection!)
    }

    /// Waits for `pid` to end on its own for `seconds`, then kills it.
    static func reap(_ pid: pid_t, within seconds: Double) {
        var status: Int32 = 0
        let deadline = Date().addingTimeInterval(seconds)
        while waitpid(pid, &status, WNOHANG) == 0 {
            guard Date() < deadline else {
                kill(pid, SIGKILL)
                _ = HostCommand.wait(pid)
                return
            }
            usleep(5_000)
        }
    }
}

/// The host's own conversation with a swtpm on its data socket: one command,
/// one response, built by alcub3_tpm2.c (the guest agent's very code).
public final class TPMConnection {
    private let fd: OwnedDescriptor
    private let path: String

    init(path: String, timeoutSeconds: Double) throws {
        self.path = path
        fd = OwnedDescriptor(try syscallChecked("socket", path) { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) })
        // A swtpm that stops answering fails the command instead of hanging the sandbox's start.
        var timeout = timeval(tv_sec: Int(timeoutSeconds), tv_usec: 0)
        setsockopt(fd.raw, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(path.utf8.prefix(raw.count - 1))
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd.raw, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw SystemError(errno: errno, call: "connect", context: path) }
    }

    /// Sends a command built by `build` into a buffer and returns the
    /// response; throws on an I/O error or a response code other than success.
    public func transact(_ name: String, _ build: (UnsafeMutablePointer<UInt8>) -> Int) throws -> [UInt8] {
        var command = [UInt8](repeating: 0, count: Int(ALCUB3_TPM2_COMMAND_MAX))
        let length = command.withUnsafeMutableBufferPointer { build($0.baseAddress!) }
        guard command.withUnsafeBytes({ FileIO.writeAll(fd.raw, UnsafeRawBufferPointer(rebasing: $0[0..<length])) }) else {
            throw SystemError(errno: errno, call: "write", context: "\(name) to \(path)")
        }
        var response = try read(10, name)
        let size = Int(response[2]) << 24 | Int(response[3]) << 16 | Int(response[4]) << 8 | Int(response[5])
        guard size >= 10, size <= Int(ALCUB3_TPM2_RESPONSE_MAX) else { throw VirtualTPMError("\(name): a response of \(size) bytes") }
        response += try read(size - 10, name)
        let rc = alcub3_tpm2_response_code(response, response.count)
        guard rc == 0 else { throw VirtualTPMError("\(name) answered 0x\(String(rc, radix: 16))") }
        return response
    }

    private func read(_ count: Int, _ name: String) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = bytes.withUnsafeMutableBytes { Glibc.read(fd.raw, $0.baseAddress! + got, count - got) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                throw n == 0 ? VirtualTPMError("\(name): swtpm closed the connection") : SystemError(errno: errno, call: "read", context: "\(name) from \(path)")
            }
            got += n
        }
        return bytes
    }

    /// TPM2_CreatePrimary with the attestation key's template: its transient handle and public key.
    public func createAttestationKey() throws -> (handle: UInt32, key: AttestationKey) {
        let response = try transact("TPM2_CreatePrimary") { alcub3_tpm2_create_attestation_key($0) }
        var key = alcub3_tpm2_key()
        let rc = alcub3_tpm2_parse_attestation_key(response, response.count, &key)
        guard rc == 0 else { throw VirtualTPMError("TPM2_CreatePrimary: the attestation key was refused (0x\(String(rc, radix: 16)))") }
        return (key.handle, AttestationKey(key))
    }

    public func extend(pcr: Int, digest: [UInt8]) throws {
        precondition(digest.count == 32)
        _ = try transact("TPM2_PCR_Extend") { alcub3_tpm2_pcr_extend($0, UInt32(pcr), digest) }
    }

    /// TPM2_Quote of `pcrs` by `key` with `nonce`, as the guest agent sends it: a QUOTE frame's payload.
    public func quote(key: UInt32, nonce: [UInt8], pcrs: [Int]) throws -> [UInt8] {
        precondition(nonce.count == Int(ALCUB3_TPM2_NONCE_SIZE))
        let response = try transact("TPM2_Quote") { alcub3_tpm2_quote($0, key, nonce, pcrs.reduce(0) { $0 | 1 << UInt32($1) }) }
        var attest: UnsafePointer<UInt8>?, signature: UnsafePointer<UInt8>?
        var attestLength = 0, signatureLength = 0
        return try response.withUnsafeBufferPointer { buffer in
            let rc = alcub3_tpm2_parse_quote(buffer.baseAddress, buffer.count, &attest, &attestLength, &signature, &signatureLength)
            guard rc == 0, let attest, let signature else { throw VirtualTPMError("TPM2_Quote: a malformed response (0x\(String(rc, radix: 16)))") }
            var header = alcub3_guest_quote()
            header.attest_size = UInt32(attestLength)
            header.signature_size = UInt32(signatureLength)
            return withUnsafeBytes(of: header) { Array($0) } + Array(UnsafeBufferPointer(start: attest, count: attestLength))
                + Array(UnsafeBufferPointer(start: signature, count: signatureLength))
        }
    }

    public func flush(_ handle: UInt32) throws {
        _ = try transact("TPM2_FlushContext") { alcub3_tpm2_flush($0, handle) }
    }

    /// TPM2_Shutdown(CLEAR): swtpm saves its state in order.
    public func shutdown() throws {
        _ = try transact("TPM2_Shutdown") { alcub3_tpm2_shutdown_clear($0) }
    }
}

/// Why the virtual TPM could not be had: one line.
public struct VirtualTPMError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}
