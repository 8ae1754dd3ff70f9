#if canImport(Glibc)
import Glibc
#endif
import CAlcub3
import Foundation
import KernelSupport
import Synchronization

/// The host end of a vm sandbox's virtio-serial channel (frames of
/// alcub3_guest.h). It waits for the guest agent's HELLO, sends the telemetry
/// object and the command, then reads until the guest's EXIT: output goes to
/// `output`, ring buffer records are decoded with `EventDecoder` and published
/// into `hub` as if the host's kernel had sent them, with the host sandbox's
/// cgroup id and the host's boot clock, so the renderers, analyzers and the
/// store treat a vm sandbox like any other.
public final class GuestChannel: Sendable {
    /// What the guest runs.
    public struct Run: Sendable {
        public var arguments: [String]
        public var environment: [String]
        /// ALCUB3_SANDBOX_* for the guest's agent cgroup.
        public var flags: UInt32
        public init(arguments: [String], environment: [String], syscalls: Bool, syscallEntry: Bool = false) {
            self.arguments = arguments
            self.environment = environment
            flags = (syscalls ? UInt32(ALCUB3_SANDBOX_SYSCALLS) : 0) | (syscallEntry ? UInt32(ALCUB3_SANDBOX_SYSCALL_ENTRY) : 0)
        }
    }

    public enum Outcome: Sendable, Equatable {
        /// The command's wait status; -1: it could not be started.
        case exited(status: Int32)
        /// The guest agent gave up (its message).
        case failed(String)
        /// No HELLO within the boot timeout.
        case bootTimeout
        /// The channel closed before EXIT (QEMU ended or was killed).
        case closed
    }

    public struct Result: Sendable {
        public var outcome: Outcome
        /// Host boot-clock times: HELLO received, the command exec'ed (the guest's clock, mapped).
        public var helloNanos: UInt64?
        public var startedNanos: UInt64?
        public var guestPID: Int32?
        public var kernelRelease: String?
        /// The guest kernel's counters, summed over its CPUs.
        public var counters: KernelCounters?
        /// Records the decoder refused: a guest that sends them is not to be trusted.
        public var malformed: Int = 0
        /// Guest boot-clock time + this = host boot-clock time (set at HELLO).
        public var clockOffset: UInt64?
        /// The hardware level: PCR 9 as the guest's TPM quoted it, signed and fresh (nil: not attested).
        public var pcr: String?
        /// The hardware level: the host refused the guest's quote (set by the host alone, never from a guest's words).
        public var attestationRefused = false
        public var events: Int = 0
    }

    public enum Stream: Sendable { case stdout, stderr }

    /// The hardware level's measured boot: the digests the guest extends into
    /// its TPM's PCR 9 before anything runs, the PCR value they must give, and
    /// the check of the TPM's quote of it (the guest's word is never taken).
    public struct Measurement: Sendable {
        public var digests: [UInt8]     // kernel, initramfs, command line: 3 x 32 bytes
        public var expectedPCR: String  // 64 lower-case hex digits
        /// A QUOTE frame's payload and the nonce this boot sent: nil when the
        /// quote is the sandbox's TPM's, fresh, and of `expectedPCR`; else why not.
        public var verifyQuote: @Sendable (_ payload: [UInt8], _ nonce: [UInt8]) -> String?
        public init(digests: [UInt8], expectedPCR: String, verifyQuote: @escaping @Sendable ([UInt8], [UInt8]) -> String?) {
            self.digests = digests
            self.expectedPCR = expectedPCR
            self.verifyQuote = verifyQuote
        }
    }

    /// Set before `serve` for the hardware level.
    public let measurement: Measurement?

    /// A guest directory as the guest agent read it (`scan`): the raw
    /// SCAN_ENTRY payloads (Integrity decodes them into file entries).
    public struct ScanReply: Sendable {
        public var entries: [[UInt8]] = []
        /// errno of the directory itself (0: it was read).
        public var error: Int32 = 0
        /// The walk stopped at its entry or depth limit, or the host at its byte limit.
        public var truncated = false
    }

    /// The scan in flight, filled by `serve`'s thread.
    private struct ScanState {
        var waiting = false
        var reply = ScanReply()
        var bytes = 0
        var done = false
        /// The command is running (requests are served), or the channel ended.
        var running = false
        var ended = false
    }
    private let scanState = Mutex(ScanState())

