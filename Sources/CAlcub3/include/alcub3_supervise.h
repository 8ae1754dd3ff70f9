#ifndef ALCUB3_SUPERVISE_H
#define ALCUB3_SUPERVISE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Calls the seccomp supervisor needs that Swift's Glibc module lacks
   (they need _GNU_SOURCE or headers outside the module). */

/* eventfd(0, EFD_CLOEXEC): wakes the supervisor's poll to stop it. */
int alcub3_eventfd(void);

/* process_vm_readv of one range: bytes read, or -1 with errno. */
ssize_t alcub3_read_process(pid_t pid, uint64_t address, void *buffer, size_t length);

#endif
