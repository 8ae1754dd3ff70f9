import Foundation
import KernelSupport
import Telemetry

/// `run --record-traces DIR`: the syscalls of each thread of the sandbox, in
/// the order it made them, one file per thread of whitespace-separated
/// syscall numbers (the format of the public system-call intrusion data sets,
/// which `integrity evaluate-behavior` reads). Files are written when the run
/// ends, from memory (4 bytes per syscall): a file name needs the program
/// the thread finally ran, and a file written as the run goes would be left
/// incomplete, unmarked, if alcub3 died.
struct TraceRecorder {
    /// Threads with fewer syscalls carry no sequence worth scoring (a shell's
    /// short-lived helpers, a thread that only started); they are skipped.
    static let minimumSyscalls = 10
    /// Numbers per line: the readers split on any whitespace, people read lines.
    static let numbersPerLine = 32

    let directory: String
    private var traces: [Int32: (pid: Int32, numbers: [Int32])] = [:]
    /// Program names by pid, from exec (and inherited through fork).
    private var names: [Int32: String] = [:]

    init(directory: String) { self.directory = directory }

    /// Creates DIR when missing; refuses a path that is not a directory or one
    /// alcub3 cannot create a file in (tried for real: a read-only or immutable
    /// directory refuses root too). Returns the absolute path.
    static func prepare(_ path: String) throws -> String {
        guard !path.isEmpty else { throw fail(Alcub3Exit.usage, "--record-traces needs a directory") }
        let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: absolute, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else {
                throw fail(Alcub3Exit.usage, "--record-traces: \(path) exists and is not a directory")
            }
        } else {
            // mkdir -p by hand: Foundation's error does not carry the errno.
            var prefix = ""
            for component in absolute.split(separator: "/") {
                prefix += "/" + component
                if mkdir(prefix, 0o755) != 0 && errno != EEXIST {
                    throw fail(Alcub3Exit.usage, "--record-traces: cannot create \(prefix): \(String(cString: strerror(errno)))")
                }
            }
        }
        let probe = absolute + "/.alcub3-write-check-\(getpid())"
        let fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw fail(Alcub3Exit.usage, "--record-traces: \(path) is not writable: \(String(cString: strerror(errno)))")
        }
        close(fd)
        unlink(probe)
        return absolute
    }

    /// One record per completed syscall: entry records (`--syscall-entry`)
    /// would count each syscall twice.
    mutating func record(_ batch: [TelemetryEvent]) {
        for event in batch {
            switch event {
            case .syscall(let s) where !s.isEntry:
                traces[s.origin.tid, default: (s.origin.pid, [])].numbers.append(s.number)
            case .process(let p):
                switch p.activity {
                case .exec(_, _, _, _, let name): names[p.origin.pid] = name
                case .fork(let child, _, false, _): names[child] = names[child] ?? names[p.origin.pid]
                default: break
                }
            default:
                break
            }
        }
    }

    /// Writes `<program>-<pid>-<tid>.trace` for each thread with at least
    /// `minimumSyscalls` syscalls, leaving out `excludedPID` (the sandbox's
    /// init: alcub3's own code, the same in every run).
    func write(excludingPID excludedPID: Int32) throws -> (files: Int, syscalls: Int, skipped: Int) {
        var files = 0, written = 0, skipped = 0
        for (tid, trace) in traces.sorted(by: { $0.key < $1.key }) where trace.pid != excludedPID {
            guard trace.numbers.count >= Self.minimumSyscalls else { skipped += 1; continue }
            let name = Self.fileSafe(names[trace.pid] ?? "unknown")
            let path = "\(directory)/\(name)-\(trace.pid)-\(tid).trace"
            var text = ""
            text.reserveCapacity(trace.numbers.count * 4)
            for (i, number) in trace.numbers.enumerated() {
                text += String(number)
                text += (i + 1) % Self.numbersPerLine == 0 || i + 1 == trace.numbers.count ? "\n" : " "
            }
            do {
                try FileIO.write(text, to: path, create: true)
            } catch {
                throw fail(Alcub3Exit.internalError, "--record-traces: writing \(path): \(error)")
            }
            files += 1
            written += trace.numbers.count
        }
        return (files, written, skipped)
    }

    /// A comm is at most 15 bytes of anything but NUL: keep it one path component.
    static func fileSafe(_ name: String) -> String {
        let kept = String(name.unicodeScalars.map {
            $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "._-+".unicodeScalars.contains($0)) ? Character($0) : "_"
        })
        return kept.isEmpty || kept.hasPrefix(".") ? "_" + kept : kept
    }
}
