import Testing
@testable import Enforcement
@testable import Telemetry

/// The vm layer's escape signal: what QEMU's host pids do once the guest runs.
@Suite struct VMMWatchTests {
    let watch = VMMWatch(vmmPIDs: [4000, 4001], directory: "/run/alcub3/vms/sb-1", sandboxCgroupID: 9)

    func origin(_ pid: Int32) -> EventOrigin { EventOrigin(bootNanos: 1, sandboxCgroupID: 9, pid: pid, tid: pid, uid: 0) }

    func connect(_ pid: Int32, unix: String?) -> TelemetryEvent {
        .network(NetworkEvent(origin: origin(pid), operation: .connect, fd: 3, result: 0, socketType: 1, proto: 0,
                              remote: SocketAddress(family: unix == nil ? SocketAddress.inet : SocketAddress.unix,
                                                    address: unix == nil ? [10, 0, 0, 1] : [], port: unix == nil ? 443 : 0, unixPath: unix),
                              local: SocketAddress(family: 0, address: [], port: 0, unixPath: nil)))
    }

    func write(_ pid: Int32, _ path: String) -> TelemetryEvent {
        .file(FileEvent(origin: origin(pid), operation: .open, syscall: 257, result: 3, openFlags: 0o101, mode: 0o644,
                        ownerUID: 0, ownerGID: 0, fileID: 1, path: path, secondPath: nil))
    }

    @Test func theVMMsExecConnectAndWritesAreFindings() {
        let exec = TelemetryEvent.process(ProcessEvent(origin: origin(4001), activity: .exec(
            filename: "/bin/sh", arguments: ["sh"], parentPID: 4000, effectiveUID: 0, name: "qemu-system-x86")))
        for event in [exec, connect(4001, unix: nil), connect(4001, unix: "/run/docker.sock"), write(4001, "/etc/passwd")] {
            let finding = watch.finding(for: event)
            #expect(finding?.technique.id == "vmm-anomaly" && finding?.sandboxCgroupID == 9, "\(event)")
        }
    }

    @Test func itsOwnFilesAndTheGuestsEventsAreNot() {
        #expect(watch.finding(for: connect(4001, unix: "/run/alcub3/vms/sb-1/channel.sock")) == nil)
        #expect(watch.finding(for: write(4001, "/run/alcub3/vms/sb-1/console.log")) == nil)
        // Guest pids are not the VMM's host pids.
        #expect(watch.finding(for: write(140, "/etc/passwd")) == nil)
        #expect(watch.finding(for: connect(141, unix: nil)) == nil)
        // The sandbox init's mkdir of the VMM's existing path (its record may come late) changed nothing.
        let mkdir = TelemetryEvent.file(FileEvent(origin: origin(4000), operation: .mkdir, syscall: 83, result: -17, openFlags: 0,
                                                  mode: 0o700, ownerUID: 0, ownerGID: 0, fileID: 0, path: "/run/alcub3", secondPath: nil))
        #expect(watch.finding(for: mkdir) == nil)
    }

    /// With a guest network, QEMU's IP sockets carry the guest's traffic (the
    /// cgroup network policy decides them); a Unix connect is still an anomaly.
    @Test func aGuestNetworksIPTrafficIsNotButAUnixConnectStillIs() {
        let networked = VMMWatch(vmmPIDs: [4000, 4001], directory: "/run/alcub3/vms/sb-1", sandboxCgroupID: 9, guestNetwork: true)
        #expect(networked.finding(for: connect(4001, unix: nil)) == nil)
        #expect(networked.finding(for: connect(4001, unix: "/run/docker.sock"))?.technique.id == "vmm-anomaly")
        #expect(networked.finding(for: write(4001, "/etc/passwd"))?.technique.id == "vmm-anomaly")
    }
}
