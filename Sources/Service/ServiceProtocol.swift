import Foundation

/// The control protocol between the CLI and `alcub3 daemon`: one JSON object
/// per line over the Unix socket. A client sends one request; the service
/// answers with zero or more `output`/`event` messages and ends with exactly
/// one `result` or `error` (except `events tail --follow`, which streams until
/// the client goes away).
public struct ServiceRequest: Codable, Sendable {
    public enum Operation: String, Codable, Sendable {
        case ping, create, exec, list, show, terminate, thaw, policySet = "policy-set", baseline, validate, export, importPolicy = "import", events, monitor, auditVerify = "audit-verify", report, behaviour
    }

    public var op: Operation
    public var agentID: String?
    public var classification: String?
    public var isolation: String?
    public var policyYAML: [String]?        // --policy-file contents, in order
    public var policyFileNames: [String]?   // their names, for error messages
    public var capabilities: [String]?
    public var seccompProfile: String?      // --seccomp-profile contents (OCI / Docker JSON)
    public var destinations: [String]?      // policy set: allowed destinations (CIDR)
    public var ports: [Int]?                // policy set: allowed ports
    public var baselineText: String?        // validate: a baseline file's text, or a stored baseline id
    public var baselineSource: String?      // its name, for error messages
    public var update: Bool?                // baseline: replace the sandbox's current one
    public var list: Bool?                  // baseline: list the stored baselines instead
    public var policyJSON: String?          // import: an exported effective policy
    public var command: [String]?
    public var workingDirectory: String?
    public var shareWorkingDirectory: Bool?  // create: the client's directory instead of a private workspace
    public var environment: [String]?
    public var dryRun: Bool?
    public var force: Bool?
    public var graceSeconds: Double?
    public var status: String?              // list filter: active, stopped, all
    public var kind: String?                // events filter
    public var sinceNs: Int64?
    public var untilNs: Int64?              // report: the end of the range
    public var afterID: Int64?
    public var limit: Int?
    public var follow: Bool?
    public var verbose: Bool?
    public var image: String?               // create, container level: a root filesystem, OCI layout or tar of one
    public var imageDigest: String?         // create: the manifest digest the image must have
    public var profilePath: String?         // create: a behaviour profile to start from, or to save the learned one to

    public init(op: Operation) { self.op = op }
}

public struct ServiceMessage: Codable, Sendable {
    public enum Kind: String, Codable, Sendable { case output, event, step, result, error }

    public var type: Kind
    public var stream: String?               // output: stdout or stderr
    public var data: String?                 // output: base64 bytes
    public var json: String?                 // event: one OCSF JSON line; result: the payload
    public var code: Int32?                  // error: the exit code the CLI should use
    public var message: String?              // error text, or a step's description

    public static func result(_ payload: some Encodable) -> ServiceMessage {
        ServiceMessage(type: .result, json: ServiceJSON.encode(payload))
    }

    public static func error(_ code: Int32, _ message: String) -> ServiceMessage {
        ServiceMessage(type: .error, code: code, message: message)
    }

    public init(type: Kind, stream: String? = nil, data: String? = nil, json: String? = nil, code: Int32? = nil, message: String? = nil) {
        self.type = type
        self.stream = stream
        self.data = data
        self.json = json
        self.code = code
        self.message = message
    }
}

/// A failure the service reports to the client: one line and an exit code.
public struct ServiceFailure: Error, CustomStringConvertible, Sendable {
    public let code: Int32
    public let message: String
    public init(_ code: Int32, _ message: String) {
        self.code = code
        self.message = message
    }
    public var description: String { message }
}

enum ServiceJSON {
    static func encode(_ value: some Encodable) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(value) else { return "null" }
        return String(decoding: data, as: UTF8.self)
    }
}
