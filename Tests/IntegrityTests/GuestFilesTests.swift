import CAlcub3
import Crypto
import Foundation
import Testing
@testable import Integrity

/// A vm guest's files arrive as SCAN_ENTRY payloads (guest/alcub3-scan.c);
/// assembled on the host they must give the tree, and the root hash, a host
/// scan of the same files gives.
@Suite struct GuestFilesTests {
    /// The payload the guest agent sends for `relative` under `root`.
    static func payload(root: String, relative: String, hash: String?) -> [UInt8] {
        let path = relative.isEmpty ? root : root + "/" + relative
        var st = stat()
        lstat(path, &st)
        var raw = alcub3_guest_scan_entry()
        raw.size = UInt64(st.st_size)
        raw.device = (st.st_mode & S_IFMT) == S_IFCHR || (st.st_mode & S_IFMT) == S_IFBLK ? UInt64(st.st_rdev) : 0
        raw.mode = st.st_mode
        raw.uid = st.st_uid
        raw.gid = st.st_gid
        if let hash {
            let bytes = stride(from: 0, to: 64, by: 2).map { UInt8(hash.dropFirst($0).prefix(2), radix: 16)! }
            withUnsafeMutableBytes(of: &raw.sha256) { $0.copyBytes(from: bytes) }
        }
        var payload = withUnsafeBytes(of: raw) { Array($0) } + Array(relative.utf8) + [0]
        if (st.st_mode & S_IFMT) == S_IFLNK, let target = try? FileManager.default.destinationOfSymbolicLink(atPath: path) {
            payload += Array(target.utf8) + [0]
        }
        return payload
    }

    @Test func anAssembledTreeHashesAsAHostScanOfTheSameFiles() throws {
        let scratch = try ScratchTree()
        let host = try FileTree.scan(root: scratch.root)
        let payloads = host.entries.values.map { entry in
            Self.payload(root: scratch.root, relative: entry.path, hash: entry.kind == .file ? entry.hash : nil)
        }
        let entries = payloads.compactMap(FileEntry.decodingGuestEntry)
        #expect(entries.count == host.count)
        let guest = FileTree.assembled(root: "guest:/root", entries: entries.shuffled())
        #expect(guest.count == host.count)
        // (The host records extended attributes; the guest agent does not: none here.)
        #expect(guest.rootHash == host.rootHash && !guest.rootHash.isEmpty)
        #expect(guest.entries["link"]?.target == "src/f0.txt" && guest.entries["pipe"]?.kind == .fifo)
        #expect(FilesystemValidator.compare(FilesystemBaseline(id: "b", agentID: "a", sandboxID: "s", createdAt: "", root: "/root", tree: host),
                                            with: guest, foundBy: "rescan").isEmpty)
    }

    @Test func malformedEntriesAreRefused() {
        let header = MemoryLayout<alcub3_guest_scan_entry>.size
        var raw = alcub3_guest_scan_entry()
        raw.mode = UInt32(S_IFREG) | 0o644
        let base = withUnsafeBytes(of: raw) { Array($0) }
        #expect(FileEntry.decodingGuestEntry(Array(base.prefix(header - 1))) == nil, "shorter than its header")
        #expect(FileEntry.decodingGuestEntry(base + Array("a".utf8)) == nil, "no NUL after the path")
        for bad in ["../etc/passwd", "/etc/passwd", "a//b", "a/./b", "a/..", "."] {
            #expect(FileEntry.decodingGuestEntry(base + Array(bad.utf8) + [0]) == nil, "\(bad)")
        }
        #expect(FileEntry.decodingGuestEntry(base + Array("a/b.txt".utf8) + [0])?.path == "a/b.txt")
        var unknown = raw
        unknown.mode = 0o170000
        #expect(FileEntry.decodingGuestEntry(withUnsafeBytes(of: unknown) { Array($0) } + [0]) == nil, "no such file type")
        // An entry whose parent the guest did not send is left out of the tree.
        let orphan = FileEntry(path: "missing/x", kind: .file, mode: 0o644, uid: 0, gid: 0, size: 0)
        let root = FileEntry(path: "", kind: .directory, mode: 0o755, uid: 0, gid: 0, size: 0)
        #expect(FileTree.assembled(root: "guest:/root", entries: [root, orphan]).count == 1)
    }
}
