import Foundation

/// Why a saved profile was refused; `description` is one line.
public enum ProfileError: Error, Equatable, CustomStringConvertible, Sendable {
    case unreadable(path: String, reason: String)
    case notAProfile(path: String, detail: String)
    case unsupportedVersion(path: String, found: Int)
    case otherAgent(path: String, found: String?, expected: String)
    case corrupt(path: String, detail: String)
    case unwritable(path: String, reason: String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason): "cannot read the profile \(path): \(reason)"
        case .notAProfile(let path, let detail): "\(path) is not an alcub3 behaviour profile (\(detail))"
        case .unsupportedVersion(let path, let found):
            "profile \(path) has format version \(found); this alcub3 reads version \(SequenceModel.formatVersion)"
        case .otherAgent(let path, let found, let expected):
            "profile \(path) was learned for agent \(found.map { "'\($0)'" } ?? "(none)"), not '\(expected)'"
        case .corrupt(let path, let detail): "profile \(path) is corrupted: \(detail)"
        case .unwritable(let path, let reason): "cannot write the profile \(path): \(reason)"
        }
    }
}

/// The stored form: the n-gram counts (each sequence as its syscall numbers,
/// like a trace), from which loading rebuilds every context's followers; and
/// the total of the unigram counts must equal `trained_syscalls`, which catches
/// most truncation and editing.
extension SequenceModel: Codable {
    private enum CodingKeys: String, CodingKey {
        case format, version, agentID = "agent_id", order, referenceBits = "reference_bits", evidenceDecay = "evidence_decay"
        case trainedSyscalls = "trained_syscalls"
        case trainedSequences = "trained_sequences", calibration, ngrams
    }

    private struct NgramCounts: Codable {
        var sequences: [String]
        var counts: [UInt32]
    }

