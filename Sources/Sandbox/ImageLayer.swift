#if canImport(Glibc)
import Glibc
#endif
import CAlcub3
import Crypto
import Foundation
import KernelSupport

// Container image layers: a tar stream (plain or gzip) applied to a root
// filesystem with OCI whiteouts. Every parent directory is resolved inside
// the root (openat2 RESOLVE_IN_ROOT), so neither `..` nor a symlink an earlier
// entry made can send a write outside it; every final name (a whiteout's
// target included) is one plain component, never "", ".", ".." or with a NUL,
// and is acted on without following a symlink. The bytes and entries of a
// whole image are counted as they stream (UnpackBudget): a decompression bomb
// stops at the limit, not at a full disk.

/// Bytes read in order.
protocol ByteSource: AnyObject {
    /// Up to `buffer.count` bytes; 0 at the end.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int
}

final class FileByteSource: ByteSource {
    let fd: OwnedDescriptor
    let path: String

    init(path: String) throws {
        fd = try OwnedDescriptor(path: path, flags: O_RDONLY)
        self.path = path
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        try syscallChecked("read", path) { Glibc.read(fd.raw, buffer.baseAddress, buffer.count) }
    }
}

final class GzipByteSource: ByteSource {
    private let input: ByteSource
    private let name: String
    private let inflater: OpaquePointer
    private var pending = [UInt8](repeating: 0, count: 1 << 16)
    private var start = 0, end = 0
    private var finished = false

    init(_ input: ByteSource, name: String) throws {
        guard let z = alcub3_inflater_new() else { throw SystemError(errno: ENOMEM, call: "inflateInit2", context: name) }
        self.input = input
        self.name = name
        self.inflater = z
    }

    deinit { alcub3_inflater_free(inflater) }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        while !finished {
            if start == end {
                let n = try pending.withUnsafeMutableBytes { try input.read(into: $0) }
                if n == 0 { throw ImageError(.securityValidation, "\(name): the gzip stream ends early") }
                (start, end) = (0, n)
            }
            var consumed = 0, produced = 0
            let rc = pending.withUnsafeBytes { raw in
                alcub3_inflater_step(inflater, raw.baseAddress!.assumingMemoryBound(to: UInt8.self) + start, end - start, &consumed,
                                     buffer.baseAddress!.assumingMemoryBound(to: UInt8.self), buffer.count, &produced)
            }
            if rc < 0 { throw ImageError(.securityValidation, "\(name): the gzip stream is corrupt") }
            start += consumed
            if rc == 1 { finished = true }
            if produced > 0 { return produced }
        }
        return 0
    }
}

/// Passes bytes through and hashes them (a layer's diff_id is the sha256 of its uncompressed tar).
final class HashingByteSource: ByteSource {
    private let input: ByteSource
    private var hasher = SHA256()

    init(_ input: ByteSource) { self.input = input }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = try input.read(into: buffer)
        if n > 0 { hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer[0..<n])) }
        return n
    }

    /// Reads what is left (tar padding after the end blocks) and returns the digest.
    func finish() throws -> ImageDigest {
        var scratch = [UInt8](repeating: 0, count: 1 << 16)
        while try scratch.withUnsafeMutableBytes({ try read(into: $0) }) > 0 {}
        return ImageDigest(hasher.finalize())
    }
}

/// Bounds on what unpacking one image may write: a small gzip layer can
/// expand a thousandfold, and the cache's budget applies only afterwards.
public struct ImageUnpackLimits: Sendable, Equatable {
    /// Uncompressed tar bytes of all the image's layers together.
    public var maxBytes: UInt64
    /// Tar entries of all the image's layers together (each is an inode).
    public var maxEntries: Int
    /// A gzip layer may expand at most this many times its compressed size,
    /// once past `ratioFloor` bytes (small layers are mostly tar padding).
    public var maxRatio: UInt64
    public var ratioFloor: UInt64 = 64 << 20

    public init(maxBytes: UInt64, maxEntries: Int, maxRatio: UInt64) {
        (self.maxBytes, self.maxEntries, self.maxRatio) = (maxBytes, maxEntries, maxRatio)
    }

    public static let defaultMaxBytes: UInt64 = 4 << 30
    public static let defaultMaxEntries = 500_000
    public static let defaultMaxRatio: UInt64 = 100

