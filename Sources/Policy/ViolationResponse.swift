/// What happens to a sandbox when it attempts something its policy refuses
/// (`on_violation` in the configuration). The attempt itself is always
/// refused by the kernel and reported; the response is what comes on top,
/// and is itself audited.
public enum ViolationResponse: String, NamedCase, Codable {
    /// Report it; the sandbox goes on.
    case alert
    /// Report it and kill the process that tried (SIGKILL); the sandbox goes on.
    case deny
    /// Report it and end the whole sandbox.
    case kill
    /// Report it and freeze the whole sandbox (cgroup freezer) for forensics,
    /// until `alcub3 sandbox thaw` or `terminate`.
    case freeze

    public static let noun = "violation response"
}
