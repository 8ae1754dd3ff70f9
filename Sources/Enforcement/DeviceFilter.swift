#if canImport(Glibc)
import Glibc
#endif
import CAlcub3
import CLibBPF
import Foundation
import KernelSupport
import Sandbox
import Synchronization
import Telemetry

/// The cgroup device filter (bpf/devfilter.bpf.c): a sandbox may open or
/// create only the devices of a minimal /dev (null, zero, full, random,
/// urandom, tty, ptmx, the pty slaves; /dev/kvm for a vm level's QEMU). Any
/// other device, a host disk or loop device, a console, /dev/kmsg, gets EPERM
/// in the kernel whatever node the sandbox reaches it through, and the
/// refusal comes out of the telemetry's ring buffer as a `.device` event.
/// A second layer under the sandbox's own /dev, which only hides nodes.
public final class DeviceFilter: Sendable {
    private let object: BPFObject
    private let sandboxes: BPFMap
    private let pinDirectory: String?
    private let links = Mutex<[UInt64: BPFLink]>([:])

    static let program = "alcub3_device_filter"
    static let map = "devfilter_sandboxes"

    /// - Parameters:
    ///   - eventsRingFD: the telemetry's events ring buffer, where refusals are
    ///     sent; nil: the object's own, which nobody reads (refusals are still counted).
    ///   - pinDirectory: the service's. The map and each sandbox's link are
    ///     pinned there, so sandboxes stay held while the service is down; a
    ///     restarted service moves the pinned links to its own program (which
    ///     sends to its telemetry's ring buffer) and drops those of removed cgroups.
    public init(rootLevel: UInt32, eventsRingFD: Int32?, pinDirectory: String? = nil) throws {
        let object = try BPFObject(name: "devfilter", image: BPFObjectBytes.decoded(BPFObjectBytes.devfilter))
        try object.setReadOnlyGlobal("alcub3_root_level", to: rootLevel)
        if let eventsRingFD { try object.reuseMap("events", fd: eventsRingFD) }
        if let pinDirectory {
            let fd = bpf_obj_get(pinDirectory + "/maps/" + Self.map)
            if fd >= 0 {
                defer { close(fd) }
                try object.reuseMap(Self.map, fd: fd)
            }
        }
        try object.load()
        self.object = object
        self.pinDirectory = pinDirectory
        sandboxes = BPFMap(fd: try object.mapFD(Self.map), name: Self.map)
        if let pinDirectory {
            try BPFFilesystem.ensureMounted()
            for sub in ["", "/maps", "/links"] where mkdir(pinDirectory + sub, 0o700) != 0 && errno != EEXIST {
                throw SystemError(errno: errno, call: "mkdir", context: pinDirectory + sub)
            }
            if !FileIO.exists(pinDirectory + "/maps/" + Self.map) { try object.pinMap(Self.map, at: pinDirectory + "/maps/" + Self.map) }
            try adoptPinnedLinks(in: pinDirectory + "/links")
        }
    }

    /// Links a previous service pinned: those whose cgroup is gone are
    /// unpinned (the kernel detached them with it), the others run this
    /// object's program from now on, with no moment unfiltered.
    /// Map entries without a live link are of those sandboxes: dropped too.
    private func adoptPinnedLinks(in directory: String) throws {
        let programFD = try object.programFD(Self.program)
        var held: Set<UInt64> = []
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            let path = directory + "/" + name
            let fd = bpf_obj_get(path)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            var info = bpf_link_info()
            var length = UInt32(MemoryLayout<bpf_link_info>.size)
            guard bpf_obj_get_info_by_fd(fd, &info, &length) == 0 else {
                throw BPFError(errno: errno, operation: "bpf_obj_get_info_by_fd", subject: path)
            }
            if info.cgroup.cgroup_id == 0 {
                unlink(path)
                continue
            }
            let rc = bpf_link_update(fd, programFD, nil)
            if rc < 0 { throw BPFError(errno: -rc, operation: "bpf_link_update", subject: path) }
            held.insert(info.cgroup.cgroup_id)
        }
        for key in sandboxes.keys(UInt64.self) where !held.contains(key) { sandboxes.delete(key: key) }
    }

    /// Holds the sandbox from now on: its map entry first (the program finds
    /// its allowances and counters there), then the program on its cgroup.
    public func apply(to cgroup: SandboxCgroup, allowKVM: Bool = false) throws {
        let flags = allowKVM ? UInt32(ALCUB3_DEVICE_ALLOW_KVM) : 0
        try sandboxes.update(key: cgroup.id, value: alcub3_device_sandbox(flags: flags, _pad: 0, refused: 0, unreported: 0))
        if links.withLock({ $0[cgroup.id] != nil }) { return }
        let directory = try cgroup.openDirectory()
        let link = try object.attachCgroup(Self.program, cgroupFD: directory.raw)
        if let pinDirectory { try link.pin(at: "\(pinDirectory)/links/\(cgroup.name)") }
        links.withLock { $0[cgroup.id] = link }
    }

    /// Refusals so far, as the kernel counted them; `unreported` found the ring buffer full.
    public func refusals(sandboxCgroupID: UInt64) -> (refused: UInt64, unreported: UInt64) {
        let value = sandboxes.lookup(key: sandboxCgroupID, as: alcub3_device_sandbox.self)
        return (value?.refused ?? 0, value?.unreported ?? 0)
    }

    /// Detaches and unpins the sandbox's program and forgets it; returns its refusal counts.
    @discardableResult
    public func remove(_ cgroup: SandboxCgroup) -> (refused: UInt64, unreported: UInt64) {
        let counts = refusals(sandboxCgroupID: cgroup.id)
        if let pinDirectory {
            // Detached now: dropping the pin alone would release the link from a work queue, later.
            let path = "\(pinDirectory)/links/\(cgroup.name)"
            let fd = bpf_obj_get(path)
            if fd >= 0 {
                _ = bpf_link_detach(fd)
                close(fd)
            }
            unlink(path)
        }
        _ = links.withLock { $0.removeValue(forKey: cgroup.id) }
        sandboxes.delete(key: cgroup.id)
        return counts
    }

    /// Removes a pin directory (when no sandbox is left to hold).
    public static func removePins(_ dir: String) {
        for sub in ["/links", "/maps"] {
            for name in (try? FileManager.default.contentsOfDirectory(atPath: dir + sub)) ?? [] { unlink(dir + sub + "/" + name) }
            rmdir(dir + sub)
        }
        rmdir(dir)
    }

    /// For `alcub3 doctor`: whether the real program loads here.
    public static func probe(rootLevel: UInt32 = 1) -> KernelProbe.Result {
        let name = "cgroup device filter"
        do {
            _ = try DeviceFilter(rootLevel: rootLevel, eventsRingFD: nil)
            return .init(name: name, available: true,
                         detail: "loads: sandboxes open only null, zero, full, random, urandom, tty, ptmx, pts (and kvm at the vm level)",
                         errno: nil, fallback: nil)
        } catch let error as BPFError {
            return .init(name: name, available: false, detail: "refused at load", errno: SystemError.name(of: error.errno),
                         fallback: "the sandbox's /dev holds no other node, but a node reached elsewhere opens")
        } catch {
            return .init(name: name, available: false, detail: "\(error)", errno: nil, fallback: nil)
        }
    }
}
