#if canImport(Glibc)
import Glibc
#endif
import CAlcub3
import Crypto
import Foundation
import KernelSupport
import Sandbox
import Synchronization
import Testing
@testable import Telemetry

/// The host end of the vm channel against a fake guest on a socketpair: the
/// exchange of alcub3_guest.h, records re-labelled with the host's sandbox id.
@Suite struct GuestChannelTests {
    func frame(_ type: alcub3_frame_type, _ payload: [UInt8]) -> [UInt8] {
        var h = alcub3_frame_header()
        h.type = UInt32(type.rawValue)
        h.length = UInt32(payload.count)
        return withUnsafeBytes(of: h) { Array($0) } + payload
    }

    func bytes<T>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }

    func readFrame(_ fd: Int32) -> (UInt32, [UInt8]) {
        func exact(_ n: Int) -> [UInt8] {
            var out = [UInt8](repeating: 0, count: n), got = 0
            while got < n {
                let r = out.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, n - got) }
                if r <= 0 { break }
                got += r
            }
            return out
        }
        let h = exact(8).withUnsafeBytes { $0.loadUnaligned(as: alcub3_frame_header.self) }
        return (h.type, exact(Int(h.length)))
    }

    @Test func guestFramesBecomeEventsOfTheHostSandbox() async throws {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        let hub = EventHub()
        let subscription = hub.subscribe()
        let output = OutputLog()
        let channel = GuestChannel(descriptor: OwnedDescriptor(fds[0]), hub: hub, sandboxCgroupID: 777, object: [1, 2, 3],
                                   run: .init(arguments: ["sh", "-c", "echo hi"], environment: ["PATH=/bin"], syscalls: true)) { stream, data in
            output.append(stream, Array(data))
        }
        let guest = fds[1]
        let served = Task.detached { channel.serve(bootTimeout: 5) }

        var hello = alcub3_guest_hello()
        hello.boot_ns = 1_000_000
        hello.version = UInt32(ALCUB3_GUEST_VERSION)
        var out = frame(ALCUB3_FRAME_HELLO, bytes(hello) + Array("6.12-test".utf8))
        _ = out.withUnsafeBytes { write(guest, $0.baseAddress, $0.count) }
        let object = readFrame(guest)
        #expect(object.0 == UInt32(ALCUB3_FRAME_OBJECT.rawValue) && object.1 == [1, 2, 3])
        let run = readFrame(guest)
        #expect(run.0 == UInt32(ALCUB3_FRAME_RUN.rawValue))
        let header = run.1.withUnsafeBytes { $0.loadUnaligned(as: alcub3_guest_run.self) }
        #expect(header.argc == 3 && header.envc == 1 && header.flags == UInt32(ALCUB3_SANDBOX_SYSCALLS))
        #expect(Array(run.1.dropFirst(MemoryLayout<alcub3_guest_run>.size)) == Array("sh\0-c\0echo hi\0PATH=/bin\0".utf8))

        // An exec record as the guest's kernel wrote it: guest cgroup id 5, guest clock.
        var exec = alcub3_exec_event()
        exec.hdr.ts_ns = 2_000_000
        exec.hdr.sandbox_cgid = 5
        exec.hdr.pid = 140
        exec.hdr.tid = 140
        exec.hdr.kind = UInt16(ALCUB3_KIND_EXEC.rawValue)
        var exit = alcub3_guest_exit()
        exit.status = 7 << 8
        out = frame(ALCUB3_FRAME_EVENT, bytes(exec)) + frame(ALCUB3_FRAME_STDOUT, Array("hi\n".utf8))
            + frame(ALCUB3_FRAME_EVENT, [1, 2, 3]) + frame(ALCUB3_FRAME_EXIT, bytes(exit))
        _ = out.withUnsafeBytes { write(guest, $0.baseAddress, $0.count) }
        let result = await served.value
        close(guest)

        #expect(result.outcome == .exited(status: 7 << 8))
        #expect(result.kernelRelease == "6.12-test" && result.malformed == 1 && result.events == 1)
        #expect(output.text == "hi\n")
        subscription.cancel()
        var events: [TelemetryEvent] = []
        for await batch in subscription.events { events += batch }
        guard case .process(let p) = events.first else { Issue.record("no exec event: \(events)"); return }
        #expect(p.origin.sandboxCgroupID == 777 && p.origin.pid == 140)
        // The guest's clock mapped onto the host's: one guest millisecond after HELLO.
        #expect(p.origin.bootNanos == result.helloNanos! + 1_000_000)
    }

    @Test func noHelloIsABootTimeout() {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[1]) }
        let channel = GuestChannel(descriptor: OwnedDescriptor(fds[0]), hub: EventHub(), sandboxCgroupID: 1, object: [],
                                   run: .init(arguments: ["true"], environment: [], syscalls: false)) { _, _ in }
        #expect(channel.serve(bootTimeout: 0.2).outcome == .bootTimeout)
    }

    /// A host taking the channel over reads a stream that may begin inside a
    /// frame: after its RESYNC, the frames before the guest's SYNC are kept
    /// from the first offset whose frames lead exactly to it; the cut one is lost.
    @Test func aTakeoverKeepsTheWholeFramesBeforeTheSync() throws {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        let guest = fds[1]
        defer { close(guest) }
        let output = OutputLog()
        let channel = GuestChannel(descriptor: OwnedDescriptor(fds[0]), hub: EventHub(), sandboxCgroupID: 1, object: [],
                                   run: .init(arguments: [], environment: [], syscalls: false)) { stream, data in
            output.append(stream, Array(data))
        }
        let done = DispatchSemaphore(value: 0)
        let outcome = Mutex<GuestChannel.Result?>(nil)
        Thread.detachNewThread {
            outcome.withLock { $0 = channel.serve(takingOver: .init(clockOffset: 5, guestPID: 7), timeout: 10) }
            done.signal()
        }
        let (type, token) = readFrame(guest)
        #expect(type == UInt32(ALCUB3_FRAME_RESYNC.rawValue) && token.count == Int(ALCUB3_SYNC_TOKEN))
        // The tail of a frame the previous host half read, then whole frames, the SYNC, more, and EXIT.
        let cut = Array(frame(ALCUB3_FRAME_STDOUT, Array("lost\n".utf8)).dropFirst(5))
        var exit = alcub3_guest_exit()
        exit.status = 3 << 8
        let stream = cut + frame(ALCUB3_FRAME_STDOUT, Array("kept 1\n".utf8)) + frame(ALCUB3_FRAME_STDERR, Array("kept 2\n".utf8))
            + frame(ALCUB3_FRAME_SYNC, token) + frame(ALCUB3_FRAME_STDOUT, Array("after\n".utf8)) + frame(ALCUB3_FRAME_EXIT, bytes(exit))
        #expect(stream.withUnsafeBytes { write(guest, $0.baseAddress, $0.count) } == stream.count)
        #expect(done.wait(timeout: .now() + 10) == .success)
        let result = try #require(outcome.withLock { $0 })
        #expect(result.outcome == .exited(status: 3 << 8) && result.malformed == 0 && result.guestPID == 7)
        #expect(output.text == "kept 1\nkept 2\nafter\n", "\(output.text)")
    }
}

