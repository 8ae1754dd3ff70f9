import Crypto
import Foundation
@testable import Integrity
import Testing

/// Measured boot's arithmetic: file hashes, the PCR replay, what a changed image gives.
@Suite struct BootMeasurementTests {
    func files() throws -> (String, String, String) {
        let dir = NSTemporaryDirectory() + "alcub3-boot-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Data("kernel image".utf8).write(to: URL(fileURLWithPath: dir + "/vmlinuz"))
        try Data("initramfs image".utf8).write(to: URL(fileURLWithPath: dir + "/initrd"))
        return (dir, dir + "/vmlinuz", dir + "/initrd")
    }

    @Test func measuresEachComponentAndReplaysThePCR() throws {
        let (dir, kernel, initrd) = try files()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let m = try BootMeasurement.measure(kernel: kernel, initramfs: initrd, commandLine: "console=ttyS0")
        #expect(m.kernel == Hex.string(SHA256.hash(data: Data("kernel image".utf8))))
        #expect(m.commandLine == Hex.string(SHA256.hash(data: Data("console=ttyS0".utf8))))
        // The replay by hand: three extends from 32 zero bytes.
        var pcr = [UInt8](repeating: 0, count: 32)
        for d in [m.kernel, m.initramfs, m.commandLine] { pcr = Array(SHA256.hash(data: pcr + Hex.bytes(d))) }
        #expect(m.expectedPCR == Hex.string(pcr) && m.expectedPCR.count == 64)
        #expect(m.mismatches(against: m).isEmpty)
    }

    @Test func oneChangedByteOfTheInitramfsIsAMismatchNamingIt() throws {
        let (dir, kernel, initrd) = try files()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let baseline = try BootMeasurement.measure(kernel: kernel, initramfs: initrd, commandLine: "quiet")
        var bytes = try Data(contentsOf: URL(fileURLWithPath: initrd))
        bytes[3] ^= 0x01
        try bytes.write(to: URL(fileURLWithPath: initrd))
        let now = try BootMeasurement.measure(kernel: kernel, initramfs: initrd, commandLine: "quiet")
        let found = now.mismatches(against: baseline)
        #expect(found.map(\.component) == ["initramfs"])
        #expect(found.first?.expected == baseline.initramfs && found.first?.measured == now.initramfs)
        #expect(now.expectedPCR != baseline.expectedPCR)
        #expect(throws: BootMeasurementError.self) { try BootMeasurement.measure(kernel: dir + "/missing", initramfs: initrd, commandLine: "") }
    }
}
