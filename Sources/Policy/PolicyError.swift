/// Every way a configuration, policy file or imported policy can be refused.
/// The description is one line a user can act on: where (file, line, column
/// when known) and what to write instead.
public struct PolicyError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Kind: String, Sendable {
        case malformedYAML, malformedJSON, unknownKey, duplicateKey, missingKey, wrongType, invalidValue
        /// A name outside a closed set: classification, isolation level, network class, capability.
        case unknownName
        /// A capability the classification's policy does not permit.
        case notPermitted
        /// A policy file that does not exist, is a directory, too large or not UTF-8.
        case unreadableFile
    }

    public let kind: Kind
    /// The file (or "defaults" for the embedded configuration); nil for a bare value.
    public internal(set) var source: String?
    /// 1-based, counted like libyaml (column in Unicode scalars); nil when unknown.
    public internal(set) var line: Int?
    public internal(set) var column: Int?
    public internal(set) var message: String

    public init(_ kind: Kind, _ message: String, source: String? = nil, line: Int? = nil, column: Int? = nil) {
        self.kind = kind
        self.message = message
        self.source = source
        self.line = line
        self.column = column
    }

    public var description: String {
        var prefix = source ?? ""
        if let line, let column { prefix += prefix.isEmpty ? "\(line):\(column)" : ":\(line):\(column)" }
        return prefix.isEmpty ? message : "\(prefix): \(message)"
    }

    /// The same error placed in a file, unless it already names a place
    /// (an inner list element knows its own line better than its key does).
    func located(source: String?, line: Int?, column: Int?) -> PolicyError {
        var copy = self
        if copy.source == nil { copy.source = source }
        if copy.line == nil { copy.line = line; copy.column = column }
        return copy
    }

    /// The same error placed in a file that has no line numbers (JSON read whole).
    public func located(source: String) -> PolicyError { located(source: source, line: nil, column: nil) }

    /// The same error with what was being read in front: "memory_limit: ...".
    public func prefixed(_ context: String) -> PolicyError {
        var copy = self
        copy.message = "\(context): \(message)"
        return copy
    }
}

/// The candidate closest to `name` by edit distance (case-insensitive, a swap of
/// two neighbours counting as one edit), when it is close enough to be the
/// likely intent: at most a third of the name's length, and at least 2.
public func nearestName(to name: String, among candidates: [String]) -> String? {
    let typed = Array(name.lowercased())
    let limit = max(2, typed.count / 3)
    let scored = candidates.map { ($0, editDistance(typed, Array($0.lowercased()))) }
    guard let best = scored.min(by: { $0.1 < $1.1 }), best.1 <= limit else { return nil }
    return best.0
}

/// Optimal string alignment distance: insertions, deletions, substitutions and
/// adjacent transpositions ("memroy" -> "memory" is one edit).
func editDistance(_ a: [Character], _ b: [Character]) -> Int {
    if a.isEmpty || b.isEmpty { return max(a.count, b.count) }
    var previous2 = [Int](repeating: 0, count: b.count + 1)
    var previous = Array(0...b.count)
    var current = [Int](repeating: 0, count: b.count + 1)
    for i in 1...a.count {
        current[0] = i
        for j in 1...b.count {
            let cost = a[i - 1] == b[j - 1] ? 0 : 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1, j > 1, a[i - 1] == b[j - 2], a[i - 2] == b[j - 1] {
                current[j] = min(current[j], previous2[j - 2] + 1)
            }
        }
        (previous2, previous, current) = (previous, current, previous2)
    }
    return previous[b.count]
}

/// A value shown inside an error message: control characters escaped so the
/// message stays one line, very long values cut.
func printable(_ text: String) -> String {
    var shown = ""
    for scalar in text.unicodeScalars.prefix(80) {
        if scalar.value < 0x20 || scalar.value == 0x7f {
            shown += "\\u{\(String(scalar.value, radix: 16))}"
        } else {
            shown.unicodeScalars.append(scalar)
        }
    }
    return text.unicodeScalars.count > 80 ? shown + "..." : shown
}
