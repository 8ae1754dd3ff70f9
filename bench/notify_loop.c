/* The seccomp user-notify benchmark's workload: N calls of unshare(0), an
   escape syscall that a sandbox's filter refuses (itself, or through the
   supervisor), each timed on its own. Writes to the file named by argv[2] a
   first line "result ERRNO|ok|mixed cpu N", then the nanoseconds of each call,
   one a line. Static, so it needs nothing but the syscalls it times. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s ITERATIONS RESULT_FILE\n", argv[0]); return 64; }
    long n = atol(argv[1]);
    unsigned *ns = calloc((size_t)n, sizeof *ns);
    if (!ns) { perror("calloc"); return 1; }
    int first = -1, mixed = 0;
    for (long i = 0; i < n; i++) {
        long long a = now_ns();
        long rc = syscall(SYS_unshare, 0);
        long long b = now_ns();
        int result = rc == 0 ? 0 : errno;
        if (first < 0) first = result; else if (result != first) mixed = 1;
        ns[i] = (unsigned)(b - a);
    }
    FILE *f = fopen(argv[2], "w");
    if (!f) { perror(argv[2]); return 1; }
    const char *name = mixed ? "mixed" : first == 0 ? "ok" : strerrorname_np(first);
    fprintf(f, "result %s cpu %d\n", name ? name : "unknown", sched_getcpu());
    for (long i = 0; i < n; i++) fprintf(f, "%u\n", ns[i]);
    fclose(f);
    return 0;
}
