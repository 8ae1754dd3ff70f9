/* TPM 2.0 commands by hand for the guest agent and the host (see alcub3_tpm2.h). */
#include "alcub3_tpm2.h"

#include <string.h>

#define TPM_ST_NO_SESSIONS 0x8001
#define TPM_ST_SESSIONS 0x8002
#define TPM_CC_CREATE_PRIMARY 0x00000131
#define TPM_CC_STARTUP 0x00000144
#define TPM_CC_SHUTDOWN 0x00000145
#define TPM_CC_QUOTE 0x00000158
#define TPM_CC_FLUSH_CONTEXT 0x00000165
#define TPM_CC_PCR_EXTEND 0x00000182
#define TPM_RH_ENDORSEMENT 0x4000000B
#define TPM_RS_PW 0x40000009
#define TPM_SU_CLEAR 0x0000
#define TPM_ALG_SHA256 0x000B
#define TPM_ALG_NULL 0x0010

/* TPMT_PUBLIC of the attestation key; the last four bytes are the empty
 * TPMS_ECC_POINT `unique`, which the TPM fills with the public point. */
static const uint8_t attestation_template[] = {
    0x00, 0x23,                 /* type: TPM_ALG_ECC */
    0x00, 0x0B,                 /* nameAlg: SHA-256 */
    /* objectAttributes: sign | restricted | noDA | userWithAuth | sensitiveDataOrigin | fixedParent | fixedTPM.
     * restricted: the key signs only what the TPM itself produced (quotes), never a digest the guest chose. */
    0x00, 0x05, 0x04, 0x72,
    0x00, 0x00,                 /* authPolicy: none */
    0x00, 0x10,                 /* symmetric: TPM_ALG_NULL (a signing key) */
    0x00, 0x18, 0x00, 0x0B,     /* scheme: TPM_ALG_ECDSA with SHA-256 */
    0x00, 0x03,                 /* curveID: TPM_ECC_NIST_P256 */
    0x00, 0x10,                 /* kdf: TPM_ALG_NULL */
    0x00, 0x00, 0x00, 0x00,     /* unique: x and y empty */
};
#define TEMPLATE_PARAMETERS (sizeof(attestation_template) - 4)

static uint8_t *put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; return p + 2; }
static uint8_t *put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
    return p + 4;
}

/* tag, commandSize (filled by `finish`), commandCode */
static uint8_t *begin(uint8_t *out, uint16_t tag, uint32_t code) { return put32(put32(put16(out, tag), 0), code); }
static size_t finish(uint8_t *out, uint8_t *end)
{
    put32(out + 2, (uint32_t)(end - out));
    return (size_t)(end - out);
}

/* One password session with the empty password. */
static uint8_t *empty_password(uint8_t *p)
{
    p = put32(p, 9);            /* authorizationSize */
    p = put32(p, TPM_RS_PW);
    p = put16(p, 0);            /* nonceCaller */
    *p++ = 0;                   /* sessionAttributes */
    return put16(p, 0);         /* hmac: the password */
}

size_t alcub3_tpm2_startup_clear(uint8_t *out)
{
    return finish(out, put16(begin(out, TPM_ST_NO_SESSIONS, TPM_CC_STARTUP), TPM_SU_CLEAR));
}

size_t alcub3_tpm2_shutdown_clear(uint8_t *out)
{
    return finish(out, put16(begin(out, TPM_ST_NO_SESSIONS, TPM_CC_SHUTDOWN), TPM_SU_CLEAR));
}

size_t alcub3_tpm2_pcr_extend(uint8_t *out, uint32_t pcr, const uint8_t digest[32])
{
    uint8_t *p = begin(out, TPM_ST_SESSIONS, TPM_CC_PCR_EXTEND);
    p = put32(p, pcr);          /* pcrHandle: a PCR's handle is its index */
    p = empty_password(p);
    p = put32(p, 1);            /* TPML_DIGEST_VALUES.count */
    p = put16(p, TPM_ALG_SHA256);
    memcpy(p, digest, 32);
    return finish(out, p + 32);
}

size_t alcub3_tpm2_create_attestation_key(uint8_t *out)
{
    uint8_t *p = begin(out, TPM_ST_SESSIONS, TPM_CC_CREATE_PRIMARY);
    p = put32(p, TPM_RH_ENDORSEMENT);
    p = empty_password(p);
    p = put16(p, 4);            /* inSensitive: TPM2B_SENSITIVE_CREATE of */
    p = put16(p, 0);            /*   userAuth: empty */
    p = put16(p, 0);            /*   data: empty */
    p = put16(p, sizeof(attestation_template));
    memcpy(p, attestation_template, sizeof(attestation_template));
    p += sizeof(attestation_template);
    p = put16(p, 0);            /* outsideInfo: empty */
    p = put32(p, 0);            /* creationPCR: no PCRs */
    return finish(out, p);
}

size_t alcub3_tpm2_quote(uint8_t *out, uint32_t key, const uint8_t nonce[ALCUB3_TPM2_NONCE_SIZE], uint32_t pcr_mask)
{
    uint8_t *p = begin(out, TPM_ST_SESSIONS, TPM_CC_QUOTE);
    p = put32(p, key);
    p = empty_password(p);
    p = put16(p, ALCUB3_TPM2_NONCE_SIZE);   /* qualifyingData */
    memcpy(p, nonce, ALCUB3_TPM2_NONCE_SIZE);
    p += ALCUB3_TPM2_NONCE_SIZE;
    p = put16(p, TPM_ALG_NULL); /* inScheme: the key's (ECDSA-SHA256) */
    p = put32(p, 1);            /* TPML_PCR_SELECTION.count */
    p = put16(p, TPM_ALG_SHA256);
    *p++ = 3;                   /* sizeofSelect: PCRs 0-23 */
    *p++ = (uint8_t)pcr_mask;
    *p++ = (uint8_t)(pcr_mask >> 8);
    *p++ = (uint8_t)(pcr_mask >> 16);
    return finish(out, p);
}

