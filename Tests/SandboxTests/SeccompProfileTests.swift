import Foundation
import KernelSupport
import Policy
import Testing
@testable import Sandbox

@Suite struct SeccompProfileTests {
    func parse(_ json: String) throws -> SeccompProfile {
        try SeccompProfile(json: Data(json.utf8), source: "p.json")
    }

    func refusal(_ json: String) -> String {
        do {
            _ = try parse(json)
            return "accepted"
        } catch {
            return "\(error)"
        }
    }

    @Test func readsOCIProfilesWithArgumentConditions() throws {
        let profile = try parse("""
            {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "architectures": ["SCMP_ARCH_X86_64"],
             "flags": ["SECCOMP_FILTER_FLAG_LOG"],
             "syscalls": [
               {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
               {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
                "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}]},
               {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 4294967295, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}
             ]}
            """)
        #expect(profile.defaultAction == .errno(1))
        #expect(profile.logDenials)
        #expect(profile.rules.count == 3)
        #expect(profile.rules[1].action == .errno(13))
        #expect(profile.rules[1].conditions == [.init(index: 1, value: 9, op: .equal)])
        #expect(profile.rules[2].conditions.first?.value == 0xffff_ffff)
        // What it writes, it reads back the same.
        let again = try SeccompProfile(json: try profile.jsonData(), source: "again.json")
        #expect(again == profile)
    }

    @Test func keepsDockerRulesThatApplyToACapabilityFreeSandbox() throws {
        let profile = try parse("""
            {"defaultAction": "SCMP_ACT_ERRNO", "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": []}],
             "syscalls": [
               {"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {}, "excludes": {}},
               {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
               {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
               {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
               {"names": ["s390_runtime_instr"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["s390x"]}},
               {"names": ["getpid"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
               {"names": ["gettid"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "99.0"}}
             ]}
            """)
        #expect(profile.rules.flatMap(\.names) == ["read", "clone", "arch_prctl", "getpid"])
    }

