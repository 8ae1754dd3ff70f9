import Yams

/// A line and column in a YAML document, 1-based as libyaml counts them.
struct Position: Sendable, Equatable {
    let line: Int
    let column: Int
}

/// The state of reading one document: which dotted keys it set and where each
/// of its mappings began (errors about a missing key point at its mapping).
struct DocumentReader {
    let source: String
    var assigned: Set<String> = []
    var mappingPositions: [String: Position] = [:]

    func place(_ error: PolicyError, at node: Node) -> PolicyError {
        error.located(source: source, line: node.mark?.line, column: node.mark?.column)
    }

    /// The document's root node; nil for an empty document. libyaml's errors
    /// become one line with the position of the problem.
    static func compose(_ text: String, source: String) throws -> Node? {
        do {
            return try Yams.compose(yaml: text)
        } catch let error as YamlError {
            switch error {
            case .scanner(let context, let problem, let mark, _),
                 .parser(let context, let problem, let mark, _),
                 .composer(let context, let problem, let mark, _):
                var message = "malformed YAML: \(problem)"
                if let context { message += " (\(context.text) at \(context.mark.line):\(context.mark.column))" }
                throw PolicyError(.malformedYAML, message, source: source, line: mark.line, column: mark.column)
            case .reader(let problem, let offset, _, let yaml):
                let position = offset.map { positionOf(offset: $0, in: yaml) }
                throw PolicyError(.malformedYAML, "malformed YAML: \(problem)", source: source,
                                  line: position?.line, column: position?.column)
            default:
                throw PolicyError(.malformedYAML, "malformed YAML: \(error)", source: source)
            }
        }
    }

    /// libyaml's reader reports an offset in Unicode scalars, not a line.
    private static func positionOf(offset: Int, in text: String) -> Position {
        var line = 1, column = 1
        for scalar in text.unicodeScalars.prefix(offset) {
            if scalar == "\n" { line += 1; column = 1 } else { column += 1 }
        }
        return Position(line: line, column: column)
    }
}

/// One key of the configuration schema: how to read its value from YAML into
/// a section of `PolicyConfiguration`, how to copy it when an override set it,
/// and whether a complete configuration must have it.
struct SchemaKey<Section> {
    let name: String
    let read: (Node, inout Section, inout DocumentReader, _ path: String) throws -> Void
    let merge: (_ from: Section, _ into: inout Section, _ assigned: Set<String>, _ path: String) -> Void
    let missing: (_ assigned: Set<String>, _ path: String) -> [String]

    /// A key holding one value.
    static func value<T>(_ name: String, _ property: WritableKeyPath<Section, T>, required: Bool = true,
                         _ parse: @escaping (Node) throws -> T) -> SchemaKey {
        SchemaKey(
            name: name,
            read: { node, section, reader, path in
                do {
                    section[keyPath: property] = try parse(node)
                } catch let error as PolicyError {
                    throw reader.place(error.prefixed(name), at: node)
                }
                reader.assigned.insert(path)
            },
            merge: { from, into, assigned, path in
                if assigned.contains(path) { into[keyPath: property] = from[keyPath: property] }
            },
            missing: { assigned, path in required && !assigned.contains(path) ? [path] : [] })
    }

    /// A key holding a mapping of further keys; an override may set any of them alone.
    /// Its keys are names from a closed set (classifications) when `noun` says so.
    static func section<Sub>(_ name: String, _ property: WritableKeyPath<Section, Sub>,
                             noun: (String, PolicyError.Kind) = ("key", .unknownKey),
                             _ keys: [SchemaKey<Sub>]) -> SchemaKey {
        SchemaKey(
            name: name,
            read: { node, section, reader, path in
                try readMapping(node, into: &section[keyPath: property], keys: keys, reader: &reader, path: path, noun: noun)
            },
            merge: { from, into, assigned, path in
                for key in keys { key.merge(from[keyPath: property], &into[keyPath: property], assigned, path + "." + key.name) }
            },
            missing: { assigned, path in keys.flatMap { $0.missing(assigned, path + "." + $0.name) } })
    }
}