    /// `sandbox exec` sessions in flight: their output and, once ended, wait status.
    private struct ExecSession {
        var chunks: [(stream: Stream, bytes: [UInt8])] = []
        var status: Int32?
    }
    private let execs = Mutex<[UInt32: ExecSession]>([:])
    private let nextExecID = Mutex<UInt32>(1)
    /// Frames to the guest come from the serving thread and from requests.
    private let sendLock = Mutex(())
    /// The most one scan's entries may hold (a 200,000-entry tree of long paths is about 30 MiB).
    static let scanBytesLimit = 64 << 20
    /// One request at a time on the channel.
    private let requestLock = Mutex(())

    private let fd: OwnedDescriptor
    private let hub: EventHub
    private let sandboxCgroupID: UInt64
    private let object: [UInt8]
    private let run: Run
    private let output: @Sendable (Stream, UnsafeRawBufferPointer) -> Void

    public init(descriptor: OwnedDescriptor, hub: EventHub, sandboxCgroupID: UInt64, object: [UInt8], run: Run,
                measurement: Measurement? = nil, output: @escaping @Sendable (Stream, UnsafeRawBufferPointer) -> Void) {
        self.measurement = measurement
        self.fd = descriptor
        self.hub = hub
        self.sandboxCgroupID = sandboxCgroupID
        self.object = object
        self.run = run
        self.output = output
    }

    /// The object the guest loads: the telemetry programs built for guest
    /// kernels (bpf/telemetry_guest.bpf.c), embedded like the host's.
    public static var guestObject: [UInt8] { BPFObjectBytes.decoded(BPFObjectBytes.telemetry_guest) }

    /// Runs the exchange to its end; blocks (call it on a thread of its own).
    /// `onStarted` hears the host time at which the guest exec'ed the command.
    public func serve(bootTimeout: Double, onStarted: (@Sendable (Result) -> Void)? = nil) -> Result {
        var result = Result(outcome: .closed)
        var reader = FrameReader(fd: fd.raw)
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(bootTimeout * 1e9)
        // HELLO, within the boot timeout.
        guard reader.waitReadable(until: deadline), let hello = reader.next(), hello.type == UInt32(ALCUB3_FRAME_HELLO.rawValue),
              hello.payload.count >= MemoryLayout<alcub3_guest_hello>.size else {
            result.outcome = DispatchTime.now().uptimeNanoseconds >= deadline ? .bootTimeout : .closed
            return result
        }
        let now = bootClockNanos()
        let guestBoot = hello.payload.withUnsafeBytes { $0.loadUnaligned(as: alcub3_guest_hello.self) }.boot_ns
        // Guest boot-clock time + offset = host boot-clock time (to the channel's latency).
        let offset = now &- guestBoot
        result.helloNanos = now
        result.kernelRelease = String(decoding: hello.payload.dropFirst(MemoryLayout<alcub3_guest_hello>.size), as: UTF8.self)
        if let measurement {
            // Nothing runs until the guest's TPM has signed, over a nonce of this boot's, what the host measured.
            var nonce = [UInt8](repeating: 0, count: 32)
            var generator = SystemRandomNumberGenerator()  // getrandom(2)
            for i in nonce.indices { nonce[i] = UInt8.random(in: 0...255, using: &generator) }
            guard send(type: ALCUB3_FRAME_MEASURE, measurement.digests + nonce), reader.waitReadable(until: deadline + 10_000_000_000),
                  let answer = reader.next() else { return result }
            switch Int32(bitPattern: answer.type) {
            case Int32(ALCUB3_FRAME_QUOTE.rawValue):
                if let refused = measurement.verifyQuote(answer.payload, nonce) {
                    result.attestationRefused = true
                    result.outcome = .failed("measured boot: PCR 9 attestation refused: \(refused)")
                    return result
                }
                result.pcr = measurement.expectedPCR
            case Int32(ALCUB3_FRAME_PCR.rawValue):
                // What the guest says its PCR holds proves nothing: it can compute the value itself.
                result.attestationRefused = true
                result.outcome = .failed("measured boot: PCR 9 attestation refused: the guest reported PCR 9 without a TPM quote")
                return result
            case Int32(ALCUB3_FRAME_ERROR.rawValue):
                result.outcome = .failed(String(decoding: answer.payload.prefix(512), as: UTF8.self))
                return result
            default:
                result.malformed += 1
                result.outcome = .failed("measured boot: the guest answered MEASURE with frame \(answer.type)")
                return result
            }
        }
        guard send(type: ALCUB3_FRAME_OBJECT, object), send(type: ALCUB3_FRAME_RUN, runPayload()) else { return result }
        result.clockOffset = offset
        return frames(from: &reader, offset: offset, result: result, onStarted: onStarted)
    }

