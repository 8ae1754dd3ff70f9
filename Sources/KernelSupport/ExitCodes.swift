/// alcub3's own exit codes, one set for the CLI and the service (docs/cli.md).
/// A sandboxed command's code passes through unchanged; a signal that ended
/// it gives 128 + the signal number.
public enum Alcub3Exit {
    public static let usage: Int32 = 64              // bad arguments, no command (ArgumentParser's own code too)
    public static let unknownClassification: Int32 = 65
    public static let invalidAgentID: Int32 = 66
    public static let unsupportedIsolation: Int32 = 67
    public static let invalidPolicy: Int32 = 68      // a policy file or seccomp profile refused
    public static let serviceUnavailable: Int32 = 69
    public static let internalError: Int32 = 70
    public static let kernelRefused: Int32 = 71      // a BPF program, cgroup or namespace the kernel refused
    public static let notFound: Int32 = 72           // no such sandbox or record
    public static let agentInUse: Int32 = 73
    public static let imageRefused: Int32 = 74       // a container image missing, not OCI, unsupported or failing validation
    public static let tracesIncomplete: Int32 = 75   // --record-traces: records were dropped, no traces written
    public static let vmFailed: Int32 = 76           // the vm level: QEMU missing, limits the host cannot give, a guest that failed or never booted
    public static let notAllowed: Int32 = 77         // not root, or a socket peer the service does not serve
    public static let notRoot: Int32 = notAllowed
    public static let commandNotExecutable: Int32 = 126
    public static let commandNotFound: Int32 = 127
}
