/*
 * Measured boot inside an alcub3 guest (hardware isolation level): the guest
 * agent extends the measurements the host took (kernel, initramfs, command
 * line; SHA-256) into PCR 9 of its virtual TPM, then has the TPM quote PCR 9
 * with the host's nonce under the attestation key the host derived itself
 * (Sources/CAlcub3/alcub3_tpm2.h): the host believes the TPM's signature, not
 * the agent.
 */
#ifndef ALCUB3_TPM_H
#define ALCUB3_TPM_H

#include <stddef.h>
#include <stdint.h>

#define ALCUB3_TPM_PCR 9

/* The TPM device (/dev/tpmrm0, else /dev/tpm0); -1 with a reason in `why`. */
int alcub3_tpm_open(char *why, unsigned whylen);

/* Extends `digest` (32 bytes, SHA-256) into PCR `pcr`. Returns 0, or -1 with a
 * reason in `why` (at most `whylen`). */
int alcub3_tpm_extend(int tpm, int pcr, const uint8_t digest[32], char *why, unsigned whylen);

/* Creates the attestation key and quotes PCR `pcr` with `nonce` (32 bytes):
 * the TPMS_ATTEST into `attest` and the TPMT_SIGNATURE into `signature`
 * (each at most `room` bytes, their lengths in *attest_length and
 * *signature_length). Returns 0, or -1 with a reason in `why`. */
int alcub3_tpm_quote(int tpm, int pcr, const uint8_t nonce[32], uint8_t *attest, size_t *attest_length,
                     uint8_t *signature, size_t *signature_length, size_t room, char *why, unsigned whylen);

#endif
