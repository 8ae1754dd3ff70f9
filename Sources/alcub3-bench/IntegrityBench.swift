#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Integrity
import KernelSupport
import Telemetry

/// Filesystem baselines on a 10,000-file tree, side by side with AIDE on the
/// same tree in the same run: baseline creation throughput, and a validation
/// cycle after 10 changes (alcub3's event-driven cycle, its full rescan, and
/// `aide --check`, which rereads everything).
func integritySection() throws -> String {
    let aide = "/usr/bin/aide"
    guard FileIO.exists(aide) else {
        throw SystemError(errno: ENOENT, call: "integrity bench", context: "\(aide) is missing: install aide (make deps)")
    }
    // No dot in the path: AIDE reads the selection line as a regular expression.
    let work = NSTemporaryDirectory() + "alcub3-bench-integrity-\(getpid())"
    let root = work + "/tree"
    try? FileManager.default.removeItem(atPath: work)
    defer { try? FileManager.default.removeItem(atPath: work) }
    let tree = try BenchTree.write(at: root)
    let megabytes = Double(tree.bytes) / 1e6
    log(String(format: "integrity: wrote %d files, %.1f MB", tree.files, megabytes))

    // Attributes alcub3 records: type, permissions, owner, size, symlink target, xattrs, SHA-256.
    let config = work + "/aide.conf", report = work + "/aide-report.txt"
    try FileIO.write("""
        database_in=file:\(work)/aide.db
        database_out=file:\(work)/aide.db.new
        gzip_dbout=false
        database_attrs=sha256
        num_workers=1
        report_url=file:\(report)
        Bench = p+ftype+u+g+s+l+sha256+xattrs
        \(root) Bench

        """, to: config, create: true)
    let workers = ProcessInfo.processInfo.activeProcessorCount
    let aideInit = [aide, "--init", "-c", config]
    let aideInitAll = aideInit + ["--workers=\(workers)"]
    let aideCheck = [aide, "--check", "-c", config]
    let aideCheckAll = aideCheck + ["--workers=\(workers)"]

    // The service's key exists before any baseline: made once, outside the timing.
    let key = try BaselineKey.loadOrCreate(at: work + "/baseline.key")
    var scanTimes: [Double] = []
    func createBaseline() throws -> (FilesystemBaseline, FileTree) {
        var scanned: FileTree!
        scanTimes.append(try elapsedMilliseconds { scanned = try FileTree.scan(root: root) })
        let baseline = FilesystemBaseline(id: "baseline-bench", agentID: "bench", sandboxID: "bench",
                                          createdAt: WallClock.iso8601(unixNanos: WallClock.nowUnixNanos()),
                                          root: "/workspace", tree: scanned)
        try SignedBaseline(signing: baseline, with: key).jsonData().write(to: URL(fileURLWithPath: work + "/baseline.json"))
        return (baseline, scanned)
    }

    // Baseline creation. Both tools run once untimed first, so each finds the
    // page cache and the inode and dentry caches warm; then interleaved runs.
    let runs = 5
    var (baseline, scanned) = try createBaseline()
    _ = timeSpawn(aideInit)
    scanTimes = []
    var create: [String: [Double]] = [:]
    for _ in 0..<runs {
        create["alcub3", default: []].append(try elapsedMilliseconds { (baseline, scanned) = try createBaseline() })
        create["aide-all", default: []].append(timeSpawn(aideInitAll))
        create["aide", default: []].append(timeSpawn(aideInit))
    }
    let initReport = (try? FileIO.read(report)) ?? ""
    guard initReport.contains("AIDE successfully initialized database"), FileIO.exists(work + "/aide.db.new") else {
        throw SystemError(errno: EIO, call: "aide --init", context: "no database written; its report: \(initReport.prefix(400))")
    }
    try syscallChecked("rename", work + "/aide.db") { rename(work + "/aide.db.new", work + "/aide.db") }
    guard scanned.count == tree.files + tree.directories else {
        throw SystemError(errno: EIO, call: "FileTree.scan", context: "\(scanned.count) entries, \(tree.files + tree.directories) expected")
    }

    // The validation cycle the service runs after telemetry marked these paths dirty.
    let changes = BenchTree.Changes(root: root)
    let dirty = Set(changes.paths)
    func expectTen(_ findings: [IntegrityFinding], _ who: String) throws {
        let kinds = Dictionary(grouping: findings, by: \.change).mapValues(\.count)
        guard findings.count == 10, kinds[.content] == 7, kinds[.permissions] == 1, kinds[.created] == 1, kinds[.deleted] == 1 else {
            throw SystemError(errno: EIO, call: who, context: "expected the 10 changes, found \(findings.map { "\($0.change) \($0.path)" })")
        }
    }
    let cycles = 101
    var cycle: [Double] = [], rescanPart: [Double] = [], comparePart: [Double] = []
    var live = scanned
    for repetition in 0...cycles {
        try changes.apply()
        var findings: [IntegrityFinding] = []
        let start = DispatchTime.now().uptimeNanoseconds
        live.rescan(changes.paths)
        let rescanned = DispatchTime.now().uptimeNanoseconds
        findings = FilesystemValidator.compare(baseline, with: live, only: dirty, foundBy: "event")
        let end = DispatchTime.now().uptimeNanoseconds
        try expectTen(findings, "event-driven cycle")
        // The first is a warm-up: the tree's storage, shared with `scanned`, is copied on its first write.
        if repetition > 0 {
            cycle.append(Double(end - start) / 1e6)
            rescanPart.append(Double(rescanned - start) / 1e6)
            comparePart.append(Double(end - rescanned) / 1e6)
        }
        try changes.undo()
        live.rescan(changes.paths)
    }
    guard live.rootHash == baseline.rootHash else {
        throw SystemError(errno: EIO, call: "rescan", context: "the tree does not hash back to its baseline after undoing the changes")
    }

    // The same changes, found by reading everything again.
    try changes.apply()
    var fullFindings: [IntegrityFinding] = []
    func fullCycle() throws { fullFindings = FilesystemValidator.compare(baseline, with: try FileTree.scan(root: root), foundBy: "rescan") }
    try fullCycle()
    _ = timeSpawn(aideCheck)
    var check: [String: [Double]] = [:]
    for _ in 0..<runs {
        check["alcub3", default: []].append(try elapsedMilliseconds(fullCycle))
        check["aide-all", default: []].append(timeSpawn(aideCheckAll))
        check["aide", default: []].append(timeSpawn(aideCheck))
    }
    try expectTen(fullFindings, "full rescan")
    let checkReport = (try? FileIO.read(report)) ?? ""
    func summary(_ name: String) -> Int? {
        checkReport.split(separator: "\n").first { $0.trimmingCharacters(in: .whitespaces).hasPrefix(name + ":") }
            .flatMap { Int($0.split(separator: ":").last?.trimmingCharacters(in: .whitespaces) ?? "") }
    }
    let aideAdded = summary("Added entries"), aideRemoved = summary("Removed entries"), aideChanged = summary("Changed entries")
    // AIDE counts an entry once with every attribute that changed: 7 contents and 1 mode are 8 entries.
    guard aideAdded == 1, aideRemoved == 1, aideChanged == 8 else {
        throw SystemError(errno: EIO, call: "aide --check", context: "did not find the 10 changes; its report: \(checkReport.prefix(600))")
    }
    try changes.undo()

    let aideVersion = (initReport.split(separator: "\n").first { $0.contains("(AIDE ") })
        .flatMap { $0.split(separator: "(").last?.dropLast() }.map(String.init) ?? "AIDE"
    let createAlcub3 = median(create["alcub3"]!), createAide = median(create["aide"]!), createAideAll = median(create["aide-all"]!)
    let speedup = median(zip(create["aide"]!, create["alcub3"]!).map { $0 / $1 })
    let aideAllSpeedup = median(zip(create["aide"]!, create["aide-all"]!).map { $0 / $1 })
    let speedupAll = median(zip(create["aide-all"]!, create["alcub3"]!).map { $0 / $1 })
    let cycleMedian = median(cycle), cycleP99 = percentile(cycle.sorted(), 0.99)
    let checkAlcub3 = median(check["alcub3"]!), checkAide = median(check["aide"]!), checkAideAll = median(check["aide-all"]!)
    log(String(format: "integrity: create alcub3 %.0f ms, aide %.0f ms (%.2fx its speed); cycle %.3f ms; aide --check %.0f ms",
               createAlcub3, createAide, speedup, cycleMedian, checkAide))
    func rate(_ ms: Double) -> String { String(format: "%.0f | %.0f", Double(tree.files) / (ms / 1000), megabytes / (ms / 1000)) }
    return String(format: """
        ## Integrity baselines (10,000-file tree)

        The tree: %d regular files in %d directories, %d of 1-16 KiB and %d of 1 MiB, %.1f MB, written before any timing.
        Page cache warm for both tools: each ran once untimed first. %@ with the attributes alcub3 records
        (`p+ftype+u+g+s+l+sha256+xattrs`), an uncompressed database and `database_attrs=sha256`; alcub3 hashes with
        SHA-256 (swift-crypto) on one thread. Creation and full reads: medians of %d interleaved runs (ratio: median
        of per-run ratios); the event-driven cycle: median of %d.

        | baseline creation | ms | files/s | MB/s | speed vs AIDE |
        |---|---:|---:|---:|---:|
        | alcub3: `FileTree.scan`, baseline signed with Ed25519, written as JSON | %.0f | %@ | %.2fx (target >= 1.0x: %@) |
        | AIDE `--init` (one worker, its default) | %.0f | %@ | 1.00x |
        | AIDE `--init --workers=%d` (every CPU) | %.0f | %@ | %.2fx (alcub3 has %.2fx its speed) |

        | validation after 10 changes (7 content edits, one a 1 MiB file; a chmod; a new file; a deletion) | ms | found |
        |---|---:|---|
        | alcub3 event-driven cycle: `rescan` of the 10 dirty paths + `compare(only:)` | %.3f (p99 %.3f; target < 5 ms: %@) | 7 content, 1 permissions, 1 created, 1 deleted |
        | alcub3 full rescan (`FileTree.scan`) + `compare` | %.0f | the same 10 |
        | AIDE `--check` (one worker) | %.0f | 1 added, 1 removed, 8 changed |
        | AIDE `--check --workers=%d` | %.0f | the same |

        alcub3's parts (medians): creation = scan %.0f ms + baseline, signature and JSON %.0f ms; the cycle = rescan
        %.3f ms + compare %.3f ms. `aide --check` rereads the whole tree whatever changed: %.0fx the event-driven cycle here.

        """,
        tree.files, tree.directories, tree.files - tree.largeFiles, tree.largeFiles, megabytes, aideVersion, runs, cycles,
        createAlcub3, rate(createAlcub3), speedup, ok(speedup >= 1.0),
        createAide, rate(createAide),
        workers, createAideAll, rate(createAideAll), aideAllSpeedup, speedupAll,
        cycleMedian, cycleP99, ok(cycleMedian < 5), checkAlcub3, checkAide, workers, checkAideAll,
        median(scanTimes), createAlcub3 - median(scanTimes), median(rescanPart), median(comparePart), checkAide / cycleMedian)
}

