import ArgumentParser
import KernelSupport

/// Prints one line naming the problem and exits with its code.
struct Failure: Error {
    let code: Int32
    let message: String
}

func fail(_ code: Int32, _ message: String) -> Failure { Failure(code: code, message: message) }