    /// Decoding found the document well-formed but its content inconsistent.
    struct Inconsistent: Error { let detail: String }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(Self.formatName, forKey: .format)
        try container.encode(Self.formatVersion, forKey: .version)
        try container.encode(agentID, forKey: .agentID)
        try container.encode(order, forKey: .order)
        try container.encode(referenceBits, forKey: .referenceBits)
        try container.encode(evidenceDecay, forKey: .evidenceDecay)
        try container.encode(trainedSyscalls, forKey: .trainedSyscalls)
        try container.encode(trainedSequences, forKey: .trainedSequences)
        try container.encodeIfPresent(calibration, forKey: .calibration)
        let keys = table.sortedKeys
        try container.encode(NgramCounts(sequences: keys.map { PackedSequence.calls($0).map(String.init).joined(separator: " ") },
                                         counts: keys.map { table.counts[table.slot(of: $0)!] }), forKey: .ngrams)
    }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        guard try container.decode(String.self, forKey: .format) == Self.formatName else {
            throw DecodingError.dataCorruptedError(forKey: .format, in: container, debugDescription: "format is not \(Self.formatName)")
        }
        let version = try container.decode(Int.self, forKey: .version)
        guard version == Self.formatVersion else { throw UnsupportedVersion(found: version) }
        let order = try container.decode(Int.self, forKey: .order)
        let referenceBits = try container.decode(Double.self, forKey: .referenceBits)
        guard (1...PackedSequence.maxLength).contains(order) else { throw Inconsistent(detail: "order \(order) is not 1 to 6") }
        let evidenceDecay = try container.decode(Double.self, forKey: .evidenceDecay)
        guard referenceBits > 0, referenceBits <= 64 else { throw Inconsistent(detail: "reference_bits \(referenceBits) is not above 0 and at most 64") }
        guard evidenceDecay > 0, evidenceDecay <= 1 else { throw Inconsistent(detail: "evidence_decay \(evidenceDecay) is not above 0 and at most 1") }
        self.init(order: order, referenceBits: referenceBits, evidenceDecay: evidenceDecay)
        agentID = try container.decodeIfPresent(String.self, forKey: .agentID)
        calibration = try container.decodeIfPresent(Calibration.self, forKey: .calibration)
        let trained = try container.decode(UInt64.self, forKey: .trainedSyscalls)
        trainedSequences = try container.decode(UInt64.self, forKey: .trainedSequences)
        let ngrams = try container.decode(NgramCounts.self, forKey: .ngrams)
        guard ngrams.sequences.count == ngrams.counts.count else {
            throw Inconsistent(detail: "\(ngrams.sequences.count) sequences but \(ngrams.counts.count) counts")
        }
        var keys: [UInt64] = []
        keys.reserveCapacity(ngrams.sequences.count)
        for (index, text) in ngrams.sequences.enumerated() {
            let calls = text.split(separator: " ").map { UInt16($0) }
            guard (1...order).contains(calls.count), calls.allSatisfy({ $0.map { Int($0) < syscallNumberLimit } ?? false }),
                  ngrams.counts[index] > 0 else {
                throw Inconsistent(detail: "n-gram \(index + 1) '\(SyscallTrace.printable(String(text.prefix(60))))' with count "
                                   + "\(ngrams.counts[index]) is not 1 to \(order) syscall numbers below \(syscallNumberLimit) seen at least once")
            }
            let key = PackedSequence.key(calls.map { $0! })
            let slot = table.insert(key)
            guard table.counts[slot] == 0 else { throw Inconsistent(detail: "n-gram '\(text)' appears twice") }
            table.add(count: ngrams.counts[index], at: slot)
            keys.append(key)
        }
        for key in keys {
            let count = table.count(of: key)
            let length = PackedSequence.length(key)
            guard length > 1 else {
                callTotal += UInt64(count)
                distinctCalls += 1
                continue
            }
            let prefix = PackedSequence.key(key >> PackedSequence.bitsPerCall, length: length - 1)
            guard let context = table.slot(of: prefix) else {
                throw Inconsistent(detail: "n-gram '\(PackedSequence.calls(key).map(String.init).joined(separator: " "))' has no count for its first calls")
            }
            table.add(follower: count, isNew: true, at: context)
        }
        guard callTotal == trained else {
            throw Inconsistent(detail: "the single-call counts add up to \(callTotal), trained_syscalls says \(trained)")
        }
        trainedSyscalls = trained
    }

    struct UnsupportedVersion: Error { let found: Int }

    /// The profile as JSON (sorted keys, so equal models give equal files).
    public func profileJSON() -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Only non-finite calibration figures could fail, and Calibration never makes them.
        return try! encoder.encode(self)
    }

    /// Writes the profile (0600: it describes what the agent does).
    public func save(to path: String) throws(ProfileError) {
        guard FileManager.default.createFile(atPath: path, contents: profileJSON(), attributes: [.posixPermissions: 0o600]) else {
            throw .unwritable(path: path, reason: FileManager.default.fileExists(atPath: path) ? "permission denied" : "cannot create it")
        }
    }

    /// A profile read back; with `agentID`, one learned for another agent is refused.
    public static func load(from path: String, agentID: String? = nil) throws(ProfileError) -> SequenceModel {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .unreadable(path: path, reason: FileManager.default.fileExists(atPath: path) ? "permission denied" : "no such file")
        }
        return try decode(data, path: path, agentID: agentID)
    }

    public static func decode(_ data: Data, path: String, agentID: String? = nil) throws(ProfileError) -> SequenceModel {
        let model: SequenceModel
        do {
            model = try JSONDecoder().decode(SequenceModel.self, from: data)
        } catch let error as UnsupportedVersion {
            throw .unsupportedVersion(path: path, found: error.found)
        } catch let error as Inconsistent {
            throw .corrupt(path: path, detail: error.detail)
        } catch let DecodingError.keyNotFound(key, _) {
            throw .notAProfile(path: path, detail: "no \(key.stringValue)")
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context) {
            throw .corrupt(path: path, detail: "\(codingPath(context)): \(context.debugDescription)")
        } catch let DecodingError.dataCorrupted(context) {
            throw context.codingPath.isEmpty ? .notAProfile(path: path, detail: "not JSON")
                : .notAProfile(path: path, detail: "\(codingPath(context)): \(context.debugDescription)")
        } catch {
            throw .notAProfile(path: path, detail: "\(error)")
        }
        if let agentID, model.agentID != agentID { throw .otherAgent(path: path, found: model.agentID, expected: agentID) }
        return model
    }

    private static func codingPath(_ context: DecodingError.Context) -> String {
        context.codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".")
    }
}
