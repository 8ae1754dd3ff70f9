/// What alcub3 knows of each process in its sandboxes, learned from the event
/// stream itself (fork, exec, exit), so every event can name its process.
public struct ProcessInfo: Sendable, Hashable {
    public var name: String
    public var executable: String
    public var arguments: [String]
    public var parentPID: Int32
}

public struct ProcessTable: Sendable {
    private var byPID: [Int32: ProcessInfo] = [:]
    public init() {}

    public subscript(pid: Int32) -> ProcessInfo? { byPID[pid] }

    /// Updates the table from an event. Exits are applied by `forget` once
    /// the exit event itself has been rendered.
    public mutating func observe(_ event: TelemetryEvent) {
        guard case .process(let p) = event else { return }
        switch p.activity {
        case .fork(let child, _, let isThread, let name):
            guard !isThread else { return }
            var info = byPID[p.origin.pid] ?? ProcessInfo(name: name, executable: "", arguments: [], parentPID: 0)
            info.parentPID = p.origin.pid
            info.name = name
            byPID[child] = info
        case .exec(let filename, let arguments, let parentPID, _, let name):
            byPID[p.origin.pid] = ProcessInfo(name: name, executable: filename, arguments: arguments, parentPID: parentPID)
        default:
            return
        }
    }

    public mutating func forget(_ pid: Int32) { byPID.removeValue(forKey: pid) }

    public mutating func seed(pid: Int32, name: String, executable: String) {
        if byPID[pid] == nil { byPID[pid] = ProcessInfo(name: name, executable: executable, arguments: [], parentPID: 0) }
    }
}
