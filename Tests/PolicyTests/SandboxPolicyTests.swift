import Foundation
import Testing
@testable import Policy

@Suite struct PolicyGenerationTests {
    @Test(arguments: [
        (Classification.unclassified, 2.0, UInt64(4_000_000_000), IsolationLevel.process, 1024),
        (.confidential, 1.2, 2_400_000_000, .container, 512),
        (.secret, 0.6, 1_200_000_000, .vm, 256),
        (.topSecret, 0.2, 400_000_000, .hardware, 128),
    ])
    func multipliersScaleTheLevelsLimits(_ level: Classification, _ cores: Double, _ bytes: UInt64,
                                         _ isolation: IsolationLevel, _ pids: Int) throws {
        let policy = try PolicyConfiguration.shipped.sandboxPolicy(for: level)
        #expect(policy.cpuLimit == cores)
        #expect(policy.memoryLimitBytes == bytes)
        #expect(policy.isolation == isolation)
        #expect(policy.pidsLimit == pids)
        #expect(policy.classification == level)
        #expect(policy.traceSyscalls)
        #expect(policy == SandboxPolicy.builtIn(level))
    }

    @Test func multipliersAreThePublishedOnes() {
        #expect(Classification.allCases.map(\.resourceMultiplier) == [1.0, 0.8, 0.6, 0.4])
        #expect(Classification.topSecret.scaled(bytes: 1_000_000_000) == 400_000_000)
        #expect(Classification.secret.scaled(millicores: 333) == 199) // rounded down
    }

    @Test func networkClassesMapPerLevel() throws {
        let shipped = PolicyConfiguration.shipped
        #expect(try shipped.sandboxPolicy(for: .unclassified).network == .any)
        #expect(try shipped.sandboxPolicy(for: .confidential).network == .privateAndLoopback)
        #expect(try shipped.sandboxPolicy(for: .secret).network == .listed(cidrs: [], ports: []))
        #expect(try shipped.sandboxPolicy(for: .topSecret).network == .none)
        #expect(try shipped.sandboxPolicy(for: .unclassified).allowsNetwork)
        #expect(try shipped.sandboxPolicy(for: .confidential).allowsNetwork)
        // SECRET reaches nothing until a site lists its classified network.
        #expect(try !shipped.sandboxPolicy(for: .secret).allowsNetwork)
        #expect(try !shipped.sandboxPolicy(for: .topSecret).allowsNetwork)
        #expect(try shipped.sandboxPolicy(for: .unclassified).networkAccess == ["internet", "intranet"])

        let site = try shipped.merging(PolicyOverrides.parse(
            levelFile("SECRET", "allowed_destinations: [10.20.0.0/16, \"fd00:20::/32\"], allowed_ports: [8443, 443, 443]"),
            source: "site.yaml"))
        let secret = try site.sandboxPolicy(for: .secret)
        #expect(secret.network == .listed(cidrs: [try CIDR("10.20.0.0/16"), try CIDR("fd00:20::/32")], ports: [443, 8443]))
        #expect(secret.allowsNetwork)
    }

    @Test func isolationOverrideKeepsTheLevelsLimits() throws {
        let policy = try PolicyConfiguration.shipped.sandboxPolicy(for: .topSecret, isolation: .process)
        #expect(policy.isolation == .process)
        #expect(policy.cpuLimit == 0.2)
        #expect(policy.network == .none)
    }

