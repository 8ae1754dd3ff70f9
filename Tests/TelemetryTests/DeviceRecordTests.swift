import CAlcub3
import Testing
@testable import Telemetry

/// The device filter's refusal record (bpf/devfilter.bpf.c): decoded from the
/// shared header's layout, refused when short or of an unknown device type,
/// and laid out in Swift as clang laid it out in the object's BTF.
@Suite struct DeviceRecordTests {
    func record(type: UInt32, access: UInt32) -> [UInt8] {
        var e = alcub3_device_event()
        e.hdr.ts_ns = 1_000
        e.hdr.sandbox_cgid = 42
        e.hdr.pid = 100
        e.hdr.tid = 101
        e.hdr.kind = UInt16(ALCUB3_KIND_DEVICE.rawValue)
        e.type = type
        e.access = access
        e.major = 7
        e.minor = 3
        return withUnsafeBytes(of: e) { Array($0) }
    }

    @Test func decodesARefusedDeviceAccess() throws {
        let bytes = record(type: UInt32(ALCUB3_DEVICE_BLOCK), access: UInt32(ALCUB3_DEVICE_READ | ALCUB3_DEVICE_WRITE))
        let event = bytes.withUnsafeBytes { EventDecoder.decode($0) }
        guard case .device(let d) = event else { Issue.record("not a device record: \(String(describing: event))"); return }
        #expect(d.kind == .block && d.major == 7 && d.minor == 3 && d.access == ["read", "write"])
        #expect(d.device == "block 7:3" && d.origin.sandboxCgroupID == 42 && d.origin.pid == 100 && d.origin.tid == 101)
        #expect(event?.sandboxCgroupID == 42)
        let mknod = record(type: UInt32(ALCUB3_DEVICE_CHAR), access: UInt32(ALCUB3_DEVICE_MKNOD)).withUnsafeBytes { EventDecoder.decode($0) }
        guard case .device(let m) = mknod else { Issue.record("not a device record"); return }
        #expect(m.device == "char 7:3" && m.access == ["mknod"])
    }

    @Test func refusesShortOrUnknownRecords() {
        let full = record(type: UInt32(ALCUB3_DEVICE_CHAR), access: UInt32(ALCUB3_DEVICE_READ))
        #expect(full.dropLast().withUnsafeBytes { EventDecoder.decode($0) } == nil)
        #expect(record(type: 3, access: UInt32(ALCUB3_DEVICE_READ)).withUnsafeBytes { EventDecoder.decode($0) } == nil)
    }

    @Test func swiftLayoutsMatchTheDeviceFilterObjectsBTF() throws {
        let layouts = [
            LayoutTests.offsets(alcub3_device_event.self, [("hdr", \.hdr), ("type", \.type), ("access", \.access),
                                                           ("major", \.major), ("minor", \.minor)]),
            LayoutTests.offsets(alcub3_device_sandbox.self, [("flags", \.flags), ("refused", \.refused),
                                                             ("unreported", \.unreported)]),
        ]
        try LayoutTests.compare(layouts, withTheBTFOf: BPFObjectBytes.decoded(BPFObjectBytes.devfilter))
    }
}
