#if canImport(Glibc)
import Glibc
#endif
import CAlcub3
import KernelSupport
import Policy

/// The user namespace of one process-level sandbox: its uid and gid 0 are
/// host id `hostRoot`, the first of 65,536 ids of a slot of alcub3's range,
/// so the agent owns nothing on the host and no root-only file, socket or
/// device opens for it.
///
/// The range: 256 slots of 65,536 ids from 0x70000000 (1879048192) to
/// 0x70FFFFFF, above systemd's container range (which ends at 0x6FFFFFFF)
/// and below its foreign range (0x7FFE0000) and 2^31. A slot is reserved by
/// an exclusive flock on /run/alcub3-uids/<slot>, taken here and then held
/// by the sandbox's init for its whole life (ProcessSpec.userNamespace), so
/// the kernel releases it exactly when the sandbox ends, whoever started it
/// (`alcub3 run` or the service, before or after a restart).
public final class UserNamespace: Sendable {
    public static let firstID: UInt32 = 0x7000_0000
    public static let slotSize: UInt32 = 0x1_0000
    public static let slots: UInt32 = 256
    static let lockDirectory = "/run/alcub3-uids"

    public let slot: UInt32
    /// The host uid (and gid) of the sandbox's root.
    public let hostRoot: UInt32
    let namespace: OwnedDescriptor
    /// The namespace writable directories are idmapped with: their owner on
    /// disk is the agent's root inside, and what it creates there is the
    /// owner's. nil when there is no writable directory.
    let idmap: OwnedDescriptor?
    let lock: OwnedDescriptor

    /// Reserves a free slot and makes the namespace. `owner`: the uid and gid
    /// of the directories the agent may write (the caller's working directory).
    public init(owner: (uid: UInt32, gid: UInt32)?) throws {
        let (slot, lock) = try Self.reserveSlot()
        let root = Self.firstID + slot * Self.slotSize
        let namespace = try Self.create(uidInside: 0, gidInside: 0, outside: root, count: Self.slotSize)
        self.slot = slot
        self.hostRoot = root
        self.lock = lock
        self.namespace = namespace
        // A root-owned directory maps through the sandbox's own namespace (on-disk 0 is
        // its root); any other owner through a one-id namespace of its own.
        if let owner, owner.uid != 0 || owner.gid != 0 {
            self.idmap = try Self.create(uidInside: owner.uid, gidInside: owner.gid, outside: root, count: 1)
        } else {
            self.idmap = nil
        }
        self.idmapsThroughSandbox = owner.map { $0.uid == 0 && $0.gid == 0 } ?? false
    }

    /// The idmap is the sandbox's own namespace (a root-owned directory).
    let idmapsThroughSandbox: Bool

    var idmapDescriptor: Int32 { idmap?.raw ?? (idmapsThroughSandbox ? namespace.raw : -1) }

    static func create(uidInside: UInt32, gidInside: UInt32, outside: UInt32, count: UInt32) throws -> OwnedDescriptor {
        let fd = alcub3_userns_create(uidInside, outside, gidInside, outside, count)
        if fd < 0 { throw SystemError(errno: -fd, call: "creating a user namespace", context: "host ids \(outside)+\(count)") }
        return OwnedDescriptor(fd)
    }

    /// The first slot whose lock nobody holds, starting at a random one.
    static func reserveSlot() throws -> (UInt32, OwnedDescriptor) {
        if mkdir(lockDirectory, 0o700) != 0 && errno != EEXIST {
            throw SystemError(errno: errno, call: "mkdir", context: lockDirectory)
        }
        let directory = try OwnedDescriptor(path: lockDirectory, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
        var st = stat()
        guard fstat(directory.raw, &st) == 0, st.st_uid == 0, st.st_mode & 0o022 == 0 else {
            throw SystemError(errno: EPERM, call: "checking the uid slot directory (root, not group or world writable)",
                              context: lockDirectory)
        }
        let start = UInt32.random(in: 0..<slots)
        for step in 0..<slots {
            let slot = (start + step) % slots
            let fd = openat(directory.raw, String(slot), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw SystemError(errno: errno, call: "openat", context: "\(lockDirectory)/\(slot)") }
            if flock(fd, LOCK_EX | LOCK_NB) == 0 { return (slot, OwnedDescriptor(fd)) }
            close(fd)
        }
        throw SystemError(errno: EAGAIN, call: "reserving a uid range", context: "all \(slots) slots of \(lockDirectory) are in use")
    }

    /// Whether this kernel lets alcub3 make a user namespace (for doctor and the policy).
    public static func probe() -> SystemError? {
        let fd = alcub3_userns_create(0, firstID, 0, firstID, 1)
        if fd < 0 { return SystemError(errno: -fd, call: "creating a user namespace") }
        close(fd)
        return nil
    }
}

extension UserNamespace {
    /// The namespace of a new sandbox under `policy` whose writable directory
    /// is `writable` (nil: none). When the kernel refuses user namespaces the
    /// sandbox runs as uid 0 without capabilities, with `warning` saying so,
    /// except at TOP_SECRET, which refuses the sandbox instead.
    public static func forSandbox(_ policy: SandboxPolicy, writable: String?) throws -> (UserNamespace?, warning: String?) {
        let required = policy.classification == .topSecret
        var owner: (uid: UInt32, gid: UInt32)?
        if let writable {
            var st = stat()
            guard stat(writable, &st) == 0 else { throw SystemError(errno: errno, call: "stat", context: writable) }
            owner = (st.st_uid, st.st_gid)
        }
        do {
            return (try UserNamespace(owner: owner), nil)
        } catch let error as SystemError where !required {
            return (nil, "no user namespace (\(error)): the agent runs as uid 0 without capabilities")
        }
    }
}
