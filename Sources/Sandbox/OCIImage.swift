#if canImport(Glibc)
import Glibc
#endif
import CAlcub3
import Crypto
import Foundation
import KernelSupport

/// Why an image cannot be used. A `.securityValidation` failure (a digest or
/// size that does not match, an unpinned manifest, an entry that would land
/// outside the root filesystem or make a device) means the image may have been
/// tampered with: it never starts. `.tooLarge`: it would unpack past its
/// limits (ImageUnpackLimits), as a decompression bomb does.
public struct ImageError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case notFound, notAnImage, malformed, missingBlob, securityValidation, unsupportedArchitecture, unsupported, noSpace, tooLarge
    }

    public static let securityPrefix = "Container image failed security validation: "

    public let kind: Kind
    public let message: String

    init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = kind == .securityValidation ? Self.securityPrefix + message : message
    }

    public var description: String { message }
}

/// A sha256 digest as OCI writes it, "sha256:" and 64 lower-case hex digits.
/// Only this form is accepted, so a digest can name a blob path safely.
public struct ImageDigest: Sendable, Hashable, CustomStringConvertible {
    public let hex: String

    public init?(_ text: String) {
        guard text.hasPrefix("sha256:") else { return nil }
        let hex = String(text.dropFirst(7))
        guard hex.utf8.count == 64, hex.utf8.allSatisfy({ (48...57).contains($0) || (97...102).contains($0) }) else { return nil }
        self.hex = hex
    }

    init(hex: String) { self.hex = hex }

    public var description: String { "sha256:" + hex }

    /// The sha256 of a file, streamed, and its size.
    static func of(file path: String) throws -> (ImageDigest, UInt64) {
        let fd = try OwnedDescriptor(path: path, flags: O_RDONLY)
        var hasher = SHA256()
        var size: UInt64 = 0
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = try syscallChecked("read", path) { buffer.withUnsafeMutableBytes { read(fd.raw, $0.baseAddress, $0.count) } }
            if n == 0 { break }
            buffer.withUnsafeBytes { hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            size += UInt64(n)
        }
        return (ImageDigest(hasher.finalize()), size)
    }

    init(_ digest: SHA256.Digest) {
        hex = digest.map { String(format: "%02x", $0) }.joined()
    }
}

/// Manifest digests an operator accepts without `--image-digest`: one
/// `sha256:<hex>` per line, anything after it on the line (a name) ignored,
/// `#` comments and blank lines skipped.
public enum ImageAllowList {
    public static let defaultPath = "/etc/alcub3/allowed-images"

    public static func load(_ path: String = defaultPath) throws -> Set<ImageDigest> {
        guard FileIO.exists(path) else { return [] }
        var digests = Set<ImageDigest>()
        for (number, line) in try FileIO.read(path).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let text = line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
            guard let first = text.split(whereSeparator: { $0 == " " || $0 == "\t" }).first else { continue }
            guard let digest = ImageDigest(String(first)) else {
                throw ImageError(.malformed, "\(path):\(number + 1): '\(first)' is not a digest like sha256:<64 hex digits>")
            }
            digests.insert(digest)
        }
        return digests
    }
}

/// What the image's config says about running it (the OCI image config's `config`).
public struct ImageRunConfig: Sendable, Equatable {
    public var environment: [String] = []
    public var entrypoint: [String] = []
    public var command: [String] = []
    public var workingDirectory: String?
}

/// An image ready to unpack: a root filesystem directory, or an OCI image
/// layout whose manifest, config and every layer were checked against their
/// digests and sizes.
public struct ValidatedImage: Sendable {
    public enum Source: Sendable, Equatable {
        /// A directory used as the root filesystem (copied, not validated: it is the caller's own tree).
        case rootfs(String)
        /// An OCI image layout: the manifest's digest and its layers in order.
        case layout(manifest: ImageDigest, layers: [Layer])
    }

