import Foundation
import Policy
import Testing
@testable import Sandbox

@Suite struct CgroupLayoutTests {
    @Test func readsAHybridHost() throws {
        let mountinfo = """
            25 1 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
            26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw
            27 25 0:25 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
            28 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
            29 25 0:27 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
            """
        let layout = try CgroupLayout.detect(mountinfo: mountinfo)
        #expect(layout.unifiedRoot == "/sys/fs/cgroup/unified")
        #expect(layout.isHybrid)
        #expect(layout.v1Controllers == ["cpu": "/sys/fs/cgroup/cpu", "memory": "/sys/fs/cgroup/memory"])
        #expect(layout.alcub3Root == "/sys/fs/cgroup/unified/alcub3")
    }

    @Test func readsAPureV2Host() throws {
        let mountinfo = "30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot"
        let layout = try CgroupLayout.detect(mountinfo: mountinfo)
        #expect(layout.unifiedRoot == "/sys/fs/cgroup" && !layout.isHybrid)
    }

    @Test func refusesAHostWithoutCgroup2() {
        #expect(throws: SandboxError.self) {
            try CgroupLayout.detect(mountinfo: "27 25 0:25 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu")
        }
    }
}

@Suite struct CommandResolverTests {
    @Test func findsProgramsOnThePath() throws {
        #expect(try CommandResolver.resolve("sh", path: "/nonexistent:/bin") == "/bin/sh")
        #expect(try CommandResolver.resolve("/bin/sh") == "/bin/sh")
    }

    @Test func refusesMissingAndNonExecutableCommands() throws {
        #expect(throws: SandboxError.self) { try CommandResolver.resolve("no-such-command-alcub3", path: "/bin") }
        #expect(throws: SandboxError.self) { try CommandResolver.resolve("/etc/passwd") }
        #expect(throws: SandboxError.self) { try CommandResolver.resolve("/etc") }
    }
}

@Suite struct NamespaceTests {
    @Test func networkNamespaceOnlyWithoutNetwork() {
        var secret = SandboxPolicy.builtIn(.topSecret)
        secret.isolation = .process
        #expect(NamespaceSet.forPolicy(secret).contains(.network))
        #expect(!NamespaceSet.forPolicy(.builtIn(.unclassified)).contains(.network))
        #expect(NamespaceSet.forPolicy(.builtIn(.unclassified)).names == ["mnt", "pid", "ipc", "uts", "cgroup"])
    }

    @Test func exitStatusFollowsTheShellConvention() {
        #expect(ExitStatus.exited(3).shellCode == 3)
        #expect(ExitStatus.signaled(9).shellCode == 137)
    }
}
