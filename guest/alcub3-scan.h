/*
 * The guest's files for integrity baselines (vm and hardware levels): the
 * guest agent walks a directory when the host asks (SCAN frame) and answers
 * with one SCAN_ENTRY per path (metadata, and the SHA-256 of a regular
 * file's content) and a SCAN_END. The host assembles them into the same
 * FileTree (Merkle hashes and all) it makes of a process sandbox's workspace.
 */
#ifndef ALCUB3_SCAN_H
#define ALCUB3_SCAN_H

#include <stddef.h>
#include <stdint.h>

struct alcub3_sha256 {
	uint32_t state[8];
	uint64_t length;        /* bytes hashed so far */
	uint8_t block[64];
	size_t used;            /* bytes waiting in `block` */
};

void alcub3_sha256_init(struct alcub3_sha256 *h);
void alcub3_sha256_update(struct alcub3_sha256 *h, const void *data, size_t len);
void alcub3_sha256_final(struct alcub3_sha256 *h, uint8_t digest[32]);

/* Called once per entry: the frame payload (struct alcub3_guest_scan_entry,
 * then the path and for a symlink its target, each NUL-terminated). */
typedef void (*alcub3_scan_emit)(const void *payload, size_t length);

/* Walks `root` without following symlinks or leaving its filesystem, at most
 * `limit` entries and 128 directory levels (`truncated` says one was reached).
 * Returns the number of entries sent, or -errno when the root itself cannot be read. */
long alcub3_scan(const char *root, unsigned long limit, alcub3_scan_emit emit, int *truncated);

#endif
