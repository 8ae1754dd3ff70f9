import Foundation
import KernelSupport
import Testing
@testable import Sandbox

/// Hostile images (security audit H5, M5): nothing beside the directory an
/// image unpacks into may change, and a decompression bomb stops at its limit.
/// Every case unpacks into a scratch copy of the cache's layout
/// (`images/<tree>` beside the one being made), never /var/cache/alcub3.
@Suite(.serialized, .enabled(if: runsAsRoot, .init(rawValue: needsRoot)))
struct ImageHardeningTests {
    static let canaryTree = String(repeating: "1", count: 64)

    /// A scratch image cache holding another image's tree (`bin/CANARY`) and its `.size`.
    struct Cache {
        let dir: String
        var images: String { dir + "/images" }
        var canary: String { images + "/" + ImageHardeningTests.canaryTree + "/bin/CANARY" }

        init(_ label: String) throws {
            dir = try TestImages.scratch(label)
            try FileManager.default.createDirectory(atPath: images + "/" + ImageHardeningTests.canaryTree + "/bin",
                                                    withIntermediateDirectories: true)
            try "another image's file\n".write(toFile: canary, atomically: false, encoding: .utf8)
            try "4096".write(toFile: images + "/" + ImageHardeningTests.canaryTree + ".size", atomically: false, encoding: .utf8)
            chmod(images, 0o755)
        }