    /// $ALCUB3_IMAGE_MAX_BYTES (else 4 GiB, never more than the cache's budget),
    /// $ALCUB3_IMAGE_MAX_ENTRIES (else 500,000), $ALCUB3_IMAGE_MAX_RATIO (else 100).
    public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> ImageUnpackLimits {
        let bytes = environment["ALCUB3_IMAGE_MAX_BYTES"].flatMap { UInt64($0) } ?? defaultMaxBytes
        return ImageUnpackLimits(maxBytes: min(bytes, ImageCache.budget(environment)),
                                 maxEntries: environment["ALCUB3_IMAGE_MAX_ENTRIES"].flatMap { Int($0) } ?? defaultMaxEntries,
                                 maxRatio: environment["ALCUB3_IMAGE_MAX_RATIO"].flatMap { UInt64($0) } ?? defaultMaxRatio)
    }
}

/// What one image has used of its limits so far, across its layers.
final class UnpackBudget {
    let limits: ImageUnpackLimits
    private(set) var bytes: UInt64 = 0
    private(set) var entries = 0

    init(_ limits: ImageUnpackLimits) { self.limits = limits }

    private func refusal(_ layer: String, _ what: String) -> ImageError {
        ImageError(.tooLarge, "\(layer): \(what); refused as a possible decompression bomb (the limits are "
                   + "$ALCUB3_IMAGE_MAX_BYTES, $ALCUB3_IMAGE_MAX_ENTRIES, $ALCUB3_IMAGE_MAX_RATIO)")
    }

    /// `count` more uncompressed bytes read from `layer`.
    func consume(_ count: Int, layer: String) throws {
        bytes += UInt64(count)
        if bytes > limits.maxBytes {
            throw refusal(layer, "the image unpacks to more than its limit of \(limits.maxBytes) bytes")
        }
    }

    /// One more entry; and, for a file, its size checked before a byte of it is written.
    func admit(_ entry: TarEntry, layer: String) throws {
        entries += 1
        if entries > limits.maxEntries {
            throw refusal(layer, "the image has more than its limit of \(limits.maxEntries) entries")
        }
        if entry.kind.isFile && entry.size > limits.maxBytes - min(bytes, limits.maxBytes) {
            throw refusal(layer, "entry '\(entry.printablePath)' (\(entry.size) bytes) takes the image past its limit of "
                          + "\(limits.maxBytes) bytes")
        }
    }

    /// The uncompressed stream of `layer` (`compressedSize` bytes of gzip, or nil for a plain tar).
    func meter(_ input: ByteSource, layer: String, compressedSize: UInt64?) -> ByteSource {
        MeteredByteSource(input, budget: self, layer: layer, compressedSize: compressedSize)
    }

    func checkRatio(_ produced: UInt64, compressedSize: UInt64, layer: String) throws {
        if produced > limits.ratioFloor && produced / max(compressedSize, 1) >= limits.maxRatio {
            throw refusal(layer, "it expands more than \(limits.maxRatio) times its compressed size of \(compressedSize) bytes")
        }
    }
}

/// Counts the bytes a layer's tar stream yields against the image's budget.
private final class MeteredByteSource: ByteSource {
    private let input: ByteSource
    private let budget: UnpackBudget
    private let layer: String
    private let compressedSize: UInt64?
    private var produced: UInt64 = 0

    init(_ input: ByteSource, budget: UnpackBudget, layer: String, compressedSize: UInt64?) {
        (self.input, self.budget, self.layer, self.compressedSize) = (input, budget, layer, compressedSize)
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = try input.read(into: buffer)
        produced += UInt64(n)
        try budget.consume(n, layer: layer)
        if let compressedSize { try budget.checkRatio(produced, compressedSize: compressedSize, layer: layer) }
        return n
    }
}

/// One tar entry's header, long names and PAX records already applied.
struct TarEntry {
    enum Kind { case file, hardLink, symlink, directory, fifo, device(String), other(UInt8) }
    var path: String
    var kind: Kind
    var linkTarget: String
    var size: UInt64
    var mode: UInt32
    var uid: UInt32
    var gid: UInt32

    /// The path for a message: a NUL (possible only through PAX) shown as \\0.
    var printablePath: String { path.replacingOccurrences(of: "\0", with: "\\0") }
}

/// Reads ustar, GNU (long names) and PAX tar streams.
final class TarReader {
    private let source: ByteSource
    private var block = [UInt8](repeating: 0, count: 512)
    /// Bytes of the current entry's data not yet read, and its padding.
    private var remaining: UInt64 = 0
    private var padding: UInt64 = 0

