#if canImport(Glibc)
import Glibc
#endif
import Crypto
import Foundation
import KernelSupport
import Testing
@testable import Integrity

/// Memory baselines of real processes (root: process_vm_readv, /proc/PID/mem
/// and map_files of a child need ptrace rights and CAP_SYS_ADMIN).
@Suite(.serialized) struct MemoryBaselineTests {
    static let environment = ["PATH": "/usr/bin:/bin"]

    func changes(_ findings: [MemoryFinding]) -> [String] { findings.map { "\($0.change.rawValue) \($0.path)" } }

    @Test func recordsTheExecutableMappingsTheirFilesAndLibraries() throws {
        let fixture = try MemoryFixture()
        let child = try SpawnedProcess([fixture.helper], environment: Self.environment)
        let started = ContinuousClock.now
        let baseline = try MemoryBaseline.capture(pid: child.pid)
        let elapsed = ContinuousClock.now - started
        print("memory capture of a small C process: \(elapsed), \(baseline.mappings.count) executable mappings")

        let text = try #require(baseline.mappings.first { $0.path == fixture.helper })
        #expect(text.permissions == "r-xp" && !text.deleted && text.unreadablePages == 0 && text.codeHash.count == 64)
        var st = stat()
        stat(fixture.helper, &st)
        #expect(text.file?.inode == UInt64(st.st_ino) && text.file?.size == Int64(st.st_size))
        let binary = try Data(contentsOf: URL(fileURLWithPath: fixture.helper))
        #expect(text.file?.hash == Hex.string(SHA256.hash(data: binary)))
        #expect(baseline.mappings.contains { $0.path == "[vdso]" && $0.isAnonymous && $0.file == nil })
        #expect(baseline.libraries.contains { $0.hasSuffix("/libc.so.6") })
        #expect(!baseline.libraries.contains(fixture.helper))
        #expect(baseline.loaderEnvironment.isEmpty && baseline.executable == fixture.helper)
        #expect(baseline.mappings.allSatisfy { $0.permissions.dropFirst(2).first == "x" })
        // Codable, for the signed baseline that will carry it.
        let decoded = try JSONDecoder().decode(MemoryBaseline.self, from: JSONEncoder().encode(baseline))
        #expect(decoded == baseline)
    }

    @Test func anUnchangedProcessValidatesClean100Times() throws {
        let fixture = try MemoryFixture()
        let child = try SpawnedProcess([fixture.helper], environment: Self.environment)
        let baseline = try MemoryBaseline.capture(pid: child.pid)
        let cache = FileHashCache()
        for round in 0..<100 {
            let findings = MemoryValidator.compare(baseline, try MemoryBaseline.capture(pid: child.pid, cache: round % 2 == 0 ? cache : nil))
            #expect(findings.isEmpty, "\(findings)")
            if !findings.isEmpty { break }
        }
        for cache in [nil, cache] {
            let started = ContinuousClock.now
            for _ in 0..<20 { _ = MemoryValidator.compare(baseline, try MemoryBaseline.capture(pid: child.pid, cache: cache)) }
            print("memory capture + compare of a small C process, \(cache == nil ? "without" : "with") a file hash cache: "
                  + "\((ContinuousClock.now - started) / 20)")
        }
    }

    @Test func codeWrittenThroughProcMemIsFoundWithItsRange() throws {
        let fixture = try MemoryFixture()
        let child = try SpawnedProcess([fixture.helper], environment: Self.environment)
        let baseline = try MemoryBaseline.capture(pid: child.pid)
        let text = try #require(baseline.mappings.first { $0.path == fixture.helper && $0.permissions == "r-xp" })

        // What a debugger or an injector with ptrace rights does: write into the
        // text through /proc/PID/mem (forced past r-x, as ptrace's POKETEXT).
        // The last bytes of the mapping: page padding the child never executes.
        let address = text.end - 16
        let memory = open("/proc/\(child.pid)/mem", O_RDWR | O_CLOEXEC)
        try #require(memory >= 0)
        defer { close(memory) }
        var bytes = [UInt8](repeating: 0, count: 4)
        #expect(pread(memory, &bytes, 4, off_t(address)) == 4)
        bytes = bytes.map { ~$0 }
        #expect(pwrite(memory, bytes, 4, off_t(address)) == 4)

        let now = try MemoryBaseline.capture(pid: child.pid)
        let findings = MemoryValidator.compare(baseline, now)
        #expect(changes(findings) == ["codeModified \(fixture.helper)"], "\(findings)")
        let finding = try #require(findings.first)
        #expect(finding.mapping == "\(text.range) r-xp \(String(text.offset, radix: 16))")
        #expect(finding.old == text.codeHash && finding.new != text.codeHash && finding.new?.count == 64)
        #expect(finding.dimension == "memory" && finding.pid == child.pid)
    }

