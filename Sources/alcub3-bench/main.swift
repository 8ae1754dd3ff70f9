// alcub3-bench: the figures of docs/benchmarks.md and the escape suite table of
// docs/security.md, measured side by side in one run (scripts/bench.sh runs it).
import Foundation
import KernelSupport
import Sandbox
import Telemetry

let usage = """
    usage: alcub3-bench --benchmarks OUT.md [--escapes OUT.md] [--only SECTION,...]
                        [--getppid-loop BIN] [--notify-loop BIN] [--alcub3 BIN] [--attacker BIN]
    sections: \(Section.allCases.map(\.rawValue).joined(separator: ", ")) (all by default)

    """

enum Section: String, CaseIterable {
    case telemetry, creation, container, vm, store, memory, seccomp, integrity, behaviour, escapes
}

var options: [String: String] = [:]
var rest = CommandLine.arguments.dropFirst()
while let name = rest.popFirst() {
    guard name.hasPrefix("--"), let value = rest.popFirst() else {
        FileHandle.standardError.write(Data(usage.utf8))
        exit(64)
    }
    options[String(name.dropFirst(2))] = value
}
let known: Set<String> = ["benchmarks", "escapes", "only", "getppid-loop", "notify-loop", "alcub3", "attacker"]
let sections = options["only"].map { $0.split(separator: ",").map { Section(rawValue: String($0)) } }
    ?? Section.allCases.map { Optional($0) }
guard let benchmarksPath = options["benchmarks"], Set(options.keys).isSubset(of: known), !sections.contains(nil) else {
    FileHandle.standardError.write(Data(usage.utf8))
    exit(64)
}
/// The input a section needs, or a usage error naming it.
@MainActor func required(_ option: String, by section: Section) -> String {
    guard let value = options[option] else {
        FileHandle.standardError.write(Data("alcub3-bench: the \(section.rawValue) section needs --\(option)\n".utf8))
        exit(64)
    }
    return value
}

let layout = try CgroupLayout.detect()
let parent = try CgroupParentLock(layout: layout)
defer { parent.releaseAndRemoveParentIfUnused() }

var benchmarks = "Measured by `make bench` on \(WallClock.iso8601(unixNanos: WallClock.nowUnixNanos()).prefix(10)), \(host()).\n"
for case let section? in sections {
    log("== \(section.rawValue)")
    switch section {
    case .telemetry:
        benchmarks += "\n" + (try telemetrySection(loopBinary: required("getppid-loop", by: section), layout: layout))
    case .creation:
        benchmarks += "\n" + (try creationSection(layout: layout))
    case .container:
        benchmarks += "\n" + (try containerSection(layout: layout))
    case .vm:
        benchmarks += "\n" + (try vmSection(alcub3: required("alcub3", by: section)))
    case .store:
        benchmarks += "\n" + (try storeSection())
    case .memory:
        benchmarks += "\n" + (try memorySection(alcub3: required("alcub3", by: section)))
    case .seccomp:
        benchmarks += "\n" + (try seccompNotifySection(loopBinary: required("notify-loop", by: section), layout: layout))
    case .integrity:
        benchmarks += "\n" + (try integritySection())
    case .behaviour:
        benchmarks += "\n" + (try behaviourSection())
    case .escapes:
        let suite = try EscapeSuiteBench(attacker: required("attacker", by: section), alcub3: required("alcub3", by: section),
                                         layout: layout).run()
        benchmarks += "\n" + suite.summary
        try suite.table.write(toFile: required("escapes", by: section), atomically: true, encoding: .utf8)
    }
}
print(benchmarks)
try benchmarks.write(toFile: benchmarksPath, atomically: true, encoding: .utf8)
