import Foundation
import KernelSupport
import Policy
import Testing
@testable import Sandbox

/// The busybox OCI image `scripts/build-test-image.sh` builds (cached under
/// .build/images), and small layouts made on the spot for the bad cases.
enum TestImages {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    struct Busybox {
        let layout: String
        let tar: String
        let digest: ImageDigest
    }

    /// Built once per test process (the script itself caches across runs).
    static let busybox: Busybox = {
        let out = repository + "/.build/images"
        let status = HostCommand.run(["/bin/sh", repository + "/scripts/build-test-image.sh", out])
        guard status.code == 0, let digest = ImageDigest(status.output.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            fatalError("scripts/build-test-image.sh failed: \(status.output)")
        }
        return Busybox(layout: out + "/busybox", tar: out + "/busybox.tar", digest: digest)
    }()

    /// A scratch directory removed by the caller.
    static func scratch(_ label: String) throws -> String {
        let path = NSTemporaryDirectory() + "alcub3-\(label)-" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// A copy of the busybox layout to alter.
    static func copyOfBusybox(in dir: String) throws -> String {
        let copy = dir + "/busybox"
        #expect(HostCommand.run(["/bin/cp", "-a", busybox.layout, copy]).code == 0)
        return copy
    }

    /// The layout's one layer blob (the largest file).
    static func layerBlob(of layout: String) throws -> String {
        let blobs = layout + "/blobs/sha256"
        let names = try FileManager.default.contentsOfDirectory(atPath: blobs)
        return blobs + "/" + names.max { (size(blobs + "/" + $0)) < (size(blobs + "/" + $1)) }!
    }

    static func size(_ path: String) -> UInt64 {
        ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.uint64Value ?? 0
    }

    /// `data` through gzip -9 (the system's gzip: the tests have no deflate of their own).
    static func gzipped(_ data: Data, in dir: String) throws -> Data {
        let plain = dir + "/gzip-input", packed = dir + "/gzip-input.gz"
        try data.write(to: URL(fileURLWithPath: plain))
        let status = HostCommand.run(["/bin/gzip", "-9", "-n", "-f", plain])
        guard status.code == 0 else { throw ImageError(.malformed, "gzip failed: \(status.output)") }
        defer { try? FileManager.default.removeItem(atPath: packed) }
        return try Data(contentsOf: URL(fileURLWithPath: packed))
    }

    /// Writes an OCI layout at `dir` from uncompressed layer tars (gzipped with
    /// `gzip`, the config's diff_ids still the plain tars'); returns its manifest digest.
    @discardableResult
    static func makeLayout(at dir: String, layers: [Data], architecture: String = "amd64",
                           command: [String] = ["/bin/sh"], gzip: Bool = false) throws -> ImageDigest {
        let blobs = dir + "/blobs/sha256"
        try FileManager.default.createDirectory(atPath: blobs, withIntermediateDirectories: true)
        func blob(_ data: Data) throws -> (ImageDigest, Int) {
            let temporary = dir + "/blob.tmp"
            try data.write(to: URL(fileURLWithPath: temporary))
            let (digest, size) = try ImageDigest.of(file: temporary)
            try FileManager.default.moveItem(atPath: temporary, toPath: blobs + "/" + digest.hex)
            return (digest, Int(size))
        }
        func digestOf(_ data: Data) throws -> ImageDigest {
            let temporary = dir + "/diff.tmp"
            try data.write(to: URL(fileURLWithPath: temporary))
            defer { try? FileManager.default.removeItem(atPath: temporary) }
            return try ImageDigest.of(file: temporary).0
        }
        var layerDescriptors: [String] = [], diffIDs: [String] = []
        for layer in layers {
            let (digest, size) = try blob(gzip ? try gzipped(layer, in: dir) : layer)
            let diffID = gzip ? try digestOf(layer) : digest
            let type = gzip ? "application/vnd.oci.image.layer.v1.tar+gzip" : "application/vnd.oci.image.layer.v1.tar"
            layerDescriptors.append(#"{"mediaType":"\#(type)","digest":"\#(digest)","size":\#(size)}"#)
            diffIDs.append("\"\(diffID)\"")
        }
        let commandJSON = command.map { "\"\($0)\"" }.joined(separator: ",")
        let (config, configSize) = try blob(Data(#"{"architecture":"\#(architecture)","os":"linux","config":{"Cmd":[\#(commandJSON)]},"rootfs":{"type":"layers","diff_ids":[\#(diffIDs.joined(separator: ","))]}}"#.utf8))
        let (manifest, manifestSize) = try blob(Data(#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"\#(config)","size":\#(configSize)},"layers":[\#(layerDescriptors.joined(separator: ","))]}"#.utf8))
        try Data(#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"\#(manifest)","size":\#(manifestSize)}]}"#.utf8)
            .write(to: URL(fileURLWithPath: dir + "/index.json"))
        try Data(#"{"imageLayoutVersion":"1.0.0"}"#.utf8).write(to: URL(fileURLWithPath: dir + "/oci-layout"))
        return manifest
    }
}

/// A minimal ustar writer, for layers no tar tool would make (absolute paths,
/// `..`, device nodes, whiteouts in a chosen order).
struct TarBuilder {
    private(set) var data = Data()

    mutating func add(_ name: String, type: Character = "0", content: String = "", link: String = "", mode: Int = 0o644,
                      uid: Int = 0, gid: Int = 0) {
        var header = [UInt8](repeating: 0, count: 512)
        func put(_ text: String, _ offset: Int, _ length: Int) {
            for (i, byte) in text.utf8.prefix(length).enumerated() { header[offset + i] = byte }
        }
        func octal(_ value: Int, _ offset: Int, _ length: Int) {
            put(String(String(value, radix: 8).suffix(length - 1)).leftPadded(to: length - 1), offset, length - 1)
        }
        let body = Array(content.utf8)
        put(name, 0, 100)
        octal(mode, 100, 8)
        octal(uid, 108, 8)
        octal(gid, 116, 8)
        let hasBody = type == "0" || type == "x"
        octal(hasBody ? body.count : 0, 124, 12)
        octal(0, 136, 12)
        header[156] = type.asciiValue!
        put(link, 157, 100)
        put("ustar", 257, 6)
        put("00", 263, 2)
        for i in 148..<156 { header[i] = 32 }
        let sum = header.reduce(0) { $0 + Int($1) }
        put(String(String(sum, radix: 8)).leftPadded(to: 6), 148, 6)
        header[154] = 0
        header[155] = 32
        data.append(contentsOf: header)
        if hasBody {
            data.append(contentsOf: body)
            data.append(contentsOf: [UInt8](repeating: 0, count: (512 - body.count % 512) % 512))
        }
    }

    /// A PAX extended header whose records (`path`, `linkpath`, ...) apply to the next entry.
    mutating func pax(_ records: [(String, String)]) {
        var text = ""
        for (key, value) in records {
            let record = " \(key)=\(value)\n"
            // The length counts its own digits.
            var length = record.utf8.count + 1
            while String(length).utf8.count + record.utf8.count > length { length += 1 }
            text += String(length) + record
        }
        add("PaxHeader", type: "x", content: text)
    }

    /// A file of `count` zero bytes (a decompression bomb's payload).
    mutating func addZeros(_ name: String, count: Int) {
        add(name, content: "")
        // Patch the size into the header just written, then append the zeros.
        let start = data.count - 512
        let size = Array(String(String(count, radix: 8)).leftPadded(to: 11).utf8)
        for (i, byte) in size.enumerated() { data[start + 124 + i] = byte }
        for i in 148..<156 { data[start + i] = 32 }
        let sum = data[start..<start + 512].reduce(0) { $0 + Int($1) }
        for (i, byte) in String(sum, radix: 8).leftPadded(to: 6).utf8.enumerated() { data[start + 148 + i] = byte }
        data[start + 154] = 0
        data.append(Data(count: count + (512 - count % 512) % 512))
    }

    var archive: Data { data + Data(count: 1024) }
}

extension String {
    func leftPadded(to width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}