func elapsedMilliseconds(_ body: () throws -> Void) rethrows -> Double {
    let start = DispatchTime.now().uptimeNanoseconds
    try body()
    return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
}

/// The deterministic tree both tools read: 100 directories of 100 files,
/// mostly 1-16 KiB, every 200th file 1 MiB.
struct BenchTree {
    let files: Int, directories: Int, largeFiles: Int, bytes: Int

    static func directory(_ d: Int) -> String { String(format: "d%03d", d) }
    static func file(_ d: Int, _ f: Int) -> String { String(format: "d%03d/f%03d", d, f) }
    static func size(_ d: Int, _ f: Int) -> Int {
        let i = d * 100 + f
        return i % 200 == 0 ? 1 << 20 : (1 + (i * 7) % 16) << 10
    }

    /// Pseudo-random bytes (splitmix64): the same tree on every run, content no disk compresses.
    static let pool: [UInt8] = {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        var bytes = [UInt8](repeating: 0, count: 4 << 20)
        bytes.withUnsafeMutableBytes { raw in
            for word in 0..<(raw.count / 8) {
                state &+= 0x9E37_79B9_7F4A_7C15
                var z = state
                z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
                z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
                raw.storeBytes(of: z ^ (z >> 31), toByteOffset: word * 8, as: UInt64.self)
            }
        }
        return bytes
    }()