    public struct Layer: Sendable, Equatable {
        public var path: String
        public var digest: ImageDigest
        public var gzip: Bool
        /// The config's `rootfs.diff_ids` entry: the sha256 of the uncompressed tar.
        public var diffID: ImageDigest?
    }

    public let source: Source
    public let run: ImageRunConfig

    /// The manifest digest, for the record; nil for a root filesystem directory.
    public var manifestDigest: ImageDigest? {
        if case .layout(let manifest, _) = source { return manifest }
        return nil
    }
}

/// Reads and validates container images (docs/architecture.md, "Container level").
public enum OCIImage {
    static let manifestTypes: Set<String> = ["application/vnd.oci.image.manifest.v1+json",
                                             "application/vnd.docker.distribution.manifest.v2+json"]
    static let indexTypes: Set<String> = ["application/vnd.oci.image.index.v1+json",
                                          "application/vnd.docker.distribution.manifest.list.v2+json"]
    static let tarLayerTypes: Set<String> = ["application/vnd.oci.image.layer.v1.tar",
                                             "application/vnd.oci.image.layer.nondistributable.v1.tar"]
    static let gzipLayerTypes: Set<String> = ["application/vnd.oci.image.layer.v1.tar+gzip",
                                              "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                                              "application/vnd.docker.image.rootfs.diff.tar.gzip"]
    /// JSON blobs larger than this are refused rather than read into memory.
    static let jsonLimit = 4 << 20

    /// Checks the image at `path`: a root filesystem directory, an OCI image
    /// layout directory, or a tar of one (its layout files alone unpacked into
    /// `staging`, which the caller removes). The manifest must be `expected` or in `allowed`.
    public static func validate(path: String, expected: ImageDigest?, allowed: Set<ImageDigest>,
                                staging: String, limits: ImageUnpackLimits = .fromEnvironment()) throws -> ValidatedImage {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw ImageError(.notFound, "container image not found: \(path) (\(String(cString: strerror(errno))))")
        }
        if (st.st_mode & S_IFMT) == S_IFREG {
            try unpackLayoutTar(path, into: staging, limits: limits)
            guard FileIO.exists(staging + "/oci-layout") else {
                throw ImageError(.notAnImage, "\(path) is not an OCI image layout: the tar has no oci-layout file")
            }
            return try validateLayout(staging, name: path, expected: expected, allowed: allowed)
        }
        guard (st.st_mode & S_IFMT) == S_IFDIR else {
            throw ImageError(.notAnImage, "\(path) is neither a directory nor a tar of an OCI image layout")
        }
        if FileIO.exists(path + "/oci-layout") {
            return try validateLayout(path, name: path, expected: expected, allowed: allowed)
        }
        if FileIO.exists(path + "/index.json") || FileIO.exists(path + "/blobs") {
            throw ImageError(.notAnImage, "\(path) is not an OCI image layout: it has no oci-layout file")
        }
        guard ["bin", "usr", "etc"].contains(where: { FileIO.exists(path + "/" + $0) }) else {
            throw ImageError(.notAnImage, "\(path) is neither an OCI image layout (no oci-layout file) nor a root filesystem (no bin, usr or etc)")
        }
        if expected != nil {
            throw ImageError(.notAnImage, "\(path) is a root filesystem directory, which has no manifest digest to check; --image-digest applies to OCI image layouts")
        }
        return ValidatedImage(source: .rootfs(path), run: ImageRunConfig())
    }

    // MARK: the layout

