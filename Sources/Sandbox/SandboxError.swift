import KernelSupport

/// What can go wrong starting or running a sandbox, in terms the caller can act on.
public enum SandboxError: Error, CustomStringConvertible, Sendable {
    case commandNotFound(String)
    case commandNotExecutable(String)
    case agentInUse(agent: String, holder: String)
    case unsupportedHost(String)
    case childSetupFailed(step: String, error: SystemError)
    case system(SystemError)

    public var description: String {
        switch self {
        case .commandNotFound(let c): return "command not found: \(c)"
        case .commandNotExecutable(let c): return "command is not executable: \(c)"
        case .agentInUse(let a, let holder): return "agent id '\(a)' is already in use by \(holder)"
        case .unsupportedHost(let why): return "this host cannot run the sandbox: \(why)"
        case .childSetupFailed(let step, let e): return "sandbox setup failed at \(step): \(e)"
        case .system(let e): return e.description
        }
    }
}