    /// File i's content: a slice of the pool at an offset of its own.
    static func content(_ d: Int, _ f: Int) -> ArraySlice<UInt8> {
        let size = size(d, f)
        let offset = ((d * 100 + f) * 4099) % (pool.count - size)
        return pool[offset..<(offset + size)]
    }

    static func write(at root: String) throws -> BenchTree {
        var bytes = 0, large = 0
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        for d in 0..<100 {
            try syscallChecked("mkdir", root) { mkdir(root + "/" + directory(d), 0o755) }
            for f in 0..<100 {
                try writeFile(root + "/" + file(d, f), content(d, f))
                bytes += size(d, f)
                if size(d, f) == 1 << 20 { large += 1 }
            }
        }
        return BenchTree(files: 10_000, directories: 101, largeFiles: large, bytes: bytes)
    }

    /// Writes `content` over the start of `path` (created 0644 if missing, truncated to it).
    static func writeFile(_ path: String, _ content: ArraySlice<UInt8>, truncate: Bool = true) throws {
        let fd = try OwnedDescriptor(path: path, flags: O_WRONLY | O_CREAT | (truncate ? O_TRUNC : 0), mode: 0o644)
        try syscallChecked("fchmod", path) { fchmod(fd.raw, 0o644) }
        let written = try syscallChecked("write", path) { content.withUnsafeBytes { Glibc.write(fd.raw, $0.baseAddress, $0.count) } }
        guard written == content.count else { throw SystemError(errno: EIO, call: "write", context: "\(path): short write") }
    }