    static func validateLayout(_ dir: String, name: String, expected: ImageDigest?, allowed: Set<ImageDigest>) throws -> ValidatedImage {
        let layout = try json(dir + "/oci-layout", what: "oci-layout")
        guard layout["imageLayoutVersion"] is String else {
            throw ImageError(.malformed, "\(name): oci-layout has no imageLayoutVersion")
        }
        let index = try json(dir + "/index.json", what: "index.json")
        let manifest = try selectManifest(in: index, dir: dir, name: name, expected: expected)
        if let expected, manifest.digest != expected {
            throw ImageError(.securityValidation, "\(name): the manifest's digest is \(manifest.digest), not the expected \(expected)")
        }
        if expected == nil && !allowed.contains(manifest.digest) {
            throw ImageError(.securityValidation, "\(name): manifest \(manifest.digest) is not pinned: give the expected digest "
                             + "(--image-digest \(manifest.digest)) or add it to the allow-list \(ImageAllowList.defaultPath)")
        }
        let manifestObject = try verifiedJSON(manifest, dir: dir, name: name, role: "manifest")
        guard let configDescriptor = try descriptor(manifestObject["config"], name: name, role: "the manifest's config") else {
            throw ImageError(.malformed, "\(name): manifest \(manifest.digest) has no config")
        }
        let config = try verifiedJSON(configDescriptor, dir: dir, name: name, role: "config")
        let architecture = config["architecture"] as? String ?? "unknown"
        let os = config["os"] as? String ?? "unknown"
        guard architecture == "amd64" && os == "linux" else {
            throw ImageError(.unsupportedArchitecture,
                             "\(name): unsupported architecture \(architecture)/\(os): this host runs amd64/linux images")
        }
        let diffIDs = ((config["rootfs"] as? [String: Any])?["diff_ids"] as? [String])?.compactMap(ImageDigest.init)
        guard let layerList = manifestObject["layers"] as? [Any] else {
            throw ImageError(.malformed, "\(name): manifest \(manifest.digest) has no layers list")
        }
        var layers: [ValidatedImage.Layer] = []
        for (i, value) in layerList.enumerated() {
            guard let layer = try descriptor(value, name: name, role: "layer \(i + 1)") else {
                throw ImageError(.malformed, "\(name): layer \(i + 1) of the manifest is not a descriptor")
            }
            let gzip: Bool
            if gzipLayerTypes.contains(layer.mediaType) { gzip = true }
            else if tarLayerTypes.contains(layer.mediaType) || layer.mediaType == "application/vnd.docker.image.rootfs.diff.tar" { gzip = false }
            else { throw ImageError(.unsupported, "\(name): layer \(i + 1) has media type \(layer.mediaType); alcub3 unpacks tar and tar+gzip layers") }
            let path = try verifyBlob(layer, dir: dir, name: name, role: "layer \(i + 1)")
            layers.append(.init(path: path, digest: layer.digest, gzip: gzip,
                                diffID: diffIDs.flatMap { i < $0.count ? $0[i] : nil }))
        }
        var run = ImageRunConfig()
        if let settings = config["config"] as? [String: Any] {
            run.environment = settings["Env"] as? [String] ?? []
            run.entrypoint = settings["Entrypoint"] as? [String] ?? []
            run.command = settings["Cmd"] as? [String] ?? []
            run.workingDirectory = (settings["WorkingDir"] as? String).flatMap { $0.isEmpty ? nil : $0 }
        }
        return ValidatedImage(source: .layout(manifest: manifest.digest, layers: layers), run: run)
    }

    struct Descriptor {
        var mediaType: String
        var digest: ImageDigest
        var size: UInt64
        var platform: (architecture: String, os: String)?
    }

    static func descriptor(_ value: Any?, name: String, role: String) throws -> Descriptor? {
        guard let object = value as? [String: Any] else { return nil }
        guard let digestText = object["digest"] as? String else {
            throw ImageError(.malformed, "\(name): \(role) has no digest")
        }
        guard let digest = ImageDigest(digestText) else {
            throw ImageError(.unsupported, "\(name): \(role) has digest '\(digestText)'; alcub3 checks sha256 digests (sha256:<64 hex digits>)")
        }
        guard let size = (object["size"] as? NSNumber)?.int64Value, size >= 0 else {
            throw ImageError(.malformed, "\(name): \(role) (\(digest)) has no size")
        }
        let platform = (object["platform"] as? [String: Any]).map {
            (architecture: $0["architecture"] as? String ?? "unknown", os: $0["os"] as? String ?? "unknown")
        }
        return Descriptor(mediaType: object["mediaType"] as? String ?? "", digest: digest, size: UInt64(size), platform: platform)
    }