final class OutputLog: @unchecked Sendable {
    private let lock = NSLock()
    private var bytes: [UInt8] = []
    func append(_ stream: GuestChannel.Stream, _ data: [UInt8]) { lock.withLock { bytes += data } }
    var text: String { lock.withLock { String(decoding: bytes, as: UTF8.self) } }
}

/// M8: the hardware level's exchange before OBJECT and RUN. The guest's word
/// for its PCR is refused; only a quote by the attestation key the host derived
/// from the sandbox's swtpm, over this boot's nonce, lets the command start.
@Suite(.serialized) struct MeasuredBootChannelTests {
    /// `serve` blocks: on a thread of its own, not one of the (two-core) cooperative pool's.
    final class Served: @unchecked Sendable {
        private let done = DispatchSemaphore(value: 0)
        private var result: GuestChannel.Result?
        init(_ channel: GuestChannel) {
            Thread.detachNewThread { [self] in
                result = channel.serve(bootTimeout: 10)
                done.signal()
            }
        }
        var value: GuestChannel.Result {
            done.wait()
            return result!
        }
    }

    let base = GuestChannelTests()
    let digests = (0..<96).map { UInt8($0) }

    var expectedPCR: [UInt8] {
        stride(from: 0, to: 96, by: 32).reduce([UInt8](repeating: 0, count: 32)) { Array(SHA256.hash(data: $0 + digests[$1..<($1 + 32)])) }
    }

    /// A fresh swtpm state and the key the host derived from it, as VirtualTPM.init does.
    func sandboxTPM() throws -> (directory: String, key: AttestationKey) {
        let dir = NSTemporaryDirectory() + "alcub3-channel-tpm-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir + "/state", withIntermediateDirectories: true)
        return (dir, try VirtualTPM.withDataSocket(directory: dir) { try $0.createAttestationKey().key })
    }

    /// The guest agent's part on a real TPM: extend the digests, quote PCR 9 with `nonce`.
    func quote(on dir: String, digests: [UInt8], nonce: [UInt8]) throws -> [UInt8] {
        try VirtualTPM.withDataSocket(directory: dir) { tpm in
            for i in stride(from: 0, to: digests.count, by: 32) { try tpm.extend(pcr: 9, digest: Array(digests[i..<(i + 32)])) }
            let key = try tpm.createAttestationKey()
            return try tpm.quote(key: key.handle, nonce: nonce, pcrs: [9])
        }
    }

