import Foundation
import Testing

/// H4 and L6 under `alcub3 run`: the sandbox's own /dev hides the host's
/// nodes, but a node reachable elsewhere still names a host device: here one
/// the operator left, open to everyone, on the host's root filesystem (the
/// working directory is a nodev overlay, and a root-only node is refused to
/// the agent's uid before the filter is asked). The cgroup device filter
/// refuses it by its number, and the refusal is an alert.
@Suite(.serialized, .enabled(if: isRoot, "needs root: BPF, cgroups, losetup, mknod"))
struct DeviceFilterRunTests {
    @Test func aBlockDeviceNodeInTheWorkspaceIsRefusedAndReported() throws {
        let dir = NSTemporaryDirectory() + "alcub3-devrun-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let canary = "HIDDEN-ROOT-FILE-CANARY"
        try Data((canary + String(repeating: "\0", count: 4096 - canary.count)).utf8).write(to: URL(fileURLWithPath: dir + "/img"))
        let loop = try alcub3Shell(["losetup", "-f", "--show", dir + "/img"], in: dir).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        try #require(loop.hasPrefix("/dev/loop"), "losetup gave no loop device")
        defer { _ = try? alcub3Shell(["losetup", "-d", loop], in: dir) }
        var st = stat()
        try #require(stat(loop, &st) == 0)
        let nodes = "/opt/alcub3-devrun-\(getpid())"
        try FileManager.default.createDirectory(atPath: nodes, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: nodes) }
        try #require(mknod(nodes + "/blk", S_IFBLK | 0o666, st.st_rdev) == 0, "mknod: errno \(errno)")
        try #require(mknod(nodes + "/vcs", S_IFCHR | 0o666, makedevice(7, 1)) == 0, "mknod: errno \(errno)")
        chmod(nodes + "/blk", 0o666)
        chmod(nodes + "/vcs", 0o666)
        let script = """
            import os
            os.chdir('\(nodes)')
            for p in ['blk', 'vcs', '/dev/null', '/dev/urandom']:
                try:
                    fd = os.open(p, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK); print(p, 'OPEN', os.read(fd, 23)); os.close(fd)
                except OSError as e:
                    print(p, 'ERR', e.errno)
            """
        let r = try alcub3(["run", "--format", "json", "--agent-id", "devrun-\(getpid())", "--", "/usr/bin/python3", "-c", script], in: dir)
        #expect(r.code == 0, "\(r.stderr)")
        // With --format json the program's own lines are on stderr.
        #expect(!(r.stdout + r.stderr).contains(canary), "the host block device was read: \(r.stderr.prefix(2000))")
        #expect(r.stderr.contains("blk ERR 1") && r.stderr.contains("vcs ERR 1"), "\(r.stderr.prefix(2000))")
        #expect(r.stderr.contains("/dev/null OPEN") && r.stderr.contains("/dev/urandom OPEN"))
        let alerts = r.jsonLines.filter { $0["class_uid"] as? Int == 2004 }
        let devices = alerts.compactMap { ($0["unmapped"] as? [String: Any])?["technique"] as? String == "device-access" ? $0["message"] as? String : nil }
        let minor = loop.dropFirst("/dev/loop".count)
        #expect(devices.contains("device-access: read of block 7:\(minor) refused with EPERM"), "\(devices)")
        #expect(devices.contains("device-access: read of char 7:1 refused with EPERM"), "\(devices)")
        // Nothing left (checked for this run only: other sandboxes may run beside it).
        let sandbox = try #require(r.jsonLines.first { $0["record"] as? String == "run_summary" }?["sandbox_id"] as? String)
        #expect(!FileManager.default.fileExists(atPath: "/sys/fs/cgroup/unified/alcub3/" + sandbox))
    }

    /// The service: the filter's link is pinned with the sandbox, a refusal
    /// is a stored finding, and both hold across a kill -9 of the service
    /// (the restarted one takes the link over); terminate removes the link
    /// and its pin, and a stop with no sandbox left removes the pin directory.
    @Test func theServicePinsTheFilterAndReportsThroughARestart() throws {
        let service = try TestService()
        defer { service.tearDown() }
        let canary = "HIDDEN-ROOT-FILE-CANARY"
        try Data((canary + String(repeating: "\0", count: 4096 - canary.count)).utf8).write(to: URL(fileURLWithPath: service.root + "/img"))
        let loop = try alcub3Shell(["losetup", "-f", "--show", service.root + "/img"], in: "/").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        try #require(loop.hasPrefix("/dev/loop"), "losetup gave no loop device")
        defer { _ = try? alcub3Shell(["losetup", "-d", loop], in: "/") }
        var st = stat()
        try #require(stat(loop, &st) == 0)
        try #require(mknod(service.root + "/blk", S_IFBLK | 0o644, st.st_rdev) == 0, "mknod: errno \(errno)")
        try service.start()
        let root = service.root
        let read = "head -c 23 \(root)/blk > \(root)/out-$1.txt 2>&1; echo $? >> \(root)/out-$1.txt"
        let created = try service.run(["sandbox", "create", "--agent-id", "dev-svc", "--share-cwd", "--format", "json", "--",
                                       "/bin/sh", "-c", "sh -c '\(read)' x 1; sleep 60"], in: service.root)
        #expect(created.code == 0, "\(created.stderr)")
        let record = try #require(try JSONSerialization.jsonObject(with: Data(created.stdout.utf8)) as? [String: Any], "\(created.stdout)")
        let sandbox = try #require(record["sandboxID"] as? String, "\(record)")
        let pin = service.pinDirectory + "/dev/links/" + sandbox
        #expect(FileManager.default.fileExists(atPath: pin))
        let cgroupID = try #require(record["cgroupID"] as? Int, "\(record)")
        let links = try Self.deviceLinks().filter { $0.cgroupID == cgroupID }.map(\.id)
        #expect(links.count == 1, "device links on the sandbox's cgroup: \(links)")

        func findings() throws -> [Substring] {
            let tail = try service.run(["events", "tail", "--agent-id", "dev-svc", "--lines", "100000"])
            return tail.stdout.split(separator: "\n").filter { $0.contains("\"class_uid\":2004") && $0.contains("\"technique\":\"device-access\"") }
        }
        func eventually(_ count: Int) throws -> Bool {
            for _ in 0..<100 {
                if try findings().count >= count { return true }
                usleep(100_000)
            }
            return false
        }
        #expect(try eventually(1), "no stored device-access finding: \(service.log().suffix(1000))")
        let output = (try? String(contentsOfFile: service.root + "/out-1.txt", encoding: .utf8)) ?? ""
        #expect(!output.contains(canary) && output.hasSuffix("1\n"), "\(output)")

        service.kill9()
        #expect(FileManager.default.fileExists(atPath: pin), "the link's pin went with the service")
        try service.start()
        let again = try service.run(["sandbox", "exec", "--agent-id", "dev-svc", "--", "/bin/sh", "-c", read, "x", "2"], in: service.root)
        #expect(again.code == 0, "\(again.stderr)")
        let second = (try? String(contentsOfFile: service.root + "/out-2.txt", encoding: .utf8)) ?? ""
        #expect(!second.contains(canary) && second.hasSuffix("1\n"), "after the restart: \(second)")
        #expect(try eventually(2), "the refusal after the restart was not reported")

        #expect(try service.run(["sandbox", "terminate", "--agent-id", "dev-svc", "--force"]).code == 0)
        #expect(!FileManager.default.fileExists(atPath: pin))
        // The kernel frees a detached link once its last reference goes, from a work queue.
        var left = links
        for _ in 0..<100 where !left.isEmpty {
            usleep(50_000)
            left = try Self.deviceLinks().map(\.id).filter { links.contains($0) }
        }
        #expect(left.isEmpty, "the sandbox's device filter link outlived it")
        service.stop()
        #expect(!FileManager.default.fileExists(atPath: service.pinDirectory + "/dev"))
    }

    /// The host's cgroup_device links (bpftool; cgroup id 0 once detached).
    static func deviceLinks() throws -> [(id: Int, cgroupID: Int)] {
        let listing = try alcub3Shell(["bpftool", "link", "show", "-j"], in: "/").stdout
        let links = try #require(try JSONSerialization.jsonObject(with: Data(listing.utf8)) as? [[String: Any]], "\(listing)")
        return links.filter { $0["attach_type"] as? String == "cgroup_device" }
            .map { ($0["id"] as? Int ?? -1, $0["cgroup_id"] as? Int ?? 0) }
    }

    /// (major << 8 | minor) for small numbers, as the kernel's old_encode_dev and glibc's makedev agree there.
    func makedevice(_ major: UInt64, _ minor: UInt64) -> dev_t { dev_t((major << 8) | minor) }
}
