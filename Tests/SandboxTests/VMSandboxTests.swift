import Policy
import Testing
@testable import Sandbox

/// The QEMU command line of the vm level: what the guest agent and the host
/// channel rely on, and room for a stronger level's devices.
@Suite struct VMSandboxTests {
    let image = GuestImage(directory: "/cache", kernel: "/cache/vmlinux", initramfs: "/cache/initramfs.cpio",
                           runtime: nil, kernelSHA256: "", initramfsSHA256: "", sources: [:])

    func arguments(_ spec: VMSpec) -> [String] {
        VMSandbox.qemuArguments(spec: spec, memoryMiB: 512, cpus: 2, socketPath: "/run/x/channel.sock",
                                consolePath: "/run/x/console.log", tscKHz: 2_300_000)
    }

    @Test func tcgMicrovmWithTheChannelAndNoNetwork() {
        let a = arguments(VMSpec(sandboxID: "sb-1", image: image, accelerator: .tcg, memoryLimitBytes: 1 << 30, cpuLimit: 1.5))
        let line = a.joined(separator: " ")
        #expect(line.hasPrefix("-accel tcg,tb-size=64 -M microvm -m 512M -smp 2 "))
        #expect(line.contains("-sandbox on") && line.contains("-nic none") && line.contains("-no-reboot"))
        #expect(line.contains("-kernel /cache/vmlinux -initrd /cache/initramfs.cpio"))
        #expect(line.contains("-device virtio-serial-device -chardev socket,id=alcub3,path=/run/x/channel.sock,reconnect=1 "
                              + "-device virtserialport,chardev=alcub3,name=org.alcub3.guest"))
        let append = a[a.firstIndex(of: "-append")! + 1]
        #expect(append.contains("tsc_early_khz=2300000") && append.contains("panic=-1") && append.contains("rdinit=/init"))
    }

    @Test func kvmAndAStrongerLevelsDevices() {
        var spec = VMSpec(sandboxID: "sb-1", image: image, accelerator: .kvm, memoryLimitBytes: 1 << 30, cpuLimit: 1)
        spec.kernelArguments = ["tpm_tis.force=1"]
        spec.extraArguments = ["-chardev", "socket,id=chrtpm,path=/run/x/tpm.sock", "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
                               "-device", "tpm-tis,tpmdev=tpm0"]
        let a = arguments(spec)
        #expect(Array(a.prefix(4)) == ["-accel", "kvm", "-cpu", "host"])
        #expect(Array(a.suffix(6)) == spec.extraArguments)
        #expect(a[a.firstIndex(of: "-append")! + 1].hasSuffix(" tpm_tis.force=1"))
    }

    @Test func aGuestNetworkIsUserModeOnAVirtioNetDevice() {
        var spec = VMSpec(sandboxID: "sb-1", image: image, accelerator: .tcg, memoryLimitBytes: 1 << 30, cpuLimit: 1)
        spec.network = true
        let a = arguments(spec)
        let line = a.joined(separator: " ")
        #expect(line.contains("-netdev user,id=net0,ipv6=off -device virtio-net-device,netdev=net0"))
        #expect(!a.contains("-nic"))
        #expect(a[a.firstIndex(of: "-append")! + 1].contains(" alcub3.net=user"))
    }

    /// The guest gets a network when a process of the same policy could reach
    /// beyond its loopback: the network capability and a class other than air-gapped.
    @Test func guestNetworkFollowsThePolicy() {
        var policy = SandboxPolicy.builtIn(.unclassified)
        policy.network = .any
        policy.capabilities = [.network]
        #expect(VMSpec.guestNetwork(for: policy))
        policy.capabilities = [.python]
        #expect(!VMSpec.guestNetwork(for: policy))
        policy.capabilities = [.network]
        policy.network = .none
        #expect(!VMSpec.guestNetwork(for: policy))
        policy.network = .listed(cidrs: [], ports: [])
        #expect(!VMSpec.guestNetwork(for: policy))
        #expect(GuestRuntime.needed(by: [.network, .python]) == .python)
        #expect(GuestRuntime.needed(by: [.network]) == nil)
    }
}
