import Testing
@testable import Service
@testable import Telemetry

/// The service records what an agent writes by directory; an agent (or a
/// guest) chooses its paths, and none may bring the service down.
@Suite struct BehaviourRecorderTests {
    func write(_ path: String) -> TelemetryEvent {
        .file(FileEvent(origin: EventOrigin(bootNanos: 1, sandboxCgroupID: 9, pid: 42, tid: 42, uid: 0), operation: .open, syscall: 257,
                        result: 3, openFlags: 0o101, mode: 0o644, ownerUID: 0, ownerGID: 0, fileID: 1, path: path, secondPath: nil))
    }

    @Test func anyPathIsRecordedByItsDirectory() {
        let recorder = BehaviourRecorder()
        // A one-character path once trapped in Foundation's deletingLastPathComponent and ended the service.
        for path in ["a", "", "/", "/root/work/a", "x/", "//"] { recorder.record(write(path)) }
        #expect(Set(recorder.current().writtenDirectories) == ["/", "/root/work"], "\(recorder.current().writtenDirectories)")
    }
}
