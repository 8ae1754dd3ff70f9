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

    /// Creates DIR when missing; refuses a path that is not a directory, one
    /// with a symlink anywhere in it (DIR is usually in the agent's workspace,
    /// where it could plant one), or one alcub3 cannot create a file in (tried
    /// for real: a read-only or immutable directory refuses root too).
    /// Returns the absolute path.
    static func prepare(_ path: String) throws -> String {
        guard !path.isEmpty else { throw fail(Alcub3Exit.usage, "--record-traces needs a directory") }
        let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        let directory = try openDirectory(absolute, named: path, create: true, failing: Alcub3Exit.usage)
        let probe = ".alcub3-write-check-\(getpid())"
        let fd = openat(directory.raw, probe, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw fail(Alcub3Exit.usage, "--record-traces: \(path) is not writable: \(String(cString: strerror(errno)))")
        }
        close(fd)
        unlinkat(directory.raw, probe, 0)
        return absolute
    }

    /// DIR without following a symlink at any component (see prepare).
    private static func openDirectory(_ absolute: String, named path: String, create: Bool, failing code: Int32) throws -> OwnedDescriptor {
        do {
            return try OwnedDescriptor.directoryWithoutSymlinks(absolute, create: create)
        } catch {
            let why = switch error.errno {
            case ELOOP: "\(error.context); give a path without symlinks (e.g. its realpath)"
            case ENOTDIR: "\(error.context) exists and is not a directory"
            default: error.description
            }
            throw fail(code, "--record-traces: \(path): \(why)")
        }
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
    /// init: alcub3's own code, the same in every run). Each file is new,
    /// made through DIR's descriptor: a name the agent took first (a symlink
    /// to a host file, say) is never written through, and the run fails
    /// naming it.
    func write(excludingPID excludedPID: Int32) throws -> (files: Int, syscalls: Int, skipped: Int) {
        // Opened again now: during the run the agent could have swapped a component for a symlink.
        let dir = try Self.openDirectory(directory, named: directory, create: false, failing: Alcub3Exit.tracesIncomplete)
        var files = 0, written = 0, skipped = 0
        var taken: [String] = []
        for (tid, trace) in traces.sorted(by: { $0.key < $1.key }) where trace.pid != excludedPID {
            guard trace.numbers.count >= Self.minimumSyscalls else { skipped += 1; continue }
            let name = "\(Self.fileSafe(names[trace.pid] ?? "unknown"))-\(trace.pid)-\(tid).trace"
            var text = ""
            text.reserveCapacity(trace.numbers.count * 4)
            for (i, number) in trace.numbers.enumerated() {
                text += String(number)
                text += (i + 1) % Self.numbersPerLine == 0 || i + 1 == trace.numbers.count ? "\n" : " "
            }
            do {
                try FileIO.writeNew(text, named: name, in: dir, mode: 0o644, context: "\(directory)/\(name)")
            } catch where error.errno == EEXIST {
                taken.append(name)
                continue
            } catch {
                throw fail(Alcub3Exit.internalError, "--record-traces: writing \(directory)/\(name): \(error)")
            }
            files += 1
            written += trace.numbers.count
        }
        if !taken.isEmpty {
            throw fail(Alcub3Exit.tracesIncomplete,
                       "--record-traces: \(taken.count) of \(files + taken.count) traces not written: \(directory) already holds "
                       + "\(taken.prefix(3).joined(separator: ", "))\(taken.count > 3 ? ", ..." : "") (made during the run?); "
                       + "alcub3 never writes over an existing file or through a symlink")
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
