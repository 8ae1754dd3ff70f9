import Crypto
import Foundation
import KernelSupport

/// The key each audit record's MAC is made with (HMAC-SHA256). It lives in a
/// file outside the database (the service's: STATE_DIR/audit.key, which every
/// sandbox has hidden), so whoever can rewrite the database, and recompute
/// every SHA-256 link, still cannot make a record that verifies.
public struct AuditKey: Sendable {
    public static let fileName = "audit.key"
    /// The raw bytes: SymmetricKey is not Sendable, so it is made per MAC (cheap).
    private let bytes: [UInt8]

    /// A key from its 32 bytes (tests; files go through `load` and `loadOrCreate`).
    public init(bytes: [UInt8]) {
        self.bytes = bytes
    }

    /// The key in `path`, created (256 random bits, base64, 0600) when there is
    /// none. A file others could read, or a link, is refused (SecretFile).
    public static func loadOrCreate(at path: String) throws -> AuditKey {
        try parse(SecretFile.readOrCreate(path, what: "the audit key") {
            Array((SymmetricKey(size: .bits256).withUnsafeBytes { Data($0) }.base64EncodedString() + "\n").utf8)
        }, path: path)
    }

    /// The key in `path`, never created (for `audit verify`).
    public static func load(at path: String) throws -> AuditKey {
        try parse(SecretFile.read(path, what: "the audit key"), path: path)
    }

    private static func parse(_ bytes: [UInt8], path: String) throws -> AuditKey {
        guard let raw = Data(base64Encoded: String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)),
              raw.count == 32 else {
            throw SecretFile.Refused(description: "\(path): not an alcub3 audit key (base64 of 32 bytes)")
        }
        return AuditKey(bytes: Array(raw))
    }

    /// HMAC-SHA256 of `message`, as lowercase hex.
    func mac(_ message: [UInt8]) -> String {
        hexString(HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: bytes)))
    }
}

/// Lowercase hex of a digest or MAC.
func hexString<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
    let hex = Array("0123456789abcdef".utf8)
    var text: [UInt8] = []
    for byte in bytes {
        text.append(hex[Int(byte >> 4)])
        text.append(hex[Int(byte & 0x0f)])
    }
    return String(decoding: text, as: UTF8.self)
}