/// Reads a mapping key by key: unknown keys (with the nearest valid one) and
/// repeated keys are refused where they stand.
func readMapping<Section>(_ node: Node, into section: inout Section, keys: [SchemaKey<Section>],
                          reader: inout DocumentReader, path: String,
                          noun: (String, PolicyError.Kind) = ("key", .unknownKey)) throws {
    guard case .mapping(let mapping) = node else {
        let error = PolicyError(.wrongType, "expected a mapping of keys, found \(YAMLValue.describe(node))")
        throw reader.place(path.isEmpty ? error : error.prefixed(path), at: node)
    }
    if let mark = node.mark { reader.mappingPositions[path] = Position(line: mark.line, column: mark.column) }
    let place = path.isEmpty ? "" : " in \(path)"
    var seen: [String: Node] = [:]
    for (keyNode, valueNode) in mapping {
        guard case .scalar(let scalar) = keyNode else {
            throw reader.place(PolicyError(.wrongType, "a key\(place) must be a plain name, found \(YAMLValue.describe(keyNode))"), at: keyNode)
        }
        let name = scalar.string
        if let first = seen[name] {
            let firstAt = first.mark.map { " (first at \($0.line):\($0.column))" } ?? ""
            throw reader.place(PolicyError(.duplicateKey, "key '\(printable(name))' appears twice\(place)\(firstAt); keep one"), at: keyNode)
        }
        seen[name] = keyNode
        guard let key = keys.first(where: { $0.name == name }) else {
            let error = PolicyError.unknown(noun.0, name, valid: keys.map(\.name), context: place, kind: noun.1)
            throw reader.place(error, at: keyNode)
        }
        try key.read(valueNode, &section, &reader, path.isEmpty ? name : path + "." + name)
    }
}

/// Typed views of YAML scalars, each refusing the wrong kind of node with
/// what it found.
enum YAMLValue {
    /// The scalar's text, whatever the YAML type: the value's own rules judge it.
    static func text(_ node: Node) throws -> String {
        guard case .scalar(let scalar) = node else {
            throw PolicyError(.wrongType, "expected a single value, found \(describe(node))")
        }
        guard !isNull(node) else { throw PolicyError(.wrongType, "no value given") }
        return scalar.string
    }

    static func bool(_ node: Node) throws -> Bool {
        guard case .scalar = node, node.tag.description == Tag.Name.bool.rawValue, let value = node.bool else {
            throw PolicyError(.wrongType, "expected true or false, found \(describe(node))")
        }
        return value
    }

    /// A whole number in decimal digits, sign allowed so that the value's own
    /// rule can say "must be more than zero" rather than "not a number".
    static func integer(_ node: Node) throws -> Int {
        let text = try self.text(node)
        let digits = text.hasPrefix("-") ? text.dropFirst() : Substring(text)
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let value = Int(text) else {
            throw PolicyError(.wrongType, "expected a whole number, found \(describe(node))")
        }
        return value
    }

    /// A list; each element's error keeps the element's own position.
    static func list<T>(_ node: Node, _ element: (Node) throws -> T) throws -> [T] {
        guard case .sequence(let sequence) = node else {
            throw PolicyError(.wrongType, "expected a list such as [a, b], found \(describe(node))")
        }
        return try sequence.map { item in
            do {
                return try element(item)
            } catch let error as PolicyError {
                throw error.located(source: nil, line: item.mark?.line, column: item.mark?.column)
            }
        }
    }

    static func duration(_ node: Node) throws -> Duration {
        try Quantity.duration(text(node))
    }

    /// Sandbox paths, sorted, each once.
    static func paths(_ node: Node) throws -> [String] {
        Set(try list(node) { try PolicyValue.sandboxPath(text($0)) }).sorted()
    }

    /// `~`, `null` or nothing at all after the colon.
    static func isNull(_ node: Node) -> Bool {
        node.tag.description == Tag.Name.null.rawValue
    }

    static func describe(_ node: Node) -> String {
        switch node {
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .scalar(let scalar): return isNull(node) ? "nothing" : "'\(printable(scalar.string))'"
        }
    }
}

extension PolicyError {
    /// "unknown key 'memroy_limit' in ...; did you mean 'memory_limit'?". Names
    /// from a closed set (classifications, capabilities...) always list the valid
    /// ones; keys list them only when no near one is found.
    public static func unknown(_ noun: String, _ name: String, valid: [String], context: String = "",
                        kind: Kind = .unknownName) -> PolicyError {
        var message = "unknown \(noun) '\(printable(name))'\(context)"
        let near = nearestName(to: name, among: valid)
        if let near { message += "; did you mean '\(near)'?" }
        if near == nil || kind == .unknownName { message += " (valid: \(valid.joined(separator: ", ")))" }
        return PolicyError(kind, message)
    }
}
