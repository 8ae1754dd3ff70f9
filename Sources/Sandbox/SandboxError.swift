import Foundation
import KernelSupport

/// What can go wrong starting or running a sandbox, in terms the caller can act on.
public enum SandboxError: Error, CustomStringConvertible, Sendable {
    case commandNotFound(String)
    case commandNotExecutable(String)
    case commandHidden(command: String, path: String, hiddenBy: String)
    case agentInUse(agent: String, holder: String)
    case unsupportedHost(String)
    case childSetupFailed(step: String, error: SystemError)
    case unknownCapability(String)
    case system(SystemError)

    public var description: String {
        switch self {
        case .commandNotFound(let c): return "command not found: \(c)"
        case .commandNotExecutable(let c): return "command is not executable: \(c)"
        case .commandHidden(let c, let path, let hider):
            return "\(c) resolves to \(path), which the sandbox cannot see (the policy hides \(hider)); use a program outside it, e.g. /usr/bin/\((c as NSString).lastPathComponent)"
        case .agentInUse(let a, let holder): return "agent id '\(a)' is already in use by \(holder)"
        case .unsupportedHost(let why): return "this host cannot run the sandbox: \(why)"
        case .childSetupFailed(let step, let e): return "sandbox setup failed at \(step): \(e)"
        case .unknownCapability(let name):
            return "unknown capability '\(name)' (names as in capabilities(7), e.g. CAP_NET_BIND_SERVICE)"
        case .system(let e): return e.description
        }
    }
}
