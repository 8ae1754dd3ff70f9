/// Sizes, CPU shares and durations as written in the configuration
/// ("4GB", "512MiB", "0.5", "30s"), parsed exactly: no floating point, so
/// "1.5GiB" is 1610612736 bytes and never one byte off.
public enum Quantity {
    /// A memory or storage size in bytes. Units are case-sensitive: B, K/KB, M/MB,
    /// G/GB, T/TB are powers of 1000; Ki/KiB, Mi/MiB, Gi/GiB, Ti/TiB powers of 1024;
    /// no unit means bytes. More than zero, at most 1 PiB.
    public static func bytes(_ text: String) throws -> UInt64 {
        let (number, unit) = try split(text, what: "a size", example: "4GB or 512MiB")
        guard let factor = byteUnits[unit] else {
            let known = byteUnits.keys.filter { $0.lowercased() == unit.lowercased() && !$0.isEmpty }.sorted()
            if !known.isEmpty {
                throw PolicyError(.invalidValue, "unit '\(printable(unit))' in '\(printable(text))': units are case-sensitive; use \(known.map { "'\($0)'" }.joined(separator: " or "))")
            }
            throw PolicyError(.invalidValue, "unknown unit '\(printable(unit))' in '\(printable(text))': use B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)")
        }
        let bytes = try scale(number, by: factor, text: text, unitName: "a whole number of bytes")
        guard bytes <= maximumBytes else {
            throw PolicyError(.invalidValue, "'\(printable(text))' is more than 1PiB, larger than any host")
        }
        return bytes
    }

    /// CPU as a number of cores ("2.0", 2, "0.5"), to a thousandth of a core;
    /// more than zero, at most 1024.
    public static func cores(_ text: String) throws -> Double {
        Double(try millicores(text)) / 1000
    }

    /// A duration with a unit: ms, s, m, h or d ("30s", "5m", "24h", "7d", "1.5h");
    /// more than zero, at most 3650 days.
    public static func duration(_ text: String) throws -> Duration {
        let (number, unit) = try split(text, what: "a duration", example: "30s, 5m, 24h or 7d")
        guard !unit.isEmpty else {
            throw PolicyError(.invalidValue, "'\(printable(text))' has no unit; write e.g. \(text)s, \(text)m, \(text)h or \(text)d")
        }
        guard let factor = durationUnits[unit] else {
            throw PolicyError(.invalidValue, "unknown unit '\(printable(unit))' in '\(printable(text))': use ms, s, m, h or d")
        }
        let milliseconds = try scale(number, by: factor, text: text, unitName: "a whole number of milliseconds")
        guard milliseconds <= maximumMilliseconds else {
            throw PolicyError(.invalidValue, "'\(printable(text))' is more than 3650d")
        }
        return .milliseconds(Int64(milliseconds))
    }

    static func millicores(_ text: String) throws -> Int {
        let (number, unit) = try split(text, what: "a number of cores", example: "2.0 or 0.5")
        guard unit.isEmpty else {
            throw PolicyError(.invalidValue, "'\(printable(text))' is not a number of cores; write a plain number such as 2.0 or 0.5")
        }
        let value = try scale(number, by: 1000, text: text, unitName: "a whole number of thousandths of a core")
        guard value <= 1024 * 1000 else {
            throw PolicyError(.invalidValue, "'\(printable(text))' is more than 1024 cores")
        }
        return Int(value)
    }

    static let maximumBytes: UInt64 = 1 << 50
    static let maximumMilliseconds: UInt64 = 3650 * 86_400_000

    static let byteUnits: [String: UInt64] = [
        "": 1, "B": 1,
        "K": 1_000, "KB": 1_000, "M": 1_000_000, "MB": 1_000_000,
        "G": 1_000_000_000, "GB": 1_000_000_000, "T": 1_000_000_000_000, "TB": 1_000_000_000_000,
        "Ki": 1 << 10, "KiB": 1 << 10, "Mi": 1 << 20, "MiB": 1 << 20,
        "Gi": 1 << 30, "GiB": 1 << 30, "Ti": 1 << 40, "TiB": 1 << 40,
    ]
    static let durationUnits: [String: UInt64] = [
        "ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
    ]

    /// The number and the unit of "4GB", refusing what no unit can rescue:
    /// empty text, a space, a sign, a malformed number.
    private static func split(_ text: String, what: String, example: String) throws -> (DecimalNumber, String) {
        if text.isEmpty {
            throw PolicyError(.invalidValue, "no value given; write \(what) such as \(example)")
        }
        if text.contains(where: \.isWhitespace) {
            let joined = text.filter { !$0.isWhitespace }
            throw PolicyError(.invalidValue, "'\(printable(text))' contains a space; write '\(printable(joined))'")
        }
        if text.hasPrefix("-") {
            throw PolicyError(.invalidValue, "'\(printable(text))' is negative; it must be more than zero")
        }
        let numberEnd = text.firstIndex { !($0.isASCII && ($0.isNumber || $0 == ".")) } ?? text.endIndex
        guard let number = DecimalNumber(text[..<numberEnd]) else {
            throw PolicyError(.invalidValue, "'\(printable(text))' is not \(what); write e.g. \(example)")
        }
        return (number, String(text[numberEnd...]))
    }

    private static func scale(_ number: DecimalNumber, by factor: UInt64, text: String, unitName: String) throws -> UInt64 {
        switch number.scaled(by: factor) {
        case .whole(0): throw PolicyError(.invalidValue, "'\(printable(text))' is zero; it must be more than zero")
        case .whole(let value): return value
        case .fractional: throw PolicyError(.invalidValue, "'\(printable(text))' is not \(unitName)")
        case .overflow: throw PolicyError(.invalidValue, "'\(printable(text))' is too large")
        }
    }
}

/// A non-negative decimal written in plain digits ("2", "0.5", "1.25"), kept as
/// an integer and a count of fraction digits so unit conversions stay exact.
struct DecimalNumber {
    let significand: UInt64
    let fractionDigits: Int
    /// More digits than 64 bits hold: a number, but too large for any use here.
    let overflowed: Bool

    enum Scaled: Equatable { case whole(UInt64), fractional, overflow }

    /// Digits, optionally a '.' and more digits. No sign, exponent, '_', or a
    /// second '.': "1.5.2" is nonsense, not 1.5.
    init?(_ text: Substring) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count <= 2, parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy { $0.isASCII && $0.isNumber } }) else {
            return nil
        }
        let fraction = parts.count == 2 ? parts[1] : ""
        guard fraction.count <= 18 else { return nil }
        var value: UInt64 = 0
        var overflowed = false
        for digit in parts[0] + fraction where !overflowed {
            let (times10, o1) = value.multipliedReportingOverflow(by: 10)
            let (sum, o2) = times10.addingReportingOverflow(UInt64(digit.wholeNumberValue!))
            overflowed = o1 || o2
            value = sum
        }
        significand = value
        fractionDigits = fraction.count
        self.overflowed = overflowed
    }

    /// This number times `factor`, when the product is whole and fits in 64 bits.
    func scaled(by factor: UInt64) -> Scaled {
        if overflowed { return .overflow }
        var divisor: UInt64 = 1
        for _ in 0..<fractionDigits { divisor *= 10 }
        let product = significand.multipliedFullWidth(by: factor)
        // The quotient fits in 64 bits exactly when the high word is below the divisor.
        guard product.high < divisor else { return .overflow }
        let (quotient, remainder) = divisor.dividingFullWidth(product)
        return remainder == 0 ? .whole(quotient) : .fractional
    }
}
