import Foundation
import Testing

/// Processes of swtpm started for a sandbox (their state lives under /run/alcub3/vms).
func swtpmLeftovers() -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap(Int32.init).filter { pid in
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
        let words = String(decoding: data, as: UTF8.self)
        return words.hasPrefix("/usr/bin/swtpm") && words.contains("/run/alcub3/vms/")
    }.map { "swtpm pid \($0)" }
}

/// The hardware level on the real machine: a vm with swtpm and measured boot.
@Suite(.serialized, .enabled(if: isRoot, "needs root: BPF, cgroups, QEMU, swtpm"))
struct HardwareRunTests {
    /// The guest's TPM holds, in PCR 9, exactly what the host measured: the
    /// command reads the PCR from inside and it is the value alcub3 announced.
    /// The hardware level has no network, even under a policy that allows one.
    @Test func theGuestsPCRIsTheHostsReplayAndNothingIsLeft() throws {
        let before = HostState.baseline()
        let r = try alcub3(["run", "--isolation-level", "hardware", "--guest-image", VMGuest.directory, "--",
                            "sh", "-c", "cat /sys/class/tpm/tpm0/pcr-sha256/9; ls /sys/class/net; exit 5"])
        #expect(r.code == 5, "\(r.stderr)")
        #expect(r.stdout.contains("lo\n") && !r.stdout.contains("eth0"), "\(r.stdout)")
        #expect(r.stderr.contains(", no network"), "\(r.stderr.prefix(400))")
        let announced = try #require(r.stderr.range(of: #"PCR 9 expected [0-9a-f]{16}"#, options: .regularExpression).map { String(r.stderr[$0].suffix(16)) },
                                     "\(r.stderr.prefix(600))")
        let inGuest = r.stdout.split(separator: "\n").first { $0.count == 64 }.map { $0.lowercased() }
        #expect(inGuest?.hasPrefix(announced) == true, "guest PCR \(inGuest ?? "none") vs announced \(announced)")
        // M8: believed from the TPM's signed quote over a fresh nonce, not from the guest's word.
        #expect(r.stderr.contains("measured boot attested: the guest's TPM quoted PCR 9 = \(announced)"), "\(r.stderr.prefix(800))")
        #expect(vmLeftovers().isEmpty && swtpmLeftovers().isEmpty && HostState.settled(like: before), "\(vmLeftovers() + swtpmLeftovers())")
    }

    /// M8 end to end: the TPM the guest talks to is not the one whose key the host derived (its
    /// state replaced between the host's derivation and QEMU's start: another TPM's seeds). The guest
    /// extends and quotes honestly, and the PCR is right, but the signature is not the sandbox TPM's:
    /// refused before OBJECT and RUN, a measured-boot-mismatch finding, the command never runs.
    @Test func aQuoteByAnotherTPMThanTheHostProvisionedIsRefused() throws {
        let dir = NSTemporaryDirectory() + "alcub3-swtpm-swap-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let wrapper = dir + "/swtpm"
        try """
            #!/bin/sh
            # QEMU's swtpm (--ctrl) starts on an emptied state: a newly manufactured TPM.
            case "$*" in *--ctrl*) for a; do case "$a" in dir=*) rm -f "${a#dir=}"/tpm2-00.permall ;; esac; done ;; esac
            exec /usr/bin/swtpm "$@"

            """.write(toFile: wrapper, atomically: true, encoding: .utf8)
        chmod(wrapper, 0o755)
        let before = HostState.baseline()
        let r = try alcub3(["run", "--isolation-level", "hardware", "--guest-image", VMGuest.directory, "--", "sh", "-c", "echo THE-COMMAND-RAN"],
                           environment: ["ALCUB3_SWTPM": wrapper])
        #expect(r.code == 76, "\(r.stderr)")
        #expect(r.stderr.contains("attestation refused") && r.stderr.contains("not signed by the attestation key"), "\(r.stderr)")
        #expect(r.stdout.contains("measured-boot-mismatch"), "the hardware layer's finding: \(r.stdout)")
        #expect(!r.stdout.contains("THE-COMMAND-RAN"), "the command ran: \(r.stdout)")
        #expect(vmLeftovers().isEmpty && swtpmLeftovers().isEmpty && HostState.settled(like: before), "\(vmLeftovers() + swtpmLeftovers())")
    }

    /// A guest image changed by one byte is refused by the measured boot before QEMU or swtpm start.
    @Test func anAlteredInitramfsFailsTheMeasuredBoot() throws {
        let copy = try VMGuest.copyWithInitramfsByteFlipped(at: 8192)
        defer { try? FileManager.default.removeItem(atPath: copy) }
        let before = HostState.baseline()
        let r = try alcub3(["run", "--isolation-level", "hardware", "--guest-image", copy, "--", "true"])
        #expect(r.code == 74, "\(r.stderr)")
        #expect(r.stderr.contains("measured boot refused the guest") && r.stderr.contains("initramfs-python.cpio"), "\(r.stderr)")
        #expect(r.stdout.contains("measured-boot-mismatch"), "the hardware layer's finding: \(r.stdout)")
        #expect(vmLeftovers().isEmpty && swtpmLeftovers().isEmpty && HostState.settled(like: before))
    }

    /// swtpm missing: one line naming it, nothing started, nothing left.
    @Test func aMissingSwtpmIsOneLineAndLeavesNothing() throws {
        let before = HostState.baseline()
        let r = try alcub3(["run", "--isolation-level", "hardware", "--guest-image", VMGuest.directory, "--", "true"],
                           environment: ["ALCUB3_SWTPM": "/nonexistent/swtpm"])
        #expect(r.code == 76 && r.stderr.contains("needs swtpm") && r.stderr.contains("/nonexistent/swtpm"), "\(r.stderr)")
        #expect(r.stderr.split(separator: "\n").count == 1, "more than one line: \(r.stderr)")
        #expect(vmLeftovers().isEmpty && swtpmLeftovers().isEmpty && HostState.settled(like: before))
    }

    /// Through the service: created with measured boot (audited with its PCR), the guest's exec in events tail,
    /// terminated with no QEMU, no swtpm and no cgroup left.
    @Test func aServiceHardwareSandboxIsMeasuredMonitoredAndRemoved() throws {
        setenv("ALCUB3_GUEST_DIR", VMGuest.directory, 1)
        let service = try TestService()
        defer { service.tearDown() }
        let before = HostState.baseline()
        try service.start()
        let created = try service.run(["sandbox", "create", "--agent-id", "hw-1", "--isolation-level", "hardware", "--verbose", "--",
                                       "sh", "-c", "echo measured; sleep 30"])
        #expect(created.code == 0, "create: \(created.stderr)")
        #expect((created.stdout + created.stderr).contains("hardware: measured boot"), "\(created.stdout)")
        #expect(swtpmLeftovers().count == 1, "one swtpm for the sandbox: \(swtpmLeftovers())")
        var tail = ""
        for _ in 0..<100 {
            tail = try service.run(["events", "tail", "--agent-id", "hw-1", "--lines", "5000"]).stdout
            if tail.contains("echo measured") { break }
            usleep(100_000)
        }
        #expect(tail.contains("\"Launch\"") && tail.contains("echo measured"), "no exec of the guest's sh")
        #expect(try service.run(["sandbox", "terminate", "--agent-id", "hw-1", "--force"]).code == 0)
        service.stop()
        #expect(vmLeftovers().isEmpty && swtpmLeftovers().isEmpty, "\(vmLeftovers() + swtpmLeftovers())")
        #expect(HostState.settled(like: before), "left behind after the sandbox ended")
    }
}
