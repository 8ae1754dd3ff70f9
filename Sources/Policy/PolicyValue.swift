/// The rules for the configuration's other values, shared by the YAML reader
/// and the JSON import so both refuse the same things with the same words.
public enum PolicyValue {
    /// An absolute path written plainly: no '.' or '..' component, no control
    /// characters. Repeated and trailing slashes are dropped.
    static func absolutePath(_ text: String) throws -> String {
        guard !text.isEmpty else { throw PolicyError(.invalidValue, "no path given; write an absolute path such as /workspace") }
        guard text.hasPrefix("/") else {
            throw PolicyError(.invalidValue, "'\(printable(text))' is not absolute; write a path starting with /")
        }
        if text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) {
            throw PolicyError(.invalidValue, "'\(printable(text))' contains a control character")
        }
        let components = text.split(separator: "/")
        if components.contains(where: { $0 == "." || $0 == ".." }) {
            throw PolicyError(.invalidValue, "'\(printable(text))' has a '.' or '..' component; write the path it means plainly")
        }
        guard text.utf8.count < 4096 else { throw PolicyError(.invalidValue, "the path is longer than 4095 bytes") }
        return "/" + components.joined(separator: "/")
    }

    /// A path the sandbox can be given or denied: an absolute path that is not "/".
    static func sandboxPath(_ text: String) throws -> String {
        let path = try absolutePath(text)
        guard path != "/" else { throw PolicyError(.invalidValue, "'/' is the whole filesystem; name a directory or file under it") }
        return path
    }

    /// True when `path` is `ancestor` or lies beneath it.
    static func path(_ path: String, isWithin ancestor: String) -> Bool {
        ancestor == "/" || path == ancestor || path.hasPrefix(ancestor + "/")
    }

    /// Unix socket paths must fit sockaddr_un's 108-byte sun_path with its NUL,
    /// and sit in a directory of their own: sandboxes get that directory hidden.
    static func socketPath(_ text: String) throws -> String {
        let path = try sandboxPath(text)
        guard path.utf8.count <= 107 else {
            throw PolicyError(.invalidValue, "'\(printable(text))' is \(path.utf8.count) bytes; a Unix socket path has at most 107")
        }
        guard directory(of: path) != "/" else {
            throw PolicyError(.invalidValue, "'\(printable(text))' is directly in /; put the socket in a directory of its own, such as /run/alcub3")
        }
        return path
    }

    static func directory(of path: String) -> String {
        let parent = path.split(separator: "/").dropLast().joined(separator: "/")
        return "/" + parent
    }

    /// A Unix group name: the Identifier rules, at most 32 characters (useradd's limit).
    static func groupName(_ text: String) throws -> String {
        if let problem = Identifier.validate(text) {
            throw PolicyError(.invalidValue, "'\(printable(text))' is not a group name: \(problem)")
        }
        guard text.count <= 32 else { throw PolicyError(.invalidValue, "'\(printable(text))' is longer than 32 characters, too long for a group name") }
        return text
    }

    /// A TCP port, 1 to 65535.
    public static func port(_ value: Int) throws -> UInt16 {
        guard (1...65535).contains(value) else { throw PolicyError(.invalidValue, "port \(value) is outside 1 to 65535") }
        return UInt16(value)
    }

    /// Ports sorted and without repeats; 0 refused.
    public static func ports(_ values: [UInt16]) throws -> [UInt16] {
        for value in values { _ = try port(Int(value)) }
        return Array(Set(values)).sorted()
    }

    /// Processes per sandbox: 1 to 4194304 (the kernel's largest pid_max).
    static func pidsLimit(_ value: Int) throws -> Int {
        guard value > 0 else { throw PolicyError(.invalidValue, "\(value) must be more than zero") }
        guard value <= 4_194_304 else { throw PolicyError(.invalidValue, "\(value) is more than 4194304, the most processes a Linux host can have") }
        return value
    }

    /// A value strictly above 0 and at most 1.
    static func fraction(_ value: Double) throws -> Double {
        guard value > 0, value <= 1 else { throw PolicyError(.invalidValue, "\(value) is outside the range above 0 up to 1") }
        return value
    }
}

/// An address a service listens on: an IP literal and a port,
/// "127.0.0.1:9464" or "[::1]:9464".
public struct ListenAddress: Sendable, Equatable, CustomStringConvertible {
    public let host: String
    public let port: UInt16

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

extension ListenAddress {
    public init(_ text: String) throws {
        let invalid = PolicyError(.invalidValue, "'\(printable(text))' is not an address; write an IP and a port such as 127.0.0.1:9464 or [::1]:9464")
        guard let colon = text.lastIndex(of: ":") else { throw invalid }
        var host = String(text[..<colon])
        let portText = text[text.index(after: colon)...]
        if host.hasPrefix("[") && host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
            guard host.contains(":") else { throw invalid }
        } else if host.contains(":") {
            throw PolicyError(.invalidValue, "'\(printable(text))': write an IPv6 address in brackets, such as [::1]:9464")
        }
        guard CIDR.addressBytes(host) != nil else { throw invalid }
        guard let number = Int(portText), portText.allSatisfy(\.isNumber) else { throw invalid }
        self.init(host: host, port: try PolicyValue.port(number))
    }
}
