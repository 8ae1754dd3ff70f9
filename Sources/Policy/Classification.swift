import Foundation

/// The four classification levels of the product's policy model, lowest first.
public enum Classification: String, NamedCase, Codable {
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

    public static let noun = "classification"

    /// Like `init?(parsing:)`, but an unknown name is an error listing the valid ones.
    public static func named(_ name: String) throws -> Classification {
        guard let found = Classification(parsing: name) else {
            throw PolicyError.unknown(noun, name, valid: allCases.map(\.rawValue))
        }
        return found
    }

    /// The share of its default policy's cpu and memory a sandbox at this level
    /// gets: 1.0, 0.8, 0.6, 0.4 from UNCLASSIFIED up.
    public var resourceMultiplier: Double { Double(multiplierTenths) / 10 }

    /// Kept in tenths so that 3GB x 0.8 is exactly 2.4GB.
    private var multiplierTenths: UInt64 {
        switch self {
        case .unclassified: return 10
        case .confidential: return 8
        case .secret: return 6
        case .topSecret: return 4
        }
    }

    /// Bytes after the multiplier, rounded down to a whole byte.
    func scaled(bytes: UInt64) -> UInt64 {
        // Configured sizes are at most 1 PiB, so ten times one fits in 64 bits.
        bytes * multiplierTenths / 10
    }

    /// Thousandths of a core after the multiplier, rounded down.
    func scaled(millicores: Int) -> Int {
        millicores * Int(multiplierTenths) / 10
    }
}

/// How strongly a sandbox is separated from its host.
public enum IsolationLevel: String, NamedCase, Codable {
    case process, container, vm, hardware

    public static let noun = "isolation level"

    /// vm and hardware: the agent runs in a QEMU guest.
    public var isVirtualMachine: Bool { self == .vm || self == .hardware }
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
