#if canImport(Glibc)
import Glibc
#endif
import Foundation
import KernelSupport
import Policy
import Sandbox
import Store
import Telemetry

/// The container level in the service: the same sandbox (cgroup, limits,
/// network programs, telemetry, store record) with runc in place of alcub3's
/// own init. The container's cgroup is a child of the sandbox's, so the
/// telemetry and network programs on the sandbox cgroup hold it.
extension SandboxManager {
    static func isContainer(_ record: SandboxRecord) -> Bool { record.isolation == IsolationLevel.container.rawValue }

    /// Prepares the bundle (image validated and unpacked, config.json),
    /// `runc create`, arms telemetry on the sandbox cgroup (runc's own set-up,
    /// which unshares and changes credentials there, is not the agent's), then
    /// starts the command. Whatever it made is undone through `undo` when a
    /// later step of `create` fails.
    func startContainer(_ request: CreateRequest, image: String, sandboxID: String, cgroup: SandboxCgroup,
                        stdio: (Int32, Int32, Int32), steps: ((CreationStep) -> Void)?,
                        undo: inout [() -> Void]) throws -> SandboxedProcess {
        func timed<T>(_ name: String, _ body: () throws -> T) throws -> T { try CreationStep.timed(name, steps, body) }
        var spec = ContainerSpec(sandboxID: sandboxID, image: image, imageDigest: request.imageDigest, arguments: request.command,
                                 policy: request.policy)
        spec.stdio = stdio
        spec.outlivesOwner = true  // a restarted service adopts it
        spec.statusFile = configuration.sandboxDirectory(sandboxID) + "/exit_status"  // and its keeper tells it the exit code
        spec.environment = request.containerEnvironment
        let container: ContainerSandbox
        do {
            spec.allowedImages = request.imageDigest == nil ? try ImageAllowList.load() : []
            container = try ContainerSandbox(spec: spec, cgroup: cgroup) { step, microseconds, result in
                steps?(CreationStep(step: step, microseconds: microseconds, result: result))
            }
        } catch let error as ImageError {
            throw ServiceFailure(Alcub3Exit.imageRefused, error.message)
        } catch SandboxError.commandNotFound(let c) {
            throw ServiceFailure(Alcub3Exit.commandNotFound, "command not found: \(c)")
        } catch SandboxError.commandNotExecutable(let c) {
            throw ServiceFailure(Alcub3Exit.commandNotExecutable, "command is not executable: \(c)")
        } catch {
            throw ServiceFailure(Alcub3Exit.kernelRefused, "could not prepare the container: \(error)")
        }
        let layout = self.layout
        undo.append { ContainerSandbox.remove(sandboxID: sandboxID, layout: layout) }
        let process: SandboxedProcess
        do {
            process = try timed("runc create \(sandboxID) (cgroup \(container.cgroupPath))") { try container.create() }
            try timed("watch cgroup id \(cgroup.id) in the BPF sandboxes map") {
                try monitor.watch(sandboxCgroupID: cgroup.id, options: .init(syscalls: request.policy.traceSyscalls))
            }
            undo.append { [monitor] in monitor.unwatch(sandboxCgroupID: cgroup.id) }
            try timed("start the container (its exec FIFO)") { try container.start() }
        } catch let failure as ServiceFailure {
            throw failure
        } catch {
            throw ServiceFailure(Alcub3Exit.kernelRefused, "could not start the container: \(error)")
        }
        let image = container.image.manifestDigest.map { "OCI image \($0), every blob checked" } ?? "root filesystem \(image)"
        for (name, result) in [
            ("container: runtime", "runc (\(container.arguments.joined(separator: " ")))"),
            ("container: image", image),
            ("container: storage", "rootfs on a tmpfs of \(request.policy.filesystem.workspaceBytes) bytes, read-only: \(request.policy.filesystem.readOnlySystem); /tmp and \(request.policy.filesystem.workspace) size-capped tmpfs"),
            ("container: network", container.network.map { "veth \($0.hostInterface) \($0.hostAddress) <-> \($0.containerAddress), NAT; destinations by cgroup BPF" } ?? "own namespace, loopback only"),
            ("enforcement: seccomp", "the policy's allow-list, installed by runc before exec; escape syscalls EPERM (no supervisor: runc gives a notify listener only to a listenerPath agent)"),
            ("enforcement: capabilities", "all dropped, no_new_privs; masked and read-only /proc and /sys paths as runc's defaults"),
        ] { steps?(CreationStep(step: name, microseconds: 0, result: result)) }
        return process
    }