    /// What a host taking the channel over needs from the one that started it
    /// (kept in the vm sandbox's directory): the guest's clock offset and the command's pid.
    public struct Takeover: Codable, Sendable, Equatable {
        public var clockOffset: UInt64
        public var guestPID: Int32
        public init(clockOffset: UInt64, guestPID: Int32) {
            self.clockOffset = clockOffset
            self.guestPID = guestPID
        }
    }

    /// Serves a channel whose command another host started (the service
    /// before a restart; QEMU reconnected to this one). The stream may begin
    /// inside a frame the previous host half read: RESYNC asks the guest for
    /// a token, and the frames before the token's SYNC are kept from the first
    /// offset whose frames lead exactly to it (only the cut frame is lost).
    public func serve(takingOver takeover: Takeover, timeout: Double = 30) -> Result {
        var result = Result(outcome: .closed)
        result.clockOffset = takeover.clockOffset
        result.guestPID = takeover.guestPID
        var token = [UInt8](repeating: 0, count: Int(ALCUB3_SYNC_TOKEN))
        var generator = SystemRandomNumberGenerator()
        for i in token.indices { token[i] = UInt8.random(in: 0...255, using: &generator) }
        guard send(type: ALCUB3_FRAME_RESYNC, token) else { return result }
        var header = alcub3_frame_header()
        header.type = UInt32(ALCUB3_FRAME_SYNC.rawValue)
        header.length = UInt32(token.count)
        var reader = FrameReader(fd: fd.raw)
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(timeout * 1e9)
        guard reader.realign(at: withUnsafeBytes(of: header) { Array($0) } + token, deadline: deadline) else { return result }
        scanState.withLock { $0.running = true }
        return frames(from: &reader, offset: takeover.clockOffset, result: result, onStarted: nil)
    }

