import Foundation
import Policy
import Testing
@testable import Sandbox

/// On a kernel without PR_SET_MDWE (before 6.3) the filter stands in for it:
/// no mprotect adding PROT_EXEC, no anonymous executable mmap, while the
/// loader's executable mappings of files still work. Forced here, since this
/// kernel has MDWE.
@Suite(.enabled(if: runsAsRoot, .init(rawValue: needsRoot))) struct ExecGainFallbackTests {
    @Test func withoutMDWETheFilterRefusesTheGainOfExec() throws {
        let test = try TestCgroup("execgain")
        let profile = SeccompProfile.forSandbox(allowedSyscalls: Capability.allowedSyscalls(for: [.python, .filesystemWrite]),
                                                supervised: false, refuseExecGain: true)
        let program = try SeccompCompiler.compile(profile)
        let out = try test.python("""
            import ctypes, mmap, os
            libc = ctypes.CDLL(None, use_errno=True)
            libc.mmap.restype = ctypes.c_void_p
            libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
            page = libc.mmap(None, 4096, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
            print("mprotect", libc.mprotect(ctypes.c_void_p(page), 4096, mmap.PROT_READ | mmap.PROT_EXEC), ctypes.get_errno())
            anon = libc.mmap(None, 4096, mmap.PROT_READ | mmap.PROT_EXEC, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
            print("anonymous-exec", "refused" if anon in (None, ctypes.c_void_p(-1).value) else "mapped", ctypes.get_errno())
            fd = os.open("/usr/bin/true", os.O_RDONLY)
            filed = libc.mmap(None, 4096, mmap.PROT_READ | mmap.PROT_EXEC, mmap.MAP_PRIVATE, fd, 0)
            print("file-exec", "refused" if filed in (None, ctypes.c_void_p(-1).value) else "mapped")
            """) { $0.seccomp = program }
        #expect(out.status == .exited(0), "\(out.output)")
        #expect(out.output.contains("mprotect -1 1"), "\(out.output)")
        #expect(out.output.contains("anonymous-exec refused 1"), "\(out.output)")
        #expect(out.output.contains("file-exec mapped"), "\(out.output)")
    }
}
