import Crypto
import Foundation
import Testing
@testable import Integrity

/// A scratch tree: a few files and directories, removed at the end.
final class ScratchTree {
    let root: String

    init(files: Int = 20) throws {
        root = NSTemporaryDirectory() + "alcub3-integrity-" + UUID().uuidString
        let fm = FileManager.default
        try fm.createDirectory(atPath: root + "/src/lib", withIntermediateDirectories: true)
        for i in 0..<files {
            try "file \(i)\n".write(toFile: root + "/src/f\(i).txt", atomically: false, encoding: .utf8)
        }
        try Data(repeating: 0xAB, count: 4096).write(to: URL(fileURLWithPath: root + "/src/lib/tool.bin"))
        try fm.createSymbolicLink(atPath: root + "/link", withDestinationPath: "src/f0.txt")
        mkfifo(root + "/pipe", 0o600)
    }

    func path(_ relative: String) -> String { root + "/" + relative }

    deinit { try? FileManager.default.removeItem(atPath: root) }
}

@Suite struct FilesystemBaselineTests {
    let key = Curve25519.Signing.PrivateKey()

    func baseline(_ tree: FileTree, agent: String = "agent-1") throws -> FilesystemBaseline {
        FilesystemBaseline(id: "baseline-001", agentID: agent, sandboxID: "sb-1", createdAt: "2026-11-29T00:00:00Z",
                           root: "/workspace", tree: tree)
    }

    @Test func recordsEveryKindAndNeverOpensAFIFO() throws {
        let scratch = try ScratchTree()
        let tree = try FileTree.scan(root: scratch.root)
        #expect(tree.entries["pipe"]?.kind == .fifo && tree.entries["pipe"]?.hash == nil)
        #expect(tree.entries["link"]?.kind == .symlink && tree.entries["link"]?.target == "src/f0.txt")
        #expect(tree.entries["src/lib/tool.bin"]?.hash == Hex.string(SHA256.hash(data: Data(repeating: 0xAB, count: 4096))))
        #expect(tree.entries[""]?.kind == .directory && tree.rootHash.count == 64)
        #expect(tree.count == 20 + 6)  // root, src, src/lib, tool.bin, link, pipe and the files
    }