    /// The manifest to run: the one with the expected digest, else the one
    /// for amd64/linux (following a nested index one level down).
    static func selectManifest(in index: [String: Any], dir: String, name: String, expected: ImageDigest?) throws -> Descriptor {
        guard let entries = index["manifests"] as? [Any], !entries.isEmpty else {
            throw ImageError(.malformed, "\(name): index.json lists no manifests")
        }
        var candidates = try entries.enumerated().compactMap { i, value in
            try descriptor(value, name: name, role: "index.json manifests[\(i)]")
        }
        // A nested index (a multi-platform image): its manifests, after checking it.
        if candidates.count == 1, indexTypes.contains(candidates[0].mediaType) {
            let nested = try verifiedJSON(candidates[0], dir: dir, name: name, role: "image index")
            candidates = try ((nested["manifests"] as? [Any]) ?? []).enumerated().compactMap { i, value in
                try descriptor(value, name: name, role: "image index manifests[\(i)]")
            }
        }
        candidates = candidates.filter { $0.mediaType.isEmpty || manifestTypes.contains($0.mediaType) }
        if let expected {
            if let match = candidates.first(where: { $0.digest == expected }) { return match }
            let found = candidates.map(\.digest.description).joined(separator: ", ")
            throw ImageError(.securityValidation, "\(name): no manifest has the expected digest \(expected) (the image has \(found.isEmpty ? "none" : found))")
        }
        let forHost = candidates.filter { $0.platform == nil || ($0.platform!.architecture == "amd64" && $0.platform!.os == "linux") }
        if let only = forHost.first, forHost.count == 1 || candidates.count == 1 { return only }
        if forHost.isEmpty, let other = candidates.first?.platform {
            throw ImageError(.unsupportedArchitecture,
                             "\(name): unsupported architecture \(other.architecture)/\(other.os): this host runs amd64/linux images")
        }
        throw ImageError(.malformed, "\(name): index.json lists \(candidates.count) manifests; name one with --image-digest")
    }

    /// The blob's path after checking that it exists and that its size and
    /// sha256 are the descriptor's.
    static func verifyBlob(_ descriptor: Descriptor, dir: String, name: String, role: String) throws -> String {
        let path = dir + "/blobs/sha256/" + descriptor.digest.hex
        guard FileIO.exists(path) else {
            throw ImageError(.missingBlob, "\(name): the \(role) blob \(descriptor.digest) is missing (no blobs/sha256/\(descriptor.digest.hex))")
        }
        let (actual, size) = try ImageDigest.of(file: path)
        if actual != descriptor.digest {
            throw ImageError(.securityValidation, "\(role) blob blobs/sha256/\(descriptor.digest.hex) of \(name): "
                             + "expected \(descriptor.digest), got \(actual)")
        }
        if size != descriptor.size {
            throw ImageError(.securityValidation, "\(role) blob blobs/sha256/\(descriptor.digest.hex) of \(name): "
                             + "expected \(descriptor.size) bytes, got \(size)")
        }
        return path
    }

    static func verifiedJSON(_ descriptor: Descriptor, dir: String, name: String, role: String) throws -> [String: Any] {
        guard descriptor.size <= UInt64(jsonLimit) else {
            throw ImageError(.malformed, "\(name): the \(role) \(descriptor.digest) is \(descriptor.size) bytes; alcub3 reads at most \(jsonLimit)")
        }
        return try json(try verifyBlob(descriptor, dir: dir, name: name, role: role), what: "the \(role) \(descriptor.digest) of \(name)")
    }