    /// A channel at the hardware level and its fake guest's end, HELLO sent; returns the MEASURE the host sent.
    func start(key: AttestationKey) throws -> (channel: GuestChannel, guest: Int32, measure: [UInt8], served: Served) {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        let pcr9 = expectedPCR
        let measurement = GuestChannel.Measurement(digests: digests, expectedPCR: pcr9.map { String(format: "%02x", $0) }.joined()) { quote, nonce in
            key.refusal(ofQuote: quote, nonce: nonce, pcr9: pcr9)?.description
        }
        let channel = GuestChannel(descriptor: OwnedDescriptor(fds[0]), hub: EventHub(), sandboxCgroupID: 9, object: [1, 2, 3],
                                   run: .init(arguments: ["true"], environment: [], syscalls: false), measurement: measurement) { _, _ in }
        let served = Served(channel)
        var hello = alcub3_guest_hello()
        hello.version = UInt32(ALCUB3_GUEST_VERSION)
        let out = base.frame(ALCUB3_FRAME_HELLO, base.bytes(hello))
        _ = out.withUnsafeBytes { write(fds[1], $0.baseAddress, $0.count) }
        let measure = base.readFrame(fds[1])
        #expect(measure.0 == UInt32(ALCUB3_FRAME_MEASURE.rawValue) && measure.1.count == MemoryLayout<alcub3_guest_measure>.size)
        return (channel, fds[1], measure.1, served)
    }

    func send(_ fd: Int32, _ type: alcub3_frame_type, _ payload: [UInt8]) {
        let out = base.frame(type, payload)
        _ = out.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }

    /// Nothing more came from the host: no OBJECT, no RUN.
    func nothingMore(_ fd: Int32) -> Bool {
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, Int32(MSG_DONTWAIT)) <= 0
    }

    /// Today's protocol: the guest answers with the PCR value it computed itself. Refused, and nothing runs.
    @Test func aPCRStringWithoutAQuoteIsRefused() throws {
        let tpm = try sandboxTPM()
        defer { try? FileManager.default.removeItem(atPath: tpm.directory) }
        let (_, guest, _, served) = try start(key: tpm.key)
        defer { close(guest) }
        send(guest, ALCUB3_FRAME_PCR, Array(expectedPCR.map { String(format: "%02x", $0) }.joined().utf8))
        // A host that took the string would send OBJECT and RUN and run to this EXIT.
        send(guest, ALCUB3_FRAME_EXIT, base.bytes(alcub3_guest_exit()))
        let result = served.value
        guard case .failed(let message) = result.outcome else { Issue.record("outcome \(result.outcome)"); return }
        #expect(message.contains("without a TPM quote") && result.attestationRefused && result.pcr == nil, "\(message)")
        #expect(nothingMore(guest), "the host sent more frames after a PCR string")
    }

    /// The sandbox's TPM quotes PCR 9 over this boot's nonce: OBJECT and RUN follow, the PCR is recorded as attested.
    @Test func aFreshQuoteFromTheSandboxTPMStartsTheCommand() throws {
        let tpm = try sandboxTPM()
        defer { try? FileManager.default.removeItem(atPath: tpm.directory) }
        let (_, guest, measure, served) = try start(key: tpm.key)
        defer { close(guest) }
        #expect(Array(measure.prefix(96)) == digests)
        send(guest, ALCUB3_FRAME_QUOTE, try quote(on: tpm.directory, digests: Array(measure.prefix(96)), nonce: Array(measure.suffix(32))))
        #expect(base.readFrame(guest).0 == UInt32(ALCUB3_FRAME_OBJECT.rawValue))
        #expect(base.readFrame(guest).0 == UInt32(ALCUB3_FRAME_RUN.rawValue))
        var exit = alcub3_guest_exit()
        exit.status = 0
        send(guest, ALCUB3_FRAME_EXIT, base.bytes(exit))
        let result = served.value
        #expect(result.outcome == .exited(status: 0) && !result.attestationRefused)
        #expect(result.pcr == expectedPCR.map { String(format: "%02x", $0) }.joined())
    }

    /// A genuine quote of the right PCR from the right TPM, for an earlier boot's nonce (each boot's nonce is new).
    @Test func aReplayedQuoteIsRefusedBeforeAnythingRuns() throws {
        let tpm = try sandboxTPM()
        defer { try? FileManager.default.removeItem(atPath: tpm.directory) }
        let first = try start(key: tpm.key)
        let second = try start(key: tpm.key)
        defer { close(second.guest) }
        #expect(first.measure.suffix(32) != second.measure.suffix(32), "two boots were sent the same nonce")
        let old = try quote(on: tpm.directory, digests: digests, nonce: Array(first.measure.suffix(32)))
        send(second.guest, ALCUB3_FRAME_QUOTE, old)
        send(second.guest, ALCUB3_FRAME_EXIT, base.bytes(alcub3_guest_exit()))
        let result = second.served.value
        guard case .failed(let message) = result.outcome else { Issue.record("outcome \(result.outcome)"); return }
        #expect(message.contains("replayed") && result.attestationRefused, "\(message)")
        #expect(nothingMore(second.guest))
        close(first.guest)
        _ = first.served.value
    }
}
