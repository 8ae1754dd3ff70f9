import Foundation
import Policy
import Sandbox

/// The effective policy and limits of a sandbox to create.
struct ResolvedPolicy: Sendable {
    var policy: SandboxPolicy
    var limits: ResourceLimits
}

/// From the request's classification, isolation override and policy files to
/// the effective policy (docs/policy.md).
enum PolicyResolver {
    static func resolve(classification: String?, isolation: String?, policyFiles: [String]) throws -> ResolvedPolicy {
        let text = classification ?? "UNCLASSIFIED"
        guard let level = Classification(parsing: text) else {
            throw ServiceFailure(ExitCodes.unknownClassification,
                                 "unknown classification '\(text)': use one of \(Classification.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        var policy = SandboxPolicy.builtIn(level)
        if let isolation {
            guard let chosen = IsolationLevel(rawValue: isolation.lowercased()) else {
                throw ServiceFailure(ExitCodes.usage, "unknown isolation level '\(isolation)': use process, container, vm or hardware")
            }
            policy.isolation = chosen
        }
        let multiplier: Double = [Classification.unclassified: 1.0, .confidential: 0.8, .secret: 0.6, .topSecret: 0.4][level]!
        return ResolvedPolicy(policy: policy, limits: ResourceLimits(cpuCores: 2.0 * multiplier,
                                                                     memoryBytes: UInt64(4e9 * multiplier), pids: 512))
    }
}
