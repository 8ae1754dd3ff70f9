#define _GNU_SOURCE
#include "alcub3_supervise.h"

#include <sys/eventfd.h>
#include <sys/uio.h>

int alcub3_eventfd(void) {
    return eventfd(0, EFD_CLOEXEC);
}

ssize_t alcub3_read_process(pid_t pid, uint64_t address, void *buffer, size_t length) {
    struct iovec local = { .iov_base = buffer, .iov_len = length };
    struct iovec remote = { .iov_base = (void *)(uintptr_t)address, .iov_len = length };
    return process_vm_readv(pid, &local, 1, &remote, 1, 0);
}
