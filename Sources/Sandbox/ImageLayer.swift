#if canImport(Glibc)
import Glibc
#endif
import CAlcub3
import Crypto
import KernelSupport

// Container image layers: a tar stream (plain or gzip) applied to a root
// filesystem with OCI whiteouts. Every path is resolved inside the root
// (openat2 RESOLVE_IN_ROOT), so neither `..` nor a symlink an earlier entry
// made can send a write outside it.

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
    func finish() -> ImageDigest {
        var scratch = [UInt8](repeating: 0, count: 1 << 16)
        while let n = try? scratch.withUnsafeMutableBytes({ try read(into: $0) }), n > 0 {}
        return ImageDigest(hasher.finalize())
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
    /// For a tar of an image layout: anything but a file or a directory is refused.
    var onlyFilesAndDirectories = false

    init(root: OwnedDescriptor, layerName: String, onlyFilesAndDirectories: Bool = false) {
        self.root = root
        self.layerName = layerName
        self.onlyFilesAndDirectories = onlyFilesAndDirectories
    }

    private func unsafe(_ path: String, _ why: String) -> ImageError {
        ImageError(.securityValidation, "\(layerName): entry '\(path)' \(why)")
    }

    /// "a/./b/" -> ["a", "b"]; absolute paths and ".." are refused.
    func components(_ path: String) throws -> [String] {
        if path.hasPrefix("/") { throw unsafe(path, "is an absolute path") }
        let parts = path.split(separator: "/").map(String.init).filter { $0 != "." }
        if parts.contains("..") { throw unsafe(path, "has a '..' component, which could reach outside the root filesystem") }
        return parts
    }

    func apply(_ reader: TarReader) throws {
        var created = Set<String>()
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while let entry = try reader.next() {
            let parts = try components(entry.path)
            guard let name = parts.last else { continue }  // "./": the root itself
            if case .device(let what) = entry.kind { throw unsafe(entry.path, "is a \(what); images may not create device nodes") }
            if case .other(let type) = entry.kind {
                throw ImageError(.unsupported, "\(layerName): entry '\(entry.path)' has tar type '\(Character(Unicode.Scalar(type)))', which alcub3 does not unpack")
            }
            if onlyFilesAndDirectories {
                switch entry.kind {
                case .file, .directory: break
                default: throw ImageError(.malformed, "entry '\(entry.path)' is neither a file nor a directory")
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
                try removeTree(String(name.dropFirst(4)), in: parent)
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
                try syscallChecked("fchown", entry.path) { fchown(fd.raw, entry.uid, entry.gid) }
                try syscallChecked("fchmod", entry.path) { fchmod(fd.raw, mode_t(entry.mode)) }
            case .symlink:
                _ = try noSpace(entry.path) { try syscallChecked("symlinkat", entry.path) { symlinkat(entry.linkTarget, parent.raw, name) } }
                try syscallChecked("fchownat", entry.path) { fchownat(parent.raw, name, entry.uid, entry.gid, AT_SYMLINK_NOFOLLOW) }
            case .hardLink:
                let targetParts = try components(entry.linkTarget)
                guard let targetName = targetParts.last else { throw unsafe(entry.path, "is a hard link to the root directory") }
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

    private func setOwnerAndMode(_ parent: OwnedDescriptor, _ name: String, _ entry: TarEntry) throws {
        try syscallChecked("fchownat", entry.path) { fchownat(parent.raw, name, entry.uid, entry.gid, AT_SYMLINK_NOFOLLOW) }
        try syscallChecked("fchmodat", entry.path) { fchmodat(parent.raw, name, mode_t(entry.mode), 0) }
    }

    /// Removes `name` in `parent`, a directory with everything beneath it.
    private func removeTree(_ name: String, in parent: OwnedDescriptor) throws {
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

