import Foundation
import KernelSupport

/// Syscall numbers the models accept: 10 bits, enough for every x86_64 and
/// arm64 syscall, so six of them pack exactly into one UInt64 (PackedSequence).
public let syscallNumberLimit = 1024

/// Why a trace or a folder of traces was refused; `description` is one line
/// naming the file, the line and the token.
public enum TraceError: Error, Equatable, CustomStringConvertible, Sendable {
    case missingDirectory(String)
    case notADirectory(String)
    case unreadable(path: String, reason: String)
    case noTraces(directory: String)
    case emptyTrace(file: String)
    case nonNumericToken(file: String, line: Int, token: String)
    case outOfRange(file: String, line: Int, token: String)

    public var description: String {
        switch self {
        case .missingDirectory(let path): "trace directory \(path) does not exist"
        case .notADirectory(let path): "\(path) is not a directory of trace files"
        case .unreadable(let path, let reason): "cannot read \(path): \(reason)"
        case .noTraces(let directory): "\(directory) holds no trace files (one trace per file, whitespace-separated syscall numbers)"
        case .emptyTrace(let file): "\(file): empty trace (no syscall numbers)"
        case .nonNumericToken(let file, let line, let token):
            "\(file):\(line): '\(token)' is not a syscall number (whitespace-separated decimal numbers expected)"
        case .outOfRange(let file, let line, let token):
            "\(file):\(line): syscall number \(token) is out of range (0 to \(syscallNumberLimit - 1))"
        }
    }
}

/// One trace: the syscall numbers of one process (or thread) in order, as in
/// the common public system-call intrusion data sets (one trace per file).
public struct SyscallTrace: Sendable, Equatable {
    public let path: String
    public let syscalls: [UInt16]

    public init(path: String, syscalls: [UInt16]) {
        self.path = path
        self.syscalls = syscalls
    }

    /// Every regular file below `directory`, nested folders too, sorted by path.
    public static func loadDirectory(_ directory: String) throws(TraceError) -> [SyscallTrace] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory) else {
            throw .missingDirectory(directory)
        }
        guard isDirectory.boolValue else { throw .notADirectory(directory) }
        guard FileManager.default.isReadableFile(atPath: directory) else {
            throw .unreadable(path: directory, reason: "permission denied")
        }
        let root = URL(fileURLWithPath: directory, isDirectory: true)
        var unreadable: TraceError?
        guard let walker = FileManager.default.enumerator(
            at: root, includingPropertiesForKeys: [.isRegularFileKey], options: [],
            errorHandler: { url, error in
                unreadable = unreadable ?? .unreadable(path: url.path, reason: error.localizedDescription)
                return false
            })
        else { throw .unreadable(path: directory, reason: "cannot list it") }
        var files: [String] = []
        for case let url as URL in walker where (try? url.resourceValues(forKeys: [.isRegularFileKey]))?.isRegularFile == true {
            files.append(url.path)
        }
        if let unreadable { throw unreadable }
        guard !files.isEmpty else { throw .noTraces(directory: directory) }
        var traces: [SyscallTrace] = []
        traces.reserveCapacity(files.count)
        for file in files.sorted() { traces.append(try load(file: file)) }
        return traces
    }

    public static func load(file: String) throws(TraceError) -> SyscallTrace {
        guard let data = FileManager.default.contents(atPath: file) else {
            throw .unreadable(path: file, reason: FileManager.default.fileExists(atPath: file) ? "permission denied" : "no such file")
        }
        return SyscallTrace(path: file, syscalls: try parse(data, file: file))
    }

    /// Whitespace-separated decimal numbers below `syscallNumberLimit`.
    public static func parse(_ data: Data, file: String) throws(TraceError) -> [UInt16] {
        var calls: [UInt16] = []
        calls.reserveCapacity(data.count / 3)
        var line = 1
        var value = 0
        var tokenStart = -1
        var bad: TraceError?
        data.withUnsafeBytes { (bytes: UnsafeRawBufferPointer) in
            func token(from start: Int, to end: Int) -> String {
                let text = String(decoding: bytes[start..<min(end, start + 40)], as: UTF8.self)
                return printable(text) + (end - start > 40 ? "..." : "")
            }
            var index = 0
            while index <= bytes.count {
                let byte: UInt8 = index < bytes.count ? bytes[index] : 0x20
                let isSpace = byte == 0x20 || (byte >= 0x09 && byte <= 0x0d)
                if isSpace {
                    if tokenStart >= 0 {
                        calls.append(UInt16(value))
                        tokenStart = -1
                    }
                    if byte == 0x0a { line += 1 }
                } else if byte >= 0x30 && byte <= 0x39 {
                    if tokenStart < 0 { tokenStart = index; value = 0 }
                    value = min(value * 10 + Int(byte - 0x30), syscallNumberLimit)
                } else {
                    // The whole token, for the message: "12a", "-1", "read".
                    let start = tokenStart >= 0 ? tokenStart : index
                    var end = index
                    while end < bytes.count, !(bytes[end] == 0x20 || (bytes[end] >= 0x09 && bytes[end] <= 0x0d)) { end += 1 }
                    let numeric = bytes[start] == UInt8(ascii: "-") && end > start + 1
                        && bytes[(start + 1)..<end].allSatisfy { $0 >= 0x30 && $0 <= 0x39 }
                    bad = numeric ? .outOfRange(file: file, line: line, token: token(from: start, to: end))
                        : .nonNumericToken(file: file, line: line, token: token(from: start, to: end))
                    return
                }
                if tokenStart >= 0, value >= syscallNumberLimit {
                    var end = index + 1
                    while end < bytes.count, bytes[end] >= 0x30 && bytes[end] <= 0x39 { end += 1 }
                    if end < bytes.count, !(bytes[end] == 0x20 || (bytes[end] >= 0x09 && bytes[end] <= 0x0d)) {
                        index = end
                        continue    // "1024x": reported as non-numeric by the branch above
                    }
                    bad = .outOfRange(file: file, line: line, token: token(from: tokenStart, to: end))
                    return
                }
                index += 1
            }
        }
        if let bad { throw bad }
        guard !calls.isEmpty else { throw .emptyTrace(file: file) }
        return calls
    }

    /// Control characters shown escaped, so a binary file's token stays on one line.
    static func printable(_ text: String) -> String { TerminalText.escaped(text) }
}