    @Test func anRWXPageMappedAfterTheBaselineIsFound() throws {
        let fixture = try MemoryFixture()
        let child = try SpawnedProcess([fixture.helper], environment: Self.environment)
        let baseline = try MemoryBaseline.capture(pid: child.pid)
        let reply = try child.send("rwx")
        let address = try #require(UInt64(reply.dropFirst(2), radix: 16))

        var findings = MemoryValidator.compare(baseline, try MemoryBaseline.capture(pid: child.pid))
        #expect(Set(changes(findings)) == ["newAnonymousExecutable [anon]", "writableExecutable [anon]"], "\(findings)")
        #expect(findings.count == 2)
        for finding in findings {
            #expect(finding.mapping?.hasPrefix(String(address, radix: 16) + "-") == true && finding.mapping?.contains(" rwxp ") == true)
        }
        let page = Hex.string(SHA256.hash(data: Data(repeating: 0xC3, count: 4096)))
        #expect(findings.first { $0.change == .newAnonymousExecutable }?.new == page)

        // Shared anonymous memory is a deleted /dev/zero to the kernel: still anonymous here.
        let shared = try #require(UInt64(try child.send("rwx shared").dropFirst(2), radix: 16))
        findings = MemoryValidator.compare(baseline, try MemoryBaseline.capture(pid: child.pid))
        let atShared = findings.filter { $0.mapping?.hasPrefix(String(shared, radix: 16) + "-") == true }
        #expect(Set(atShared.map(\.change)) == [.newAnonymousExecutable, .writableExecutable], "\(findings)")
        #expect(atShared.allSatisfy { $0.mapping?.contains(" rwxs ") == true } && findings.count == 4)
    }

    @Test func aLibraryLoadedAfterTheBaselineIsFound() throws {
        let fixture = try MemoryFixture()
        let child = try SpawnedProcess([fixture.helper], environment: Self.environment)
        let baseline = try MemoryBaseline.capture(pid: child.pid)
        #expect(try child.send("dlopen " + fixture.library) == "loaded")

        let findings = MemoryValidator.compare(baseline, try MemoryBaseline.capture(pid: child.pid))
        #expect(changes(findings) == ["libraryInjected \(fixture.library)"], "\(findings)")
        let library = try Data(contentsOf: URL(fileURLWithPath: fixture.library))
        #expect(findings.first?.new == Hex.string(SHA256.hash(data: library)))
    }

    @Test func aPreloadedLibraryIsRecordedAndFoundAgainstTheProgramsBaseline() throws {
        let fixture = try MemoryFixture()
        let plain = try SpawnedProcess([fixture.helper], environment: Self.environment)
        var environment = Self.environment
        environment["LD_PRELOAD"] = fixture.library
        let preloaded = try SpawnedProcess([fixture.helper], environment: environment)
        let baseline = try MemoryBaseline.capture(pid: plain.pid)
        let capture = try MemoryBaseline.capture(pid: preloaded.pid)
        #expect(capture.ldPreload == fixture.library && baseline.ldPreload == nil)
        #expect(capture.libraries.contains(fixture.library))

        // Another process of the same program: the file-backed mappings match by file and offset.
        let findings = MemoryValidator.compare(baseline, capture, sameProcess: false)
        #expect(changes(findings) == ["libraryInjected LD_PRELOAD", "libraryInjected \(fixture.library)"], "\(findings)")
        #expect(findings.first?.old == nil && findings.first?.new == fixture.library)
        // Within one process's baseline, another pid is another process.
        #expect(changes(MemoryValidator.compare(baseline, capture)) == ["processReplaced \(fixture.helper)"])
    }