    /// The frames of a running command, to its EXIT or the channel's end.
    private func frames(from reader: inout FrameReader, offset: UInt64, result start: Result,
                        onStarted: (@Sendable (Result) -> Void)?) -> Result {
        var result = start
        defer { scanState.withLock { $0.ended = true; $0.running = false } }
        var pending: [TelemetryEvent] = []
        while let frame = reader.next() {
            switch Int32(bitPattern: frame.type) {
            case Int32(ALCUB3_FRAME_EVENT.rawValue):
                var payload = frame.payload
                guard payload.count >= MemoryLayout<alcub3_header>.size else { result.malformed += 1; continue }
                payload.withUnsafeMutableBytes { raw in
                    let ts = raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self)
                    raw.storeBytes(of: ts &+ offset, toByteOffset: 0, as: UInt64.self)
                    raw.storeBytes(of: sandboxCgroupID, toByteOffset: 8, as: UInt64.self)
                }
                let before = pending.count
                let decoded = payload.withUnsafeBytes { EventDecoder.decode($0, into: &pending) }
                if !decoded { result.malformed += 1 }
                result.events += pending.count - before
            case Int32(ALCUB3_FRAME_WRITE_STATS.rawValue):
                guard frame.payload.count >= MemoryLayout<alcub3_guest_write_stats>.size else { result.malformed += 1; continue }
                let w = frame.payload.withUnsafeBytes { $0.loadUnaligned(as: alcub3_guest_write_stats.self) }
                pending.append(.writeVolume(WriteVolumeEvent(
                    sandboxCgroupID: sandboxCgroupID, pid: Int32(bitPattern: w.pid), fileID: w.file_id,
                    totalBytes: w.total_bytes, totalWrites: w.total_writes, newBytes: w.new_bytes)))
            case Int32(ALCUB3_FRAME_STDOUT.rawValue):
                frame.payload.withUnsafeBytes { output(.stdout, $0) }
            case Int32(ALCUB3_FRAME_STDERR.rawValue):
                frame.payload.withUnsafeBytes { output(.stderr, $0) }
            case Int32(ALCUB3_FRAME_STARTED.rawValue):
                guard frame.payload.count >= MemoryLayout<alcub3_guest_started>.size else { result.malformed += 1; continue }
                let s = frame.payload.withUnsafeBytes { $0.loadUnaligned(as: alcub3_guest_started.self) }
                result.startedNanos = s.boot_ns &+ offset
                result.guestPID = Int32(bitPattern: s.pid)
                scanState.withLock { $0.running = true }
                onStarted?(result)
            case Int32(ALCUB3_FRAME_SCAN_ENTRY.rawValue):
                let taken = scanState.withLock { state -> Bool in
                    guard state.waiting, !state.done else { return false }
                    // The guest is not trusted: what one scan may cost the host is bounded.
                    guard state.reply.entries.count < Int(ALCUB3_GUEST_SCAN_LIMIT), state.bytes + frame.payload.count <= Self.scanBytesLimit else {
                        state.reply.truncated = true
                        return true
                    }
                    state.bytes += frame.payload.count
                    state.reply.entries.append(frame.payload)
                    return true
                }
                if !taken { result.malformed += 1 }
            case Int32(ALCUB3_FRAME_SCAN_END.rawValue):
                guard frame.payload.count >= MemoryLayout<alcub3_guest_scan_end>.size else { result.malformed += 1; continue }
                let end = frame.payload.withUnsafeBytes { $0.loadUnaligned(as: alcub3_guest_scan_end.self) }
                let taken = scanState.withLock { state -> Bool in
                    guard state.waiting, !state.done else { return false }
                    state.reply.error = end.error
                    state.reply.truncated = state.reply.truncated || end.truncated != 0
                    state.done = true
                    return true
                }
                if !taken { result.malformed += 1 }
            case Int32(ALCUB3_FRAME_COUNTERS.rawValue):
                guard frame.payload.count >= MemoryLayout<alcub3_counters>.size else { result.malformed += 1; continue }
                let c = frame.payload.withUnsafeBytes { $0.loadUnaligned(as: alcub3_counters.self) }
                let counters = KernelCounters(seen: c.seen, submitted: c.submitted, dropped: c.dropped, syscallDropped: c.syscall_dropped)
                result.counters = counters
                // What the guest's kernel could not keep is never silent, as on the host.
                if c.dropped > 0 { pending.append(.drops(counters, newlyDropped: c.dropped)) }
            case Int32(ALCUB3_FRAME_EXIT.rawValue):
                guard frame.payload.count >= MemoryLayout<alcub3_guest_exit>.size else { result.malformed += 1; continue }
                result.outcome = .exited(status: frame.payload.withUnsafeBytes { $0.loadUnaligned(as: alcub3_guest_exit.self) }.status)
            case Int32(ALCUB3_FRAME_ERROR.rawValue):
                result.outcome = .failed(String(decoding: frame.payload.prefix(512), as: UTF8.self))
            case Int32(ALCUB3_FRAME_SYNC.rawValue):
                break  // the answer to this host's RESYNC, found by `realign`
            case Int32(ALCUB3_FRAME_EXEC_OUTPUT.rawValue):
                let header = MemoryLayout<alcub3_guest_exec_output>.size
                guard frame.payload.count >= header else { result.malformed += 1; continue }
                let h = frame.payload.withUnsafeBytes { $0.loadUnaligned(as: alcub3_guest_exec_output.self) }
                let taken = execs.withLock { sessions -> Bool in
                    guard sessions[h.id] != nil, h.stream == 1 || h.stream == 2 else { return false }
                    sessions[h.id]!.chunks.append((h.stream == 1 ? .stdout : .stderr, Array(frame.payload[header...])))
                    return true
                }
                if !taken { result.malformed += 1 }
            case Int32(ALCUB3_FRAME_EXEC_EXIT.rawValue):
                guard frame.payload.count >= MemoryLayout<alcub3_guest_exec_exit>.size else { result.malformed += 1; continue }
                let e = frame.payload.withUnsafeBytes { $0.loadUnaligned(as: alcub3_guest_exec_exit.self) }
                let taken = execs.withLock { sessions -> Bool in
                    guard sessions[e.id] != nil, sessions[e.id]!.status == nil else { return false }
                    sessions[e.id]!.status = e.status
                    return true
                }
                if !taken { result.malformed += 1 }
            default:
                result.malformed += 1
            }
            // One batch per read from the channel: published as the guest sent them.
            if !reader.hasWholeFrame && !pending.isEmpty {
                hub.publish(pending)
                pending.removeAll(keepingCapacity: true)
            }
            if result.outcome != .closed { break }
        }
        if !pending.isEmpty { hub.publish(pending) }
        return result
    }

    /// Runs a command in the guest beside the running one (`sandbox exec`): in
    /// the agent's cgroup, so its events are the sandbox's, in /root, stdin
    /// /dev/null. Its output reaches `output` on the calling thread as it comes;
    /// returns its wait status (-1: the guest agent could not start it, the
    /// reason on stderr). Throws when the guest's command is not running or the
    /// channel ends first.
    public func exec(_ arguments: [String], environment: [String], output: (Stream, [UInt8]) -> Void) throws -> Int32 {
        guard !arguments.isEmpty else { throw GuestRequestError("no command given") }
        guard scanState.withLock({ $0.running && !$0.ended }) else {
            throw GuestRequestError("the guest's command is not running: nothing can be run beside it")
        }
        let id = nextExecID.withLock { next -> UInt32 in
            defer { next &+= 1 }
            return next
        }
        execs.withLock { $0[id] = ExecSession() }
        defer { execs.withLock { _ = $0.removeValue(forKey: id) } }
        var header = alcub3_guest_exec()
        header.id = id
        header.argc = UInt32(arguments.count)
        header.envc = UInt32(environment.count)
        var payload = withUnsafeBytes(of: header) { Array($0) }
        for string in arguments + environment { payload += Array(string.utf8.filter { $0 != 0 }) + [0] }
        guard payload.count <= Int(ALCUB3_FRAME_MAX), send(type: ALCUB3_FRAME_EXEC, payload) else {
            throw GuestRequestError(payload.count > Int(ALCUB3_FRAME_MAX) ? "the command and its environment exceed 4 MiB" : "the guest channel is closed")
        }
        while true {
            let (chunks, status) = execs.withLock { sessions -> ([(stream: Stream, bytes: [UInt8])], Int32?) in
                defer { sessions[id]?.chunks.removeAll() }
                return (sessions[id]?.chunks ?? [], sessions[id]?.status)
            }
            for chunk in chunks { output(chunk.stream, chunk.bytes) }
            if let status { return status }
            if scanState.withLock({ $0.ended }) { throw GuestRequestError("the guest ended before the command did") }
            usleep(2000)
        }
    }

    /// Has the guest agent read the guest directory `path` (absolute, in the
    /// guest) while the command runs: every entry with its metadata and each
    /// regular file's SHA-256. Throws when the command is not running (not yet
    /// started, or ended), the channel ends, or no answer comes within `timeout`.
    public func scan(_ path: String, timeout: Double = 60) throws -> ScanReply {
        try requestLock.withLock { _ in
            let ready = scanState.withLock { state -> Bool in
                guard state.running, !state.ended else { return false }
                state = ScanState(waiting: true, running: true)
                return true
            }
            guard ready else { throw GuestRequestError("the guest's command is not running: its files can be read only while it runs") }
            defer { scanState.withLock { $0.waiting = false } }
            guard send(type: ALCUB3_FRAME_SCAN, Array(path.utf8.filter { $0 != 0 }) + [0]) else {
                throw GuestRequestError("the guest channel is closed")
            }
            let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(timeout * 1e9)
            while true {
                let (done, ended, reply) = scanState.withLock { ($0.done, $0.ended, $0.reply) }
                if done { return reply }
                if ended { throw GuestRequestError("the guest ended before it answered the scan of \(path)") }
                guard DispatchTime.now().uptimeNanoseconds < deadline else {
                    throw GuestRequestError("the guest did not answer the scan of \(path) within \(Int(timeout)) s")
                }
                usleep(2000)
            }
        }
    }

    private func runPayload() -> [UInt8] {
        var header = alcub3_guest_run()
        header.flags = run.flags
        header.argc = UInt32(run.arguments.count)
        header.envc = UInt32(run.environment.count)
        var bytes = withUnsafeBytes(of: header) { Array($0) }
        for s in run.arguments + run.environment {
            bytes += Array(s.utf8.filter { $0 != 0 })
            bytes.append(0)
        }
        return bytes
    }

    private func send(type: alcub3_frame_type, _ payload: [UInt8]) -> Bool {
        var header = alcub3_frame_header()
        header.type = UInt32(type.rawValue)
        header.length = UInt32(payload.count)
        return sendLock.withLock { _ in writeAll(withUnsafeBytes(of: header) { Array($0) } + payload) }
    }

    private func writeAll(_ bytes: [UInt8]) -> Bool { bytes.withUnsafeBytes { FileIO.writeAll(fd.raw, $0) } }
}