    init(_ source: ByteSource) { self.source = source }

    private func fill(_ buffer: inout [UInt8], count: Int) throws -> Bool {
        var got = 0
        while got < count {
            let n = try buffer.withUnsafeMutableBytes { try source.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[got..<count])) }
            if n == 0 {
                if got == 0 { return false }
                throw ImageError(.malformed, "the tar stream ends inside a block")
            }
            got += n
        }
        return true
    }

    /// The next entry, or nil at the end of the archive.
    func next() throws -> TarEntry? {
        try skipData()
        var longName: String?, longLink: String?
        var pax: [String: String] = [:]
        while true {
            guard try fill(&block, count: 512) else { return nil }
            if block.allSatisfy({ $0 == 0 }) { return nil }
            try checkChecksum()
            let type = block[156]
            let size = try number(124, 12)
            switch type {
            case UInt8(ascii: "L"), UInt8(ascii: "K"):
                let text = String(decoding: try readSmall(size).prefix { $0 != 0 }, as: UTF8.self)
                if type == UInt8(ascii: "L") { longName = text } else { longLink = text }
                continue
            case UInt8(ascii: "x"):
                pax.merge(try parsePAX(try readSmall(size))) { $1 }
                continue
            case UInt8(ascii: "g"):
                _ = try readSmall(size)  // global defaults: nothing alcub3 uses
                continue
            default:
                break
            }
            var path = string(0, 100)
            if block[257..<262].elementsEqual("ustar".utf8) {
                let prefix = string(345, 155)
                if !prefix.isEmpty { path = prefix + "/" + path }
            }
            path = pax["path"] ?? longName ?? path
            let link = pax["linkpath"] ?? longLink ?? string(157, 100)
            let entrySize = pax["size"].flatMap { UInt64($0) } ?? size
            let kind: TarEntry.Kind
            switch type {
            case UInt8(ascii: "0"), 0, UInt8(ascii: "7"): kind = .file
            case UInt8(ascii: "1"): kind = .hardLink
            case UInt8(ascii: "2"): kind = .symlink
            case UInt8(ascii: "3"): kind = .device("character device")
            case UInt8(ascii: "4"): kind = .device("block device")
            case UInt8(ascii: "5"): kind = .directory
            case UInt8(ascii: "6"): kind = .fifo
            default: kind = .other(type)
            }
            // Only a file's data is read by the caller; anything else's is skipped here.
            remaining = entrySize
            padding = (512 - entrySize % 512) % 512
            if !kind.isFile { try skipData() }
            let mode = UInt32(try number(100, 8) & 0o7777)
            let uid = try pax["uid"].flatMap { UInt32($0) } ?? UInt32(truncatingIfNeeded: number(108, 8))
            let gid = try pax["gid"].flatMap { UInt32($0) } ?? UInt32(truncatingIfNeeded: number(116, 8))
            return TarEntry(path: path, kind: kind, linkTarget: link, size: entrySize, mode: mode, uid: uid, gid: gid)
        }
    }

    /// Reads the current entry's data into `buffer`; 0 when it is all read.
    func readData(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard remaining > 0 else { return 0 }
        let want = Int(min(UInt64(buffer.count), remaining))
        let n = try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]))
        if n == 0 { throw ImageError(.malformed, "the tar stream ends inside a file") }
        remaining -= UInt64(n)
        return n
    }

    private func skipData() throws {
        var scratch = [UInt8](repeating: 0, count: 1 << 16)
        remaining += padding
        padding = 0
        while remaining > 0 {
            let want = Int(min(UInt64(scratch.count), remaining))
            let n = try scratch.withUnsafeMutableBytes { try source.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<want])) }
            if n == 0 { throw ImageError(.malformed, "the tar stream ends inside an entry") }
            remaining -= UInt64(n)
        }
    }

    private func readSmall(_ size: UInt64) throws -> [UInt8] {
        guard size <= 1 << 20 else { throw ImageError(.malformed, "a tar metadata record of \(size) bytes") }
        let padded = Int((size + 511) / 512 * 512)
        var data = [UInt8](repeating: 0, count: padded)
        if padded > 0, try !fill(&data, count: padded) { throw ImageError(.malformed, "the tar stream ends inside a record") }
        return Array(data[0..<Int(size)])
    }

    private func checkChecksum() throws {
        var sum: UInt64 = 0
        for (i, byte) in block.enumerated() { sum += (148..<156).contains(i) ? 32 : UInt64(byte) }
        guard try number(148, 8) == sum else { throw ImageError(.malformed, "a tar header's checksum does not match (not a tar, or corrupt)") }
    }

    private func string(_ offset: Int, _ length: Int) -> String {
        String(decoding: block[offset..<offset + length].prefix { $0 != 0 }, as: UTF8.self)
    }

    /// Octal ASCII, or base-256 when the high bit of the first byte is set (GNU, for large values).
    private func number(_ offset: Int, _ length: Int) throws -> UInt64 {
        let field = block[offset..<offset + length]
        if let first = field.first, first & 0x80 != 0 {
            var value: UInt64 = UInt64(first & 0x7f)
            for byte in field.dropFirst() {
                guard value >> 56 == 0 else { throw ImageError(.malformed, "a tar number field overflows") }
                value = value << 8 | UInt64(byte)
            }
            return value
        }
        var value: UInt64 = 0
        for byte in field {
            if byte == 0 || byte == 32 { if value == 0 { continue } else { break } }
            guard (48...55).contains(byte) else { throw ImageError(.malformed, "a tar header has a malformed number (not a tar, or corrupt)") }
            value = value * 8 + UInt64(byte - 48)
        }
        return value
    }

    private func parsePAX(_ data: [UInt8]) throws -> [String: String] {
        var records: [String: String] = [:]
        var i = 0
        while i < data.count {
            guard let space = data[i...].firstIndex(of: 32), let length = Int(String(decoding: data[i..<space], as: UTF8.self)),
                  length > 0, i + length <= data.count else { throw ImageError(.malformed, "a malformed PAX record") }
            let record = data[(space + 1)..<(i + length - 1)]
            if let equals = record.firstIndex(of: UInt8(ascii: "=")) {
                records[String(decoding: record[record.startIndex..<equals], as: UTF8.self)] =
                    String(decoding: record[(equals + 1)...], as: UTF8.self)
            }
            i += length
        }
        return records
    }
}