    @Test(arguments: [true, false]) func aBackingFileReplacedByRenameThenDeletedIsFound(positionIndependent: Bool) throws {
        let fixture = try MemoryFixture()
        let program = positionIndependent ? fixture.helper : fixture.helperWithoutPIE
        let child = try SpawnedProcess([program], environment: Self.environment)
        let baseline = try MemoryBaseline.capture(pid: child.pid)
        let old = try #require(baseline.mappings.first { $0.path == program }?.file)
        let cache = FileHashCache()
        _ = try MemoryBaseline.capture(pid: child.pid, cache: cache)  // a warm cache must not hide the new file

        // A new binary written beside it and renamed over it, as an updater or an attacker would.
        var replacement = try Data(contentsOf: URL(fileURLWithPath: program))
        replacement[replacement.count - 1] ^= 0xFF
        try replacement.write(to: URL(fileURLWithPath: program + ".new"))
        #expect(rename(program + ".new", program) == 0)

        let now = try MemoryBaseline.capture(pid: child.pid, cache: cache)
        let mapping = try #require(now.mappings.first { $0.path == program })
        #expect(mapping.deleted && mapping.file == old)  // map_files: still the file that runs
        var findings = MemoryValidator.compare(baseline, now)
        #expect(changes(findings) == ["backingFileReplaced \(program)"], "\(findings)")
        #expect(findings.first?.old?.hasPrefix(old.hash!) == true)
        #expect(findings.first?.new?.hasPrefix(Hex.string(SHA256.hash(data: replacement))) == true)

        unlink(program)
        findings = MemoryValidator.compare(baseline, try MemoryBaseline.capture(pid: child.pid))
        #expect(changes(findings) == ["backingFileDeleted \(program)"], "\(findings)")
        #expect(findings.first?.new == nil)
    }

    @Test func aLibraryChangedInPlaceIsFoundThroughAWarmCache() throws {
        let fixture = try MemoryFixture()
        let child = try SpawnedProcess([fixture.helper], environment: Self.environment)
        #expect(try child.send("dlopen " + fixture.library) == "loaded")
        let cache = FileHashCache()
        let baseline = try MemoryBaseline.capture(pid: child.pid, cache: cache)
        #expect(MemoryValidator.compare(baseline, try MemoryBaseline.capture(pid: child.pid, cache: cache)).isEmpty)

        // Same inode, same size, one byte of its last page changed (a library is not
        // write-protected while mapped, as a running executable is).
        let fd = open(fixture.library, O_WRONLY | O_CLOEXEC)
        try #require(fd >= 0)
        var byte: UInt8 = 0x5A
        #expect(pwrite(fd, &byte, 1, off_t(try FileManager.default.attributesOfItem(atPath: fixture.library)[.size] as! Int - 1)) == 1)
        close(fd)

        let findings = MemoryValidator.compare(baseline, try MemoryBaseline.capture(pid: child.pid, cache: cache))
        #expect(changes(findings) == ["backingFileReplaced \(fixture.library)"], "\(findings)")
        let changed = try Data(contentsOf: URL(fileURLWithPath: fixture.library))
        #expect(findings.first?.new?.hasPrefix(Hex.string(SHA256.hash(data: changed))) == true)
    }

    @Test func executeOnlyPagesAreReadAndUnreadablePagesCounted() throws {
        let fixture = try MemoryFixture()
        let child = try SpawnedProcess([fixture.helper, "xonly"], environment: Self.environment)
        let address = try #require(UInt64(child.greeting.dropFirst("ready 0x".count), radix: 16))
        let baseline = try MemoryBaseline.capture(pid: child.pid)
        let page = try #require(baseline.mappings.first { $0.start == address })
        #expect(page.permissions == "--xp" && page.path == "[anon]" && page.unreadablePages == 0)
        #expect(page.codeHash == Hex.string(SHA256.hash(data: Data(repeating: 0x90, count: 4096))))
        // [vsyscall] (where the kernel has one, execute-only) cannot be read at all: counted, no crash.
        if let vsyscall = baseline.mappings.first(where: { $0.path == "[vsyscall]" }), vsyscall.permissions == "--xp" {
            #expect(vsyscall.unreadablePages == 1)
            #expect(vsyscall.codeHash == Hex.string(SHA256.hash(data: Data())))
        }
        #expect(MemoryValidator.compare(baseline, try MemoryBaseline.capture(pid: child.pid)).isEmpty)
    }

    @Test func aProcessThatIsGoneIsAnErrorNotACrash() throws {
        let fixture = try MemoryFixture()
        var pid: pid_t = 0
        do {
            let child = try SpawnedProcess([fixture.helper], environment: Self.environment)
            pid = child.pid
        }  // SIGKILLed and reaped here
        #expect(throws: SystemError.self) { try MemoryBaseline.capture(pid: pid) }
        #expect(throws: SystemError.self) { try MemoryBaseline.capture(pid: 0) }
    }

