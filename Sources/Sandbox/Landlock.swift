#if canImport(Glibc)
import Glibc
#endif
import CAlcub3
import KernelSupport

/// The kernel's Landlock support; the rules themselves are applied by the
/// spawn shim (alcub3_spawn.c) in each sandbox from its `ProcessSpec`.
public enum Landlock {
    /// The running kernel's Landlock ABI version; 0 when Landlock is not
    /// built in (ENOSYS) or not enabled at boot (EOPNOTSUPP).
    public static func abi() throws -> Int {
        let abi = alcub3_landlock_abi()
        if abi == -ENOSYS || abi == -EOPNOTSUPP { return 0 }
        if abi < 0 { throw SystemError(errno: -abi, call: "landlock_create_ruleset", context: "ABI version") }
        return Int(abi)
    }
}
