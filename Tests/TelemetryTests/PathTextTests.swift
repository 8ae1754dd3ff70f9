import KernelSupport
import Testing

/// Paths from the kernel, a guest or an agent are taken apart by their bytes
/// (Foundation's deletingLastPathComponent traps on a one-character string).
@Suite struct PathTextTests {
    @Test(arguments: [
        ("/a/b", "/a", "b"), ("/a", "/", "a"), ("a", "", "a"), ("a/b/", "a", "b"), ("/", "/", "/"), ("", "", ""),
        ("//x//y//", "//x", "y"), ("x", "", "x"), (".", "", "."), ("/root/work/link", "/root/work", "link"),
    ])
    func parentAndLastComponent(path: String, parent: String, last: String) {
        #expect(PathText.parent(of: path) == parent, "parent of \(path)")
        #expect(PathText.lastComponent(of: path) == last, "last component of \(path)")
    }
}
