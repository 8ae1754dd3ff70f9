import Crypto
import Foundation
import Sandbox
import Testing

/// The hardware level's swtpm: started per sandbox, answering on its control
/// socket, and gone with its files after stop.
@Suite(.serialized) struct VirtualTPMTests {
    @Test func startsAnswersAndLeavesNothing() throws {
        let dir = NSTemporaryDirectory() + "alcub3-tpm-" + UUID().uuidString
        let tpm = try VirtualTPM(directory: dir)
        let pid = tpm.pid
        #expect(pid > 0 && kill(pid, 0) == 0)
        #expect(FileManager.default.fileExists(atPath: tpm.controlSocket))
        let answer = HostCommand.run(["/usr/bin/swtpm_ioctl", "--unix", tpm.controlSocket, "-c"])
        #expect(answer.code == 0 && answer.output.contains("ptm capability"), "\(answer.output)")
        #expect(tpm.qemuArguments.contains("emulator,id=tpm0,chardev=chrtpm"))
        tpm.stop()
        #expect(kill(pid, 0) != 0, "swtpm is still running")
        #expect(!FileManager.default.fileExists(atPath: dir), "its state directory is left")
    }
}

/// M8: the hardware level believes the TPM's signature, not the guest's word.
/// A real swtpm answers through the host's marshalling (alcub3_tpm2.c, the
/// guest agent's code); `VirtualTPM.withDataSocket` is how the host derives
/// the attestation key before QEMU starts, and here it also plays the guest.
@Suite struct TPMQuoteTests {
    let digests: [[UInt8]] = [[UInt8](repeating: 0x11, count: 32), [UInt8](repeating: 0x22, count: 32), [UInt8](repeating: 0x33, count: 32)]

    /// PCR 9 after the three extends from its reset value, as BootMeasurement replays it.
    func replay(_ digests: [[UInt8]]) -> [UInt8] {
        digests.reduce([UInt8](repeating: 0, count: 32)) { Array(SHA256.hash(data: $0 + $1)) }
    }

    func nonce() -> [UInt8] { (0..<32).map { _ in UInt8.random(in: 0...255) } }

    func freshState() throws -> String {
        let dir = NSTemporaryDirectory() + "alcub3-quote-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir + "/state", withIntermediateDirectories: true)
        return dir
    }

    /// The host's key for a fresh TPM state (what VirtualTPM.init records).
    func hostKey(_ dir: String) throws -> AttestationKey {
        try VirtualTPM.withDataSocket(directory: dir) { try $0.createAttestationKey().key }
    }

    /// What a guest agent does on that TPM: extend PCR 9, create the key, quote.
    func guestQuote(_ dir: String, extending: [[UInt8]], nonce: [UInt8], pcrs: [Int] = [9]) throws -> [UInt8] {
        try VirtualTPM.withDataSocket(directory: dir) { tpm in
            for d in extending { try tpm.extend(pcr: 9, digest: d) }
            let key = try tpm.createAttestationKey()
            defer { try? tpm.flush(key.handle) }
            return try tpm.quote(key: key.handle, nonce: nonce, pcrs: pcrs)
        }
    }

    @Test func theHostDerivesTheGuestsKeyAndAFreshQuoteIsBelieved() throws {
        let dir = try freshState()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let key = try hostKey(dir)
        #expect(key.point.count == 64 && key.name.count == 34)
        // The same template on the same seed: the guest's key is the host's.
        #expect(try hostKey(dir) == key)
        let n = nonce()
        let quote = try guestQuote(dir, extending: digests, nonce: n)
        #expect(key.refusal(ofQuote: quote, nonce: n, pcr9: replay(digests)) == nil)
    }

    /// A genuine quote of the right PCR, from an earlier boot: its nonce is not this boot's.
    @Test func aReplayedQuoteIsRefused() throws {
        let dir = try freshState()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let key = try hostKey(dir)
        let old = try guestQuote(dir, extending: digests, nonce: nonce())
        #expect(key.refusal(ofQuote: old, nonce: nonce(), pcr9: replay(digests)) == .staleNonce)
    }

    /// A quote by another TPM (another sandbox's, or one the guest made up): right nonce, right PCR, wrong key.
    @Test func aQuoteByAnotherKeyIsRefused() throws {
        let dir = try freshState(), other = try freshState()
        defer { for d in [dir, other] { try? FileManager.default.removeItem(atPath: d) } }
        let key = try hostKey(dir)
        let n = nonce()
        let foreign = try guestQuote(other, extending: digests, nonce: n)
        #expect(try hostKey(other) != key)
        #expect(key.refusal(ofQuote: foreign, nonce: n, pcr9: replay(digests)) == .notSignedByTheSandboxTPM)
    }

    /// The sandbox's TPM, honestly quoting a PCR 9 that is not the measurements', or more than PCR 9.
    @Test func aQuoteOfAnotherPCRIsRefused() throws {
        let dir = try freshState()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let key = try hostKey(dir)
        let n = nonce()
        let extra = try guestQuote(dir, extending: digests + [digests[0]], nonce: n)
        #expect(key.refusal(ofQuote: extra, nonce: n, pcr9: replay(digests)) == .pcrMismatch)
        let wider = try guestQuote(dir, extending: [], nonce: n, pcrs: [9, 10])
        #expect(key.refusal(ofQuote: wider, nonce: n, pcr9: replay(digests)) == .wrongSelection)
    }

    /// Hostile bytes: every truncation, an oversized frame, lying sizes, one altered bit. Each refused, none trusted.
    @Test func truncatedOversizedAndAlteredQuotesAreRefused() throws {
        let dir = try freshState()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let key = try hostKey(dir)
        let n = nonce(), pcr9 = replay(digests)
        let quote = try guestQuote(dir, extending: digests, nonce: n)
        for length in 0..<quote.count {
            #expect(key.refusal(ofQuote: Array(quote.prefix(length)), nonce: n, pcr9: pcr9) != nil, "a quote cut to \(length) bytes")
        }
        #expect(key.refusal(ofQuote: quote + [0], nonce: n, pcr9: pcr9) != nil)
        #expect(key.refusal(ofQuote: quote + [UInt8](repeating: 0, count: 4096), nonce: n, pcr9: pcr9) != nil)
        // Sizes that overflow 32 bits together, and a signature moved into the attestation.
        var lying = quote
        lying.replaceSubrange(0..<8, with: [0xff, 0xff, 0xff, 0xff, 0x01, 0, 0, 0])
        #expect(key.refusal(ofQuote: lying, nonce: n, pcr9: pcr9) != nil)
        lying = quote
        lying[0] &+= 2
        lying[4] &-= 2
        #expect(key.refusal(ofQuote: lying, nonce: n, pcr9: pcr9) != nil)
        // Any altered byte of the attestation or signature breaks the signature.
        for offset in stride(from: 8, to: quote.count, by: 7) {
            var altered = quote
            altered[offset] ^= 0x01
            #expect(key.refusal(ofQuote: altered, nonce: n, pcr9: pcr9) != nil, "byte \(offset) flipped")
        }
    }
}
