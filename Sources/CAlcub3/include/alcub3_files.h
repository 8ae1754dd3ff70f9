#ifndef ALCUB3_FILES_H
#define ALCUB3_FILES_H

#include <sys/types.h>

/* Extended attributes of a path, not following symlinks (sys/xattr.h is
   outside Swift's Glibc module). Same results as llistxattr / lgetxattr. */
ssize_t alcub3_llistxattr(const char *path, char *list, size_t size);
ssize_t alcub3_lgetxattr(const char *path, const char *name, void *value, size_t size);

#endif
