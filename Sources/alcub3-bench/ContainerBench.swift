import Foundation
import KernelSupport
import Policy
import Sandbox

/// Container-level sandbox creation: `true` in the busybox test image, alcub3's
/// container start against `runc run` alone on the same bundle (the same
/// config.json and root filesystem), and alcub3's whole path with the image
/// validated and unpacked each time.
func containerSection(layout: CgroupLayout) throws -> String {
    let built = HostCommand.run(["/bin/sh", "scripts/build-test-image.sh", ".build/images"])
    guard built.code == 0, let digest = ImageDigest(built.output.trimmingCharacters(in: .whitespacesAndNewlines)),
          let runc = try? ContainerSandbox.locateRuntime() else {
        throw ContainerError("the container section needs runc and the test image (scripts/build-test-image.sh): \(built.output)")
    }
    let image = ".build/images/busybox"
    // Air-gapped: a namespace of its own with loopback only, no veth (the network's set-up is not runc's).
    var policy = SandboxPolicy.builtIn(.topSecret)
    policy.isolation = .container
    let limits = ResourceLimits(cpuCores: policy.cpuLimit, memoryBytes: policy.memoryLimitBytes, pids: policy.pidsLimit)
    let devNull = try OwnedDescriptor(path: "/dev/null", flags: O_WRONLY)

    func sandbox(_ name: String) throws -> (SandboxCgroup, AppliedLimits) {
        let cgroup = try SandboxCgroup(layout: layout, name: name)
        return (cgroup, try cgroup.apply(limits))
    }
    func spec(_ id: String) -> ContainerSpec {
        var spec = ContainerSpec(sandboxID: id, image: image, imageDigest: digest, arguments: ["true"], policy: policy)
        spec.stdio = (-1, devNull.raw, devNull.raw)
        return spec
    }
    func elapsed(_ body: () throws -> Void) rethrows -> Double {
        let start = DispatchTime.now().uptimeNanoseconds
        try body()
        return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
    }

    // One bundle, prepared once, for the start-only comparison.
    let sharedID = "sb-benchctr\(getpid() % 10)"
    let (sharedCgroup, sharedLimits) = try sandbox(sharedID)
    let container = try ContainerSandbox(spec: spec(sharedID), cgroup: sharedCgroup)
    defer {
        ContainerSandbox.remove(sandboxID: sharedID, layout: layout)
        try? sharedCgroup.destroy()
        SandboxCgroup.removeV1(sharedLimits)
    }
    func alcub3Start() throws -> Double {
        try elapsed {
            _ = try container.run()
            ContainerSandbox.removeRuntimeState(sandboxID: sharedID, layout: layout)
        }
    }
    // runc alone: `runc run` (create, start, wait and delete in one runtime process).
    func runcRun() -> Double {
        let time = timeSpawn([runc, "run", "--bundle", container.bundle, sharedID])
        ContainerSandbox.removeRuntimeState(sandboxID: sharedID, layout: layout)
        return time
    }
    // alcub3 from nothing: sandbox cgroup and limits, image validated and unpacked, bundle, start, everything removed.
    func alcub3Whole() throws -> Double {
        try elapsed {
            let id = "sb-benchful\(getpid() % 10)"
            let (cgroup, applied) = try sandbox(id)
            let whole = try ContainerSandbox(spec: spec(id), cgroup: cgroup)
            _ = try whole.run()
            ContainerSandbox.remove(sandboxID: id, layout: layout)
            try cgroup.destroy()
            SandboxCgroup.removeV1(applied)
        }
    }
    let runs = 50
    _ = try alcub3Start(); _ = runcRun(); _ = try alcub3Whole()  // warm-up
    var times: [String: [Double]] = [:]
    for _ in 0..<runs {
        times["alcub3", default: []].append(try alcub3Start())
        times["runc", default: []].append(runcRun())
        times["whole", default: []].append(try alcub3Whole())
    }
    let start = median(times["alcub3"]!), alone = median(times["runc"]!), whole = median(times["whole"]!)
    let ratio = median(zip(times["alcub3"]!, times["runc"]!).map { $0 / $1 })
    let wholeRatio = median(zip(times["whole"]!, times["runc"]!).map { $0 / $1 })
    log(String(format: "container: alcub3 start %.2f ms, runc run %.2f ms, alcub3 whole %.2f ms", start, alone, whole))
    // First use of an image: validated, then unpacked (gunzip, diff_id, files) into the cache.
    let cold = try elapsed {
        try? FileManager.default.removeItem(atPath: ImageCache.root + "/" + digest.hex)
        _ = try ImageCache.tree(for: OCIImage.validate(path: image, expected: digest, allowed: [], staging: "/nonexistent"))
    }
    return String(format: """
        ## Container-level sandbox creation (`true` in the busybox test image; %d interleaved iterations, medians; ratio: median of per-iteration ratios)

        | what | ms | vs runc alone |
        |---|---:|---:|
        | alcub3 container start on the bundle: `runc create`, start through runc's exec FIFO, wait (alcub3 is the init's subreaper), runc's state and cgroup removed | %.2f | %.2fx (target <= 1.1x: %@) |
        | `runc run --bundle B ID` on the same bundle (create, start, wait, delete in one runtime process) | %.2f | 1.00x |
        | alcub3 from nothing: sandbox cgroup and limits, OCI image checked (manifest, config and layer sha256; its tree unpacked once, in the image cache), an overlay on a tmpfs of `workspace_size`, config.json from the policy, start, all removed | %.2f | %.2fx |

        The policy is TOP_SECRET's (no network: no veth to make). `runc run` spends its extra time in its own deletion (the
        container's cgroup in each of this host's ten cgroup hierarchies); alcub3 kills the container's cgroup and removes it and
        runc's state itself. The first start with an image also unpacks it into the image cache: %.1f ms for this one (1 MB gzip
        layer, 2 MB unpacked).

        """, runs, start, ratio, ok(ratio <= 1.1), alone, whole, wholeRatio, cold)
}
