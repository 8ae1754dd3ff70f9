import CSeccomp
import Foundation
import Policy

/// A seccomp policy in the OCI runtime-spec `linux.seccomp` form, which is
/// also Docker's profile format: a default action and rules that give named
/// syscalls another action, optionally only when their arguments match.
/// `SeccompProfile(json:)` reads one (`--seccomp-profile FILE`), `jsonData()`
/// writes one, and `SeccompCompiler` turns one into the filter a sandbox runs under.
public struct SeccompProfile: Sendable, Equatable {
    public enum Action: Sendable, Hashable {
        case allow, log, notify, trap, killThread, killProcess
        case errno(Int32)
        case trace(Int32)

        /// The OCI name; errno and trace carry their value in `errnoRet`.
        public var ociName: String {
            switch self {
            case .allow: return "SCMP_ACT_ALLOW"
            case .log: return "SCMP_ACT_LOG"
            case .notify: return "SCMP_ACT_NOTIFY"
            case .trap: return "SCMP_ACT_TRAP"
            case .killThread: return "SCMP_ACT_KILL_THREAD"
            case .killProcess: return "SCMP_ACT_KILL_PROCESS"
            case .errno: return "SCMP_ACT_ERRNO"
            case .trace: return "SCMP_ACT_TRACE"
            }
        }

        static let names = ["SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY", "SCMP_ACT_TRAP", "SCMP_ACT_KILL",
                            "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"]

        /// `errnoRet` applies to errno (default EPERM, as runc does) and trace (default 0).
        init?(ociName: String, errnoRet: Int32?) {
            switch ociName {
            case "SCMP_ACT_ALLOW": self = .allow
            case "SCMP_ACT_LOG": self = .log
            case "SCMP_ACT_NOTIFY": self = .notify
            case "SCMP_ACT_TRAP": self = .trap
            case "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD": self = .killThread
            case "SCMP_ACT_KILL_PROCESS": self = .killProcess
            case "SCMP_ACT_ERRNO": self = .errno(errnoRet ?? EPERM)
            case "SCMP_ACT_TRACE": self = .trace(errnoRet ?? 0)
            default: return nil
            }
        }

        var errnoRet: Int32? {
            switch self {
            case .errno(let code), .trace(let code): return code
            default: return nil
            }
        }
    }

    /// One comparison of a syscall argument; the conditions of a rule must all hold.
    public struct Condition: Sendable, Hashable {
        public enum Operator: String, Sendable, CaseIterable {
            case notEqual = "SCMP_CMP_NE", lessThan = "SCMP_CMP_LT", lessOrEqual = "SCMP_CMP_LE"
            case equal = "SCMP_CMP_EQ", greaterOrEqual = "SCMP_CMP_GE", greaterThan = "SCMP_CMP_GT"
            case maskedEqual = "SCMP_CMP_MASKED_EQ"
        }

        public var index: Int
        /// For maskedEqual: the mask; `valueTwo` is what the masked argument must equal.
        public var value: UInt64
        public var valueTwo: UInt64
        public var op: Operator

        public init(index: Int, value: UInt64, valueTwo: UInt64 = 0, op: Operator) {
            self.index = index
            self.value = value
            self.valueTwo = valueTwo
            self.op = op
        }
    }

    public struct Rule: Sendable, Equatable {
        public var names: [String]
        public var action: Action
        public var conditions: [Condition]
        public var comment: String?

        public init(names: [String], action: Action, conditions: [Condition] = [], comment: String? = nil) {
            self.names = names
            self.action = action
            self.conditions = conditions
            self.comment = comment
        }
    }

    public var defaultAction: Action
    public var rules: [Rule]
    /// SECCOMP_FILTER_FLAG_LOG: the kernel logs every action but allow (OCI flag
    /// "SECCOMP_FILTER_FLAG_LOG").
    public var logDenials: Bool

    public init(defaultAction: Action, rules: [Rule], logDenials: Bool = true) {
        self.defaultAction = defaultAction
        self.rules = rules
        self.logDenials = logDenials
    }

    /// Every syscall name a rule mentions whose action is `action` with no conditions.
    func unconditionallyGiven(_ action: Action) -> Set<String> {
        var names = Set<String>()
        for rule in rules where rule.action == action && rule.conditions.isEmpty { names.formUnion(rule.names) }
        return names
    }
}

// MARK: - Reading and writing the OCI / Docker JSON form

extension SeccompProfile {
    /// What a profile's rules are read for: Docker profiles hold rules that
    /// apply only with some capabilities, on some architectures or kernels
    /// (`includes` / `excludes`); alcub3 keeps the ones that apply to its sandbox.
    public struct Target: Sendable {
        public var capabilities: Set<String>
        public var kernelRelease: String

