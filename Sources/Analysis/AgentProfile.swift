import Foundation

/// What an agent normally does, learned over an observation window: its
/// syscall sequences (the `SequenceModel`) and what its activity touches
/// (programs, destinations, files read, directories written, CPU use). Saved
/// with `--profile`, it lets a known agent skip the observation window.
public struct AgentProfile: Codable, Sendable {
    public static let formatName = "alcub3-agent-profile"
    public static let formatVersion = 1

    public var agentID: String
    /// When learning ended (ISO 8601) and how long it watched.
    public var learnedAt: String
    public var observedSeconds: Double
    public var model: SequenceModel
    /// Executables run, by path.
    public var programs: Set<String> = []
    /// "parent -> child" program names: a shell started by a python agent is a new pair.
    public var programPairs: Set<String> = []
    /// "ip:port" or "unix:path".
    public var destinations: Set<String> = []
    /// Files read (the kernel reports each first read).
    public var reads: Set<String> = []
    public var writtenDirectories: Set<String> = []
    /// The most CPU the agent used in one analysis window, in cores.
    public var peakCores: Double = 0

    public init(agentID: String, learnedAt: String, observedSeconds: Double, model: SequenceModel) {
        self.agentID = agentID
        self.learnedAt = learnedAt
        self.observedSeconds = observedSeconds
        self.model = model
    }

    private enum CodingKeys: String, CodingKey {
        case format, version, agentID = "agent_id", learnedAt = "learned_at", observedSeconds = "observed_seconds", model
        case programs, programPairs = "program_pairs", destinations, reads, writtenDirectories = "written_directories"
        case peakCores = "peak_cores"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let format = try c.decode(String.self, forKey: .format)
        guard format == Self.formatName else { throw FormatMismatch(found: format) }
        let version = try c.decode(Int.self, forKey: .version)
        guard version == Self.formatVersion else { throw VersionMismatch(found: version) }
        agentID = try c.decode(String.self, forKey: .agentID)
        learnedAt = try c.decode(String.self, forKey: .learnedAt)
        observedSeconds = try c.decode(Double.self, forKey: .observedSeconds)
        model = try c.decode(SequenceModel.self, forKey: .model)
        programs = try c.decode(Set<String>.self, forKey: .programs)
        programPairs = try c.decode(Set<String>.self, forKey: .programPairs)
        destinations = try c.decode(Set<String>.self, forKey: .destinations)
        reads = try c.decode(Set<String>.self, forKey: .reads)
        writtenDirectories = try c.decode(Set<String>.self, forKey: .writtenDirectories)
        peakCores = try c.decode(Double.self, forKey: .peakCores)
        guard observedSeconds >= 0, peakCores >= 0, peakCores.isFinite else {
            throw SequenceModel.Inconsistent(detail: "negative or infinite observed_seconds or peak_cores")
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(Self.formatName, forKey: .format)
        try c.encode(Self.formatVersion, forKey: .version)
        try c.encode(agentID, forKey: .agentID)
        try c.encode(learnedAt, forKey: .learnedAt)
        try c.encode(observedSeconds, forKey: .observedSeconds)
        try c.encode(model, forKey: .model)
        try c.encode(programs.sorted(), forKey: .programs)
        try c.encode(programPairs.sorted(), forKey: .programPairs)
        try c.encode(destinations.sorted(), forKey: .destinations)
        try c.encode(reads.sorted(), forKey: .reads)
        try c.encode(writtenDirectories.sorted(), forKey: .writtenDirectories)
        try c.encode(peakCores, forKey: .peakCores)
    }

    struct FormatMismatch: Error { let found: String }
    struct VersionMismatch: Error { let found: Int }

    /// Written whole or not at all (a temporary file renamed), readable by root only.
    public func save(to path: String) throws(ProfileError) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        do {
            let data = try encoder.encode(self)
            let temporary = path + ".tmp-\(getpid())"
            guard FileManager.default.createFile(atPath: temporary, contents: data, attributes: [.posixPermissions: 0o600]) else {
                throw ProfileError.unwritable(path: path, reason: String(cString: strerror(errno)))
            }
            guard rename(temporary, path) == 0 else {
                let reason = String(cString: strerror(errno))
                unlink(temporary)
                throw ProfileError.unwritable(path: path, reason: reason)
            }
        } catch let error as ProfileError {
            throw error
        } catch {
            throw ProfileError.unwritable(path: path, reason: "\(error)")
        }
    }

    /// The profile at `path`, refused with a one-line reason when it is not one,
    /// is damaged, or was learned for another agent.
    public static func load(from path: String, agentID: String) throws(ProfileError) -> AgentProfile {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw ProfileError.unreadable(path: path, reason: (error as NSError).localizedFailureReason ?? "\(error)")
        }
        return try load(data, path: path, agentID: agentID)
    }

    /// The profile in `data`, read by the caller (through a descriptor it
    /// checked, say); `path` names it in the refusals.
    public static func load(_ data: Data, path: String, agentID: String) throws(ProfileError) -> AgentProfile {
        let profile: AgentProfile
        do {
            profile = try JSONDecoder().decode(AgentProfile.self, from: data)
        } catch let mismatch as FormatMismatch {
            throw ProfileError.notAProfile(path: path, detail: "format '\(mismatch.found)'")
        } catch let mismatch as VersionMismatch {
            throw ProfileError.unsupportedVersion(path: path, found: mismatch.found)
        } catch let inconsistent as SequenceModel.Inconsistent {
            throw ProfileError.corrupt(path: path, detail: inconsistent.detail)
        } catch DecodingError.dataCorrupted(let context) where context.codingPath.isEmpty {
            throw ProfileError.notAProfile(path: path, detail: "not JSON")
        } catch {
            throw ProfileError.corrupt(path: path, detail: Self.describe(error))
        }
        guard profile.agentID == agentID else {
            throw ProfileError.otherAgent(path: path, found: profile.agentID, expected: agentID)
        }
        return profile
    }

    static func describe(_ error: Error) -> String {
        func at(_ context: DecodingError.Context) -> String {
            context.codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".")
        }
        switch error {
        case DecodingError.keyNotFound(let key, let context): return "missing '\(key.stringValue)' in \(at(context).isEmpty ? "the top level" : at(context))"
        case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context):
            return "wrong type at \(at(context))"
        case DecodingError.dataCorrupted(let context): return "\(context.debugDescription) at \(at(context))"
        default: return "\(error)"
        }
    }
}
