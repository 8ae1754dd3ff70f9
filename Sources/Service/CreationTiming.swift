import Foundation

extension CreationStep {
    /// Runs one step of a sandbox's creation and reports it to `steps` (for
    /// `create --verbose` and `debug-create`) with its duration and the
    /// kernel's answer: "ok", or the error it threw.
    static func timed<T>(_ name: String, _ steps: ((CreationStep) -> Void)?, _ body: () throws -> T) throws -> T {
        let start = DispatchTime.now().uptimeNanoseconds
        func done(_ result: String) {
            steps?(CreationStep(step: name, microseconds: Int((DispatchTime.now().uptimeNanoseconds - start) / 1000), result: result))
        }
        do {
            let value = try body()
            done("ok")
            return value
        } catch {
            done("\(error)")
            throw error
        }
    }
}
