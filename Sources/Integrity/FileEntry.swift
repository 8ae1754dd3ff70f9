#if canImport(Glibc)
import Glibc
#endif
import Crypto
import Foundation

/// One path of a filesystem baseline: its metadata and, for a regular file,
/// the SHA-256 of its content; for a directory, the Merkle hash of its
/// entries (so the root's hash covers the whole tree).
public struct FileEntry: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        case file, directory, symlink, fifo, socket, characterDevice = "char_device", blockDevice = "block_device"
    }

    /// Relative to the baseline's root; "" is the root itself.
    public var path: String
    public var kind: Kind
    /// Permission bits with setuid/setgid/sticky (mode & 07777).
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var size: UInt64
    /// Symlink target as stored (not followed).
    public var target: String?
    /// Device number of a device node.
    public var device: UInt64?
    /// Extended attribute name -> SHA-256 of its value (hex).
    public var xattrs: [String: String]?
    /// Regular file: SHA-256 of the content; directory: Merkle hash; others: nil.
    public var hash: String?
    /// Why the content could not be read (the entry is still recorded).
    public var unreadable: String?

    public init(path: String, kind: Kind, mode: UInt32, uid: UInt32, gid: UInt32, size: UInt64) {
        self.path = path
        self.kind = kind
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
    }

    /// The line a parent directory's Merkle hash is made of: everything that
    /// describes the entry, so a change anywhere changes every hash above it.
    var merkleLine: String {
        let name = path.split(separator: "/").last.map(String.init) ?? ""
        let attributes = (xattrs ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
        return [name, kind.rawValue, String(mode, radix: 8), String(uid), String(gid), String(size), target ?? "",
                device.map(String.init) ?? "", attributes, hash ?? "", unreadable ?? ""].joined(separator: "\u{0}")
    }
}

enum Hex {
    private static let digits = Array("0123456789abcdef".utf8)

    /// Lower-case hex, by table (String(format:) per byte was half of a scan's time).
    static func string<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(64)
        for byte in digest {
            bytes.append(digits[Int(byte >> 4)])
            bytes.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
