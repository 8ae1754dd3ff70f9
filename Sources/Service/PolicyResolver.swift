import Foundation
import Policy
import Sandbox
import KernelSupport

/// The effective policy and limits of a sandbox to create.
struct ResolvedPolicy: Sendable {
    var policy: SandboxPolicy
    var limits: ResourceLimits

    init(policy: SandboxPolicy) {
        self.policy = policy
        self.limits = ResourceLimits(cpuCores: policy.cpuLimit, memoryBytes: policy.memoryLimitBytes, pids: policy.pidsLimit)
    }
}

/// From the request's classification, isolation override, capabilities and
/// policy files to the effective policy (docs/policy.md): the shipped
/// configuration, each policy file merged over it in order, then the
/// classification's multipliers.
enum PolicyResolver {
    static func resolve(base: PolicyConfiguration, classification: String?, isolation: String?, capabilities: [String]?,
                        policyFiles: [(name: String, text: String)]) throws -> ResolvedPolicy {
        let text = classification ?? "UNCLASSIFIED"
        guard let level = Classification(parsing: text) else {
            throw ServiceFailure(Alcub3Exit.unknownClassification,
                                 "unknown classification '\(text)': use one of \(Classification.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        var chosen: IsolationLevel?
        if let isolation {
            guard let level = IsolationLevel(rawValue: isolation.lowercased()) else {
                throw ServiceFailure(Alcub3Exit.usage, "unknown isolation level '\(isolation)': use process, container, vm or hardware")
            }
            chosen = level
        }
        do {
            var configuration = base
            for file in policyFiles {
                configuration = try configuration.merging(try PolicyOverrides.parse(file.text, source: file.name))
            }
            let requested = try capabilities.map { try $0.map { try Capability.named($0) } }
            return ResolvedPolicy(policy: try configuration.sandboxPolicy(for: level, isolation: chosen, capabilities: requested))
        } catch let error as PolicyError {
            throw ServiceFailure(Alcub3Exit.invalidPolicy, error.description)
        }
    }
}
