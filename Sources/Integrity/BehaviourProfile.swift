import Foundation

/// What a sandbox did over an observation window, kept with its baseline so a
/// validation can compare behaviour now with behaviour then: the share of each
/// syscall, the programs it ran, where it connected, where it wrote. The
/// behavioral analyzer will learn richer models; this is the stored form and
/// the comparison hook they plug into.
public struct BehaviourProfile: Codable, Sendable, Equatable {
    /// Seconds of activity the profile covers.
    public var windowSeconds: Double
    public var syscalls: [String: UInt64] = [:]
    // Sorted arrays, not sets: the profile is signed, and a set's order changes
    // from one process to the next.
    public private(set) var executables: [String] = []
    /// "ip:port" or "unix:path".
    public private(set) var destinations: [String] = []
    /// Directories written in (the parent of each written path).
    public private(set) var writtenDirectories: [String] = []

    public mutating func add(executable: String) { Self.insert(executable, into: &executables) }
    public mutating func add(destination: String) { Self.insert(destination, into: &destinations) }
    public mutating func add(writtenDirectory: String) { Self.insert(writtenDirectory, into: &writtenDirectories) }

    private static func insert(_ value: String, into list: inout [String]) {
        let index = list.partitionPoint(where: { $0 >= value })
        if index == list.endIndex || list[index] != value { list.insert(value, at: index) }
    }

    public init(windowSeconds: Double = 0) { self.windowSeconds = windowSeconds }

    public var totalSyscalls: UInt64 { syscalls.values.reduce(0, +) }

    /// Fewer syscalls than this in either window: no mix to compare.
    public static let minimumSyscalls: UInt64 = 1000

    /// Jensen-Shannon divergence (base 2, 0 to 1) between two syscall mixes:
    /// 0 for the same shares, 1 for disjoint ones.
    public static func divergence(_ a: [String: UInt64], _ b: [String: UInt64]) -> Double {
        let ta = Double(a.values.reduce(0, +)), tb = Double(b.values.reduce(0, +))
        guard ta > 0, tb > 0 else { return ta == tb ? 0 : 1 }
        var total = 0.0
        for name in Set(a.keys).union(b.keys) {
            let p = Double(a[name] ?? 0) / ta, q = Double(b[name] ?? 0) / tb, m = (p + q) / 2
            if p > 0 { total += p * log2(p / m) / 2 }
            if q > 0 { total += q * log2(q / m) / 2 }
        }
        return min(1, max(0, total))
    }

    /// What is new now compared with the baseline's profile: programs,
    /// destinations, directories written, syscalls never seen, and a syscall
    /// mix whose divergence is above `threshold` (the configuration's
    /// anomaly_threshold). Each becomes a finding of dimension "behaviour".
    public static func compare(baseline: BehaviourProfile, current: BehaviourProfile, threshold: Double,
                               root: String) -> [IntegrityFinding] {
        var findings: [IntegrityFinding] = []
        func add(_ what: String, _ value: String) {
            var finding = IntegrityFinding(change: .behaviour, path: value, old: nil, new: what, foundBy: "behaviour")
            finding.dimension = "behaviour"
            findings.append(finding)
        }
        for program in Set(current.executables).subtracting(baseline.executables).sorted() { add("new program", program) }
        for destination in Set(current.destinations).subtracting(baseline.destinations).sorted() { add("new destination", destination) }
        for directory in Set(current.writtenDirectories).subtracting(baseline.writtenDirectories).sorted() {
            add("writes in a new directory", directory)
        }
        for name in Set(current.syscalls.keys).subtracting(baseline.syscalls.keys).sorted() { add("syscall never seen", name) }
        // A mix is compared only when both windows saw enough syscalls to have one.
        if baseline.totalSyscalls >= minimumSyscalls && current.totalSyscalls >= minimumSyscalls {
            let d = divergence(baseline.syscalls, current.syscalls)
            if d > threshold { add(String(format: "syscall mix diverged (Jensen-Shannon %.3f > %.3f)", d, threshold), root) }
        }
        return findings
    }
}

extension Array {
    /// The first index whose element satisfies `predicate` (the array being partitioned by it).
    func partitionPoint(where predicate: (Element) -> Bool) -> Int {
        var low = 0, high = count
        while low < high {
            let mid = (low + high) / 2
            if predicate(self[mid]) { high = mid } else { low = mid + 1 }
        }
        return low
    }
}