    /// At the end of a container sandbox (after its cgroup is destroyed): the
    /// init's exit status into the status file, then runc's state, the
    /// bundle, the network and runc's cgroup directories removed.
    func finishContainer(_ sandbox: LiveSandbox) {
        var status: Int32 = 0
        let statusFile = configuration.sandboxDirectory(sandbox.record.sandboxID) + "/exit_status"
        if waitpid(sandbox.initProcess.pid, &status, WNOHANG) == sandbox.initProcess.pid {
            try? FileIO.write("\(HostCommand.shellCode(waitStatus: status))\n", to: statusFile, create: true)
        } else if let keeper = (try? FileIO.read(ContainerSandbox.stateRoot + "/" + sandbox.record.sandboxID + "/keeper.pid")).flatMap({ Int32($0) }) {
            // The keeper writes the init's exit code as the init ends; reaped here when it is ours (not after a restart).
            for _ in 0..<200 where !FileIO.exists(statusFile) && kill(keeper, 0) == 0 { usleep(10_000) }
            _ = waitpid(keeper, &status, WNOHANG)
        }
        ContainerSandbox.remove(sandboxID: sandbox.record.sandboxID, layout: layout)
    }

    /// Where `sandbox exec` puts a command in a container sandbox. Not `runc
    /// exec`: its init changes credentials with every capability inside the
    /// container's cgroup (an escape's signature to telemetry). alcub3 joins
    /// the container itself, as at the process level: the init's namespaces
    /// (the network one included), the container's cgroups, the sandbox's
    /// seccomp filter and Landlock rules, no capability.
    func containerExecTarget(_ sandbox: LiveSandbox, program: String) throws -> ContainerExecTarget {
        let id = sandbox.record.sandboxID
        do {
            let (executable, environment) = try ContainerSandbox.resolveForExec(program, sandboxID: id)
            let v1 = ["cpu", "cpuacct", "memory", "pids", "devices"].compactMap { layout.v1Controllers[$0] }
            let procs = Array(Set(v1)).sorted().map { "\($0)/alcub3/\(id)/container/cgroup.procs" }.filter(FileIO.exists)
            return ContainerExecTarget(executable: executable, environment: environment,
                                       namespaces: NamespaceSet.forPolicy(sandbox.policy).union(.network),
                                       cgroup: try SandboxCgroup(existing: id + "/container", layout: layout), v1ProcsFiles: procs)
        } catch SandboxError.commandNotFound(let c) {
            throw ServiceFailure(Alcub3Exit.commandNotFound, "command not found in the sandbox: \(c)")
        } catch SandboxError.commandNotExecutable(let c) {
            throw ServiceFailure(Alcub3Exit.commandNotExecutable, "command is not executable: \(c)")
        }
    }
}

struct ContainerExecTarget {
    var executable: String
    var environment: [String]
    var namespaces: NamespaceSet
    var cgroup: SandboxCgroup
    var v1ProcsFiles: [String]
}

extension CreateRequest {
    /// The client's environment is the host's; a container gets the image's,
    /// plus only TERM and LANG from the client.
    var containerEnvironment: [String] {
        environment.filter { $0.hasPrefix("TERM=") || $0.hasPrefix("LANG=") }
    }
}