    /// The 10 changes, made and undone between repetitions: 7 content edits
    /// (same size, the sneakier kind; one in a 1 MiB file), a chmod, a new
    /// file and a deletion.
    struct Changes {
        let root: String
        static let edited = [(0, 1), (10, 11), (20, 21), (30, 31), (40, 41), (50, 51), (60, 0)]
        static let chmodded = (70, 71), deleted = (90, 91)
        static let created = "d080/new-file"

        var paths: [String] {
            Self.edited.map { BenchTree.file($0.0, $0.1) }
                + [BenchTree.file(Self.chmodded.0, Self.chmodded.1), Self.created, BenchTree.file(Self.deleted.0, Self.deleted.1)]
        }

        func apply() throws {
            for (d, f) in Self.edited {
                // 64 bytes in the middle, replaced by bytes from elsewhere in the pool.
                let size = BenchTree.size(d, f)
                let path = root + "/" + BenchTree.file(d, f)
                let fd = try OwnedDescriptor(path: path, flags: O_WRONLY)
                let written = try syscallChecked("pwrite", path) {
                    BenchTree.pool[1000..<1064].withUnsafeBytes { pwrite(fd.raw, $0.baseAddress, 64, off_t(size / 2)) }
                }
                guard written == 64 else { throw SystemError(errno: EIO, call: "pwrite", context: "\(path): short write") }
            }
            let chmodPath = root + "/" + BenchTree.file(Self.chmodded.0, Self.chmodded.1)
            try syscallChecked("chmod", chmodPath) { chmod(chmodPath, 0o600) }
            try BenchTree.writeFile(root + "/" + Self.created, BenchTree.pool[0..<4096])
            let deletedPath = root + "/" + BenchTree.file(Self.deleted.0, Self.deleted.1)
            try syscallChecked("unlink", deletedPath) { unlink(deletedPath) }
        }

        func undo() throws {
            for (d, f) in Self.edited + [Self.chmodded, Self.deleted] {
                try BenchTree.writeFile(root + "/" + BenchTree.file(d, f), BenchTree.content(d, f))
            }
            let createdPath = root + "/" + Self.created
            try syscallChecked("unlink", createdPath) { unlink(createdPath) }
        }
    }
}
