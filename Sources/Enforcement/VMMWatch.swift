#if canImport(Glibc)
import Glibc
#endif
import Telemetry

/// The vm layer's escape signal: what the host's kernel sees the VMM (QEMU,
/// in the sandbox's cgroup) do once the guest runs. A VMM that execs, makes a
/// network or Unix connect, or opens a file for writing outside its own
/// directory is doing what QEMU never does for a guest; a guest that broke out
/// into it would. Events of the guest itself come with guest pids, which are
/// not the VMM's host pids.
///
/// A guest with a network (`guestNetwork`) reaches it through QEMU's own
/// sockets: the VMM's IP connects and datagrams are then the guest's traffic,
/// which the sandbox cgroup's network policy decides like any process's (and
/// reports when it refuses); only its Unix connects stay anomalies.
public struct VMMWatch: Sendable {
    /// Host pids of the VMM (QEMU and the sandbox init above it) once it runs.
    public let vmmPIDs: Set<Int32>
    /// The VMM's directory: its socket, console log and log may be written.
    public let directory: String
    public let sandboxCgroupID: UInt64
    public let guestNetwork: Bool

    public init(vmmPIDs: Set<Int32>, directory: String, sandboxCgroupID: UInt64, guestNetwork: Bool = false) {
        self.vmmPIDs = vmmPIDs
        self.directory = directory
        self.sandboxCgroupID = sandboxCgroupID
        self.guestNetwork = guestNetwork
    }

    public func findings(in batch: [TelemetryEvent]) -> [EscapeFinding] {
        batch.compactMap(finding(for:))
    }

    public func finding(for event: TelemetryEvent) -> EscapeFinding? {
        let evidence: String, pid: Int32, time: UInt64
        switch event {
        case .process(let e) where vmmPIDs.contains(e.origin.pid) && e.origin.sandboxCgroupID == sandboxCgroupID:
            guard case .exec(let filename, _, _, _, _) = e.activity else { return nil }
            (evidence, pid, time) = ("the VMM exec'ed \(filename)", e.origin.pid, e.origin.bootNanos)
        case .network(let e) where vmmPIDs.contains(e.origin.pid) && e.origin.sandboxCgroupID == sandboxCgroupID:
            guard e.operation == .connect || e.operation == .sendto || e.operation == .sendmsg else { return nil }
            if let path = e.remote.unixPath, path.hasPrefix(directory + "/") { return nil }
            if guestNetwork && e.remote.ip != nil { return nil }
            (evidence, pid, time) = ("the VMM made a \(e.operation.rawValue) to \(e.remote)", e.origin.pid, e.origin.bootNanos)
        case .file(let e) where vmmPIDs.contains(e.origin.pid) && e.origin.sandboxCgroupID == sandboxCgroupID:
            // A mkdir that found the directory there changed nothing: the sandbox's init makes
            // the VMM's path (/run, /run/alcub3, ...) and its records may arrive after this watch began.
            guard e.operation.changesFilesystem, !(e.operation == .mkdir && e.result == -Int64(EEXIST)),
                  !e.path.hasPrefix(directory + "/"), e.path != directory else { return nil }
            (evidence, pid, time) = ("the VMM wrote (\(e.operation.rawValue)) \(e.path)", e.origin.pid, e.origin.bootNanos)
        default:
            return nil
        }
        return EscapeFinding(technique: EscapeTechnique.named("vmm-anomaly")!, sandboxCgroupID: sandboxCgroupID, pid: pid,
                             evidence: evidence, refusedBy: "nothing: reported by the host's telemetry of the VMM",
                             observedNanos: time)
    }
}