extension TarEntry.Kind {
    var isFile: Bool { if case .file = self { return true } else { return false } }
    var isDirectory: Bool { if case .directory = self { return true } else { return false } }
}

/// Applies one layer to a root filesystem.
struct LayerUnpacker {
    let root: OwnedDescriptor
    let layerName: String
    /// For the tar of an image layout: only its files and directories (oci-layout,
    /// index.json, blobs/<algorithm>/<hex>) are written, root's and private;
    /// anything else is skipped, a whiteout or a link refused.
    let layout: Bool
    let budget: UnpackBudget

    init(root: OwnedDescriptor, layerName: String, layout: Bool = false, budget: UnpackBudget) {
        self.root = root
        self.layerName = layerName
        self.layout = layout
        self.budget = budget
    }

    private func unsafe(_ path: String, _ why: String) -> ImageError {
        ImageError(.securityValidation, "\(layerName): entry '\(path.replacingOccurrences(of: "\0", with: "\\0"))' \(why)")
    }

    /// "a/./b/" -> ["a", "b"]; absolute paths, ".." and NUL bytes are refused.
    func components(_ path: String) throws -> [String] {
        // Swift keeps a PAX name's NUL; C would stop there ("..\0x" is "..").
        if path.utf8.contains(0) { throw unsafe(path, "has a NUL byte in its name, which would cut it short") }
        if path.hasPrefix("/") { throw unsafe(path, "is an absolute path") }
        let parts = path.split(separator: "/").map(String.init).filter { $0 != "." }
        if parts.contains("..") { throw unsafe(path, "has a '..' component, which could reach outside the root filesystem") }
        return parts
    }

    /// A name acted on inside a parent directory must be one component: "..",
    /// "." or "" would make the parent (or its parent) the target.
    private func checkedName(_ name: String, of path: String) throws -> String {
        guard !name.isEmpty, name != ".", name != "..", !name.contains("/"), !name.utf8.contains(0) else {
            throw unsafe(path, "names '\(name.replacingOccurrences(of: "\0", with: "\\0"))', which is not a file in its directory")
        }
        return name
    }

