import Foundation
import Testing
@testable import Policy

func address(_ text: String) -> [UInt8] { CIDR.addressBytes(text)! }

@Suite struct CIDRTests {
    @Test(arguments: [
        ("10.0.0.0/8", "10.0.0.0/8", true), ("192.168.1.0/24", "192.168.1.0/24", true),
        ("192.0.2.7", "192.0.2.7/32", true), ("0.0.0.0/0", "0.0.0.0/0", true),
        ("fd00::/8", "fd00::/8", false), ("FD00:0:0::/8", "fd00::/8", false), ("::1", "::1/128", false),
        ("2001:db8::/32", "2001:db8::/32", false), ("::ffff:0:0/96", "::ffff:0.0.0.0/96", false),
    ])
    func parsesAndPrintsCanonically(_ text: String, _ printed: String, _ isIPv4: Bool) throws {
        let cidr = try CIDR(text)
        #expect(cidr.description == printed)
        #expect(cidr.isIPv4 == isIPv4)
        #expect(try CIDR(cidr.description) == cidr)
    }

    @Test(arguments: [
        "", "10.0.0.0/", "10.0.0.0/8/8", "10.0.0/8", "010.0.0.0/8", "256.0.0.0/8", "10.0.0.0/-1", "10.0.0.0/+8",
        "10.0.0.0/33", "10.0.0.1/8", "fd00::/129", "fd00::1/8", "fd00:::/8", "example.com/8", " 10.0.0.0/8",
    ])
    func refusesNonsense(_ text: String) {
        #expect(throws: PolicyError.self) { try CIDR(text) }
    }

    @Test func containsIPv4() throws {
        let net = try CIDR("172.16.0.0/12")
        #expect(net.contains(address("172.16.0.1")))
        #expect(net.contains(address("172.31.255.255")))
        #expect(!net.contains(address("172.32.0.0")))
        #expect(!net.contains(address("172.15.255.255")))
        #expect(try CIDR("0.0.0.0/0").contains(address("8.8.8.8")))
        // An IPv4 network holds no native IPv6 address, even at /0.
        #expect(try !CIDR("0.0.0.0/0").contains(address("2001:db8::1")))
    }

    @Test func containsIPv6() throws {
        let net = try CIDR("fd00::/8")
        #expect(net.contains(address("fd12:3456::1")))
        #expect(!net.contains(address("fe80::1")))
        #expect(try CIDR("2001:db8::/127").contains(address("2001:db8::1")))
        #expect(try !CIDR("2001:db8::/128").contains(address("2001:db8::1")))
    }

    @Test func ipv4MappedIPv6IsTheIPv4Address() throws {
        let net = try CIDR("10.0.0.0/8")
        #expect(net.contains(address("::ffff:10.1.2.3")))
        #expect(!net.contains(address("::ffff:11.1.2.3")))
        // And an IPv6 network written for the mapped range holds plain IPv4 addresses.
        #expect(try CIDR("::ffff:10.0.0.0/104").contains(address("10.9.9.9")))
        // An IPv4-compatible or NAT64 spelling is not the IPv4 address.
        #expect(!net.contains(address("::10.1.2.3")))
        #expect(!net.contains(address("64:ff9b::10.1.2.3")))
    }

    @Test func otherLengthsAreNotAddresses() throws {
        let net = try CIDR("0.0.0.0/0")
        #expect(!net.contains([]))
        #expect(!net.contains([10, 0, 0]))
        #expect(!net.contains([UInt8](repeating: 0, count: 5)))
    }

    @Test func codesAsAString() throws {
        let cidr = try CIDR("10.20.0.0/16")
        let json = try JSONEncoder().encode([cidr])
        #expect(String(decoding: json, as: UTF8.self) == #"["10.20.0.0\/16"]"#)
        #expect(try JSONDecoder().decode([CIDR].self, from: json) == [cidr])
    }
}

@Suite struct NetworkClassTests {
    @Test func classesResolveToEnforcement() throws {
        #expect(try NetworkPolicy.resolving([.internet], destinations: [], ports: []) == .any)
        #expect(try NetworkPolicy.resolving([.internet, .intranet], destinations: [], ports: []) == .any)
        #expect(try NetworkPolicy.resolving([.internet, .classifiedNetwork], destinations: [], ports: []) == .any)
        #expect(try NetworkPolicy.resolving([.intranet], destinations: [], ports: []) == .privateAndLoopback)
        #expect(try NetworkPolicy.resolving([.airGappedOnly], destinations: [], ports: []) == .none)
        let listed = [try CIDR("10.20.0.0/16")]
        #expect(try NetworkPolicy.resolving([.classifiedNetwork], destinations: listed, ports: [443])
                == .listed(cidrs: listed, ports: [443]))
        #expect(throws: PolicyError.self) { try NetworkPolicy.resolving([], destinations: [], ports: []) }
        #expect(throws: PolicyError.self) { try NetworkPolicy.resolving([.airGappedOnly, .intranet], destinations: [], ports: []) }
        #expect(throws: PolicyError.self) { try NetworkPolicy.resolving([.intranet, .classifiedNetwork], destinations: [], ports: []) }
    }

    @Test func intranetIsPrivateRangesAndLoopbackOnly() {
        let intranet = NetworkPolicy.privateAndLoopback
        for allowed in ["10.1.2.3", "172.16.5.4", "192.168.1.1", "127.0.0.1", "127.255.0.9", "0.0.0.0", "::1",
                        "fd12::1", "fc00::1", "::", "::ffff:10.0.0.1", "::ffff:127.0.0.1"] {
            #expect(intranet.permits(address: address(allowed), port: 80), "\(allowed)")
        }
        for refused in ["8.8.8.8", "172.32.0.1", "169.254.169.254", "100.64.0.1", "::ffff:8.8.8.8", "2001:db8::1",
                        "fe80::1", "224.0.0.1"] {
            #expect(!intranet.permits(address: address(refused), port: 80), "\(refused)")
        }
        #expect(intranet.reachesBeyondSandbox)
    }

    @Test func listedNetworksAndPorts() throws {
        let listed = NetworkPolicy.listed(cidrs: [try CIDR("10.20.0.0/16"), try CIDR("fd00:20::/32")], ports: [443, 8443])
        #expect(listed.permits(address: address("10.20.1.1"), port: 443))
        #expect(listed.permits(address: address("::ffff:10.20.1.1"), port: 8443))
        #expect(listed.permits(address: address("fd00:20::5"), port: 443))
        #expect(!listed.permits(address: address("10.20.1.1"), port: 80))
        #expect(!listed.permits(address: address("10.21.1.1"), port: 443))
        #expect(!listed.permits(address: address("127.0.0.1"), port: 443))
        let anyPort = NetworkPolicy.listed(cidrs: [try CIDR("10.20.0.0/16")], ports: [])
        #expect(anyPort.permits(address: address("10.20.1.1"), port: 22))
        #expect(anyPort.reachesBeyondSandbox)
        #expect(!NetworkPolicy.listed(cidrs: [], ports: [443]).reachesBeyondSandbox)
    }

    @Test func anyAndNone() {
        #expect(NetworkPolicy.any.permits(address: address("8.8.8.8"), port: 53))
        #expect(!NetworkPolicy.none.permits(address: address("127.0.0.1"), port: 53))
        #expect(!NetworkPolicy.none.reachesBeyondSandbox)
    }
}
