import Foundation

/// The four classification levels of the product's policy model, lowest first.
public enum Classification: String, CaseIterable, Sendable, Codable, Comparable {
    case unclassified = "UNCLASSIFIED"
    case confidential = "CONFIDENTIAL"
    case secret = "SECRET"
    case topSecret = "TOP_SECRET"

    /// Accepts the canonical spelling in any case, and TOP-SECRET / "top secret".
    public init?(parsing text: String) {
        let normalized = text.uppercased()
            .replacingOccurrences(of: "-", with: "_")
            .replacingOccurrences(of: " ", with: "_")
        self.init(rawValue: normalized)
    }

    public static func < (lhs: Self, rhs: Self) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }
}

/// How strongly a sandbox is separated from its host.
public enum IsolationLevel: String, CaseIterable, Sendable, Codable, Comparable {
    case process, container, vm, hardware

    public static func < (lhs: Self, rhs: Self) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }
}

/// The policy a sandbox runs under. Issue 3's YAML configuration produces it;
/// until a configuration is given, `builtIn` mirrors the published defaults.
public struct SandboxPolicy: Sendable, Codable, Equatable {
    public var classification: Classification
    public var isolation: IsolationLevel
    /// Network classes from the configuration ("internet", "intranet",
    /// "classified_network", "air_gapped_only").
    public var networkAccess: [String]
    /// Send one telemetry record per syscall (the behavioral analyzer's input).
    public var traceSyscalls: Bool

    /// True when the sandbox may reach a network beyond its own loopback.
    public var allowsNetwork: Bool {
        !networkAccess.isEmpty && !networkAccess.contains("air_gapped_only")
            && !networkAccess.contains("none")
    }

    public static func builtIn(_ level: Classification) -> SandboxPolicy {
        switch level {
        case .unclassified:
            return SandboxPolicy(classification: level, isolation: .process,
                                 networkAccess: ["internet", "intranet"], traceSyscalls: true)
        case .confidential:
            return SandboxPolicy(classification: level, isolation: .container,
                                 networkAccess: ["intranet"], traceSyscalls: true)
        case .secret:
            return SandboxPolicy(classification: level, isolation: .vm,
                                 networkAccess: ["classified_network"], traceSyscalls: true)
        case .topSecret:
            return SandboxPolicy(classification: level, isolation: .hardware,
                                 networkAccess: ["air_gapped_only"], traceSyscalls: true)
        }
    }
}

/// Identifiers that become file and cgroup names: refused unless they are
/// plain, short and printable.
public enum Identifier {
    public enum Problem: Error, CustomStringConvertible, Equatable {
        case empty, tooLong(Int), dotName, forbiddenCharacter(Character)

        public var description: String {
            switch self {
            case .empty: return "it is empty"
            case .tooLong(let n): return "it is \(n) characters long (at most 64)"
            case .dotName: return "'.' and '..' are not names"
            case .forbiddenCharacter(let c):
                let scalar = c.unicodeScalars.first!.value
                let shown = scalar < 0x20 || scalar == 0x7f ? String(format: "control character 0x%02X", scalar) : "'\(c)'"
                return "it contains \(shown); use letters, digits, '.', '_' and '-'"
            }
        }
    }

    /// Letters, digits, '.', '_', '-'; 1 to 64 characters; not starting with '-' or '.'.
    public static func validate(_ text: String) -> Problem? {
        if text.isEmpty { return .empty }
        if text.count > 64 { return .tooLong(text.count) }
        if text == "." || text == ".." { return .dotName }
        for (index, c) in text.enumerated() {
            let ok = c.isASCII && (c.isLetter || c.isNumber || c == "_" || c == "-" || (c == "." && index > 0))
            if !ok || (index == 0 && c == "-") { return .forbiddenCharacter(c) }
        }
        return nil
    }
}
