import CAlcub3
import Testing
@testable import Telemetry

/// The decoder against records laid out by the shared C header, as the kernel writes them.
@Suite struct DecoderTests {
    func header(kind: alcub3_kind, flags: UInt16 = 0) -> alcub3_header {
        var h = alcub3_header()
        h.ts_ns = 1_000
        h.sandbox_cgid = 42
        h.pid = 100
        h.tid = 101
        h.kind = UInt16(kind.rawValue)
        h.flags = flags
        h.uid = 0
        return h
    }

    func bytes<T>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }

    func write(_ text: String, into record: inout [UInt8], at offset: Int) {
        for (i, b) in text.utf8.enumerated() { record[offset + i] = b }
    }

    @Test func decodesSyscallRecords() throws {
        var e = alcub3_syscall_event()
        e.hdr = header(kind: ALCUB3_KIND_SYSCALL)
        e.nr = 110
        e.ret = 7
        e.args = (1, 2, 3)
        let event = bytes(e).withUnsafeBytes { EventDecoder.decode($0) }
        guard case .syscall(let s) = event else { Issue.record("not a syscall: \(String(describing: event))"); return }
        #expect(s.number == 110 && s.returnValue == 7 && s.arguments.2 == 3 && !s.isEntry)
        #expect(s.origin.sandboxCgroupID == 42 && s.origin.pid == 100 && s.origin.tid == 101)
    }

    @Test func decodesSyscallBatchesCutAfterTheLastEntry() {
        var b = alcub3_syscall_batch()
        b.hdr = header(kind: ALCUB3_KIND_SYSCALL_BATCH)
        b.count = 2
        b.entries.0 = alcub3_syscall_entry(ts_delta: 0, nr: 110, ret: 1, args: (0, 0, 0))
        b.entries.1 = alcub3_syscall_entry(ts_delta: 500, nr: 39, ret: 2, args: (7, 8, 9))
        let full = bytes(b)
        let used = MemoryLayout<alcub3_syscall_batch>.offset(of: \.entries)! + 2 * MemoryLayout<alcub3_syscall_entry>.size
        var events: [TelemetryEvent] = []
        #expect(full.prefix(used).withUnsafeBytes { EventDecoder.decode($0, into: &events) })
        let syscalls = events.compactMap { if case .syscall(let s) = $0 { s } else { nil } }
        #expect(syscalls.map(\.number) == [110, 39])
        #expect(syscalls[1].origin.bootNanos == 1_500 && syscalls[1].arguments.2 == 9 && syscalls[1].origin.tid == 101)
        // A count the record cannot hold is refused whole.
        var lying = b
        lying.count = 3
        var none: [TelemetryEvent] = []
        #expect(!bytes(lying).prefix(used).withUnsafeBytes { EventDecoder.decode($0, into: &none) })
        #expect(none.isEmpty)
    }

    @Test func decodesExecWithArgv() {
        var e = alcub3_exec_event()
        e.hdr = header(kind: ALCUB3_KIND_EXEC)
        e.ppid = 1
        let argv = "sh\0-c\0echo x\0"
        e.argv_len = UInt32(argv.utf8.count)
        var record = bytes(e)
        write("/bin/sh", into: &record, at: MemoryLayout<alcub3_exec_event>.offset(of: \.filename)!)
        write(argv, into: &record, at: MemoryLayout<alcub3_exec_event>.offset(of: \.argv)!)
        write("sh", into: &record, at: MemoryLayout<alcub3_exec_event>.offset(of: \.comm)!)
        let event = record.withUnsafeBytes { EventDecoder.decode($0) }
        guard case .process(let p) = event, case .exec(let file, let args, let ppid, _, let name) = p.activity else {
            Issue.record("not an exec: \(String(describing: event))"); return
        }
        #expect(file == "/bin/sh" && args == ["sh", "-c", "echo x"] && ppid == 1 && name == "sh")
    }

    @Test func decodesFilePathsByTheHeaderContract() {
        var e = alcub3_file_event()
        e.hdr = header(kind: ALCUB3_KIND_FILE)
        e.op = UInt32(ALCUB3_FILE_RENAME.rawValue)
        var record = bytes(e)
        write("/work", into: &record, at: MemoryLayout<alcub3_file_event>.offset(of: \.dir)!)
        write("a.tmp", into: &record, at: MemoryLayout<alcub3_file_event>.offset(of: \.name)!)
        write("/work", into: &record, at: MemoryLayout<alcub3_file_event>.offset(of: \.dir2)!)
        write("/abs/b.txt", into: &record, at: MemoryLayout<alcub3_file_event>.offset(of: \.name2)!)
        let event = record.withUnsafeBytes { EventDecoder.decode($0) }
        guard case .file(let f) = event else { Issue.record("not a file event"); return }
        #expect(f.operation == .rename && f.path == "/work/a.tmp" && f.secondPath == "/abs/b.txt")
    }

    @Test func joinsPaths() {
        #expect(EventDecoder.joinPath(dir: "/a", name: "b") == "/a/b")
        #expect(EventDecoder.joinPath(dir: "/", name: "b") == "/b")
        #expect(EventDecoder.joinPath(dir: "/a/b", name: "") == "/a/b")
        #expect(EventDecoder.joinPath(dir: "/a", name: "/etc/x") == "/etc/x")
        #expect(EventDecoder.joinPath(dir: "", name: "rel") == "rel")
    }

    @Test func refusesShortAndUnknownRecords() {
        var h = header(kind: ALCUB3_KIND_EXEC)
        let short = bytes(h)  // an exec header without its body
        #expect(short.withUnsafeBytes { EventDecoder.decode($0) } == nil)
        h.kind = 999
        #expect(bytes(h).withUnsafeBytes { EventDecoder.decode($0) } == nil)
        #expect([UInt8](repeating: 0, count: 8).withUnsafeBytes { EventDecoder.decode($0) } == nil)
    }

    @Test func formatsAddresses() {
        let v4 = SocketAddress(family: SocketAddress.inet, address: [127, 0, 0, 1] + Array(repeating: 0, count: 12), port: 8080, unixPath: nil)
        #expect(v4.description == "127.0.0.1:8080")
        var loopback6 = [UInt8](repeating: 0, count: 16)
        loopback6[15] = 1
        #expect(SocketAddress(family: SocketAddress.inet6, address: loopback6, port: 443, unixPath: nil).description == "[::1]:443")
        let mapped: [UInt8] = Array(repeating: 0, count: 10) + [0xff, 0xff, 10, 0, 0, 1]
        #expect(SocketAddress(family: SocketAddress.inet6, address: mapped, port: 1, unixPath: nil).ip == "::ffff:10.0.0.1")
        let doc: [UInt8] = [0x20, 0x01, 0x0d, 0xb8] + Array(repeating: 0, count: 11) + [1]
        #expect(SocketAddress(family: SocketAddress.inet6, address: doc, port: 1, unixPath: nil).ip == "2001:db8::1")
    }

    @Test func formatsTimes() {
        #expect(WallClock.iso8601(unixNanos: 1_764_390_241_123_456_789) == "2025-11-29T04:24:01.123456789Z")
        #expect(WallClock.iso8601(unixNanos: 0) == "1970-01-01T00:00:00.000000000Z")
    }
}
