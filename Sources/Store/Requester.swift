#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Who asked for an audited action: stored with each audit record
/// (`requester_json`, covered by its hash and MAC), so a record says which
/// process of which user did it, not only "the service".
public struct Requester: Codable, Sendable, Equatable {
    public enum Channel: String, Codable, Sendable {
        /// alcub3 itself: the service's own decisions (a response to a finding,
        /// a sandbox that ended, retention, the start of keyed records).
        case service
        /// A client of the control socket; uid, gid and pid are the kernel's
        /// word (SO_PEERCRED), not the client's.
        case socket
    }

    public var channel: Channel
    public var uid: UInt32
    public var gid: UInt32
    public var pid: Int32
    /// The process's cgroup v2 path when the request came; nil when it could
    /// not be read (the process had already gone).
    public var cgroup: String?
    /// Whether the process ran inside an alcub3 sandbox; nil when unknown
    /// (`cgroup` unreadable).
    public var sandboxed: Bool?
    /// The sandbox it ran in, when sandboxed.
    public var sandboxID: String?

    public init(channel: Channel, uid: UInt32, gid: UInt32, pid: Int32, cgroup: String?, sandboxed: Bool?, sandboxID: String?) {
        self.channel = channel
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self.cgroup = cgroup
        self.sandboxed = sandboxed
        self.sandboxID = sandboxID
    }

    /// This process, acting on its own.
    public static var service: Requester {
        Requester(channel: .service, uid: geteuid(), gid: getegid(), pid: getpid(), cgroup: nil, sandboxed: false, sandboxID: nil)
    }

    /// The audit record's `actor`: a one-line summary of the requester.
    public var actor: String {
        switch channel {
        case .service:
            return "service"
        case .socket:
            let place = switch sandboxed {
            case true?: " in sandbox \(sandboxID ?? "?")"
            case false?: ""
            case nil: " (cgroup unknown)"
            }
            return "uid \(uid) pid \(pid)\(place)"
        }
    }

    /// The stored form: JSON with sorted keys.
    public var json: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        // Every field is a plain value: encoding cannot fail.
        return String(decoding: (try? encoder.encode(self)) ?? Data("{}".utf8), as: UTF8.self)
    }
}