size_t alcub3_tpm2_flush(uint8_t *out, uint32_t handle)
{
    return finish(out, put32(begin(out, TPM_ST_NO_SESSIONS, TPM_CC_FLUSH_CONTEXT), handle));
}

/* A bounds-checked reader over a response: every take fails past the end. */
struct reader {
    const uint8_t *p, *end;
};

static int take(struct reader *r, size_t n, const uint8_t **at)
{
    if ((size_t)(r->end - r->p) < n)
        return -1;
    if (at)
        *at = r->p;
    r->p += n;
    return 0;
}

static int take16(struct reader *r, uint32_t *v)
{
    const uint8_t *b;
    if (take(r, 2, &b) < 0)
        return -1;
    *v = (uint32_t)b[0] << 8 | b[1];
    return 0;
}

static int take32(struct reader *r, uint32_t *v)
{
    const uint8_t *b;
    if (take(r, 4, &b) < 0)
        return -1;
    *v = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    return 0;
}

/* A TPM2B: its size, then that many bytes. */
static int take2b(struct reader *r, const uint8_t **at, uint32_t *size)
{
    return take16(r, size) < 0 ? -1 : take(r, *size, at);
}

uint32_t alcub3_tpm2_response_code(const uint8_t *response, size_t length)
{
    struct reader r = { response, response + length };
    uint32_t tag, size, rc;
    if (take16(&r, &tag) < 0 || take32(&r, &size) < 0 || take32(&r, &rc) < 0 || size != length
        || (tag != TPM_ST_NO_SESSIONS && tag != TPM_ST_SESSIONS))
        return ALCUB3_TPM2_BAD_RESPONSE;
    return rc;
}

/* The parameter area of a successful response with sessions: after the header,
 * `handles` handles and the parameterSize, bounded by that size. */
static uint32_t parameters(const uint8_t *response, size_t length, int handles, uint32_t *handle, struct reader *params)
{
    uint32_t rc = alcub3_tpm2_response_code(response, length);
    if (rc != 0)
        return rc;
    struct reader r = { response + 10, response + length };
    uint32_t size, tag = (uint32_t)response[0] << 8 | response[1];
    if (tag != TPM_ST_SESSIONS)
        return ALCUB3_TPM2_BAD_RESPONSE;
    if (handles && take32(&r, handle) < 0)
        return ALCUB3_TPM2_BAD_RESPONSE;
    const uint8_t *start;
    if (take32(&r, &size) < 0 || take(&r, size, &start) < 0)
        return ALCUB3_TPM2_BAD_RESPONSE;
    params->p = start;
    params->end = start + size;
    return 0;
}

uint32_t alcub3_tpm2_parse_attestation_key(const uint8_t *response, size_t length, struct alcub3_tpm2_key *key)
{
    struct reader r;
    uint32_t rc = parameters(response, length, 1, &key->handle, &r);
    if (rc != 0)
        return rc;
    const uint8_t *public, *x, *y, *name, *skipped;
    uint32_t size, xs, ys, ns, tag, hierarchy;
    /* outPublic: exactly the template, with a point of two 32-byte coordinates. */
    if (take2b(&r, &public, &size) < 0 || size != TEMPLATE_PARAMETERS + 2 + 32 + 2 + 32
        || memcmp(public, attestation_template, TEMPLATE_PARAMETERS) != 0)
        return ALCUB3_TPM2_BAD_RESPONSE;
    struct reader point = { public + TEMPLATE_PARAMETERS, public + size };
    if (take2b(&point, &x, &xs) < 0 || xs != 32 || take2b(&point, &y, &ys) < 0 || ys != 32 || point.p != point.end)
        return ALCUB3_TPM2_BAD_RESPONSE;
    /* creationData, creationHash, creationTicket: not used. */
    if (take2b(&r, &skipped, &size) < 0 || take2b(&r, &skipped, &size) < 0
        || take16(&r, &tag) < 0 || take32(&r, &hierarchy) < 0 || take2b(&r, &skipped, &size) < 0)
        return ALCUB3_TPM2_BAD_RESPONSE;
    if (take2b(&r, &name, &ns) < 0 || ns != sizeof(key->name) || name[0] != 0 || name[1] != TPM_ALG_SHA256
        || r.p != r.end)
        return ALCUB3_TPM2_BAD_RESPONSE;
    memcpy(key->x, x, 32);
    memcpy(key->y, y, 32);
    memcpy(key->name, name, sizeof(key->name));
    return 0;
}

uint32_t alcub3_tpm2_parse_quote(const uint8_t *response, size_t length, const uint8_t **attest, size_t *attest_length,
                                 const uint8_t **signature, size_t *signature_length)
{
    struct reader r;
    uint32_t size, rc = parameters(response, length, 0, NULL, &r);
    if (rc != 0)
        return rc;
    /* quoted (TPM2B_ATTEST), then the TPMT_SIGNATURE to the parameters' end. */
    if (take2b(&r, attest, &size) < 0 || size == 0 || r.p == r.end)
        return ALCUB3_TPM2_BAD_RESPONSE;
    *attest_length = size;
    *signature = r.p;
    *signature_length = (size_t)(r.end - r.p);
    return 0;
}
