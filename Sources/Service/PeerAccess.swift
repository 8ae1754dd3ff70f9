#if canImport(Glibc)
import Glibc
#endif
import CAlcub3
import Foundation
import KernelSupport

/// Paths a peer that is not root (a member of service.socket_group) names in
/// a request, judged with that peer's own uid and groups. The service acts as
/// root: without this a member could have it share, read or write what the
/// member itself may not, which made the group root-equivalent (audit H7).
///
/// A path is walked from "/" one component at a time: no symbolic link (the
/// peer could swap one between this check and the service's use of the path),
/// no "." or "..", search permission for the peer on every directory. The
/// mode bits decide as the kernel would for that uid and those groups; an
/// object with an access ACL is refused unless the peer owns it (ACLs are not
/// evaluated here, and one could deny what the mode bits allow).
struct PeerAccess {
    let peer: PeerCredentials

    struct Refusal: Error, CustomStringConvertible {
        let description: String
    }

    /// What the walk found: the object, held open (O_PATH), and the directories above it.
    struct Walk {
        let descriptor: OwnedDescriptor
        let status: stat
        /// Each directory from "/" down to the object's parent, with the status of the entry below it.
        let parents: [(path: String, status: stat)]
        let path: String
    }

    static let read: mode_t = 4, write: mode_t = 2, search: mode_t = 1

    /// Whether the peer has every bit of `want` (read 4, write 2, search 1) on an object.
    func allows(_ st: stat, _ want: mode_t) -> Bool {
        let shift: mode_t = st.st_uid == peer.uid ? 6 : peer.isMember(of: st.st_gid) ? 3 : 0
        return (st.st_mode >> shift) & want == want
    }

    /// Opens `path` (O_PATH) as described above; the peer must have `want` on it.
    func walk(_ path: String, want: mode_t, what: String) throws -> Walk {
        guard path.hasPrefix("/") else { throw Refusal(description: "\(what) \(path) is not an absolute path") }
        let names = path.split(separator: "/").map(String.init)
        if let bad = names.first(where: { $0 == "." || $0 == ".." }) {
            throw Refusal(description: "\(what) \(path) has a '\(bad)' component; give the plain path")
        }
        var current = try open(AT_FDCWD, "/", path: "/")
        var st = try status(current, path: "/")
        var parents: [(String, stat)] = []
        var walked = ""
        for name in names {
            guard allows(st, Self.search) else {
                throw Refusal(description: "\(what) \(path): uid \(peer.uid) may not search \(walked.isEmpty ? "/" : walked)")
            }
            parents.append((walked.isEmpty ? "/" : walked, st))
            walked += "/" + name
            current = try open(current.raw, name, path: walked)
            st = try status(current, path: walked)
            if st.st_mode & S_IFMT == S_IFLNK {
                throw Refusal(description: "\(what) \(path): \(walked) is a symbolic link; give the path it leads to")
            }
        }
        if st.st_uid != peer.uid && alcub3_lgetxattr("/proc/self/fd/\(current.raw)", "system.posix_acl_access", nil, 0) > 0 {
            throw Refusal(description: "\(what) \(path) has an access ACL, which the service does not evaluate for uid \(peer.uid)")
        }
        guard allows(st, want) else {
            let needed = [(Self.read, "read"), (Self.write, "write"), (Self.search, "search")].filter { want & $0.0 != 0 }.map(\.1)
            throw Refusal(description: "\(what) \(path): uid \(peer.uid) may not \(needed.joined(separator: " and ")) it")
        }
        return Walk(descriptor: current, status: st, parents: parents, path: names.isEmpty ? "/" : walked)
    }

    /// A directory the peer may write and search whose place no one but root
    /// can change: the peer may not rename or replace any directory on the
    /// way (write on a parent, unless a sticky parent protects an entry the
    /// peer does not own). The service binds it writable into a sandbox by its
    /// path later, so the path must go on naming this directory.
    func shareableDirectory(_ path: String) throws -> Walk {
        let walk = try self.walk(path, want: Self.write | Self.search, what: "--share-cwd: the directory")
        guard walk.status.st_mode & S_IFMT == S_IFDIR else { throw Refusal(description: "--share-cwd: \(path) is not a directory") }
        let entries = walk.parents.map(\.status).dropFirst() + [walk.status]
        for ((parent, st), entry) in zip(walk.parents, entries) where allows(st, Self.write | Self.search) {
            let sticky = st.st_mode & S_ISVTX != 0
            if !sticky || st.st_uid == peer.uid || entry.st_uid == peer.uid {
                throw Refusal(description: "--share-cwd: uid \(peer.uid) can rename entries of \(parent), so \(path) could be "
                              + "swapped for another directory before the sandbox starts; share a directory whose parents only root can change")
            }
        }
        return walk
    }

    private func open(_ directory: Int32, _ name: String, path: String) throws -> OwnedDescriptor {
        let fd = openat(directory, name, ALCUB3_O_PATH | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw Refusal(description: "\(path): \(String(cString: strerror(errno)))") }
        return OwnedDescriptor(fd)
    }

    private func status(_ fd: OwnedDescriptor, path: String) throws -> stat {
        var st = stat()
        guard fstat(fd.raw, &st) == 0 else { throw Refusal(description: "\(path): \(String(cString: strerror(errno)))") }
        return st
    }

    /// Reopens an object found by `walk` for reading (O_PATH descriptors cannot be read).
    static func reopen(_ walk: Walk, flags: Int32) throws -> OwnedDescriptor {
        let fd = Glibc.open("/proc/self/fd/\(walk.descriptor.raw)", flags | O_CLOEXEC)
        guard fd >= 0 else { throw Refusal(description: "\(walk.path): \(String(cString: strerror(errno)))") }
        return OwnedDescriptor(fd)
    }
}
