#include "alcub3_files.h"

#include <sys/xattr.h>

ssize_t alcub3_llistxattr(const char *path, char *list, size_t size) {
    return llistxattr(path, list, size);
}

ssize_t alcub3_lgetxattr(const char *path, const char *name, void *value, size_t size) {
    return lgetxattr(path, name, value, size);
}