    static func json(_ path: String, what: String) throws -> [String: Any] {
        guard FileIO.exists(path) else { throw ImageError(.malformed, "\(what) is missing (\(path))") }
        let text = try FileIO.read(path, limit: jsonLimit + 1)
        guard text.utf8.count <= jsonLimit else { throw ImageError(.malformed, "\(what) is larger than \(jsonLimit) bytes") }
        guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
            throw ImageError(.malformed, "\(what) is not a JSON object")
        }
        return object
    }

    /// A tar of an image layout, before any digest is checked: its layout files
    /// and directories alone, through the same confined unpacker as a layer.
    static func unpackLayoutTar(_ path: String, into staging: String, limits: ImageUnpackLimits) throws {
        try AgentLock.makeDirectories(staging)
        let root = try OwnedDescriptor(path: staging, flags: O_RDONLY | O_DIRECTORY)
        let budget = UnpackBudget(limits)
        let source = budget.meter(try FileByteSource(path: path), layer: path, compressedSize: nil)
        do {
            try LayerUnpacker(root: root, layerName: path, layout: true, budget: budget).apply(TarReader(source))
        } catch let error as ImageError where error.kind == .malformed {
            throw ImageError(.notAnImage, "\(path) is not an OCI image layout: \(error.message)")
        }
    }
}

extension ValidatedImage {
    /// Writes the image's root filesystem into the directory `rootfs` (empty):
    /// each layer in order, with its whiteouts, each checked as it streams
    /// (its uncompressed sha256 against the config's diff_id too), all of
    /// them together within `limits`. Whoever made `rootfs` removes it when this throws.
    public func unpack(into rootfs: String, limits: ImageUnpackLimits = .fromEnvironment()) throws {
        guard case .layout(_, let layers) = source else {
            throw ImageError(.unsupported, "a root filesystem directory is used as it is, not unpacked")
        }
        let root = try OwnedDescriptor(path: rootfs, flags: O_RDONLY | O_DIRECTORY)
        let budget = UnpackBudget(limits)
        for (i, layer) in layers.enumerated() {
            let name = "layer \(i + 1) (\(layer.digest))"
            let file = try FileByteSource(path: layer.path)
            var st = stat()
            try syscallChecked("fstat", layer.path) { fstat(file.fd.raw, &st) }
            let tar = layer.gzip ? budget.meter(try GzipByteSource(file, name: layer.digest.description), layer: name, compressedSize: UInt64(st.st_size))
                : budget.meter(file, layer: name, compressedSize: nil)
            let hashing = HashingByteSource(tar)
            try LayerUnpacker(root: root, layerName: name, budget: budget).apply(TarReader(hashing))
            let diffID = try hashing.finish()
            if let expected = layer.diffID, expected != diffID {
                throw ImageError(.securityValidation, "\(name): uncompressed content expected \(expected) (the config's diff_id), got \(diffID)")
            }
        }
    }
}

/// Unpacked images, one read-only tree per manifest digest, shared by the
/// sandboxes as the lower layer of their overlay. An image's blobs are
/// checked against its manifest at every start (a changed byte is refused
/// before anything runs); the unpacking, its decompression and the diff_id
/// check happen once. Root's alone (0700), like the service's state. It is
/// kept within a budget (`budgetBytes`): after an image is unpacked the least
/// recently used trees go, never one a running container's overlay stands on.
public enum ImageCache {
    public static let root = "/var/cache/alcub3/images"

    /// $ALCUB3_IMAGE_CACHE_BYTES, else 8 GiB.
    public static var budgetBytes: UInt64 { budget(ProcessInfo.processInfo.environment) }

    static func budget(_ environment: [String: String]) -> UInt64 {
        environment["ALCUB3_IMAGE_CACHE_BYTES"].flatMap { UInt64($0) } ?? 8 << 30
    }

