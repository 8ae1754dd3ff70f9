#if canImport(Glibc)
import Glibc
#endif
import Crypto
import Foundation
import KernelSupport

/// A filesystem baseline: the entries of a tree and its root hash, with who
/// and what it describes. Written signed (`SignedBaseline`).
public struct FilesystemBaseline: Codable, Sendable, Equatable {
    public static let currentFormat = 1
    public var format: Int
    public var id: String
    public var agentID: String
    public var sandboxID: String
    /// ISO 8601, UTC.
    public var createdAt: String
    /// The tree as the sandbox sees it (e.g. /workspace).
    public var root: String
    public var rootHash: String
    public var entries: [FileEntry]
    /// The sandbox's behaviour over the observation window before the baseline.
    public var behaviour: BehaviourProfile?
    /// Each process of the sandbox at the baseline: its executable memory.
    public var memory: [MemoryBaseline]?
    /// A vm or hardware sandbox: what it booted (the measured boot's record).
    /// Its `root` and entries are then the guest's, read by the guest agent.
    public var boot: BootRecord?

    public init(id: String, agentID: String, sandboxID: String, createdAt: String, root: String, tree: FileTree) {
        self.format = Self.currentFormat
        self.id = id
        self.agentID = agentID
        self.sandboxID = sandboxID
        self.createdAt = createdAt
        self.root = root
        self.rootHash = tree.rootHash
        self.entries = tree.entries.values.sorted { $0.path < $1.path }
    }

    /// The bytes that are signed: the baseline as JSON with sorted keys.
    func canonicalBytes() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(self)
    }
}

/// Why a baseline file is refused: one line each.
public struct BaselineError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A baseline with its Ed25519 signature and the public key that made it.
public struct SignedBaseline: Codable, Sendable {
    public static let algorithm = "Ed25519"
    public var baseline: FilesystemBaseline
    public var algorithm: String
    /// Base64 of the raw 32-byte public key.
    public var publicKey: String
    /// Base64 of the signature over `baseline`'s canonical JSON.
    public var signature: String

    public init(signing baseline: FilesystemBaseline, with key: Curve25519.Signing.PrivateKey) throws {
        self.baseline = baseline
        self.algorithm = Self.algorithm
        self.publicKey = key.publicKey.rawRepresentation.base64EncodedString()
        self.signature = try key.signature(for: baseline.canonicalBytes()).base64EncodedString()
    }

    public func jsonData() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(self)
    }

    /// Reads and checks a baseline file: well-formed, a format this version
    /// knows, signed by `trusted` (the service's key), untampered, and for
    /// `agentID`. Each refusal names what is wrong.
    public static func verify(_ data: Data, source: String, trusted: Curve25519.Signing.PublicKey,
                              agentID: String? = nil) throws -> FilesystemBaseline {
        let document: SignedBaseline
        do {
            // The format is checked before the rest, so a newer baseline says so instead of failing to decode.
            if let object = try JSONSerialization.jsonObject(with: data) as? [String: Any],
               let inner = object["baseline"] as? [String: Any], let format = inner["format"] as? Int,
               format > FilesystemBaseline.currentFormat {
                throw BaselineError("\(source): baseline format \(format) is newer than this alcub3 reads (\(FilesystemBaseline.currentFormat)); use a newer alcub3")
            }
            document = try JSONDecoder().decode(SignedBaseline.self, from: data)
        } catch let error as BaselineError {
            throw error
        } catch {
            throw BaselineError("\(source): not an alcub3 baseline (truncated, or not JSON: \((error as NSError).localizedDescription))")
        }
        guard document.algorithm == algorithm, let signature = Data(base64Encoded: document.signature),
              let keyBytes = Data(base64Encoded: document.publicKey) else {
            throw BaselineError("\(source): the signature block is malformed")
        }
        guard keyBytes == trusted.rawRepresentation else {
            throw BaselineError("\(source): signed by a key this service does not trust (a foreign baseline)")
        }
        guard trusted.isValidSignature(signature, for: try document.baseline.canonicalBytes()) else {
            throw BaselineError("\(source): the signature does not match its content: the baseline was altered (tampered)")
        }
        if let agentID, document.baseline.agentID != agentID {
            throw BaselineError("\(source): baseline of agent '\(document.baseline.agentID)', not '\(agentID)'")
        }
        return document.baseline
    }
}

/// The key baselines are signed with: generated once by the service and kept
/// with mode 0600 (root only), or given by the operator. The file's checks are
/// SecretFile's (a regular file, not a link, the owner's alone).
public enum BaselineKey {
    public static func loadOrCreate(at path: String) throws -> Curve25519.Signing.PrivateKey {
        let bytes: [UInt8]
        do {
            bytes = try SecretFile.readOrCreate(path, what: "the signing key") {
                Array((Curve25519.Signing.PrivateKey().rawRepresentation.base64EncodedString() + "\n").utf8)
            }
        } catch let refused as SecretFile.Refused {
            throw BaselineError(refused.description)
        }
        guard let raw = Data(base64Encoded: String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)),
              let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: raw) else {
            throw BaselineError("\(path): not an Ed25519 signing key (base64 of 32 bytes)")
        }
        return key
    }
}
