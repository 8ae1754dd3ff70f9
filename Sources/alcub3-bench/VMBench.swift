import Foundation
import KernelSupport
import Sandbox

/// Vm-level sandbox creation: time to the agent's first instruction.
/// alcub3's whole path (`alcub3 run --isolation-level vm -- true`: KVM probe,
/// image check, cgroup, QEMU in it, boot, the telemetry object sent and
/// loaded in the guest, the command exec'ed; alcub3 prints when) against
/// plain QEMU booting the same kernel and initramfs (the UNCLASSIFIED
/// policy's: the python runtime) with the same machine, memory, vCPUs and
/// user-mode network device, whose first user instruction is busybox's `poweroff -f`
/// (so its wall time is boot to first instruction, plus a power-off of a few ms).
func vmSection(alcub3: String) throws -> String {
    let guest = ".build/guest"
    let built = HostCommand.run(["/bin/sh", "scripts/build-guest.sh", guest])
    guard built.code == 0, let qemu = try? VMSandbox.locateQEMU() else {
        throw VMError("the vm section needs QEMU and the guest image (scripts/build-guest.sh): \(built.output)")
    }
    let accelerator = VMAccelerator.choose()
    let runs = 5
    let memory = "3654M", cpus = "2"  // what the UNCLASSIFIED policy gives a vm (4 GB less QEMU's 160 MiB, 2 vCPUs)
    let accel = accelerator.accelerator == .kvm ? ["-accel", "kvm", "-cpu", "host"] : ["-accel", "tcg,tb-size=64"]
    let plain = [qemu] + accel + ["-M", "microvm", "-m", memory, "-smp", cpus, "-nographic", "-nodefaults", "-no-user-config",
                                  "-no-reboot", "-kernel", guest + "/vmlinux", "-initrd", guest + "/initramfs-python.cpio", "-serial", "null",
                                  "-netdev", "user,id=net0,ipv6=off", "-device", "virtio-net-device,netdev=net0",
                                  "-append", "console=ttyS0 quiet panic=-1 tsc_early_khz=\(VMSandbox.hostTSCKHz()) tsc=reliable cryptomgr.notests rdinit=/bin/poweroff -- -f"]
    var hello: [Double] = [], exec: [Double] = [], total: [Double] = [], bare: [Double] = []
    for _ in 0..<runs {
        let start = DispatchTime.now().uptimeNanoseconds
        let r = HostCommand.run([alcub3, "run", "--isolation-level", "vm", "--guest-image", guest, "--", "true"])
        total.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
        // "alcub3: guest <release> up in 3.33 s (tcg), command exec'ed at 4.13 s"
        guard r.code == 0, let line = r.output.split(separator: "\n").first(where: { $0.contains(" up in ") }) else {
            throw VMError("alcub3 run --isolation-level vm failed (exit \(r.code)): \(r.output.suffix(300))")
        }
        let numbers = line.split(separator: " ").compactMap { Double($0) }
        guard numbers.count >= 2 else { throw VMError("unexpected line: \(line)") }
        hello.append(numbers[0] * 1000)
        exec.append(numbers[1] * 1000)
        bare.append(timeSpawn(plain))
    }
    let ratio = median(zip(exec, bare).map { $0 / $1 })
    log(String(format: "vm: alcub3 first instruction %.0f ms (hello %.0f ms, whole run %.0f ms), plain QEMU %.0f ms",
               median(exec), median(hello), median(total), median(bare)))
    return String(format: """
        ## Vm-level sandbox creation (`true` in the guest; %d interleaved runs, medians; %@)

        Debian's cloud kernel (PVH ELF) and the guest initramfs with the python runtime (46 MB, what the UNCLASSIFIED policy boots),
        `-M microvm`, %@ MiB, %@ vCPUs, a user-mode network device (virtio-net).

        | path | ms to the agent's first instruction | vs plain QEMU |
        |---|---:|---:|
        | alcub3 `run --isolation-level vm`: QEMU started in the sandbox cgroup to the guest agent's HELLO | %.0f | |
        | alcub3: to the command's exec (telemetry object sent and loaded in the guest first) | %.0f | %.2fx (target < 5 s: %@) |
        | alcub3: the whole run, `true` included (KVM probe, image check, cgroup, BPF on the host, power-off, clean-up) | %.0f | |
        | plain QEMU, same kernel, initramfs, machine: boot to `poweroff -f` as /init | %.0f | 1.00x |

        """, runs, accelerator.accelerator == .kvm ? "KVM" : "TCG: \(accelerator.reason)", String(memory.dropLast()), cpus,
        median(hello), median(exec), ratio, ok(median(exec) < 5000), median(total), median(bare))
}
