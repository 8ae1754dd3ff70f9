/// Text an agent chose (paths, argv, program names), made safe to print on
/// the operator's terminal: what a terminal would act on instead of showing is
/// escaped, so an agent cannot clear the screen, set the window title, hide an
/// ALERT line or reorder what the operator reads.
public enum TerminalText {
    /// C0 controls, DEL and C1 controls (0x80-0x9F: a terminal takes U+009B as
    /// CSI, like ESC [) as `\xNN`; the Unicode bidi embeddings and overrides
    /// (U+202A-202E) and isolates (U+2066-2069) as `\u{NNNN}`. Everything else,
    /// other Unicode included, is kept.
    public static func escaped(_ text: String) -> String {
        var out = ""
        out.unicodeScalars.reserveCapacity(text.unicodeScalars.count)
        for scalar in text.unicodeScalars {
            switch scalar.value {
            case 0..<0x20, 0x7f..<0xa0:
                out += "\\x" + hex(scalar.value, digits: 2)
            case 0x202a...0x202e, 0x2066...0x2069:
                out += "\\u{" + hex(scalar.value, digits: 4) + "}"
            default:
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    private static func hex(_ value: UInt32, digits: Int) -> String {
        let text = String(value, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, digits - text.count)) + text
    }
}