    @Test func filesystemHidesTheServiceFromEverySandbox() throws {
        for level in Classification.allCases {
            let filesystem = try PolicyConfiguration.shipped.sandboxPolicy(for: level).filesystem
            #expect(filesystem.readOnlySystem)
            #expect(filesystem.workspace == "/workspace")
            #expect(filesystem.hiddenPaths.contains("/run/alcub3"))
            #expect(filesystem.hiddenPaths.contains("/var/lib/alcub3"))
            #expect(filesystem.hiddenPaths.contains("/etc/shadow"))
            #expect(filesystem.hiddenPaths == filesystem.hiddenPaths.sorted())
        }
        let moved = try PolicyConfiguration.shipped.merging(PolicyOverrides.parse(
            "service: {socket_path: /srv/alcub3-run/api.sock, state_dir: /srv/alcub3-state}", source: "site.yaml"))
        let hidden = try moved.sandboxPolicy(for: .unclassified).filesystem.hiddenPaths
        #expect(hidden.contains("/srv/alcub3-run"))
        #expect(hidden.contains("/srv/alcub3-state"))
        #expect(!hidden.contains("/run/alcub3"))
    }

    @Test func capabilitiesDefaultToTheLevelsAndCannotExceedThem() throws {
        let shipped = PolicyConfiguration.shipped
        // Every capability but jit (write-then-execute memory), which an operator permits explicitly.
        #expect(try shipped.sandboxPolicy(for: .unclassified).capabilities == Capability.allCases.filter { $0 != .jit })
        #expect(try shipped.sandboxPolicy(for: .topSecret).capabilities == [.filesystemWrite, .subprocess, .python])
        #expect(try shipped.sandboxPolicy(for: .topSecret, capabilities: [.python, .python]).capabilities == [.python])
        #expect(try shipped.sandboxPolicy(for: .secret, capabilities: []).allowedSyscalls == Capability.baseSyscalls.sorted())
        let refused = #expect(throws: PolicyError.self) {
            try shipped.sandboxPolicy(for: .topSecret, capabilities: [.python, .network])
        }
        #expect(refused?.description == "capability 'network' is not permitted at TOP_SECRET (permitted: filesystem_write, subprocess, python); an operator can permit it in a policy file")
        #expect(refused?.kind == .notPermitted)

        let unknown = #expect(throws: PolicyError.self) { try Capability.named("subprocesses") }
        #expect(unknown?.description == "unknown capability 'subprocesses'; did you mean 'subprocess'? (valid: network, filesystem_write, subprocess, python, jit)")
    }

    @Test func traceSyscallsFollowsBehavioralAnalysis() throws {
        let off = try PolicyConfiguration.shipped.merging(PolicyOverrides.parse(
            "sandbox_configuration: {behavioral_analysis: {enabled: false}}", source: "site.yaml"))
        #expect(try !off.sandboxPolicy(for: .secret).traceSyscalls)
    }

    @Test func classificationAndIsolationNamesListTheValidOnes() throws {
        let level = #expect(throws: PolicyError.self) { try Classification.named("COSMIC") }
        #expect(level?.description == "unknown classification 'COSMIC' (valid: UNCLASSIFIED, CONFIDENTIAL, SECRET, TOP_SECRET)")
        #expect(try Classification.named("top-secret") == .topSecret)
        let isolation = #expect(throws: PolicyError.self) { try IsolationLevel.named("hardwre") }
        #expect(isolation?.description == "unknown isolation level 'hardwre'; did you mean 'hardware'? (valid: process, container, vm, hardware)")
    }
}

@Suite struct SyscallAllowListTests {
    /// x86_64 syscall names from the kernel's UAPI header (linux-libc-dev, a
    /// dependency of libseccomp-dev, which alcub3 builds with).
    static func kernelSyscallNames() throws -> Set<String> {
        let header = try String(contentsOfFile: "/usr/include/x86_64-linux-gnu/asm/unistd_64.h", encoding: .utf8)
        var names = Set<String>()
        for line in header.split(separator: "\n") where line.hasPrefix("#define __NR_") {
            names.insert(String(line.dropFirst("#define __NR_".count).prefix { $0 != " " }))
        }
        return names
    }

    @Test func everyNameIsARealX8664Syscall() throws {
        let real = try Self.kernelSyscallNames()
        #expect(real.count > 300)
        let ours = Capability.baseSyscalls + Capability.allCases.flatMap(\.syscalls)
        #expect(Set(ours).subtracting(real).isEmpty, "not x86_64 syscalls: \(Set(ours).subtracting(real).sorted())")
    }

