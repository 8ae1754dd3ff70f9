#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An IPv4 or IPv6 network in CIDR notation ("10.0.0.0/8", "fd00::/8"). A
/// bare address ("192.0.2.7") is the one-address network (/32 or /128).
///
/// Kept internally as 16 bytes, IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d) with
/// the prefix moved up by 96: a connect to ::ffff:10.1.2.3 goes through the
/// kernel's connect6 hook yet is an IPv4 destination, and one comparison then
/// answers for both spellings.
public struct CIDR: Sendable, Hashable, Codable, CustomStringConvertible {
    private let mapped: [UInt8]
    private let mappedPrefix: Int
    public let isIPv4: Bool

    public init(_ text: String) throws {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let bytes = CIDR.addressBytes(String(parts[0])) else {
            throw PolicyError(.invalidValue, "'\(printable(text))' is not a network; write e.g. 10.0.0.0/8 or fd00::/8")
        }
        let width = bytes.count * 8
        var prefix = width
        if parts.count == 2 {
            guard let given = Int(parts[1]), parts[1].allSatisfy(\.isNumber), (0...width).contains(given) else {
                throw PolicyError(.invalidValue, "'\(printable(text))' has prefix length '\(printable(String(parts[1])))'; use 0 to \(width)")
            }
            prefix = given
        }
        let network = CIDR.masked(bytes, prefix: prefix)
        guard network == bytes else {
            let suggestion = CIDR.format(network) + "/\(prefix)"
            throw PolicyError(.invalidValue, "'\(printable(text))' has bits set beyond its /\(prefix) prefix; did you mean \(suggestion)?")
        }
        isIPv4 = bytes.count == 4
        mapped = isIPv4 ? CIDR.ipv4MappedPrefix + bytes : bytes
        mappedPrefix = isIPv4 ? prefix + 96 : prefix
    }

    /// The network's first address: 4 bytes for IPv4, 16 for IPv6.
    public var address: [UInt8] { isIPv4 ? Array(mapped.suffix(4)) : mapped }
    public var prefixLength: Int { isIPv4 ? mappedPrefix - 96 : mappedPrefix }
    public var description: String { CIDR.format(address) + "/\(prefixLength)" }

    /// True when `address` (4 bytes, or 16 including IPv4-mapped IPv6) lies in
    /// this network; false for any other length.
    public func contains(_ address: [UInt8]) -> Bool {
        let candidate: [UInt8]
        switch address.count {
        case 4: candidate = CIDR.ipv4MappedPrefix + address
        case 16: candidate = address
        default: return false
        }
        return CIDR.masked(candidate, prefix: mappedPrefix) == mapped
    }

    /// The bytes of an IP address literal: 4 for IPv4 (dotted quad, no leading
    /// zeros), 16 for IPv6 (any RFC 4291 form); nil for anything else.
    public static func addressBytes(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            return withUnsafeBytes(of: &v4) { Array($0) }
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            return withUnsafeBytes(of: &v6) { Array($0) }
        }
        return nil
    }

    public init(from decoder: Decoder) throws {
        try self.init(try decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    static let ipv4MappedPrefix: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]

    private static func masked(_ bytes: [UInt8], prefix: Int) -> [UInt8] {
        bytes.enumerated().map { index, byte in
            let kept = min(8, max(0, prefix - index * 8))
            return kept == 8 ? byte : byte & ~(UInt8(0xff) >> kept)
        }
    }

    private static func format(_ bytes: [UInt8]) -> String {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        let family = bytes.count == 4 ? AF_INET : AF_INET6
        _ = bytes.withUnsafeBytes { inet_ntop(family, $0.baseAddress, &buffer, socklen_t(buffer.count)) }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