    func apply(_ reader: TarReader) throws {
        var created = Set<String>()
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while let entry = try reader.next() {
            try budget.admit(entry, layer: layerName)
            let parts = try components(entry.path)
            guard let last = parts.last else { continue }  // "./": the root itself
            let name = try checkedName(last, of: entry.path)
            if case .device(let what) = entry.kind { throw unsafe(entry.path, "is a \(what); images may not create device nodes") }
            if case .other(let type) = entry.kind {
                throw ImageError(.unsupported, "\(layerName): entry '\(entry.printablePath)' has tar type '\(Character(Unicode.Scalar(type)))', which alcub3 does not unpack")
            }
            if layout {
                if name.hasPrefix(".wh.") { throw unsafe(entry.path, "is a whiteout, which an image layout never holds") }
                guard let wanted = Self.layoutEntryIsDirectory(parts) else { continue }  // not part of the layout (docker's manifest.json)
                guard entry.kind.isFile || entry.kind.isDirectory, entry.kind.isDirectory == wanted else {
                    throw ImageError(.malformed, "entry '\(entry.printablePath)' is not a \(wanted ? "directory" : "file")")
                }
            }
            let parent = try directory(Array(parts.dropLast()), entry: entry.path)
            let key = parts.joined(separator: "/")
            if name == ".wh..wh..opq" {
                // An opaque directory: what lower layers put in it goes; this layer's entries stay.
                let prefix = parts.dropLast().joined(separator: "/")
                try removeChildren(of: parent, keeping: { created.contains(prefix.isEmpty ? $0 : prefix + "/" + $0) })
                continue
            }
            if name.hasPrefix(".wh.") {
                // ".wh..." would name the parent's parent: the target must be a name of its own.
                try removeTree(try checkedName(String(name.dropFirst(4)), of: entry.path), in: parent)
                continue
            }
            // A lower layer's entry of another kind (or any file) is replaced.
            var existing = stat()
            let exists = fstatat(parent.raw, name, &existing, AT_SYMLINK_NOFOLLOW) == 0
            let existingIsDirectory = exists && (existing.st_mode & S_IFMT) == S_IFDIR
            if exists && !(entry.kind.isDirectory && existingIsDirectory) { try removeTree(name, in: parent) }
            switch entry.kind {
            case .directory:
                if !existingIsDirectory { try syscallChecked("mkdirat", entry.path) { mkdirat(parent.raw, name, 0o700) } }
                try setOwnerAndMode(parent, name, entry)
            case .file:
                let fd = OwnedDescriptor(try noSpace(entry.path) {
                    try syscallChecked("openat", entry.path) {
                        openat(parent.raw, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
                    }
                })
                while true {
                    let n = try buffer.withUnsafeMutableBytes { try reader.readData(into: $0) }
                    if n == 0 { break }
                    var written = 0
                    while written < n {
                        let w = try noSpace(entry.path) {
                            try syscallChecked("write", entry.path) { buffer.withUnsafeBytes { write(fd.raw, $0.baseAddress! + written, n - written) } }
                        }
                        written += w
                    }
                }
                try setOwnerAndMode(fd, entry)
            case .symlink:
                if entry.linkTarget.utf8.contains(0) { throw unsafe(entry.path, "is a symlink whose target has a NUL byte") }
                _ = try noSpace(entry.path) { try syscallChecked("symlinkat", entry.path) { symlinkat(entry.linkTarget, parent.raw, name) } }
                try syscallChecked("fchownat", entry.path) { fchownat(parent.raw, name, entry.uid, entry.gid, AT_SYMLINK_NOFOLLOW) }
            case .hardLink:
                let targetParts = try components(entry.linkTarget)
                guard let last = targetParts.last else { throw unsafe(entry.path, "is a hard link to the root directory") }
                let targetName = try checkedName(last, of: entry.linkTarget)
                let targetParent = try directory(Array(targetParts.dropLast()), entry: entry.linkTarget, create: false)
                try syscallChecked("linkat", "\(entry.path) -> \(entry.linkTarget)") { linkat(targetParent.raw, targetName, parent.raw, name, 0) }
            case .fifo:
                try syscallChecked("mkfifoat", entry.path) { mkfifoat(parent.raw, name, 0o600) }
                try setOwnerAndMode(parent, name, entry)
            case .device, .other:
                break  // refused above
            }
            created.insert(key)
        }
    }

    /// In an image layout: true for a directory it has, false for a file, nil for anything else.
    static func layoutEntryIsDirectory(_ parts: [String]) -> Bool? {
        func word(_ s: String, _ allowed: (UInt8) -> Bool) -> Bool { !s.isEmpty && s.utf8.allSatisfy(allowed) }
        let algorithm = { (s: String) in word(s) { (97...122).contains($0) || (48...57).contains($0) } }
        switch parts.count {
        case 1 where parts[0] == "oci-layout" || parts[0] == "index.json": return false
        case 1 where parts[0] == "blobs": return true
        case 2 where parts[0] == "blobs" && algorithm(parts[1]): return true
        case 3 where parts[0] == "blobs" && algorithm(parts[1]) && word(parts[2], { (97...102).contains($0) || (48...57).contains($0) }):
            return false
        default: return nil
        }
    }

    /// The directory at `parts` inside the root, made (0755) where missing.
    /// Resolved with RESOLVE_IN_ROOT: a symlink in the way points inside the root.
    private func directory(_ parts: [String], entry: String, create: Bool = true) throws -> OwnedDescriptor {
        if parts.isEmpty { return OwnedDescriptor(try syscallChecked("dup", entry) { fcntl(root.raw, F_DUPFD_CLOEXEC, 0) }) }
        let path = parts.joined(separator: "/")
        let fd = alcub3_open_in_root(root.raw, path, ALCUB3_O_PATH | O_DIRECTORY | O_CLOEXEC, 0)
        if fd >= 0 { return OwnedDescriptor(fd) }
        guard errno == ENOENT && create else {
            throw SystemError(errno: errno, call: "openat2", context: "\(path) in the image (\(layerName), entry \(entry))")
        }
        let parent = try directory(Array(parts.dropLast()), entry: entry)
        if mkdirat(parent.raw, parts.last!, 0o755) != 0 && errno != EEXIST {
            throw SystemError(errno: errno, call: "mkdirat", context: "\(path) in the image (\(layerName))")
        }
        return OwnedDescriptor(try syscallChecked("openat2", path) {
            alcub3_open_in_root(root.raw, path, ALCUB3_O_PATH | O_DIRECTORY | O_CLOEXEC, 0)
        })
    }

    /// Owner and mode of `name`, just made in `parent`, set through a descriptor
    /// of it (O_NOFOLLOW: fchmodat would follow a symlink put there).
    private func setOwnerAndMode(_ parent: OwnedDescriptor, _ name: String, _ entry: TarEntry) throws {
        if layout { return }
        // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
        let fd = OwnedDescriptor(try syscallChecked("openat", entry.path) {
            openat(parent.raw, name, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC)
        })
        try setOwnerAndMode(fd, entry)
    }

    /// An image layout's files stay root's and private (0600, directories 0700).
    private func setOwnerAndMode(_ fd: OwnedDescriptor, _ entry: TarEntry) throws {
        if layout { return }
        try syscallChecked("fchown", entry.path) { fchown(fd.raw, entry.uid, entry.gid) }
        try syscallChecked("fchmod", entry.path) { fchmod(fd.raw, mode_t(entry.mode)) }
    }

    /// Removes `name` in `parent`, a directory with everything beneath it.
    /// `name` is one component (checkedName or readdir's), never "." or "..".
    private func removeTree(_ name: String, in parent: OwnedDescriptor) throws {
        precondition(!name.isEmpty && name != "." && name != ".." && !name.contains("/"), "removeTree('\(name)'): our bug")
        var st = stat()
        guard fstatat(parent.raw, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { return }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            let dir = OwnedDescriptor(try syscallChecked("openat", name) {
                openat(parent.raw, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            })
            try removeChildren(of: dir, keeping: { _ in false })
            try syscallChecked("unlinkat", name) { unlinkat(parent.raw, name, AT_REMOVEDIR) }
        } else {
            try syscallChecked("unlinkat", name) { unlinkat(parent.raw, name, 0) }
        }
    }

    private func removeChildren(of dir: OwnedDescriptor, keeping keep: (String) -> Bool) throws {
        let listing = OwnedDescriptor(try syscallChecked("openat", ".") { openat(dir.raw, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC) })
        guard let stream = fdopendir(fcntl(listing.raw, F_DUPFD_CLOEXEC, 0)) else { throw SystemError(errno: errno, call: "fdopendir", context: layerName) }
        var names: [String] = []
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." && !keep(name) { names.append(name) }
        }
        closedir(stream)
        for name in names { try removeTree(name, in: listing) }
    }

    /// ENOSPC while unpacking means the image is larger than the sandbox's storage.
    private func noSpace<T>(_ path: String, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as SystemError where error.errno == ENOSPC {
            throw ImageError(.noSpace, "\(layerName): '\(path)' does not fit: no space left where images are unpacked (\(ImageCache.root))")
        }
    }
}
