import Foundation
import KernelSupport
import Telemetry
import Testing
@testable import Enforcement

/// The BPF-LSM programs load where the kernel allows them; where it refuses
/// (EPERM under lockdown on these hosts) the refusal is the probe's, named,
/// and nothing is left attached. `make test-lsm` runs them in a guest kernel.
@Suite(.serialized, .enabled(if: geteuid() == 0, "needs root: BPF"))
struct LSMEnforcerTests {
    @Test func loadsWhereTheKernelAllowsAndNamesTheRefusalWhereNot() throws {
        let probe = KernelProbe.bpfLSM()
        do {
            let lsm = try LSMEnforcer(rootLevel: 1)
            #expect(probe.available, "loaded although the probe found BPF-LSM refused")
            try lsm.confine(sandboxCgroupID: 0xdead_beef)
            lsm.release(sandboxCgroupID: 0xdead_beef)
        } catch let error as BPFError {
            #expect(!probe.available, "refused although the probe loaded an LSM program: \(error)")
            #expect(SystemError.name(of: error.errno) == probe.errno, "\(error) vs the probe's \(probe.errno ?? "?")")
            print("BPF-LSM refused by this kernel: \(error) (the programs are checked in a guest by make test-lsm)")
        }
    }
}
