/* Container images: openat2 confinement, the child subreaper and gzip
   decompression (see alcub3_image.h for why these are C). */
#define _GNU_SOURCE
#include "alcub3_image.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <zlib.h>

#ifndef SYS_openat2
#define SYS_openat2 437
#endif

/* <linux/openat2.h> (Debian 12's headers have it, but define it here so an
   older sysroot builds too). */
struct alcub3_open_how {
    uint64_t flags;
    uint64_t mode;
    uint64_t resolve;
};
#define ALCUB3_RESOLVE_NO_MAGICLINKS 0x02
#define ALCUB3_RESOLVE_IN_ROOT 0x10

int alcub3_open_in_root(int dirfd, const char *path, int flags, unsigned int mode) {
    struct alcub3_open_how how = {
        .flags = (uint64_t)(unsigned int)flags,
        .mode = (flags & (O_CREAT | __O_TMPFILE)) ? mode : 0,
        .resolve = ALCUB3_RESOLVE_IN_ROOT | ALCUB3_RESOLVE_NO_MAGICLINKS,
    };
    long rc;
    do {
        rc = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    } while (rc < 0 && (errno == EINTR || errno == EAGAIN));
    return (int)rc;
}

int alcub3_set_child_subreaper(void) {
    return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
}

struct alcub3_inflater {
    z_stream stream;
};

alcub3_inflater *alcub3_inflater_new(void) {
    alcub3_inflater *z = calloc(1, sizeof *z);
    if (!z) return NULL;
    /* 15 + 32: a zlib or gzip header, detected automatically. */
    if (inflateInit2(&z->stream, 15 + 32) != Z_OK) {
        free(z);
        return NULL;
    }
    return z;
}

int alcub3_inflater_step(alcub3_inflater *z, const uint8_t *in, size_t in_len, size_t *consumed,
                         uint8_t *out, size_t out_len, size_t *produced) {
    z->stream.next_in = (Bytef *)in;
    z->stream.avail_in = (uInt)in_len;
    z->stream.next_out = out;
    z->stream.avail_out = (uInt)out_len;
    int rc = inflate(&z->stream, Z_NO_FLUSH);
    *consumed = in_len - z->stream.avail_in;
    *produced = out_len - z->stream.avail_out;
    if (rc == Z_STREAM_END) return 1;
    if (rc == Z_OK || rc == Z_BUF_ERROR) return 0;
    return -1;
}

void alcub3_inflater_free(alcub3_inflater *z) {
    if (!z) return;
    inflateEnd(&z->stream);
    free(z);
}