        /// What must survive: the other tree, the cache's listing, its mode and owner.
        func expectIntact(besides made: String? = nil, _ comment: Comment? = nil) {
            #expect((try? String(contentsOfFile: canary, encoding: .utf8)) == "another image's file\n", "canary gone: \(comment ?? "")")
            var st = stat()
            #expect(stat(images, &st) == 0 && st.st_mode & 0o7777 == 0o755 && st.st_uid == 0 && st.st_gid == 0,
                    "the cache directory's mode or owner changed: \(String(st.st_mode & 0o7777, radix: 8)) \(st.st_uid):\(st.st_gid)")
            let listing = Set((try? FileManager.default.contentsOfDirectory(atPath: images)) ?? [])
            let expected = Set([ImageHardeningTests.canaryTree, ImageHardeningTests.canaryTree + ".size"] + (made.map { [$0] } ?? []))
            #expect(listing == expected, "the cache holds \(listing.sorted())")
        }
    }

    func imageError(_ body: () throws -> Void) -> ImageError? {
        do { try body() } catch let error as ImageError { return error } catch { Issue.record("not an ImageError: \(error)") }
        return nil
    }

    /// A layout of `layers` in `dir`, validated.
    func image(_ layers: [TarBuilder], in dir: String, gzip: Bool = false) throws -> ValidatedImage {
        let digest = try TestImages.makeLayout(at: dir + "/layout", layers: layers.map(\.archive), gzip: gzip)
        return try OCIImage.validate(path: dir + "/layout", expected: digest, allowed: [], staging: dir + "/staging")
    }

    /// H5 (a), (b): whiteouts naming the root's parent and PAX names that a NUL
    /// turns into "..": refused, and the cache beside the root is untouched.
    @Test(arguments: [
        ("whiteout of ..", [(String, String)](), ".wh...", Character("0"), "names '..'"),
        ("whiteout of .", [], ".wh..", "0", "names '.'"),
        ("empty whiteout", [], ".wh.", "0", "names ''"),
        ("PAX path ..\\0 on a directory, 0777 nobody", [("path", "..\0"), ("uid", "65534"), ("gid", "65534")], "d", "5", "NUL byte"),
        ("PAX path .wh...\\0x", [("path", ".wh...\0x")], "f", "0", "NUL byte"),
        ("PAX path a/..\\0/x", [("path", "a/..\0/x")], "f", "0", "NUL byte"),
        ("PAX linkpath with a NUL", [("linkpath", "/etc/passwd\0")], "l", "2", "NUL byte"),
    ])
    func hostileNamesNeverReachBesideTheRoot(label: String, pax: [(String, String)], name: String, type: Character,
                                             why: String) throws {
        let cache = try Cache("hostile-name")
        defer { try? FileManager.default.removeItem(atPath: cache.dir) }
        var layer = TarBuilder()
        layer.add("ok", content: "fine")
        if !pax.isEmpty { layer.pax(pax) }
        layer.add(name, type: type, link: type == "2" ? "target" : "", mode: 0o777, uid: 65534, gid: 65534)
        let image = try image([layer], in: cache.dir)
        let rootfs = cache.images + "/.unpacking-test"
        try FileManager.default.createDirectory(atPath: rootfs, withIntermediateDirectories: false)
        let refusal = imageError { try image.unpack(into: rootfs) }
        // The damage first: on a refusal of the wrong kind, say what changed too.
        cache.expectIntact(besides: ".unpacking-test", "\(label)")
        #expect(FileManager.default.fileExists(atPath: rootfs + "/ok"), "\(label): the root itself was emptied")
        let error = try #require(refusal, "\(label): accepted")
        #expect(error.kind == .securityValidation, "\(label): \(error)")
        #expect(error.message.hasPrefix(ImageError.securityPrefix) && error.message.contains("layer 1") && error.message.contains(why),
                "\(label): \(error.message)")
    }

    /// The same whiteout through the cache's own path: the failed tree goes, the other stays.
    @Test func aWhiteoutOfTheParentLeavesTheCacheAsItWas() throws {
        let cache = try Cache("hostile-cache")
        defer { try? FileManager.default.removeItem(atPath: cache.dir) }
        var layer = TarBuilder()
        layer.add("bin/", type: "5", mode: 0o755)
        layer.add(".wh...")
        let image = try image([layer], in: cache.dir)
        let refusal = imageError { _ = try ImageCache.tree(for: image, root: cache.images) }
        cache.expectIntact()
        let error = try #require(refusal)
        #expect(error.kind == .securityValidation && error.message.contains("'.wh...'"), "\(error.message)")
    }

    /// H5 (c): the tar of a layout is unpacked before any digest is checked; a
    /// top-level `.wh...` or a `..\0` directory in it must not reach the bundle
    /// around the staging directory.
    @Test(arguments: [
        ("whiteout of ..", [(String, String)](), ".wh...", Character("0"), "whiteout"),
        ("PAX path ..\\0, 0777 nobody", [("path", "..\0")], "d", "5", "NUL byte"),
    ])
    func aHostileLayoutTarNeverReachesTheBundle(label: String, pax: [(String, String)], name: String, type: Character,
                                                why: String) throws {
        let bundle = try TestImages.scratch("hostile-layout")
        defer { try? FileManager.default.removeItem(atPath: bundle) }
        chmod(bundle, 0o700)
        try "owner-pid\n".write(toFile: bundle + "/owner", atomically: false, encoding: .utf8)
        var outer = TarBuilder()
        outer.add("oci-layout", content: #"{"imageLayoutVersion":"1.0.0"}"#)
        if !pax.isEmpty { outer.pax(pax) }
        outer.add(name, type: type, mode: 0o777, uid: 65534, gid: 65534)
        let tar = bundle + "/../" + (bundle as NSString).lastPathComponent + ".tar"
        try outer.archive.write(to: URL(fileURLWithPath: tar))
        defer { try? FileManager.default.removeItem(atPath: tar) }
        let refusal = imageError { _ = try OCIImage.validate(path: tar, expected: nil, allowed: [], staging: bundle + "/layout") }
        #expect((try? String(contentsOfFile: bundle + "/owner", encoding: .utf8)) == "owner-pid\n", "\(label): the bundle's owner file went")
        var st = stat()
        #expect(stat(bundle, &st) == 0 && st.st_mode & 0o7777 == 0o700 && st.st_uid == 0, "\(label): the bundle's mode or owner changed")
        let error = try #require(refusal, "\(label): accepted")
        #expect(error.kind == .securityValidation && error.message.contains(why), "\(label): \(error.message)")
    }

    /// A layout tar as `docker save` writes it (manifest.json, repositories
    /// beside the layout): those are skipped, the image validates.
    @Test func aLayoutTarWithDockersExtraFilesValidates() throws {
        let dir = try TestImages.scratch("docker-save")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var layer = TarBuilder()
        layer.add("bin/", type: "5", mode: 0o755)
        let digest = try TestImages.makeLayout(at: dir + "/layout", layers: [layer.archive])
        try "[]".write(toFile: dir + "/layout/manifest.json", atomically: false, encoding: .utf8)
        try "{}".write(toFile: dir + "/layout/repositories", atomically: false, encoding: .utf8)
        #expect(HostCommand.run(["/bin/tar", "-C", dir + "/layout", "-cf", dir + "/image.tar", "."]).code == 0)
        let image = try OCIImage.validate(path: dir + "/image.tar", expected: digest, allowed: [], staging: dir + "/staging")
        #expect(image.manifestDigest == digest)
        #expect(!FileManager.default.fileExists(atPath: dir + "/staging/manifest.json"))
    }

    /// M5: a small gzip layer that expands past the image's limit is refused
    /// while it streams, naming the layer, the entry and the limit; the
    /// half-made tree goes and the cache keeps what it had.
    @Test func aDecompressionBombStopsAtTheLimitAndLeavesNothing() throws {
        let cache = try Cache("bomb")
        defer { try? FileManager.default.removeItem(atPath: cache.dir) }
        var layer = TarBuilder()
        layer.add("bin/", type: "5", mode: 0o755)
        layer.addZeros("bomb.bin", count: 64 << 20)
        let image = try image([layer], in: cache.dir, gzip: true)
        let compressed = try TestImages.layerBlob(of: cache.dir + "/layout")
        #expect(TestImages.size(compressed) < 1 << 20, "the bomb should be small: \(TestImages.size(compressed)) bytes")
        let limits = ImageUnpackLimits(maxBytes: 8 << 20, maxEntries: 1000, maxRatio: 100_000)
        let refusal = imageError { _ = try ImageCache.tree(for: image, root: cache.images, limits: limits) }
        cache.expectIntact()
        let error = try #require(refusal)
        #expect(error.kind == .tooLarge, "\(error)")
        for part in ["layer 1", "bomb.bin", "\(8 << 20) bytes", "ALCUB3_IMAGE_MAX_BYTES"] {
            #expect(error.message.contains(part), "no '\(part)' in: \(error.message)")
        }
    }

    /// M5: the other limits, each named: the compression ratio of a gzip
    /// layer, the entry count, and bytes summed over layers.
    @Test func theRatioEntryAndTotalLimitsEachStopAnImage() throws {
        let dir = try TestImages.scratch("limits")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func refusal(_ layers: [TarBuilder], gzip: Bool, _ limits: ImageUnpackLimits) throws -> ImageError? {
            let case_ = dir + "/" + UUID().uuidString
            let image = try image(layers, in: case_, gzip: gzip)
            try FileManager.default.createDirectory(atPath: case_ + "/rootfs", withIntermediateDirectories: true)
            return imageError { try image.unpack(into: case_ + "/rootfs", limits: limits) }
        }
        var bomb = TarBuilder()
        bomb.addZeros("zeros", count: 16 << 20)
        var ratio = ImageUnpackLimits(maxBytes: 1 << 30, maxEntries: 1000, maxRatio: 100)
        ratio.ratioFloor = 1 << 20
        let tooDense = try #require(try refusal([bomb], gzip: true, ratio))
        #expect(tooDense.kind == .tooLarge && tooDense.message.contains("expands more than 100 times"), "\(tooDense)")

        var many = TarBuilder()
        for i in 0..<20 { many.add("f\(i)", content: "x") }
        let entries = try #require(try refusal([many], gzip: false, ImageUnpackLimits(maxBytes: 1 << 30, maxEntries: 10, maxRatio: 100)))
        #expect(entries.kind == .tooLarge && entries.message.contains("more than its limit of 10 entries"), "\(entries)")

        var three = TarBuilder(), another = TarBuilder()
        three.addZeros("three-mib", count: 3 << 20)
        another.addZeros("three-more", count: 3 << 20)
        let total = try #require(try refusal([three, another], gzip: false, ImageUnpackLimits(maxBytes: 4 << 20, maxEntries: 1000, maxRatio: 100)))
        #expect(total.kind == .tooLarge && total.message.contains("layer 2"), "\(total)")

        // Within its limits the same image unpacks.
        #expect(try refusal([three, another], gzip: true, .init(maxBytes: 16 << 20, maxEntries: 1000, maxRatio: 100_000)) == nil)
    }

    @Test func theLimitsComeFromTheEnvironmentAndNeverPassTheCacheBudget() {
        let defaults = ImageUnpackLimits.fromEnvironment([:])
        #expect(defaults.maxBytes == 4 << 30 && defaults.maxEntries == 500_000 && defaults.maxRatio == 100)
        let set = ImageUnpackLimits.fromEnvironment(["ALCUB3_IMAGE_MAX_BYTES": "1000000", "ALCUB3_IMAGE_MAX_ENTRIES": "7",
                                                     "ALCUB3_IMAGE_MAX_RATIO": "9"])
        #expect(set.maxBytes == 1_000_000 && set.maxEntries == 7 && set.maxRatio == 9)
        let capped = ImageUnpackLimits.fromEnvironment(["ALCUB3_IMAGE_MAX_BYTES": "100000000000", "ALCUB3_IMAGE_CACHE_BYTES": "5000000"])
        #expect(capped.maxBytes == 5_000_000)
    }
}
