import Testing
@testable import Policy

@Suite struct QuantityTests {
    @Test(arguments: [
        ("4GB", 4_000_000_000), ("4G", 4_000_000_000), ("512MB", 512_000_000), ("512M", 512_000_000),
        ("512Mi", 512 << 20), ("512MiB", 512 << 20), ("1Gi", 1 << 30), ("1GiB", 1 << 30),
        ("1.5GiB", 1_610_612_736), ("0.5GB", 500_000_000), ("1024K", 1_024_000), ("1024KB", 1_024_000),
        ("1024Ki", 1 << 20), ("1024KiB", 1 << 20), ("2T", 2_000_000_000_000), ("1TiB", 1 << 40),
        ("1048576", 1_048_576), ("1048576B", 1_048_576), ("007MiB", 7 << 20), ("1PiB", -1),
    ] as [(String, Int64)])
    func sizes(_ text: String, _ bytes: Int64) throws {
        if bytes < 0 {
            #expect(throws: PolicyError.self) { try Quantity.bytes(text) } // no P units: 1PiB is written 1024TiB
        } else {
            #expect(try Quantity.bytes(text) == UInt64(bytes))
        }
    }

    @Test func theLargestSizeIsOnePebibyte() throws {
        #expect(try Quantity.bytes("1024TiB") == 1 << 50)
        #expect(throws: PolicyError.self) { try Quantity.bytes("1025TiB") }
    }

    @Test(arguments: [
        ("2.0", 2.0), ("2", 2.0), ("0.5", 0.5), ("1.25", 1.25), ("0.001", 0.001), ("1024", 1024), ("0.5000", 0.5),
    ])
    func cores(_ text: String, _ cores: Double) throws {
        #expect(try Quantity.cores(text) == cores)
    }

    @Test(arguments: [
        ("30s", 30_000), ("5m", 300_000), ("24h", 86_400_000), ("7d", 604_800_000), ("300s", 300_000),
        ("250ms", 250), ("1.5h", 5_400_000), ("3650d", 315_360_000_000),
    ] as [(String, Int64)])
    func durations(_ text: String, _ milliseconds: Int64) throws {
        #expect(try Quantity.duration(text) == .milliseconds(milliseconds))
    }

    @Test(arguments: ["", " ", "4 GB", "-1GB", "abc", "0", "0.0", "1.5.2GB", ".5GB", "5.GB", "1e9", "+1GB", "0x10", "4gb", "4Gb", "1.5B"])
    func nonsenseSizes(_ text: String) {
        #expect(throws: PolicyError.self) { try Quantity.bytes(text) }
    }

    @Test(arguments: ["", "0", "0.0", "-1", "abc", "1.2.3", "1025", "0.0001", "inf", "nan", "2 ", "500m", "1,5"])
    func nonsenseCores(_ text: String) {
        #expect(throws: PolicyError.self) { try Quantity.cores(text) }
    }

    @Test(arguments: ["", "0s", "0", "30", "-5m", "5 m", "5M", "1w", "soon", "1.5.2s", "0.1ms", "3651d"])
    func nonsenseDurations(_ text: String) {
        #expect(throws: PolicyError.self) { try Quantity.duration(text) }
    }

    @Test func decimalsStayExact() {
        #expect(DecimalNumber("1.5")!.scaled(by: 1 << 30) == .whole(1_610_612_736))
        #expect(DecimalNumber("0.1")!.scaled(by: 3) == .fractional)
        #expect(DecimalNumber("18446744073709551615")!.scaled(by: 1) == .whole(UInt64.max))
        #expect(DecimalNumber("18446744073709551616")!.scaled(by: 1) == .overflow)
        #expect(DecimalNumber("9223372036854775808")!.scaled(by: 2) == .overflow)
        // 30 fraction digits would need a divisor beyond 64 bits.
        #expect(DecimalNumber(Substring("1." + String(repeating: "0", count: 30))) == nil)
    }

    @Test func namesAreSuggestedByEditDistance() {
        #expect(nearestName(to: "memroy_limit", among: ["memory_limit", "cpu_limit"]) == "memory_limit")
        #expect(nearestName(to: "MEMORY_LIMIT", among: ["memory_limit"]) == "memory_limit")
        #expect(nearestName(to: "colour", among: ["memory_limit", "cpu_limit"]) == nil)
        #expect(editDistance(Array("kitten"), Array("sitting")) == 3)
        #expect(editDistance(Array("ab"), Array("ba")) == 1)
        #expect(editDistance(Array(""), Array("abc")) == 3)
    }
}
