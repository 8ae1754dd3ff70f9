/// Enumerations written by name in the configuration and on the command line;
/// ordered as declared, lowest first.
public protocol NamedCase: RawRepresentable<String>, CaseIterable, Comparable, Sendable where AllCases == [Self] {
    /// What one of them is called in an error: "isolation level".
    static var noun: String { get }
}

extension NamedCase {
    /// The case spelled exactly `name`, or an error listing the valid names.
    public static func named(_ name: String) throws -> Self {
        guard let found = Self(rawValue: name) else {
            throw PolicyError.unknown(noun, name, valid: allCases.map(\.rawValue))
        }
        return found
    }

    public static func < (lhs: Self, rhs: Self) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }
}
