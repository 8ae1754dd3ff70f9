import Foundation
import Sandbox
import Telemetry

extension DoctorCommand {
    /// The vm level: which accelerator QEMU would use and why, and the guest image.
    static func vmResults() -> [KernelProbe.Result] {
        let choice = VMAccelerator.choose()
        var results = [KernelProbe.Result(name: "vm accelerator", available: true,
                                          detail: "\(choice.accelerator.rawValue): \(choice.reason)", errno: nil, fallback: nil)]
        let directory = GuestImage.defaultDirectory
        do {
            let image = try GuestImage.load(directory: directory)
            // The python capability's initramfs (every shipped classification has python).
            let python: String
            do {
                _ = try GuestImage.load(directory: directory, runtime: .python)
                python = "the python runtime's initramfs matches it too"
            } catch {
                python = "no python runtime (\(error)); built again on the next vm start"
            }
            results.append(.init(name: "vm guest image", available: true,
                                 detail: "\(directory): \(image.sources["kernel-package"] ?? "kernel"), kernel and initramfs match MANIFEST; \(python)",
                                 errno: nil, fallback: nil))
        } catch {
            results.append(.init(name: "vm guest image", available: false, detail: "\(error)", errno: nil,
                                 fallback: "alcub3 run --isolation-level vm builds it on first use (scripts/build-guest.sh)"))
        }
        return results
    }
}