    @Test func refusesBadProfilesNamingThePlace() {
        #expect(refusal(#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["opne"], "action": "SCMP_ACT_ALLOW"}]}"#)
                    .contains("syscalls[0].names[0]: unknown syscall 'opne'; did you mean 'open'?"))
        #expect(refusal(#"{"defaultAction": "SCMP_ACT_DENY"}"#).contains("defaultAction: unknown action 'SCMP_ACT_DENY'"))
        #expect(refusal(#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALOW"}]}"#)
                    .contains("did you mean 'SCMP_ACT_ALLOW'?"))
        #expect(refusal(#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#)
                    .contains("syscalls[0].args[0].index: 6 is not an argument index"))
        #expect(refusal(#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 1, "value": 1, "op": "SCMP_CMP_LIKE"}]}]}"#)
                    .contains("syscalls[0].args[0].op: unknown comparison 'SCMP_CMP_LIKE'"))
        #expect(refusal(#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 1, "value": -1, "op": "SCMP_CMP_EQ"}]}]}"#)
                    .contains("syscalls[0].args[0].value: -1 is not a whole number"))
        #expect(refusal(#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 70000}"#).contains("defaultErrnoRet: 70000 is not an errno"))
        #expect(refusal(#"{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_AARCH64"]}"#).contains("does not include SCMP_ARCH_X86_64"))
        #expect(refusal(#"{"defaultAction": "SCMP_ACT_ERRNO", "sycalls": []}"#).contains("unknown key 'sycalls' in profile; did you mean 'syscalls'?"))
        #expect(refusal(#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}"#).contains("a rule needs 'names'"))
        #expect(refusal(#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": {"names": ["read"]}}"#).contains("syscalls must be a list, not an object"))
        #expect(refusal(#"{"defaultAction": "SCMP_ACT_ERRNO", "flags": ["SECCOMP_FILTER_FLAG_NOPE"]}"#).contains("unknown seccomp flag"))
        #expect(refusal("{not json").hasPrefix("p.json: not valid JSON"))
    }

    @Test func refusesAProfileThatLocksOutTheInit() throws {
        let profile = try parse(#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["wait4", "kill"], "action": "SCMP_ACT_ERRNO"}]}"#)
        #expect(throws: PolicyError.self) { try profile.checkInitRequirements() }
        do {
            try profile.checkInitRequirements()
        } catch {
            #expect("\(error)".contains("refuses wait4, kill"))
        }
        try SeccompProfile.forSandbox(allowedSyscalls: Capability.baseSyscalls, supervised: true).checkInitRequirements()
        try parse(#"{"defaultAction": "SCMP_ACT_ALLOW"}"#).checkInitRequirements()
    }

    /// At least as strict as Docker's default for an agent: none of these is
    /// allowed by any sandbox profile, whatever its capabilities.
    @Test func agentProfilesNeverAllowEscapeSyscalls() throws {
        let profile = SeccompProfile.forSandbox(allowedSyscalls: Capability.allowedSyscalls(for: Capability.allCases),
                                                supervised: false)
        let allowed = profile.unconditionallyGiven(.allow)
        for name in ["mount", "umount2", "unshare", "setns", "bpf", "perf_event_open", "keyctl", "add_key",
                     "userfaultfd", "io_uring_setup", "io_uring_enter", "kexec_load", "kexec_file_load", "init_module",
                     "finit_module", "delete_module", "open_by_handle_at", "ptrace", "process_vm_writev", "chroot",
                     "pivot_root", "memfd_create", "setuid", "clone3"] {
            #expect(!allowed.contains(name), "\(name) is allowed")
            #expect(!profile.rules.contains { $0.names.contains(name) && $0.action == .allow })
        }
        #expect(profile.defaultAction == .errno(EPERM) && profile.logDenials)
        let program = try SeccompCompiler.compile(profile)
        #expect(!program.usesNotify && program.instructions.count > 50)
        #expect(try SeccompCompiler.compile(.forSandbox(allowedSyscalls: Capability.baseSyscalls, supervised: true)).usesNotify)
    }

    @Test func conflictingRulesAreRefused() throws {
        let profile = try parse(#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}, {"names": ["read"], "action": "SCMP_ACT_KILL"}]}"#)
        #expect(throws: PolicyError.self) { try SeccompCompiler.compile(profile) }
    }
}

/// Filters on the real kernel: the policy's allow-list and an imported profile.
@Suite(.serialized, .enabled(if: geteuid() == 0, "needs root: cgroups and namespaces"))
struct SeccompKernelTests {
    /// Runs python3 with `script` in a sandbox under `profile`; returns its stdout and exit code.
    func run(_ script: String, under profile: SeccompProfile) throws -> (output: String, code: Int32) {
        let layout = try CgroupLayout.detect()
        let parent = try CgroupParentLock(layout: layout)
        defer { parent.releaseAndRemoveParentIfUnused() }
        let cgroup = try SandboxCgroup(layout: layout, name: "seccomp-\(getpid())")
        defer { try? cgroup.destroy() }
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("alcub3-seccomp-\(getpid())").path
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        let out = work + "/out"
        let outFD = try OwnedDescriptor(path: out, flags: O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
        var spec = ProcessSpec(executable: "/usr/bin/python3", arguments: ["/usr/bin/python3", "-c", script],
                               environment: ["PATH=/usr/bin:/bin"], workingDirectory: work, hostname: "t",
                               namespaces: [.pid, .mount, .ipc, .uts, .network], seccomp: try SeccompCompiler.compile(profile),
                               dieWithParent: true)
        spec.stdio = (-1, outFD.raw, -1)
        let process = try SandboxedProcess(spec: spec, cgroup: cgroup)
        let code = process.wait().shellCode
        return ((try? String(contentsOfFile: out, encoding: .utf8)) ?? "", code)
    }

    @Test func theAllowListRefusesWithEPERMAndDangerousFormsOfAllowedCalls() throws {
        let script = """
            import ctypes, errno, os, socket, subprocess, threading
            libc = ctypes.CDLL(None, use_errno=True)
            def err(rc):
                return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno())) if rc == -1 or rc == ctypes.c_void_p(-1).value else 'ok'
            libc.mmap.restype = ctypes.c_void_p
            libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
            print('mount', err(libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)))
            print('unshare', err(libc.unshare(0x10000000)))
            print('mmap_rwx', err(libc.mmap(None, 4096, 7, 0x22, -1, 0)))
            print('mmap_rw', err(libc.mmap(None, 4096, 3, 0x22, -1, 0)))
            try:
                socket.socket(17, socket.SOCK_RAW, 0); print('packet ok')
            except OSError as e: print('packet', errno.errorcode[e.errno])
            socket.socket(socket.AF_INET, socket.SOCK_STREAM).close(); print('tcp ok')
            print('interfaces', len(socket.if_nameindex()) > 0)
            t = threading.Thread(target=lambda: None); t.start(); t.join(); print('thread ok')
            print('child', subprocess.run(['/bin/true']).returncode)
            open('written.txt', 'w').write('x'); print('write ok')
            """
        let profile = SeccompProfile.forSandbox(allowedSyscalls: Capability.allowedSyscalls(for: Capability.allCases),
                                                supervised: false)
        let (output, code) = try run(script, under: profile)
        #expect(code == 0, "python failed: \(output)")
        let lines = output.split(separator: "\n").map(String.init)
        #expect(lines == ["mount EPERM", "unshare EPERM", "mmap_rwx EPERM", "mmap_rw ok", "packet EPERM", "tcp ok", "interfaces True",
                          "thread ok", "child 0", "write ok"])
    }

    @Test func anImportedProfileWithArgumentConditionsIsEnforced() throws {
        let profile = try SeccompProfile(json: Data("""
            {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
              {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
              {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 1, "value": 10, "op": "SCMP_CMP_EQ"}]}]}
            """.utf8), source: "test.json")
        let script = """
            import os, errno, signal
            try: os.mkdir('d'); print('mkdir ok')
            except OSError as e: print('mkdir', errno.errorcode[e.errno])
            os.kill(os.getpid(), 0); print('signal0 ok')
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
            try: os.kill(os.getpid(), signal.SIGUSR1); print('sigusr1 ok')
            except OSError as e: print('sigusr1', errno.errorcode[e.errno])
            """
        let (output, code) = try run(script, under: profile)
        #expect(code == 0, "python failed: \(output)")
        #expect(output.split(separator: "\n") == ["mkdir EACCES", "signal0 ok", "sigusr1 EPERM"])
    }
}
