/*
 * TPM 2.0 from the guest agent, without a TSS library: the commands are the
 * host's own (Sources/CAlcub3/alcub3_tpm2.c, compiled in); this file only
 * moves them through the kernel's TPM device.
 */
#include "alcub3-tpm.h"
#include "alcub3_tpm2.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int alcub3_tpm_open(char *why, unsigned whylen)
{
    /* The resource manager first: it lets several users share the TPM and
     * flushes this agent's transient objects when it closes the device. */
    int fd = open("/dev/tpmrm0", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        fd = open("/dev/tpm0", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        snprintf(why, whylen, "no TPM device (/dev/tpmrm0, /dev/tpm0): %s", strerror(errno));
    return fd;
}

/* One command, one response (the device answers a whole write with a whole read).
 * Returns the response's code (alcub3_tpm2_response_code), or -1 on an I/O error. */
static long transact(int tpm, const char *name, const uint8_t *command, size_t length, uint8_t *response,
                     size_t *response_length, char *why, unsigned whylen)
{
    ssize_t n = write(tpm, command, length);
    if (n != (ssize_t)length) {
        snprintf(why, whylen, "writing %s: %s", name, n < 0 ? strerror(errno) : "short write");
        return -1;
    }
    n = read(tpm, response, ALCUB3_TPM2_RESPONSE_MAX);
    if (n < 0) {
        snprintf(why, whylen, "reading %s's response: %s", name, strerror(errno));
        return -1;
    }
    *response_length = (size_t)n;
    uint32_t rc = alcub3_tpm2_response_code(response, (size_t)n);
    if (rc == ALCUB3_TPM2_BAD_RESPONSE)
        snprintf(why, whylen, "%s: a malformed response of %zd bytes", name, n);
    else if (rc != 0)
        snprintf(why, whylen, "%s answered 0x%x", name, rc);
    return (long)rc;
}

int alcub3_tpm_extend(int tpm, int pcr, const uint8_t digest[32], char *why, unsigned whylen)
{
    uint8_t command[ALCUB3_TPM2_COMMAND_MAX], response[ALCUB3_TPM2_RESPONSE_MAX];
    size_t length = alcub3_tpm2_pcr_extend(command, (uint32_t)pcr, digest), got;
    return transact(tpm, "TPM2_PCR_Extend", command, length, response, &got, why, whylen) == 0 ? 0 : -1;
}

int alcub3_tpm_quote(int tpm, int pcr, const uint8_t nonce[32], uint8_t *attest, size_t *attest_length,
                     uint8_t *signature, size_t *signature_length, size_t room, char *why, unsigned whylen)
{
    uint8_t command[ALCUB3_TPM2_COMMAND_MAX], response[ALCUB3_TPM2_RESPONSE_MAX];
    size_t length = alcub3_tpm2_create_attestation_key(command), got;
    if (transact(tpm, "TPM2_CreatePrimary", command, length, response, &got, why, whylen) != 0)
        return -1;
    struct alcub3_tpm2_key key;
    uint32_t rc = alcub3_tpm2_parse_attestation_key(response, got, &key);
    if (rc != 0) {
        snprintf(why, whylen, "TPM2_CreatePrimary: the attestation key's response was refused (0x%x)", rc);
        return -1;
    }
    int ok = -1;
    length = alcub3_tpm2_quote(command, key.handle, nonce, 1u << pcr);
    if (transact(tpm, "TPM2_Quote", command, length, response, &got, why, whylen) == 0) {
        const uint8_t *a, *s;
        size_t al, sl;
        if ((rc = alcub3_tpm2_parse_quote(response, got, &a, &al, &s, &sl)) != 0)
            snprintf(why, whylen, "TPM2_Quote: a malformed response (0x%x)", rc);
        else if (al > room || sl > room)
            snprintf(why, whylen, "TPM2_Quote: a quote of %zu and a signature of %zu bytes", al, sl);
        else {
            memcpy(attest, a, al);
            memcpy(signature, s, sl);
            *attest_length = al;
            *signature_length = sl;
            ok = 0;
        }
    }
    /* The key is not needed again; /dev/tpm0 (no resource manager) would keep it. */
    char ignored[64];
    length = alcub3_tpm2_flush(command, key.handle);
    transact(tpm, "TPM2_FlushContext", command, length, response, &got, ignored, sizeof(ignored));
    return ok;
}
