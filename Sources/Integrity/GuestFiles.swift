#if canImport(Glibc)
import Glibc
#endif
import CAlcub3
import Foundation
import KernelSupport

/// A vm guest's files, as its agent reported them (SCAN_ENTRY frames of
/// alcub3_guest.h, guest/alcub3-scan.c): the same entries a host scan makes,
/// so a guest's baseline is compared, hashed and signed like any other.
extension FileEntry {
    /// One SCAN_ENTRY payload; nil when it is malformed: shorter than its
    /// header, without its NUL-terminated path, or with a path that is not a
    /// plain relative one ("", or names without ".", ".." or empty parts).
    public static func decodingGuestEntry(_ payload: [UInt8]) -> FileEntry? {
        let header = MemoryLayout<alcub3_guest_scan_entry>.size
        guard payload.count > header else { return nil }
        let raw = payload.withUnsafeBytes { $0.loadUnaligned(as: alcub3_guest_scan_entry.self) }
        let rest = payload[header...]
        guard let nul = rest.firstIndex(of: 0) else { return nil }
        let path = String(decoding: rest[..<nul], as: UTF8.self)
        guard path.isEmpty || path.split(separator: "/", omittingEmptySubsequences: false).allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." })
        else { return nil }
        let kind: Kind
        switch raw.mode & UInt32(S_IFMT) {
        case UInt32(S_IFREG): kind = .file
        case UInt32(S_IFDIR): kind = .directory
        case UInt32(S_IFLNK): kind = .symlink
        case UInt32(S_IFIFO): kind = .fifo
        case UInt32(S_IFSOCK): kind = .socket
        case UInt32(S_IFCHR): kind = .characterDevice
        case UInt32(S_IFBLK): kind = .blockDevice
        default: return nil
        }
        var entry = FileEntry(path: path, kind: kind, mode: raw.mode & 0o7777, uid: raw.uid, gid: raw.gid,
                              size: kind == .file ? raw.size : 0)
        switch kind {
        case .file:
            if raw.read_error != 0 {
                entry.unreadable = SystemError.name(of: raw.read_error)
            } else {
                entry.hash = withUnsafeBytes(of: raw.sha256) { Hex.string($0) }
            }
        case .symlink:
            let after = rest[(nul + 1)...]
            entry.target = after.firstIndex(of: 0).map { String(decoding: after[..<$0], as: UTF8.self) }
        case .characterDevice, .blockDevice:
            entry.device = raw.device
        default:
            break
        }
        return entry
    }
}

extension FileTree {
    /// A tree whose entries were read elsewhere (a vm guest's agent): the
    /// directories' Merkle hashes are computed here, as `scan` computes them.
    /// An entry whose parent directory is not among them is left out.
    public static func assembled(root: String, entries list: [FileEntry]) -> FileTree {
        var tree = FileTree(root: root)
        var byPath: [String: FileEntry] = [:]
        for entry in list { byPath[entry.path] = entry }
        guard byPath[""]?.kind == .directory else { return tree }
        // Shallowest first, so a parent is known before its children.
        for path in byPath.keys.sorted(by: { depth($0) < depth($1) }) {
            guard let entry = byPath[path] else { continue }
            if let parent = parent(of: path) {
                guard tree.entries[parent]?.kind == .directory else { continue }
                tree.insertChild(path, of: parent)
            }
            tree.entries[path] = entry
        }
        for path in tree.entries.keys.sorted(by: { depth($0) > depth($1) }) where tree.entries[path]?.kind == .directory {
            tree.rehashDirectory(path)
        }
        return tree
    }

    private static func depth(_ path: String) -> Int { path.isEmpty ? 0 : path.split(separator: "/").count }
}
