/*
 * Measured boot inside an alcub3 guest (hardware isolation level): the guest
 * agent extends the measurements the host took (kernel, initramfs, command
 * line; SHA-256) into PCR 9 of its virtual TPM and reads the PCR back, for the
 * host to compare with its own replay (Sources/Integrity/BootMeasurement.swift).
 */
#ifndef ALCUB3_TPM_H
#define ALCUB3_TPM_H

#include <stdint.h>

#define ALCUB3_TPM_PCR 9

/* Extends `digest` (32 bytes, SHA-256) into PCR `pcr` through /dev/tpm0 (or
 * /dev/tpmrm0). Returns 0, or -1 with a reason in `why` (at most `whylen`). */
int alcub3_tpm_extend(int pcr, const uint8_t digest[32], char *why, unsigned whylen);

/* Reads PCR `pcr` of the SHA-256 bank as 64 hex digits and a NUL into `hex`.
 * Returns 0, or -1 with a reason in `why`. */
int alcub3_tpm_read(int pcr, char hex[65], char *why, unsigned whylen);

/* Parses 64 hex digits into 32 bytes; returns 0, or -1 when it is not that. */
int alcub3_hex_digest(const char *text, uint8_t digest[32]);

#endif