    @Test func noGroupRepeatsANameOrGrantsAnEscapeTool() {
        let groups = [Capability.baseSyscalls] + Capability.allCases.map(\.syscalls)
        for group in groups { #expect(Set(group).count == group.count) }
        let escapeTools: Set<String> = [
            "ptrace", "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "bpf", "clone3",
            "init_module", "finit_module", "kexec_load", "perf_event_open", "keyctl", "userfaultfd",
            "io_uring_setup", "open_by_handle_at", "process_vm_writev", "pidfd_getfd", "mknod", "mknodat",
        ]
        for group in groups { #expect(escapeTools.isDisjoint(with: group), "\(escapeTools.intersection(group))") }
    }

    @Test func allowListsDifferByCapability() throws {
        let shipped = PolicyConfiguration.shipped
        func syscalls(_ capabilities: [Capability]) throws -> Set<String> {
            Set(try shipped.sandboxPolicy(for: .unclassified, capabilities: capabilities).allowedSyscalls)
        }
        let base = try syscalls([])
        #expect(base.isSuperset(of: ["read", "write", "openat", "mmap", "exit_group", "execve", "getrandom", "sysinfo"]))
        #expect(!base.contains("socket") && !base.contains("fork") && !base.contains("unlink"))
        #expect(try syscalls([.network]).subtracting(base) == Set(Capability.network.syscalls))
        #expect(try syscalls([.filesystemWrite]).isSuperset(of: ["rename", "unlink", "mkdir", "renameat2", "ftruncate"]))
        #expect(try syscalls([.subprocess]).isSuperset(of: ["clone", "fork", "vfork", "wait4", "kill"]))
        let python = try syscalls([.python])
        #expect(python.isSuperset(of: ["clone", "socketpair"]))
        #expect(!python.contains("socket") && !python.contains("fork") && !python.contains("connect"))
        let all = try syscalls(Capability.allCases.filter { $0 != .jit })
        #expect(all.count > python.count)
        #expect(try shipped.sandboxPolicy(for: .unclassified).allowedSyscalls == all.sorted())
    }
}

@Suite struct ExportImportTests {
    static func sitePolicies() throws -> [SandboxPolicy] {
        let site = try PolicyConfiguration.shipped.merging(PolicyOverrides.parse(
            levelFile("SECRET", "allowed_destinations: [10.20.0.0/16, \"fd00:20::/32\"], allowed_ports: [443], read_only_paths: [/opt/models]"),
            source: "site.yaml"))
        return try Classification.allCases.map { try site.sandboxPolicy(for: $0) }
            + [try site.sandboxPolicy(for: .topSecret, isolation: .process, capabilities: [.python])]
    }

    @Test func importRecreatesAnIdenticalPolicy() throws {
        for policy in try Self.sitePolicies() {
            let json = try policy.jsonData()
            let imported = try SandboxPolicy.fromJSON(json, source: "F.json")
            #expect(imported == policy)
            #expect(try imported.jsonData() == json)
        }
    }

    @Test func exportIsSortedAndShowsWhatIsEnforced() throws {
        let secret = try Self.sitePolicies()[2]
        let text = String(decoding: try secret.jsonData(), as: UTF8.self)
        let topKeys = ["allowed_syscalls", "capabilities", "classification", "cpu_limit", "filesystem", "isolation",
                       "memory_limit_bytes", "network", "network_access", "pids_limit", "trace_syscalls"]
        let offsets = topKeys.map { text.range(of: "\n  \"\($0)\"")!.lowerBound }
        #expect(offsets == offsets.sorted())
        #expect(text.contains(#""cpu_limit" : 0.6"#))
        #expect(text.contains(#""memory_limit_bytes" : 1200000000"#))
        #expect(text.contains(#""10.20.0.0/16""#))
        #expect(text.contains(#""kind" : "listed""#))
    }

    func importError(_ edit: (inout [String: Any]) -> Void) throws -> PolicyError? {
        var object = try JSONSerialization.jsonObject(with: SandboxPolicy.builtIn(.confidential).jsonData()) as! [String: Any]
        edit(&object)
        let data = try JSONSerialization.data(withJSONObject: object)
        do {
            _ = try SandboxPolicy.fromJSON(data, source: "F.json")
            return nil
        } catch {
            return error as? PolicyError
        }
    }

    @Test func importRefusesWhatTheConfigurationWouldRefuse() throws {
        #expect(try importError { $0["cpu_limt"] = 1 }?.description
                == "F.json: unknown key 'cpu_limt'; did you mean 'cpu_limit'?")
        #expect(try importError { $0["cpu_limit"] = 0 }?.description == "F.json: cpu_limit: '0.0' is zero; it must be more than zero")
        #expect(try importError { $0["cpu_limit"] = 0.004 }?.description == "F.json: cpu_limit: 0.004 is below the 0.01 cores a cgroup can enforce")
        #expect(try importError { $0["memory_limit_bytes"] = 0 }?.description == "F.json: memory_limit_bytes: 0 is outside 1MiB to 1PiB")
        #expect(try importError { $0["pids_limit"] = -1 }?.description == "F.json: pids_limit: -1 must be more than zero")
        #expect(try importError { $0["classification"] = "COSMIC" }?.kind == .unknownName)
        #expect(try importError { $0["isolation"] = "vn" }?.description
                == "F.json: isolation: unknown isolation level 'vn'; did you mean 'vm'? (valid: process, container, vm, hardware)")
        #expect(try importError { $0["capabilities"] = ["network", "root"] }?.kind == .unknownName)
        #expect(try importError { $0["network_access"] = ["internet"] }?.description
                == "F.json: network_access: [\"internet\"] does not give the network listed under network; make the two agree")
        #expect(try importError { $0["network"] = ["kind": "private_and_loopback", "cidrs": ["0.0.0.0/0"]] }?.description
                == "F.json: network: cidrs: private_and_loopback ranges are fixed; remove the cidrs key or use kind listed")
        #expect(try importError { $0["allowed_syscalls"] = ["read", "ptrace"] }?.description.hasPrefix(
            "F.json: allowed_syscalls differs from what capabilities") == true)
        #expect(try importError { $0["filesystem"] = ["read_only_system": false, "workspace": "/workspace", "hidden_paths": [], "read_only_paths": []] }?.description
                == "F.json: filesystem: read_only_system: alcub3 always shows the host's system read-only; set it to true")
        #expect(try importError { $0["filesystem"] = ["read_only_system": true, "workspace": "/home/w", "hidden_paths": ["/home"], "read_only_paths": []] }?.description
                == "F.json: filesystem: workspace: '/home/w' is inside hidden path '/home'")
        #expect(try importError { $0["filesystem"] = ["read_only_system": true, "workspace": "../w", "hidden_paths": [], "read_only_paths": []] }?.description
                == "F.json: filesystem: workspace: '../w' is not absolute; write a path starting with /")
        #expect(try importError { $0.removeValue(forKey: "pids_limit") }?.description == "F.json: missing key 'pids_limit'")
        #expect(try importError { $0["trace_syscalls"] = "yes" }?.kind == .wrongType)
        // Without allowed_syscalls the policy is accepted: this version's list applies.
        #expect(try importError { $0.removeValue(forKey: "allowed_syscalls") } == nil)
    }

    @Test func importRefusesMalformedJSON() {
        let error = #expect(throws: PolicyError.self) { try SandboxPolicy.fromJSON(Data("{\"classification\":".utf8), source: "F.json") }
        #expect(error?.kind == .malformedJSON)
        #expect(error?.description.hasPrefix("F.json: ") == true)
        #expect(error.map { !$0.description.contains("\n") } ?? false)
    }
}