    @Test func eachChangeIsFoundWithItsEvidenceByEventAndByRescan() throws {
        let scratch = try ScratchTree()
        var tree = try FileTree.scan(root: scratch.root)
        let base = try baseline(tree)
        // The changes of the list, made from outside.
        try "changed\n".write(toFile: scratch.path("src/f1.txt"), atomically: false, encoding: .utf8)
        chmod(scratch.path("src/f2.txt"), 0o777)
        chown(scratch.path("src/f3.txt"), 1234, 1234)
        try "new\n".write(toFile: scratch.path("src/new.txt"), atomically: false, encoding: .utf8)
        unlink(scratch.path("src/f4.txt"))
        unlink(scratch.path("src/f5.txt"))
        symlink("/etc/passwd", scratch.path("src/f5.txt"))
        try Data(repeating: 0xCD, count: 4096).write(to: URL(fileURLWithPath: scratch.path("src/lib/tool.bin")))
        let dirty = ["src/f1.txt", "src/f2.txt", "src/f3.txt", "src/new.txt", "src/f4.txt", "src/f5.txt", "src/lib/tool.bin"]

        let changed = tree.rescan(dirty)
        #expect(changed == Set(dirty))
        let byEvent = FilesystemValidator.compare(base, with: tree, only: Set(dirty), foundBy: "event")
        let full = FilesystemValidator.compare(base, with: try FileTree.scan(root: scratch.root), foundBy: "rescan")
        for findings in [byEvent, full] {
            let seen = Set(findings.map { "\($0.change.rawValue) \($0.path)" })
            #expect(seen == ["content /workspace/src/f1.txt", "permissions /workspace/src/f2.txt", "owner /workspace/src/f3.txt",
                             "created /workspace/src/new.txt", "deleted /workspace/src/f4.txt", "kind /workspace/src/f5.txt",
                             "content /workspace/src/lib/tool.bin"], "\(seen.sorted())")
        }
        let binary = try #require(full.first { $0.path.hasSuffix("tool.bin") })
        #expect(binary.old == Hex.string(SHA256.hash(data: Data(repeating: 0xAB, count: 4096))))
        #expect(binary.new == Hex.string(SHA256.hash(data: Data(repeating: 0xCD, count: 4096))))
        #expect(full.first { $0.change == .kind }?.new == "symlink -> /etc/passwd")
        #expect(full.first { $0.change == .permissions }?.new == "777")
        // The incremental tree and a fresh full scan agree to the root hash.
        #expect(tree.rootHash == (try FileTree.scan(root: scratch.root)).rootHash)
        #expect(tree.rootHash != base.rootHash)
    }

    @Test func anUnchangedTreeValidatesClean100Times() throws {
        let scratch = try ScratchTree()
        let base = try baseline(try FileTree.scan(root: scratch.root))
        for _ in 0..<100 {
            let findings = FilesystemValidator.compare(base, with: try FileTree.scan(root: scratch.root), foundBy: "rescan")
            #expect(findings.isEmpty, "\(findings)")
        }
    }

    @Test func aNewDirectoryIsReadWholeFromTheDirtyPathInside() throws {
        let scratch = try ScratchTree()
        var tree = try FileTree.scan(root: scratch.root)
        try FileManager.default.createDirectory(atPath: scratch.path("a/b"), withIntermediateDirectories: true)
        try "x".write(toFile: scratch.path("a/b/c.txt"), atomically: false, encoding: .utf8)
        tree.rescan(["a/b/c.txt"])
        #expect(tree.entries["a/b/c.txt"]?.kind == .file && tree.entries["a"]?.kind == .directory)
        #expect(tree.rootHash == (try FileTree.scan(root: scratch.root)).rootHash)
    }

    @Test func signedBaselinesAreVerifiedAndBadOnesRefused() throws {
        let scratch = try ScratchTree()
        let base = try baseline(try FileTree.scan(root: scratch.root))
        let signed = try SignedBaseline(signing: base, with: key)
        let data = try signed.jsonData()
        #expect(try SignedBaseline.verify(data, source: "b.json", trusted: key.publicKey, agentID: "agent-1") == base)

        func refusal(_ data: Data, trusted: Curve25519.Signing.PublicKey? = nil, agent: String = "agent-1") -> String {
            do {
                _ = try SignedBaseline.verify(data, source: "b.json", trusted: trusted ?? key.publicKey, agentID: agent)
                return "accepted"
            } catch {
                return "\(error)"
            }
        }
        // One hash changed by hand.
        let text = String(decoding: data, as: UTF8.self)
        let someHash = try #require(base.entries.first { $0.kind == .file }?.hash)
        let tampered = Data(text.replacingOccurrences(of: someHash, with: String(repeating: "0", count: 64)).utf8)
        #expect(refusal(tampered).contains("altered (tampered)"))
        #expect(refusal(data, trusted: Curve25519.Signing.PrivateKey().publicKey).contains("foreign baseline"))
        #expect(refusal(data, agent: "agent-2").contains("baseline of agent 'agent-1', not 'agent-2'"))
        #expect(refusal(data.prefix(data.count / 2)).contains("not an alcub3 baseline"))
        #expect(refusal(Data("hello".utf8)).contains("not an alcub3 baseline"))
        let newer = Data(text.replacingOccurrences(of: "\"format\" : 1", with: "\"format\" : 2").utf8)
        #expect(refusal(newer).contains("baseline format 2 is newer"), "\(refusal(newer))")
    }

    @Test func theSigningKeyIsCreatedPrivateAndRefusedWhenOthersCanReadIt() throws {
        let path = NSTemporaryDirectory() + "alcub3-key-" + UUID().uuidString
        defer { unlink(path) }
        let made = try BaselineKey.loadOrCreate(at: path)
        var st = stat()
        #expect(stat(path, &st) == 0 && st.st_mode & 0o777 == 0o600)
        #expect(try BaselineKey.loadOrCreate(at: path).rawRepresentation == made.rawRepresentation)
        chmod(path, 0o644)
        #expect(throws: BaselineError.self) { try BaselineKey.loadOrCreate(at: path) }
    }

    /// A huge file is streamed: hashing 1 GiB does not grow the resident set
    /// by more than the read buffer and some slack.
    @Test func aHugeFileIsStreamedNotLoaded() throws {
        let scratch = try ScratchTree(files: 1)
        let huge = scratch.path("huge.img")
        let fd = open(huge, O_WRONLY | O_CREAT, 0o600)
        #expect(fd >= 0 && ftruncate(fd, 1 << 30) == 0)  // sparse: reads back as zeros, costs no disk
        close(fd)
        func residentKiB() -> Int {
            let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
            let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
            return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
        }
        let before = residentKiB()
        let tree = try FileTree.scan(root: scratch.root)
        let grown = residentKiB() - before
        #expect(tree.entries["huge.img"]?.size == 1 << 30 && tree.entries["huge.img"]?.hash?.count == 64)
        #expect(grown < 64 * 1024, "the resident set grew by \(grown) KiB while hashing 1 GiB")
    }

}