    /// The directory holding the image's root filesystem: the directory itself
    /// for a root filesystem, else the cache's tree, unpacked now if missing
    /// (into a temporary directory renamed into place, so a failure or a
    /// concurrent start leaves no half tree). `root` and `limits`: for tests.
    public static func tree(for image: ValidatedImage, root: String = ImageCache.root,
                            limits: ImageUnpackLimits = .fromEnvironment()) throws -> String {
        switch image.source {
        case .rootfs(let directory):
            return directory
        case .layout(let manifest, _):
            let final = root + "/" + manifest.hex
            if FileIO.exists(final) {
                markUsed(final)
                return final
            }
            try AgentLock.makeDirectories(root)
            chmod((root as NSString).deletingLastPathComponent, 0o700)
            let temporary = root + "/.unpacking-\(manifest.hex.prefix(12))-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            try syscallChecked("mkdir", temporary) { mkdir(temporary, 0o755) }
            do {
                try image.unpack(into: temporary, limits: limits)
                if rename(temporary, final) != 0 {
                    guard errno == EEXIST || errno == ENOTEMPTY else { throw SystemError(errno: errno, call: "rename", context: final) }
                    try? FileManager.default.removeItem(atPath: temporary)  // another start unpacked it first
                }
            } catch {
                try? FileManager.default.removeItem(atPath: temporary)
                throw error
            }
            try? FileIO.write(String(treeBytes(final)), to: final + ".size", create: true)
            markUsed(final)
            evict(root: root, keeping: final, budget: budgetBytes)
            return final
        }
    }

    /// A use of a tree: its `.used` file's time.
    static func markUsed(_ tree: String) {
        if (try? FileIO.write("", to: tree + ".used", create: true)) == nil { return }
    }

    /// Removes the least recently used trees of `root` until the rest fit in
    /// `budget` bytes. Never `keeping`, nor a tree an overlay mounted on this
    /// host has as its lower layer (a running container's). Returns the removed paths.
    @discardableResult
    public static func evict(root: String, keeping: String, budget: UInt64) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        let trees = names.filter { $0.count == 64 && $0.allSatisfy(\.isHexDigit) }.map { root + "/" + $0 }
        func size(_ tree: String) -> UInt64 {
            if let text = try? FileIO.read(tree + ".size"), let bytes = UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines)) { return bytes }
            let bytes = treeBytes(tree)
            try? FileIO.write(String(bytes), to: tree + ".size", create: true)
            return bytes
        }
        func lastUsed(_ tree: String) -> Date {
            (try? FileManager.default.attributesOfItem(atPath: tree + ".used")[.modificationDate] as? Date) ?? .distantPast
        }
        var total = trees.reduce(UInt64(0)) { $0 + size($1) }
        guard total > budget else { return [] }
        let mounts = (try? FileIO.read("/proc/self/mountinfo")) ?? ""
        var removed: [String] = []
        for tree in trees.sorted(by: { lastUsed($0) < lastUsed($1) }) where total > budget {
            guard tree != keeping, !mounts.contains("lowerdir=" + tree + ","), !mounts.contains("lowerdir=" + tree + " ") else { continue }
            let bytes = size(tree)
            // Out of the cache's namespace first (a start that finds it gone unpacks it again), then deleted.
            let doomed = root + "/.evicting-" + PathText.lastComponent(of: tree)
            guard rename(tree, doomed) == 0 else { continue }
            try? FileManager.default.removeItem(atPath: doomed)
            try? FileManager.default.removeItem(atPath: tree + ".size")
            try? FileManager.default.removeItem(atPath: tree + ".used")
            total -= min(bytes, total)
            removed.append(tree)
        }
        return removed
    }

    /// The bytes of a tree's files (allocated blocks), without following links.
    static func treeBytes(_ tree: String) -> UInt64 {
        var total: UInt64 = 0
        guard let walker = FileManager.default.enumerator(atPath: tree) else { return 0 }
        for case let relative as String in walker {
            var st = stat()
            if lstat(tree + "/" + relative, &st) == 0 { total += UInt64(st.st_blocks) * 512 }
        }
        return total
    }
}
