/* The keeper of a service's container (see alcub3_keeper.h). Everything the
   forked child does is an async-signal-safe system call: it is the child of a
   multithreaded process, where malloc, stdio and locks may be held by a thread
   that no longer exists. */
#define _GNU_SOURCE
#include "alcub3_keeper.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile pid_t keeper_forward_to;

static void keeper_forward(int sig) {
    if (keeper_forward_to > 0) kill(keeper_forward_to, sig);
}

/* The decimal number at the start of `text` (n bytes), or -1. */
static long parse_pid(const char *text, ssize_t n) {
    long value = 0;
    ssize_t i = 0;
    while (i < n && text[i] == ' ') i++;
    if (i >= n || text[i] < '0' || text[i] > '9') return -1;
    for (; i < n && text[i] >= '0' && text[i] <= '9'; i++) value = value * 10 + (text[i] - '0');
    return value;
}

static void write_code(const char *path, int code) {
    char digits[12], text[13];
    int n = 0, m = 0;
    do { digits[n++] = (char)('0' + code % 10); code /= 10; } while (code > 0 && n < 11);
    while (n > 0) text[m++] = digits[--n];
    text[m++] = '\n';
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return;
    ssize_t w = write(fd, text, (size_t)m);
    (void)w;
    close(fd);
}

static int shell_code(int status) {
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

pid_t alcub3_keeper_start(const char *runc, char *const argv[], char *const envp[], int stdin_fd, int stdout_fd, int stderr_fd,
                          const char *pid_file, const char *status_file, int *runc_code) {
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) return -1;
    pid_t keeper = fork();
    if (keeper < 0) {
        int saved = errno;
        close(report[0]);
        close(report[1]);
        errno = saved;
        return -1;
    }
    if (keeper == 0) {
        /* Nothing of the service stays open in it (its sockets, BPF objects, store): the
           container's stdio as its own 0-2 (runc create inherits them), the report pipe as 3. */
        if (dup2(stdin_fd, 0) < 0 || dup2(stdout_fd, 1) < 0 || dup2(stderr_fd, 2) < 0 || dup2(report[1], 3) < 0) _exit(127);
        fcntl(3, F_SETFD, FD_CLOEXEC);
        syscall(SYS_close_range, 4, ~0U, 0);
        /* Its own session: a terminal's hang-up or the service's process group never reach it. */
        setsid();
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = keeper_forward;
        int forwarded[] = { SIGTERM, SIGINT, SIGHUP, SIGQUIT };
        for (unsigned i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) sigaction(forwarded[i], &sa, NULL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        pid_t create = fork();
        if (create == 0) {
            execve(runc, argv, envp);
            _exit(127);
        }
        int status = 0, code = 127;
        if (create > 0) {
            while (waitpid(create, &status, 0) < 0 && errno == EINTR) {}
            code = shell_code(status);
        }
        ssize_t w = write(3, &code, sizeof code);
        (void)w;
        close(3);
        if (code != 0) _exit(code);
        char text[32];
        int fd = open(pid_file, O_RDONLY | O_CLOEXEC);
        ssize_t n = fd >= 0 ? read(fd, text, sizeof text) : -1;
        if (fd >= 0) close(fd);
        long init = parse_pid(text, n);
        if (init <= 0) _exit(127);
        keeper_forward_to = (pid_t)init;
        /* runc create's children are orphans now and ours (subreaper): reap them all, keep the init's status. */
        for (;;) {
            pid_t done = waitpid(-1, &status, 0);
            if (done < 0 && errno == EINTR) continue;
            if (done < 0) _exit(127);  /* no child left: the init was not ours */
            if (done == (pid_t)init) {
                code = shell_code(status);
                write_code(status_file, code);
                _exit(code);
            }
        }
    }
    close(report[1]);
    int code = 127;
    ssize_t got;
    do { got = read(report[0], &code, sizeof code); } while (got < 0 && errno == EINTR);
    close(report[0]);
    *runc_code = got == (ssize_t)sizeof code ? code : 127;
    return keeper;
}
