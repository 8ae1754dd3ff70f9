#ifndef ALCUB3_IMAGE_H
#define ALCUB3_IMAGE_H

#include <stddef.h>
#include <stdint.h>

/* Container images (Sources/Sandbox/OCIImage.swift): openat2 has no glibc
   wrapper, zlib's inflateInit2 is a macro, and prctl is variadic; none of them
   imports into Swift. */

/* O_PATH: Swift's Glibc module leaves out this _GNU_SOURCE flag. */
#define ALCUB3_O_PATH 010000000

/* openat2(dirfd, path, {flags, mode, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS}):
   `path` resolves as if `dirfd` were "/", so neither ".." nor a symlink in an
   image can lead outside its root filesystem. -1 and errno on failure. */
int alcub3_open_in_root(int dirfd, const char *path, int flags, unsigned int mode);

/* PR_SET_CHILD_SUBREAPER: a detached container's init (whose runc parent
   exits) becomes our child, so its exit status can be collected. */
int alcub3_set_child_subreaper(void);

/* A gzip (or zlib) stream decompressor. */
typedef struct alcub3_inflater alcub3_inflater;
alcub3_inflater *alcub3_inflater_new(void);
/* Decompresses from `in` into `out`. Returns 0 while the stream goes on, 1 at
   its end, -1 on corrupt data; *consumed and *produced say how far it got. */
int alcub3_inflater_step(alcub3_inflater *z, const uint8_t *in, size_t in_len, size_t *consumed,
                         uint8_t *out, size_t out_len, size_t *produced);
void alcub3_inflater_free(alcub3_inflater *z);

#endif
