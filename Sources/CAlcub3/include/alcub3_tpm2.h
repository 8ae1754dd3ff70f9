/*
 * alcub3_tpm2.h: the few TPM 2.0 commands of the hardware level's measured
 * boot, marshalled by hand (TPM 2.0 Library, Part 3 for the commands, Part 2
 * for the types; big-endian on the wire). One implementation for both ends:
 * the guest agent (guest/alcub3-tpm.c, compiled into the initramfs by
 * scripts/build-guest.sh) and the host (Sources/Sandbox/VirtualTPM.swift),
 * which derives the same attestation key from the sandbox's swtpm before the
 * guest boots. Plain C and <stdint.h> only: the guest is built static.
 *
 * What crosses the guest channel from here (TPMS_ATTEST, TPMT_SIGNATURE) is
 * parsed on the host in Swift (Sources/Sandbox/TPMQuote.swift), never here.
 */
#ifndef ALCUB3_TPM2_H
#define ALCUB3_TPM2_H

#include <stddef.h>
#include <stdint.h>

/* Room for any command built here. */
#define ALCUB3_TPM2_COMMAND_MAX 256
/* Room for any response read here (TPM2_CreatePrimary's is the longest, ~500 bytes). */
#define ALCUB3_TPM2_RESPONSE_MAX 4096
/* The host's fresh nonce, the quote's qualifyingData. */
#define ALCUB3_TPM2_NONCE_SIZE 32
/* A response the parsers refuse (short, inconsistent sizes, not the expected shape). */
#define ALCUB3_TPM2_BAD_RESPONSE 0xffffffffu

/* Each builder writes one command into `out` (ALCUB3_TPM2_COMMAND_MAX bytes)
 * and returns its length. Authorisation, where one is needed, is a password
 * session with the empty password (what a fresh TPM has). */

/* TPM2_Startup(TPM_SU_CLEAR) and TPM2_Shutdown(TPM_SU_CLEAR). */
size_t alcub3_tpm2_startup_clear(uint8_t *out);
size_t alcub3_tpm2_shutdown_clear(uint8_t *out);
/* TPM2_PCR_Extend of one SHA-256 digest into PCR `pcr`. */
size_t alcub3_tpm2_pcr_extend(uint8_t *out, uint32_t pcr, const uint8_t digest[32]);
/* TPM2_CreatePrimary in the endorsement hierarchy with the attestation key's
 * fixed template: ECC NIST P-256, restricted signing, ECDSA-SHA256, fixedTPM,
 * fixedParent. A primary key is derived from the hierarchy's seed (in the
 * TPM's state) and the template alone, so every CreatePrimary with it on the
 * same TPM state gives the same key. */
size_t alcub3_tpm2_create_attestation_key(uint8_t *out);
/* TPM2_Quote by `key` over the SHA-256 bank's PCRs in `pcr_mask` (bit n: PCR n,
 * n < 24), qualifyingData = `nonce`, the key's own scheme. */
size_t alcub3_tpm2_quote(uint8_t *out, uint32_t key, const uint8_t nonce[ALCUB3_TPM2_NONCE_SIZE], uint32_t pcr_mask);
/* TPM2_FlushContext of a transient handle. */
size_t alcub3_tpm2_flush(uint8_t *out, uint32_t handle);

/* A response's code: 0 (success), the TPM's TPM_RC, or ALCUB3_TPM2_BAD_RESPONSE
 * when `length` bytes are not a response header whose size is `length`. */
uint32_t alcub3_tpm2_response_code(const uint8_t *response, size_t length);

/* The attestation key as TPM2_CreatePrimary returned it. */
struct alcub3_tpm2_key {
    uint32_t handle;            /* transient: valid on the connection that created it */
    uint8_t x[32], y[32];       /* the public point, big-endian coordinates */
    uint8_t name[34];           /* TPM_ALG_SHA256 (2 bytes) || SHA-256 of the public area */
};

/* Parses TPM2_CreatePrimary's response to alcub3_tpm2_create_attestation_key:
 * the public area must be the template with a 32-byte point. Returns 0, the
 * TPM_RC, or ALCUB3_TPM2_BAD_RESPONSE. */
uint32_t alcub3_tpm2_parse_attestation_key(const uint8_t *response, size_t length, struct alcub3_tpm2_key *key);

/* Parses TPM2_Quote's response: `attest` (the TPMS_ATTEST, without its TPM2B
 * size) and `signature` (the TPMT_SIGNATURE) point into `response`. Returns 0,
 * the TPM_RC, or ALCUB3_TPM2_BAD_RESPONSE. */
uint32_t alcub3_tpm2_parse_quote(const uint8_t *response, size_t length, const uint8_t **attest, size_t *attest_length,
                                 const uint8_t **signature, size_t *signature_length);

#endif
