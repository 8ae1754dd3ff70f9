import CAlcub3
import Crypto

/// The hardware level's attestation key: the public half of the primary key
/// that alcub3_tpm2.h's fixed template gives in a sandbox's swtpm. The host
/// derives it itself, on the TPM's fresh state, before the guest boots
/// (VirtualTPM); the private half never leaves swtpm, whose state the guest
/// cannot read, so a signature by this key is the TPM's word, not the guest's.
public struct AttestationKey: Sendable, Equatable {
    /// The public point, x || y (big-endian coordinates, 64 bytes).
    public let point: [UInt8]
    /// The key's TPM Name (TPM_ALG_SHA256 || SHA-256 of its public area): a quote names its signer so.
    public let name: [UInt8]

    init(_ key: alcub3_tpm2_key) {
        point = withUnsafeBytes(of: key.x) { Array($0) } + withUnsafeBytes(of: key.y) { Array($0) }
        name = withUnsafeBytes(of: key.name) { Array($0) }
    }

    public init(point: [UInt8], name: [UInt8]) {
        self.point = point
        self.name = name
    }

    /// How a quote names its signer: the key's qualified name, a primary's
    /// being SHA-256 of its hierarchy's handle (TPM_RH_ENDORSEMENT) and its Name.
    var qualifiedName: [UInt8] { [0x00, 0x0B] + Array(SHA256.hash(data: [0x40, 0x00, 0x00, 0x0B] + name)) }

    /// The PCR the hardware level quotes (BootMeasurement.pcr), as a TPM2_Quote selection.
    public static let quotedPCR = 9

    /// Checks a QUOTE frame's payload (struct alcub3_guest_quote, a TPMS_ATTEST,
    /// a TPMT_SIGNATURE) from a guest, which is hostile until this returns:
    /// the signature is this key's over the attestation, the attestation is a
    /// quote, names this key, carries `nonce`, selects exactly SHA-256 PCR 9
    /// and digests `pcr9` (the value the host's own replay of the measurements
    /// gives). Only PCR 9 is quoted: the host knows no reference for any other
    /// (the guest boots without firmware; nothing measures into PCRs 0-7).
    public func verify(quote payload: [UInt8], nonce: [UInt8], pcr9: [UInt8]) throws(QuoteRefusal) {
        let header = MemoryLayout<alcub3_guest_quote>.size
        guard payload.count >= header, payload.count <= Int(ALCUB3_GUEST_QUOTE_MAX) else {
            throw .malformed("a QUOTE of \(payload.count) bytes (\(header)...\(ALCUB3_GUEST_QUOTE_MAX) allowed)")
        }
        let sizes = payload.withUnsafeBytes { $0.loadUnaligned(as: alcub3_guest_quote.self) }
        guard UInt64(sizes.attest_size) + UInt64(sizes.signature_size) == UInt64(payload.count - header) else {
            throw .malformed("a QUOTE whose parts (\(sizes.attest_size) + \(sizes.signature_size) bytes) are not its \(payload.count - header) bytes")
        }
        let attest = Array(payload[header..<(header + Int(sizes.attest_size))])
        let signature = Array(payload[(header + Int(sizes.attest_size))...])

        // The signature first: until it holds, no field of the attestation means anything.
        guard let key = try? P256.Signing.PublicKey(rawRepresentation: point) else {
            throw .malformed("the attestation key is not a P-256 point")
        }
        guard key.isValidSignature(try Self.ecdsa(signature), for: attest) else {
            throw .notSignedByTheSandboxTPM
        }
        var r = WireReader(attest)
        guard try r.u32() == 0xff54_4347 else { throw .malformed("the attestation lacks TPM_GENERATED_VALUE") }
        guard try r.u16() == 0x8018 else { throw .malformed("the attestation is not a quote (TPM_ST_ATTEST_QUOTE)") }
        guard try r.sized() == qualifiedName else { throw .notSignedByTheSandboxTPM }
        guard try r.sized() == nonce else { throw .staleNonce }
        _ = try r.bytes(8 + 4 + 4 + 1)  // clockInfo: clock, resetCount, restartCount, safe
        _ = try r.bytes(8)              // firmwareVersion
        // TPML_PCR_SELECTION: one bank, SHA-256, PCR 9 and no other.
        let selection = [try r.u32(), UInt32(try r.u16())]
        let select = try r.bytes(Int(try r.bytes(1)[0]))
        guard selection == [1, 0x000B], select == [0x00, 0x02, 0x00] else {
            throw .wrongSelection
        }
        let digest = try r.sized()
        guard r.atEnd else { throw .malformed("\(r.remaining) bytes after the quote") }
        guard digest == Array(SHA256.hash(data: pcr9)) else { throw .pcrMismatch }
    }

