// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * The guest side of an integrity scan (alcub3-scan.h): SHA-256 (FIPS 180-4)
 * and a depth-first walk of one directory tree. Static, no library: the guest
 * has busybox and this agent only.
 */
#define _GNU_SOURCE
#include "alcub3-scan.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "alcub3_guest.h"

/* The first 32 bits of the fractional parts of the cube roots of the first 64 primes. */
static const uint32_t K[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void compress(struct alcub3_sha256 *h, const uint8_t *p)
{
	uint32_t w[64], s[8];

	for (int i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (int i = 16; i < 64; i++) {
		uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	memcpy(s, h->state, sizeof(s));
	for (int i = 0; i < 64; i++) {
		uint32_t e = s[4], a = s[0];
		uint32_t t1 = s[7] + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & s[5]) ^ (~e & s[6])) + K[i] + w[i];
		uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & s[1]) ^ (a & s[2]) ^ (s[1] & s[2]));
		memmove(s + 1, s, 7 * sizeof(uint32_t));
		s[4] += t1;
		s[0] = t1 + t2;
	}
	for (int i = 0; i < 8; i++)
		h->state[i] += s[i];
}

void alcub3_sha256_init(struct alcub3_sha256 *h)
{
	/* The first 32 bits of the fractional parts of the square roots of the first 8 primes. */
	static const uint32_t initial[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
					     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
	memcpy(h->state, initial, sizeof(initial));
	h->length = 0;
	h->used = 0;
}

void alcub3_sha256_update(struct alcub3_sha256 *h, const void *data, size_t len)
{
	const uint8_t *p = data;

	h->length += len;
	while (len > 0) {
		size_t take = 64 - h->used < len ? 64 - h->used : len;
		memcpy(h->block + h->used, p, take);
		h->used += take;
		p += take;
		len -= take;
		if (h->used == 64) {
			compress(h, h->block);
			h->used = 0;
		}
	}
}

void alcub3_sha256_final(struct alcub3_sha256 *h, uint8_t digest[32])
{
	uint64_t bits = h->length * 8;
	uint8_t pad = 0x80, zero = 0, length[8];

	alcub3_sha256_update(h, &pad, 1);
	while (h->used != 56)
		alcub3_sha256_update(h, &zero, 1);
	for (int i = 0; i < 8; i++)
		length[i] = (uint8_t)(bits >> (56 - 8 * i));
	alcub3_sha256_update(h, length, 8);
	for (int i = 0; i < 8; i++) {
		digest[4 * i] = (uint8_t)(h->state[i] >> 24);
		digest[4 * i + 1] = (uint8_t)(h->state[i] >> 16);
		digest[4 * i + 2] = (uint8_t)(h->state[i] >> 8);
		digest[4 * i + 3] = (uint8_t)h->state[i];
	}
}

/* The content's SHA-256 without following a symlink put in the file's place; 0 or an errno. */
static int hash_file(int dirfd, const char *name, uint8_t digest[32])
{
	static uint8_t buffer[1 << 16];
	struct alcub3_sha256 h;
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);

	if (fd < 0)
		return errno;
	alcub3_sha256_init(&h);
	for (;;) {
		ssize_t n = read(fd, buffer, sizeof(buffer));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int error = errno;
			close(fd);
			return error;
		}
		if (n == 0)
			break;
		alcub3_sha256_update(&h, buffer, (size_t)n);
	}
	close(fd);
	alcub3_sha256_final(&h, digest);
	return 0;
}

/* Deeper directories are recorded but not entered (each level holds a path on the stack). */
#define MAX_DEPTH 128

struct walk {
	alcub3_scan_emit emit;
	unsigned long limit, sent;
	dev_t device;
	int truncated;
};

static void send_entry(struct walk *w, int dirfd, const char *name, const char *relative, const struct stat *st)
{
	char payload[sizeof(struct alcub3_guest_scan_entry) + 2 * 4096 + 2];
	struct alcub3_guest_scan_entry *e = (struct alcub3_guest_scan_entry *)payload;
	size_t pathlen = strlen(relative), length;

	if (pathlen >= 4096)
		return;
	memset(e, 0, sizeof(*e));
	e->size = (uint64_t)st->st_size;
	e->device = S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode) ? (uint64_t)st->st_rdev : 0;
	e->mode = st->st_mode;
	e->uid = st->st_uid;
	e->gid = st->st_gid;
	if (S_ISREG(st->st_mode))
		e->read_error = hash_file(dirfd, name, e->sha256);
	memcpy(payload + sizeof(*e), relative, pathlen + 1);
	length = sizeof(*e) + pathlen + 1;
	if (S_ISLNK(st->st_mode)) {
		ssize_t n = readlinkat(dirfd, name, payload + length, 4095);
		if (n < 0)
			n = 0;
		payload[length + (size_t)n] = 0;
		length += (size_t)n + 1;
	}
	w->emit(payload, length);
	w->sent++;
}

/* Entries of the directory `fd` (opened, then owned here), `relative` to the root. */
static void walk_directory(struct walk *w, int fd, const char *relative, int depth)
{
	DIR *dir = fdopendir(fd);
	struct dirent *d = NULL;

	if (!dir) {
		close(fd);
		return;
	}
	while (w->sent < w->limit && (d = readdir(dir))) {
		char path[4096];
		struct stat st;

		if (strcmp(d->d_name, ".") == 0 || strcmp(d->d_name, "..") == 0)
			continue;
		if (snprintf(path, sizeof(path), "%s%s%s", relative, relative[0] ? "/" : "", d->d_name) >= (int)sizeof(path))
			continue;
		if (fstatat(dirfd(dir), d->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0)
			continue; /* removed meanwhile */
		send_entry(w, dirfd(dir), d->d_name, path, &st);
		if (S_ISDIR(st.st_mode) && st.st_dev == w->device) {
			if (depth >= MAX_DEPTH) {
				w->truncated = 1;
				continue;
			}
			int child = openat(dirfd(dir), d->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (child >= 0)
				walk_directory(w, child, path, depth + 1);
		}
	}
	if (d && w->sent >= w->limit)
		w->truncated = 1;
	closedir(dir);
}

long alcub3_scan(const char *root, unsigned long limit, alcub3_scan_emit emit, int *truncated)
{
	struct walk w = { .emit = emit, .limit = limit };
	struct stat st;
	int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) != 0) {
		int error = errno;
		close(fd);
		return -error;
	}
	w.device = st.st_dev;
	send_entry(&w, AT_FDCWD, root, "", &st);
	walk_directory(&w, fd, "", 1);
	*truncated = w.truncated;
	return (long)w.sent;
}
