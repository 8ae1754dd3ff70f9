import Foundation
import Sandbox
import Testing

/// The hardware level's swtpm: started per sandbox, answering on its control
/// socket, and gone with its files after stop.
@Suite(.serialized) struct VirtualTPMTests {
    @Test func startsAnswersAndLeavesNothing() throws {
        let dir = NSTemporaryDirectory() + "alcub3-tpm-" + UUID().uuidString
        let tpm = try VirtualTPM(directory: dir)
        let pid = tpm.pid
        #expect(pid > 0 && kill(pid, 0) == 0)
        #expect(FileManager.default.fileExists(atPath: tpm.controlSocket))
        let answer = HostCommand.run(["/usr/bin/swtpm_ioctl", "--unix", tpm.controlSocket, "-c"])
        #expect(answer.code == 0 && answer.output.contains("ptm capability"), "\(answer.output)")
        #expect(tpm.qemuArguments.contains("emulator,id=tpm0,chardev=chrtpm"))
        tpm.stop()
        #expect(kill(pid, 0) != 0, "swtpm is still running")
        #expect(!FileManager.default.fileExists(atPath: dir), "its state directory is left")
    }
}