    /// `verify`, as a value: nil when the quote holds, else why it is refused.
    public func refusal(ofQuote payload: [UInt8], nonce: [UInt8], pcr9: [UInt8]) -> QuoteRefusal? {
        do throws(QuoteRefusal) {
            try verify(quote: payload, nonce: nonce, pcr9: pcr9)
            return nil
        } catch {
            return error
        }
    }

    /// r || s of a TPMT_SIGNATURE that must be ECDSA with SHA-256.
    private static func ecdsa(_ signature: [UInt8]) throws(QuoteRefusal) -> P256.Signing.ECDSASignature {
        var w = WireReader(signature)
        guard try w.u16() == 0x0018, try w.u16() == 0x000B else { throw .malformed("the signature is not ECDSA-SHA256") }
        let r = try w.sized(), s = try w.sized()
        guard w.atEnd, (1...32).contains(r.count), (1...32).contains(s.count) else {
            throw .malformed("the signature's r (\(r.count)) and s (\(s.count)) are not P-256 scalars")
        }
        let raw = [UInt8](repeating: 0, count: 32 - r.count) + r + [UInt8](repeating: 0, count: 32 - s.count) + s
        guard let parsed = try? P256.Signing.ECDSASignature(rawRepresentation: raw) else { throw .malformed("the signature's r and s") }
        return parsed
    }
}

/// Why a guest's quote is not believed, in words for the refusal.
public enum QuoteRefusal: Error, Equatable, CustomStringConvertible {
    case malformed(String)
    /// Signed by another key than the one the host derived from this sandbox's swtpm (or naming another).
    case notSignedByTheSandboxTPM
    /// A genuine quote, for another nonce than this boot's: a replay.
    case staleNonce
    /// Not exactly SHA-256 PCR 9.
    case wrongSelection
    /// The TPM's PCR 9 is not what the host's replay of its measurements gives.
    case pcrMismatch

    public var description: String {
        switch self {
        case .malformed(let what): "a malformed quote: \(what)"
        case .notSignedByTheSandboxTPM: "the quote is not signed by the attestation key of this sandbox's TPM"
        case .staleNonce: "the quote does not carry this boot's nonce (a replayed quote)"
        case .wrongSelection: "the quote is not of SHA-256 PCR \(AttestationKey.quotedPCR) alone"
        case .pcrMismatch: "the TPM's PCR \(AttestationKey.quotedPCR) is not what the measurements give"
        }
    }
}

/// Big-endian TPM fields out of bytes a guest sent: every read is bounds-checked.
struct WireReader {
    private let bytes: [UInt8]
    private var at = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var atEnd: Bool { at == bytes.count }
    var remaining: Int { bytes.count - at }

    mutating func bytes(_ n: Int) throws(QuoteRefusal) -> [UInt8] {
        guard n >= 0, n <= remaining else { throw .malformed("a field of \(n) bytes with \(remaining) left") }
        defer { at += n }
        return Array(bytes[at..<(at + n)])
    }

    mutating func u16() throws(QuoteRefusal) -> UInt16 { try bytes(2).reduce(0) { $0 << 8 | UInt16($1) } }
    mutating func u32() throws(QuoteRefusal) -> UInt32 { try bytes(4).reduce(0) { $0 << 8 | UInt32($1) } }
    /// A TPM2B: a 16-bit size, then that many bytes.
    mutating func sized() throws(QuoteRefusal) -> [UInt8] { try bytes(Int(try u16())) }
}