/// A request to a running guest that got no answer, in words.
public struct GuestRequestError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// Frames out of a byte stream: reads in large pieces, hands out whole frames.
struct FrameReader {
    struct Frame {
        var type: UInt32
        var payload: [UInt8]
    }

    let fd: Int32
    private var buffer: [UInt8] = []
    private var start = 0

    init(fd: Int32) { self.fd = fd }

    /// Whether the next frame is already read whole (so `next()` will not block).
    var hasWholeFrame: Bool {
        guard let length = frameLength(at: start) else { return false }
        return start + 8 + length <= buffer.count
    }

    private func frameLength(at offset: Int) -> Int? {
        guard buffer.count - offset >= 8 else { return nil }
        return Int(buffer.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self) })
    }

    func waitReadable(until deadline: UInt64) -> Bool {
        while true {
            let now = DispatchTime.now().uptimeNanoseconds
            if now >= deadline { return false }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let rc = poll(&p, 1, Int32(min(1000, (deadline - now) / 1_000_000 + 1)))
            if rc > 0 { return true }
            if rc < 0 && errno != EINTR { return false }
        }
    }

    /// Reads until `marker` (a SYNC frame, whole) arrives, within `deadline`
    /// and 64 MiB, and leaves the reader at the first offset before it from
    /// which whole frames of known types lead exactly to it (else at the
    /// marker): frames written before the marker are kept, the cut one dropped.
    mutating func realign(at marker: [UInt8], deadline: UInt64) -> Bool {
        var searched = start
        while true {
            if let at = Self.find(marker, in: buffer, from: searched) {
                start = (start..<at).first { frames(from: $0, landAt: at) } ?? at
                return true
            }
            searched = max(start, buffer.count - marker.count + 1)
            guard buffer.count - start < 64 << 20, waitReadable(until: deadline) else { return false }
            var chunk = [UInt8](repeating: 0, count: 1 << 18)
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            buffer += chunk[0..<n]
        }
    }

    private static func find(_ marker: [UInt8], in bytes: [UInt8], from offset: Int) -> Int? {
        guard bytes.count >= marker.count, offset <= bytes.count - marker.count else { return nil }
        return (offset...(bytes.count - marker.count)).first { i in
            bytes[i] == marker[0] && bytes[i..<(i + marker.count)].elementsEqual(marker)
        }
    }

    /// Whether frames of known types and allowed lengths, read from `offset`, end exactly at `end`.
    private func frames(from offset: Int, landAt end: Int) -> Bool {
        var at = offset
        while at < end {
            guard end - at >= 8 else { return false }
            let type = buffer.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at, as: UInt32.self) }
            let length = Int(buffer.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at + 4, as: UInt32.self) })
            guard type >= UInt32(ALCUB3_FRAME_HELLO.rawValue), type <= UInt32(ALCUB3_FRAME_SYNC.rawValue),
                  length <= Int(ALCUB3_FRAME_MAX) else { return false }
            at += 8 + length
        }
        return at == end
    }

    /// The next frame; nil at end of stream, on an error, or on a frame longer than the format allows.
    mutating func next() -> Frame? {
        while true {
            if let length = frameLength(at: start) {
                guard length <= Int(ALCUB3_FRAME_MAX) else { return nil }
                if start + 8 + length <= buffer.count {
                    let type = buffer.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: start, as: UInt32.self) }
                    let frame = Frame(type: type, payload: Array(buffer[(start + 8)..<(start + 8 + length)]))
                    start += 8 + length
                    return frame
                }
            }
            if start > 0 {
                buffer.removeFirst(start)
                start = 0
            }
            var chunk = [UInt8](repeating: 0, count: 1 << 18)
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return nil }
            buffer += chunk[0..<n]
        }
    }
}
