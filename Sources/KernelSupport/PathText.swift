/// Path text taken apart by its bytes, for paths that come from the kernel,
/// a guest or an agent. Foundation's NSString path methods are not used on
/// those: `deletingLastPathComponent` traps on a one-character string in the
/// toolchain alcub3 is built with, and an agent chooses its paths.
public enum PathText {
    /// The directory part, as `deletingLastPathComponent` gives it: "/a" of
    /// "/a/b", "/" of "/a", "" of "a", "a" of "a/b/"; "/" of "/".
    public static func parent(of path: String) -> String {
        let bytes = Array(path.utf8)
        guard let end = lastNonSlash(bytes) else { return bytes.isEmpty ? "" : "/" }
        guard let slash = bytes[...end].lastIndex(of: UInt8(ascii: "/")) else { return "" }
        guard let kept = lastNonSlash(Array(bytes[..<slash])) else { return "/" }
        return String(decoding: bytes[...kept], as: UTF8.self)
    }

    /// The last component, as `lastPathComponent` gives it: "b" of "/a/b/",
    /// "a" of "a", "/" of "/", "" of "".
    public static func lastComponent(of path: String) -> String {
        let bytes = Array(path.utf8)
        guard let end = lastNonSlash(bytes) else { return bytes.isEmpty ? "" : "/" }
        let start = bytes[...end].lastIndex(of: UInt8(ascii: "/")).map { $0 + 1 } ?? 0
        return String(decoding: bytes[start...end], as: UTF8.self)
    }

    private static func lastNonSlash(_ bytes: [UInt8]) -> Int? { bytes.lastIndex { $0 != UInt8(ascii: "/") } }
}
