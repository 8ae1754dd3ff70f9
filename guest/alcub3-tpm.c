/*
 * TPM 2.0 from the guest agent, without a TSS library: two commands built by
 * hand (TPM 2.0 Library, Part 3: TPM2_PCR_Extend, 22.2; Part 2 for the types),
 * and the kernel's sysfs view of the SHA-256 PCR bank to read one back.
 */
#include "alcub3-tpm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define TPM_ST_SESSIONS 0x8002
#define TPM_CC_PCR_EXTEND 0x00000182
#define TPM_RS_PW 0x40000009
#define TPM_ALG_SHA256 0x000B

static uint8_t *put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v; return p + 2; }
static uint8_t *put32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; return p + 4; }

static int open_tpm(char *why, unsigned whylen)
{
    /* The resource manager first: it lets several users share the TPM. */
    int fd = open("/dev/tpmrm0", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        fd = open("/dev/tpm0", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        snprintf(why, whylen, "no TPM device (/dev/tpmrm0, /dev/tpm0): %s", strerror(errno));
    return fd;
}

int alcub3_tpm_extend(int pcr, const uint8_t digest[32], char *why, unsigned whylen)
{
    uint8_t command[128], response[64];
    uint8_t *p = command;
    p = put16(p, TPM_ST_SESSIONS);
    uint8_t *size = p;
    p = put32(p, 0); /* commandSize, filled below */
    p = put32(p, TPM_CC_PCR_EXTEND);
    p = put32(p, (uint32_t)pcr); /* pcrHandle: a PCR's handle is its index */
    /* One password session with an empty password: PCRs 0-15 need no more. */
    p = put32(p, 9);             /* authorizationSize */
    p = put32(p, TPM_RS_PW);
    p = put16(p, 0);             /* nonce */
    *p++ = 0;                    /* sessionAttributes */
    p = put16(p, 0);             /* hmac (the password) */
    p = put32(p, 1);             /* TPML_DIGEST_VALUES.count */
    p = put16(p, TPM_ALG_SHA256);
    memcpy(p, digest, 32);
    p += 32;
    put32(size, (uint32_t)(p - command));

    int fd = open_tpm(why, whylen);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, command, (size_t)(p - command));
    if (n != p - command) {
        snprintf(why, whylen, "writing TPM2_PCR_Extend: %s", n < 0 ? strerror(errno) : "short write");
        close(fd);
        return -1;
    }
    n = read(fd, response, sizeof response);
    close(fd);
    if (n < 10) {
        snprintf(why, whylen, "reading TPM2_PCR_Extend's response: %s", n < 0 ? strerror(errno) : "short response");
        return -1;
    }
    uint32_t rc = (uint32_t)response[6] << 24 | (uint32_t)response[7] << 16 | (uint32_t)response[8] << 8 | response[9];
    if (rc != 0) {
        snprintf(why, whylen, "TPM2_PCR_Extend of PCR %d answered 0x%x", pcr, rc);
        return -1;
    }
    return 0;
}

int alcub3_tpm_read(int pcr, char hex[65], char *why, unsigned whylen)
{
    char path[96], text[80];
    snprintf(path, sizeof path, "/sys/class/tpm/tpm0/pcr-sha256/%d", pcr);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, whylen, "%s: %s", path, strerror(errno));
        return -1;
    }
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n < 64) {
        snprintf(why, whylen, "%s: %zd bytes, not 64 hex digits", path, n);
        return -1;
    }
    for (int i = 0; i < 64; i++) {
        char c = text[i];
        hex[i] = (c >= 'A' && c <= 'F') ? (char)(c - 'A' + 'a') : c; /* the kernel prints upper case */
    }
    hex[64] = 0;
    return 0;
}

int alcub3_hex_digest(const char *text, uint8_t digest[32])
{
    for (int i = 0; i < 32; i++) {
        unsigned v = 0;
        for (int j = 0; j < 2; j++) {
            char c = text[2 * i + j];
            v <<= 4;
            if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
            else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
            else return -1;
        }
        digest[i] = (uint8_t)v;
    }
    return text[64] == 0 || text[64] == ' ' || text[64] == ':' || text[64] == '\n' ? 0 : -1;
}
