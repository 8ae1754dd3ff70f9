/// The network classes a policy names in `network_access`.
public enum NetworkClass: String, NamedCase, Codable {
    case internet, intranet
    case classifiedNetwork = "classified_network"
    case airGappedOnly = "air_gapped_only"

    public static let noun = "network class"

    /// Refuses lists whose meaning would be a guess: nothing at all, air-gapped
    /// next to a network, or intranet next to classified_network (whose ports
    /// would then either restrict the intranet or not).
    static func checkCombination(_ classes: [NetworkClass]) throws {
        let set = Set(classes)
        if set.isEmpty {
            throw PolicyError(.invalidValue, "the list is empty; write [air_gapped_only] for no network")
        }
        if set.contains(.airGappedOnly) && set.count > 1 {
            throw PolicyError(.invalidValue, "air_gapped_only cannot be combined with other classes; it means no network at all")
        }
        if set == [.intranet, .classifiedNetwork] {
            throw PolicyError(.invalidValue, "intranet and classified_network cannot be combined; list the intranet ranges you need in allowed_destinations instead")
        }
    }
}

/// Where a sandbox's connections and datagrams may go: the network classes of
/// its policy, resolved to what enforcement (cgroup connect/sendmsg hooks and
/// network namespaces) applies.
public enum NetworkPolicy: Sendable, Equatable {
    /// internet (with or without intranet): every destination.
    case any
    /// intranet: the private and loopback ranges of `privateAndLoopbackRanges`.
    case privateAndLoopback
    /// classified_network: only these networks, and only these ports (every port when empty).
    case listed(cidrs: [CIDR], ports: [UInt16])
    /// air_gapped_only: no network; the sandbox gets a network namespace with only its own loopback.
    case none

    /// RFC 1918, loopback, IPv6 unique-local, and the unspecified addresses,
    /// which Linux connects to the host itself. Deliberately without link-local
    /// (169.254.169.254 is the cloud metadata service) and without 100.64.0.0/10
    /// (carrier-grade NAT, shared with strangers): list those under
    /// classified_network when a site needs them.
    public static let privateAndLoopbackRanges: [CIDR] = [
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "0.0.0.0/32",
        "::1/128", "fc00::/7", "::/128",
    ].map { try! CIDR($0) } // literals checked by a test

    /// The policy a validated list of classes gives; internet covers the others.
    static func resolving(_ classes: [NetworkClass], destinations: [CIDR], ports: [UInt16]) throws -> NetworkPolicy {
        try NetworkClass.checkCombination(classes)
        if classes.contains(.internet) { return .any }
        if classes.contains(.airGappedOnly) { return .none }
        if classes.contains(.classifiedNetwork) { return .listed(cidrs: destinations, ports: ports) }
        return .privateAndLoopback
    }

    /// The decision for one destination, the reference enforcement is tested against.
    public func permits(address: [UInt8], port: UInt16) -> Bool {
        switch self {
        case .any: return true
        case .none: return false
        case .privateAndLoopback: return Self.privateAndLoopbackRanges.contains { $0.contains(address) }
        case .listed(let cidrs, let ports):
            return cidrs.contains { $0.contains(address) } && (ports.isEmpty || ports.contains(port))
        }
    }

    /// False when nothing beyond the sandbox's own loopback is reachable, so the
    /// sandbox can have a network namespace of its own.
    public var reachesBeyondSandbox: Bool {
        switch self {
        case .any, .privateAndLoopback: return true
        case .listed(let cidrs, _): return !cidrs.isEmpty
        case .none: return false
        }
    }
}

extension NetworkPolicy: Codable {
    private enum CodingKeys: String, CodingKey { case kind, cidrs, ports }
    private enum Kind: String, Codable { case any, privateAndLoopback = "private_and_loopback", listed, none }

    /// {"kind": "listed", "cidrs": [...], "ports": [...]}; private_and_loopback
    /// shows its ranges for the reader of a dry run, and an import must not change them.
    public init(from decoder: Decoder) throws {
        try rejectUnknownKeys(decoder, known: ["kind", "cidrs", "ports"])
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let cidrs = try container.decodeIfPresent([CIDR].self, forKey: .cidrs)
        let ports = try container.decodeIfPresent([UInt16].self, forKey: .ports)
        switch try container.decode(Kind.self, forKey: .kind) {
        case .any: self = .any
        case .none: self = .none
        case .privateAndLoopback:
            if let cidrs, cidrs != Self.privateAndLoopbackRanges {
                throw PolicyError(.invalidValue, "cidrs: private_and_loopback ranges are fixed; remove the cidrs key or use kind listed")
            }
            self = .privateAndLoopback
        case .listed:
            self = .listed(cidrs: cidrs ?? [], ports: try PolicyValue.ports(ports ?? []))
        }
        if case .listed = self {} else if ports != nil {
            throw PolicyError(.invalidValue, "ports: only a listed network has ports")
        }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        switch self {
        case .any: try container.encode(Kind.any, forKey: .kind)
        case .none: try container.encode(Kind.none, forKey: .kind)
        case .privateAndLoopback:
            try container.encode(Kind.privateAndLoopback, forKey: .kind)
            try container.encode(Self.privateAndLoopbackRanges, forKey: .cidrs)
        case .listed(let cidrs, let ports):
            try container.encode(Kind.listed, forKey: .kind)
            try container.encode(cidrs, forKey: .cidrs)
            try container.encode(ports, forKey: .ports)
        }
    }
}