        public init(capabilities: Set<String> = [], kernelRelease: String = SeccompProfile.runningKernelRelease()) {
            self.capabilities = capabilities
            self.kernelRelease = kernelRelease
        }
    }

    public static func runningKernelRelease() -> String {
        var names = utsname()
        uname(&names)
        return withUnsafeBytes(of: &names.release) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
    }

    static let topLevelKeys = ["defaultAction", "defaultErrnoRet", "architectures", "archMap", "flags",
                               "listenerPath", "listenerMetadata", "syscalls"]
    static let ruleKeys = ["names", "name", "action", "errnoRet", "args", "comment", "includes", "excludes"]
    static let argumentKeys = ["index", "value", "valueTwo", "op"]
    static let filterKeys = ["caps", "arches", "minKernel"]
    static let knownFlags = ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                             "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV", "SECCOMP_FILTER_FLAG_TSYNC"]
    /// Names this machine's syscalls go by in `architectures` and `arches`.
    static let nativeArchitectures: Set<String> = ["SCMP_ARCH_X86_64", "amd64", "x86_64"]

    /// Reads and checks a profile. Every refusal is one line naming the place
    /// (`syscalls[3].names[1]`) and what is wrong; `source` names the file.
    public init(json data: Data, source: String, for target: Target = Target()) throws {
        let root: Any
        do {
            root = try JSONSerialization.jsonObject(with: data)
        } catch {
            throw PolicyError(.malformedJSON, "not valid JSON: \((error as NSError).localizedDescription)", source: source)
        }
        do {
            self = try Self.parse(root, target: target)
        } catch let error as PolicyError {
            throw error.located(source: source)
        }
    }

    public init(contentsOf path: String, for target: Target = Target()) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue,
              let data = FileManager.default.contents(atPath: path) else {
            throw PolicyError(.unreadableFile, "cannot read the seccomp profile (no such file, or a directory)", source: path)
        }
        guard data.count <= 4 << 20 else {
            throw PolicyError(.unreadableFile, "the seccomp profile is larger than 4 MiB", source: path)
        }
        try self.init(json: data, source: path, for: target)
    }

    private static func parse(_ root: Any, target: Target) throws -> SeccompProfile {
        let top = try object(root, at: "profile", keys: topLevelKeys)
        let defaultName = try string(top["defaultAction"], at: "defaultAction", required: true)!
        let defaultErrno = try errnoValue(top["defaultErrnoRet"], at: "defaultErrnoRet")
        guard let defaultAction = Action(ociName: defaultName, errnoRet: defaultErrno) else {
            throw PolicyError.unknown("action", defaultName, valid: Action.names).prefixed("defaultAction")
        }
        if let architectures = top["architectures"] {
            let listed = try strings(architectures, at: "architectures")
            if !listed.isEmpty && nativeArchitectures.isDisjoint(with: listed) {
                throw PolicyError(.invalidValue, "architectures: \(listed.joined(separator: ", ")) does not include "
                                  + "SCMP_ARCH_X86_64, the architecture of this machine")
            }
        }
        var logDenials = false
        if let flags = top["flags"] {
            for (i, flag) in try strings(flags, at: "flags").enumerated() {
                guard knownFlags.contains(flag) else {
                    throw PolicyError.unknown("seccomp flag", flag, valid: knownFlags).prefixed("flags[\(i)]")
                }
                if flag == "SECCOMP_FILTER_FLAG_LOG" { logDenials = true }
            }
        }
        var rules: [Rule] = []
        if let syscalls = top["syscalls"] {
            guard let list = syscalls as? [Any] else { throw wrongType("syscalls", expected: "a list", got: syscalls) }
            for (i, entry) in list.enumerated() {
                if let rule = try parseRule(entry, at: "syscalls[\(i)]", target: target) { rules.append(rule) }
            }
        }
        return SeccompProfile(defaultAction: defaultAction, rules: rules, logDenials: logDenials)
    }

    private static func parseRule(_ value: Any, at place: String, target: Target) throws -> Rule? {
        let entry = try object(value, at: place, keys: ruleKeys)
        var names: [String] = []
        if let listed = entry["names"] { names = try strings(listed, at: "\(place).names") }
        if let single = try string(entry["name"], at: "\(place).name", required: false) { names.append(single) }
        guard !names.isEmpty else { throw PolicyError(.missingKey, "\(place): a rule needs 'names'") }
        for (j, name) in names.enumerated() { try checkSyscallName(name, at: "\(place).names[\(j)]") }
        let actionName = try string(entry["action"], at: "\(place).action", required: true)!
        let errnoRet = try errnoValue(entry["errnoRet"], at: "\(place).errnoRet")
        guard let action = Action(ociName: actionName, errnoRet: errnoRet) else {
            throw PolicyError.unknown("action", actionName, valid: Action.names).prefixed("\(place).action")
        }
        var conditions: [Condition] = []
        if let args = entry["args"], !(args is NSNull) {
            guard let list = args as? [Any] else { throw wrongType("\(place).args", expected: "a list", got: args) }
            for (k, arg) in list.enumerated() { conditions.append(try parseCondition(arg, at: "\(place).args[\(k)]")) }
        }
        let comment = try string(entry["comment"], at: "\(place).comment", required: false)
        let includes = try parseFilter(entry["includes"], at: "\(place).includes")
        let excludes = try parseFilter(entry["excludes"], at: "\(place).excludes")
        guard includes.map({ $0.matchesAll(target) }) ?? true, !(excludes.map({ $0.matchesAny(target) }) ?? false) else {
            return nil
        }
        return Rule(names: names, action: action, conditions: conditions, comment: comment)
    }

    private static func parseCondition(_ value: Any, at place: String) throws -> Condition {
        let arg = try object(value, at: place, keys: argumentKeys)
        let index = try integer(arg["index"], at: "\(place).index", required: true)!
        guard (0...5).contains(index) else {
            throw PolicyError(.invalidValue, "\(place).index: \(index) is not an argument index (0 to 5)")
        }
        let opName = try string(arg["op"], at: "\(place).op", required: true)!
        guard let op = Condition.Operator(rawValue: opName) else {
            throw PolicyError.unknown("comparison", opName, valid: Condition.Operator.allCases.map(\.rawValue))
                .prefixed("\(place).op")
        }
        let value = try unsigned(arg["value"], at: "\(place).value", required: true)!
        let valueTwo = try unsigned(arg["valueTwo"], at: "\(place).valueTwo", required: false) ?? 0
        return Condition(index: index, value: value, valueTwo: valueTwo, op: op)
    }

    /// Docker's `includes` / `excludes`: capabilities, architectures, a minimum kernel.
    struct RuleFilter {
        var caps: [String] = []
        var arches: [String] = []
        var minKernel: String?

        /// includes: every listed condition holds.
        func matchesAll(_ target: Target) -> Bool {
            (caps.isEmpty || caps.allSatisfy(target.capabilities.contains))
                && (arches.isEmpty || !SeccompProfile.nativeArchitectures.isDisjoint(with: arches))
                && (minKernel.map { kernel(target.kernelRelease, isAtLeast: $0) } ?? true)
        }

        /// excludes: any listed condition holds.
        func matchesAny(_ target: Target) -> Bool {
            caps.contains(where: target.capabilities.contains)
                || !SeccompProfile.nativeArchitectures.isDisjoint(with: arches)
                || (minKernel.map { kernel(target.kernelRelease, isAtLeast: $0) } ?? false)
        }
    }

    private static func parseFilter(_ value: Any?, at place: String) throws -> RuleFilter? {
        guard let value, !(value is NSNull) else { return nil }
        let entry = try object(value, at: place, keys: filterKeys)
        var filter = RuleFilter()
        if let caps = entry["caps"] { filter.caps = try strings(caps, at: "\(place).caps") }
        if let arches = entry["arches"] { filter.arches = try strings(arches, at: "\(place).arches") }
        filter.minKernel = try string(entry["minKernel"], at: "\(place).minKernel", required: false)
        if let minKernel = filter.minKernel, versionNumbers(minKernel).isEmpty {
            throw PolicyError(.invalidValue, "\(place).minKernel: '\(minKernel)' is not a kernel version like 5.8")
        }
        return filter
    }

    /// The profile as OCI / Docker JSON (pretty, keys sorted): what `--seccomp-profile` reads back.
    public func jsonData() throws -> Data {
        var top: [String: Any] = ["defaultAction": defaultAction.ociName, "architectures": ["SCMP_ARCH_X86_64"]]
        if let code = defaultAction.errnoRet { top["defaultErrnoRet"] = Int(code) }
        if logDenials { top["flags"] = ["SECCOMP_FILTER_FLAG_LOG"] }
        top["syscalls"] = rules.map { rule -> [String: Any] in
            var entry: [String: Any] = ["names": rule.names, "action": rule.action.ociName]
            if let code = rule.action.errnoRet { entry["errnoRet"] = Int(code) }
            if let comment = rule.comment { entry["comment"] = comment }
            if !rule.conditions.isEmpty {
                entry["args"] = rule.conditions.map {
                    ["index": $0.index, "value": $0.value, "valueTwo": $0.valueTwo, "op": $0.op.rawValue] as [String: Any]
                }
            }
            return entry
        }
        return try JSONSerialization.data(withJSONObject: top, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
    }

    // MARK: checked accessors

    /// A syscall name libseccomp knows; one that exists only on other
    /// architectures is accepted (a profile may serve several) and skipped later.
    static func checkSyscallName(_ name: String, at place: String) throws {
        if seccomp_syscall_resolve_name(name) != __NR_SCMP_ERROR { return }
        throw PolicyError.unknown("syscall", name, valid: Array(SyscallNames.table.values).sorted(), kind: .unknownKey)
            .prefixed(place)
    }

    private static func object(_ value: Any, at place: String, keys: [String]) throws -> [String: Any] {
        guard let dictionary = value as? [String: Any] else { throw wrongType(place, expected: "an object", got: value) }
        for key in dictionary.keys.sorted() where !keys.contains(key) {
            throw PolicyError.unknown("key", key, valid: keys, context: " in \(place)", kind: .unknownKey)
        }
        return dictionary
    }

    private static func string(_ value: Any?, at place: String, required: Bool) throws -> String? {
        guard let value, !(value is NSNull) else {
            if required { throw PolicyError(.missingKey, "\(place) is missing") }
            return nil
        }
        guard let text = value as? String else { throw wrongType(place, expected: "a string", got: value) }
        return text
    }

    private static func strings(_ value: Any, at place: String) throws -> [String] {
        guard let list = value as? [Any] else { throw wrongType(place, expected: "a list of strings", got: value) }
        return try list.enumerated().map { i, item in try string(item, at: "\(place)[\(i)]", required: true)! }
    }

    /// JSON numbers arrive as NSNumber; booleans are NSNumbers too and are refused.
    private static func number(_ value: Any?, at place: String, required: Bool) throws -> NSNumber? {
        guard let value, !(value is NSNull) else {
            if required { throw PolicyError(.missingKey, "\(place) is missing") }
            return nil
        }
        // JSON true/false arrive as NSNumbers of type "c" (char).
        guard let number = value as? NSNumber, String(cString: number.objCType) != "c" else {
            throw wrongType(place, expected: "a number", got: value)
        }
        return number
    }

    private static func integer(_ value: Any?, at place: String, required: Bool) throws -> Int? {
        guard let number = try number(value, at: place, required: required) else { return nil }
        guard let exact = Int(exactly: number.doubleValue) else {
            throw PolicyError(.invalidValue, "\(place): \(number) is not a whole number")
        }
        return exact
    }

    private static func unsigned(_ value: Any?, at place: String, required: Bool) throws -> UInt64? {
        guard let number = try number(value, at: place, required: required) else { return nil }
        // Large values (masks up to 2^64-1) must not go through Double.
        let text = number.stringValue
        guard let exact = UInt64(text) ?? Int64(text).flatMap({ $0 >= 0 ? UInt64($0) : nil }) else {
            throw PolicyError(.invalidValue, "\(place): \(text) is not a whole number from 0 to 2^64-1")
        }
        return exact
    }

    private static func errnoValue(_ value: Any?, at place: String) throws -> Int32? {
        guard let code = try integer(value, at: place, required: false) else { return nil }
        guard (0...4095).contains(code) else {
            throw PolicyError(.invalidValue, "\(place): \(code) is not an errno (0 to 4095)")
        }
        return Int32(code)
    }

    private static func wrongType(_ place: String, expected: String, got value: Any) -> PolicyError {
        let kind: String
        switch value {
        case is String: kind = "a string"
        case is [Any]: kind = "a list"
        case is [String: Any]: kind = "an object"
        case is NSNull: kind = "null"
        default: kind = "a number or boolean"
        }
        return PolicyError(.wrongType, "\(place) must be \(expected), not \(kind)")
    }
}

/// "6.18.44-fc" is at least "5.8": numeric parts compared left to right.
func kernel(_ release: String, isAtLeast minimum: String) -> Bool {
    let have = versionNumbers(release), want = versionNumbers(minimum)
    for i in 0..<max(have.count, want.count) {
        let a = i < have.count ? have[i] : 0, b = i < want.count ? want[i] : 0
        if a != b { return a > b }
    }
    return true
}

func versionNumbers(_ text: String) -> [Int] {
    let leading = text.prefix(while: { $0.isNumber || $0 == "." })
    return leading.split(separator: ".").compactMap { Int($0) }
}
