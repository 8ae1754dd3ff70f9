#if canImport(Glibc)
import Glibc
#endif

/// Finds the program a command names, the way a shell would, before anything
/// is created: a missing command must not leave a half-made sandbox behind.
public enum CommandResolver {
    /// The resolved program, refused when the sandbox will not see it (it or the
    /// file a symlink leads to lies under a path the policy hides).
    public static func resolve(_ command: String, hiddenPaths: [String]) throws -> String {
        let path = try resolve(command)
        let real = realpath(path, nil).map { p -> String in defer { free(p) }; return String(cString: p) } ?? path
        for candidate in [path, real] {
            if let hider = hiddenPaths.first(where: { candidate == $0 || candidate.hasPrefix($0.hasSuffix("/") ? $0 : $0 + "/") }) {
                throw SandboxError.commandHidden(command: command, path: candidate, hiddenBy: hider)
            }
        }
        return path
    }

    public static func resolve(_ command: String, path: String? = getenv("PATH").map { String(cString: $0) }) throws -> String {
        if command.contains("/") {
            return try check(command, named: command)
        }
        let dirs = (path ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").split(separator: ":")
        var sawNonExecutable = false
        for dir in dirs {
            let candidate = String(dir) + "/" + command
            do {
                return try check(candidate, named: command)
            } catch SandboxError.commandNotExecutable {
                sawNonExecutable = true
            } catch {
                continue
            }
        }
        throw sawNonExecutable ? SandboxError.commandNotExecutable(command) : SandboxError.commandNotFound(command)
    }

    private static func check(_ candidate: String, named name: String) throws -> String {
        var st = stat()
        guard stat(candidate, &st) == 0 else { throw SandboxError.commandNotFound(name) }
        guard (st.st_mode & S_IFMT) == S_IFREG, access(candidate, X_OK) == 0 else {
            throw SandboxError.commandNotExecutable(name)
        }
        if candidate.hasPrefix("/") { return candidate }
        guard let resolved = realpath(candidate, nil) else { throw SandboxError.commandNotFound(name) }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