    @Test func mapsLinesWithSpacesDeletedFilesAndPseudoNamesParse() throws {
        let text = """
            55d0c0a00000-55d0c0a01000 r-xp 00001000 fd:01 1234                       /tmp/a dir/my prog (deleted)
            7f0000000000-7f0000001000 rwxp 00000000 00:00 0 
            7f0000002000-7f0000003000 r-xp 00000000 00:00 0                          [anon:jit]
            7f0000004000-7f0000005000 r--p 00000000 00:01 77                         /memfd:payload (deleted)
            ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
            """
        let lines = try MemoryMapping.parse(maps: text)
        #expect(lines.map(\.path) == ["/tmp/a dir/my prog", "[anon]", "[anon:jit]", "/memfd:payload", "[vsyscall]"])
        #expect(lines.map(\.deleted) == [true, false, false, true, false])
        #expect(lines[0].offset == 0x1000 && lines[0].inode == 1234 && lines[0].device == "fd:01")
        #expect(lines[4].start == 0xffffffffff600000 && lines[4].end == 0xffffffffff601000)
        #expect(throws: SystemError.self) { try MemoryMapping.parse(maps: "not a maps line") }
        #expect(MemoryBaseline.isSharedObject("/usr/lib/x86_64-linux-gnu/libc.so.6"))
        #expect(MemoryBaseline.isSharedObject("/usr/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so"))
        #expect(!MemoryBaseline.isSharedObject("/usr/bin/python3.11") && !MemoryBaseline.isSharedObject("/opt/some.soup/x"))
    }

    @Test func theComparisonRulesOnMadeUpCaptures() throws {
        func mapping(_ line: String, hash: String = "aa", file: FileIdentity? = nil) throws -> MemoryMapping {
            var mapping = try #require(try MemoryMapping.parse(maps: line).first)
            mapping.codeHash = hash
            mapping.file = file
            return mapping
        }
        let lib = FileIdentity(device: 1, inode: 10, size: 100, modified: "2026-01-01T00:00:00.000000000Z", hash: "11")
        var touched = lib
        touched.modified = "2026-06-01T00:00:00.000000000Z"
        let base = MemoryBaseline(
            pid: 42, startTime: 7, executable: "/bin/prog", capturedAt: "", mappings: [
                try mapping("7f0000001000-7f0000002000 r-xp 00001000 fd:01 10 /usr/lib/libx.so.1", file: lib),
                try mapping("7f0000003000-7f0000004000 r-xp 00001000 fd:01 11 /usr/lib/liby.so.1", file: lib),
            ], libraries: ["/usr/lib/libx.so.1", "/usr/lib/liby.so.1"], loaderEnvironment: [:])
        var now = base
        now.mappings[0].file = touched  // a touch: same file, same content
        now.mappings.remove(at: 1)  // liby's code unmapped (its data mapping stays)
        now.mappings.append(try mapping("7f0000005000-7f0000006000 r-xp 00000000 00:01 99 /memfd:payload (deleted)", hash: "bb"))
        let findings = MemoryValidator.compare(base, now)
        #expect(changes(findings) == ["newExecutableMapping /memfd:payload", "mappingRemoved /usr/lib/liby.so.1"], "\(findings)")
        #expect(findings.last?.mapping == "7f0000003000-7f0000004000 r-xp 1000" && findings.last?.old == "aa")

        // The same library and offset at another address (another run, or reloaded): matched, clean.
        var moved = base
        moved.pid = 43
        moved.mappings[0].range = "7f1000001000-7f1000002000"
        #expect(MemoryValidator.compare(base, moved, sameProcess: false).isEmpty)
        #expect(changes(MemoryValidator.compare(base, moved)) == ["processReplaced /bin/prog"])
    }

    @Test func capturingPythonIsFast() throws {
        let python = try SpawnedProcess(
            ["/usr/bin/python3", "-c", "import json, ssl, sqlite3, decimal, sys; print('ready', flush=True); sys.stdin.read()"],
            environment: Self.environment)
        var started = ContinuousClock.now
        let base = try MemoryBaseline.capture(pid: python.pid)
        let first = ContinuousClock.now - started
        let cache = FileHashCache()
        var medians: [Duration] = []
        for cache in [nil, cache] {
            var times: [Duration] = []
            for _ in 0..<11 {
                started = ContinuousClock.now
                let findings = MemoryValidator.compare(base, try MemoryBaseline.capture(pid: python.pid, cache: cache))
                times.append(ContinuousClock.now - started)
                #expect(findings.isEmpty, "\(findings)")
            }
            medians.append(times.sorted()[times.count / 2])
        }
        let bytes = base.mappings.reduce(UInt64(0)) { $0 + $1.end - $1.start }
        let files = base.mappings.compactMap(\.file).reduce(Int64(0)) { $0 + $1.size }
        print("memory capture of python3: baseline \(first); capture + compare median \(medians[0]), "
              + "with a file hash cache \(medians[1]); \(base.mappings.count) executable mappings, \(bytes >> 10) KiB of code, "
              + "\(files >> 10) KiB of backing files, \(base.libraries.count) libraries")
        #expect(medians[0] < .seconds(1))
    }
}
