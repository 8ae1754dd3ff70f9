import Foundation
import Policy
import Sandbox
import KernelSupport

extension RunSession {
    /// The container level of `alcub3 run`: the image validated and unpacked
    /// into the bundle, config.json written from the policy. Each refusal is one
    /// line with its exit code; nothing is left behind (ContainerSandbox removes
    /// what it made).
    func prepareContainer(image: String, digest: ImageDigest?, cgroup: SandboxCgroup, stdio: (Int32, Int32, Int32)) throws -> ContainerSandbox {
        var spec = ContainerSpec(sandboxID: sandboxID, image: image, imageDigest: digest, arguments: arguments, policy: policy)
        spec.stdio = stdio  // the agent's pty, or stdout to stderr with --format json (-1: alcub3's own)
        do {
            spec.allowedImages = digest == nil ? try ImageAllowList.load() : []
            return try ContainerSandbox(spec: spec, cgroup: cgroup)
        } catch let error as ImageError {
            throw fail(Alcub3Exit.imageRefused, error.message)
        } catch SandboxError.commandNotFound(let c) {
            throw fail(Alcub3Exit.commandNotFound, "command not found: \(c)")
        } catch SandboxError.commandNotExecutable(let c) {
            throw fail(Alcub3Exit.commandNotExecutable, "command is not executable: \(c)")
        } catch let error as ContainerError {
            throw fail(Alcub3Exit.kernelRefused, "could not prepare the container: \(error)")
        } catch {
            throw fail(Alcub3Exit.kernelRefused, "could not prepare the container: \(error)")
        }
    }

    /// For the start line: what isolates the sandbox.
    static func describe(_ container: ContainerSandbox) -> String {
        let image = container.image.manifestDigest.map { "image \($0)" } ?? "root filesystem"
        return "container isolation: runc, \(image), network \(container.network.map { "veth \($0.hostInterface) \($0.containerAddress)" } ?? "none")"
    }
}
