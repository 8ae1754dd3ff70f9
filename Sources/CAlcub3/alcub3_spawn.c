#define _GNU_SOURCE
#include "alcub3_spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

struct failure { int step; int err; };

/* Child side: report the failed step to the parent and die. write() is async-signal-safe. */
static void child_fail(int fd, int step) {
    struct failure f = { step, errno };
    ssize_t n = write(fd, &f, sizeof f);
    (void)n;
    _exit(127);
}

static int bring_up_loopback(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    memcpy(ifr.ifr_name, "lo", 3);
    int rc = ioctl(s, SIOCGIFFLAGS, &ifr);
    if (rc == 0) {
        ifr.ifr_flags |= IFF_UP;
        rc = ioctl(s, SIOCSIFFLAGS, &ifr);
    }
    int saved = errno;
    close(s);
    errno = saved;
    return rc;
}

/*
 * Closes every descriptor from 3 up except those in keep (-1 entries ignored).
 * The init never execs, so without this it would hold the supervisor's
 * listening socket, database and BPF maps open for the sandbox's lifetime;
 * and the command would inherit whatever a library opened without CLOEXEC.
 */
static void close_other_fds(const int *keep, int count) {
    int sorted[8], n = 0;
    for (int i = 0; i < count && n < 8; i++) {
        if (keep[i] < 3) continue;
        int j = n++;
        while (j > 0 && sorted[j - 1] > keep[i]) { sorted[j] = sorted[j - 1]; j--; }
        sorted[j] = keep[i];
    }
    unsigned int from = 3;
    for (int i = 0; i < n; i++) {
        if ((unsigned)sorted[i] > from) syscall(SYS_close_range, from, (unsigned)sorted[i] - 1, 0);
        from = (unsigned)sorted[i] + 1;
    }
    syscall(SYS_close_range, from, ~0U, 0);
}

static void exec_command(const struct alcub3_spawn_config *c, int report_fd) {
    int keep[] = { report_fd };
    close_other_fds(keep, 1);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) child_fail(report_fd, ALCUB3_STEP_NO_NEW_PRIVS);
    if (c->filter) {
        /* Last step before exec: the filter may deny the syscalls used above. */
        struct sock_fprog prog = { .len = c->filter_len, .filter = (struct sock_filter *)c->filter };
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0)
            child_fail(report_fd, ALCUB3_STEP_SECCOMP);
    }
    execve(c->path, c->argv, c->envp);
    child_fail(report_fd, ALCUB3_STEP_EXEC);
}

static volatile sig_atomic_t forward_to;

static void wake(int sig) { (void)sig; }

static void forward_signal(int sig) {
    if (forward_to > 0) kill(forward_to, sig);
}

/* The sandbox's init: forwards termination signals to the command, reaps
   every orphan, and exits with the command's status (128 + n for a signal),
   written first to status_fd so a supervisor that is not our parent (a
   restarted service) can still learn it. With no command (command < 0) it
   only reaps, until it is killed. */
static void run_init(pid_t command, int status_fd) {
    forward_to = command;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward_signal;
    int forwarded[] = { SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 };
    for (unsigned i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) sigaction(forwarded[i], &sa, NULL);
    /* A handler (not SIG_DFL, which discards it) so SIGCHLD ends pause() below. */
    sa.sa_handler = wake;
    sigaction(SIGCHLD, &sa, NULL);
    for (;;) {
        int status;
        pid_t done = waitpid(-1, &status, 0);
        if (done < 0 && errno == EINTR) continue;
        if (done < 0 && !(errno == ECHILD && command < 0)) _exit(127);
        if (done < 0 && errno == ECHILD && command < 0) {
            pause();
            continue;
        }
        if (done == command) {
            int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            if (status_fd >= 0) {
                char text[16];
                int n = 0, v = code;
                char digits[16];
                do { digits[n++] = (char)('0' + v % 10); v /= 10; } while (v > 0);
                for (int i = 0; i < n; i++) text[i] = digits[n - 1 - i];
                text[n++] = '\n';
                ssize_t w = write(status_fd, text, (size_t)n);
                (void)w;
            }
            _exit(code);
        }
    }
}

#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#define ALCUB3_MOUNT_ATTR_RDONLY 0x1
#define ALCUB3_AT_RECURSIVE 0x8000

struct alcub3_mount_attr { uint64_t attr_set, attr_clr, propagation, userns_fd; };

static int set_read_only(const char *path, int read_only) {
    struct alcub3_mount_attr attr = { 0, 0, 0, 0 };
    if (read_only) attr.attr_set = ALCUB3_MOUNT_ATTR_RDONLY; else attr.attr_clr = ALCUB3_MOUNT_ATTR_RDONLY;
    return (int)syscall(SYS_mount_setattr, AT_FDCWD, path, ALCUB3_AT_RECURSIVE, &attr, sizeof attr);
}

/* mkdir -p for a path inside the sandbox's private /tmp (no malloc: a stack copy). */
static int make_path(const char *path) {
    char buffer[4096];
    size_t n = strlen(path);
    if (n >= sizeof buffer) { errno = ENAMETOOLONG; return -1; }
    memcpy(buffer, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buffer[i] == '/' || buffer[i] == '\0') {
            char saved = buffer[i];
            buffer[i] = '\0';
            if (mkdir(buffer, 0755) != 0 && errno != EEXIST) return -1;
            buffer[i] = saved;
        }
    }
    return 0;
}

/*
 * The read-only system view: every mount read-only (the host's files, cgroupfs,
 * sysfs, /proc/sys), a private tmpfs at /tmp, and the writable paths bound
 * back at their own paths. A writable path under /tmp is opened before the
 * tmpfs covers it and bound from its descriptor.
 */
static void read_only_view(const struct alcub3_spawn_config *c, int report_fd) {
    int fds[8], count = 0;
    for (const char *const *p = c->writable_paths; p && *p && count < 8; p++) {
        fds[count] = open(*p, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (fds[count] < 0) child_fail(report_fd, ALCUB3_STEP_READ_ONLY);
        count++;
    }
    if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=256m") != 0)
        child_fail(report_fd, ALCUB3_STEP_READ_ONLY);
    for (int i = 0; i < count; i++) {
        const char *target = c->writable_paths[i];
        char source[64];
        int n = 0, v = fds[i];
        char digits[16];
        do { digits[n++] = (char)('0' + v % 10); v /= 10; } while (v > 0);
        memcpy(source, "/proc/self/fd/", 14);
        for (int j = 0; j < n; j++) source[14 + j] = digits[n - 1 - j];
        source[14 + n] = '\0';
        if (make_path(target) != 0 || mount(source, target, NULL, MS_BIND | MS_REC, NULL) != 0)
            child_fail(report_fd, ALCUB3_STEP_READ_ONLY);
    }
    if (set_read_only("/", 1) != 0) child_fail(report_fd, ALCUB3_STEP_READ_ONLY);
    if (set_read_only("/tmp", 0) != 0) child_fail(report_fd, ALCUB3_STEP_READ_ONLY);
    for (int i = 0; i < count; i++) {
        if (set_read_only(c->writable_paths[i], 0) != 0) child_fail(report_fd, ALCUB3_STEP_READ_ONLY);
        close(fds[i]);
    }
}

/* The command's stdio, and signals as a fresh process has them: what the
   parent blocked or ignored must not leak into the agent. */
static void prepare_stdio_and_signals(const struct alcub3_spawn_config *c, int report_fd) {
    if (c->stdin_fd >= 0 && dup2(c->stdin_fd, 0) < 0) child_fail(report_fd, ALCUB3_STEP_EXEC);
    if (c->stdout_fd >= 0 && dup2(c->stdout_fd, 1) < 0) child_fail(report_fd, ALCUB3_STEP_EXEC);
    if (c->stderr_fd >= 0 && dup2(c->stderr_fd, 2) < 0) child_fail(report_fd, ALCUB3_STEP_EXEC);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int s = 1; s < NSIG; s++) {
        if (s != SIGKILL && s != SIGSTOP) signal(s, SIG_DFL);
    }
}

static void child_setup_and_exec(const struct alcub3_spawn_config *c, int report_fd) {
    /* Named before anything else, so the fork of the command already says what it is. */
    prctl(PR_SET_NAME, "alcub3-init");
    /* `run` owns its sandbox: it must not outlive the process that watches it. */
    if (c->die_with_parent) prctl(PR_SET_PDEATHSIG, SIGKILL);

    for (int i = 0; i < 8 && c->v1_procs_fds[i] >= 0; i++) {
        /* "0" moves the writer; v1 controllers (this host's cpu, memory, pids) have no CLONE_INTO_CGROUP. */
        if (write(c->v1_procs_fds[i], "0", 1) != 1) child_fail(report_fd, ALCUB3_STEP_CGROUP_V1);
    }
    if (c->namespaces & CLONE_NEWNS) {
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
            child_fail(report_fd, ALCUB3_STEP_MOUNT_PRIVATE);
        if ((c->namespaces & CLONE_NEWPID) &&
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
            child_fail(report_fd, ALCUB3_STEP_MOUNT_PROC);
        if (c->read_only_root) read_only_view(c, report_fd);
        for (const char *const *p = c->hidden_paths; p && *p; p++) {
            /* A directory gets an empty read-only tmpfs over it, a file /dev/null:
               the sandbox sees nothing there. A path that does not exist needs nothing. */
            struct stat st;
            if (lstat(*p, &st) != 0) continue;
            int rc = S_ISDIR(st.st_mode)
                ? mount("tmpfs", *p, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=000")
                : mount("/dev/null", *p, NULL, MS_BIND, NULL);
            if (rc != 0) child_fail(report_fd, ALCUB3_STEP_HIDE_PATH);
        }
    }
    if ((c->namespaces & CLONE_NEWUTS) && c->hostname &&
        sethostname(c->hostname, strlen(c->hostname)) != 0)
        child_fail(report_fd, ALCUB3_STEP_HOSTNAME);
    if ((c->namespaces & CLONE_NEWNET) && bring_up_loopback() != 0)
        child_fail(report_fd, ALCUB3_STEP_LOOPBACK);
    if (c->cwd && chdir(c->cwd) != 0) child_fail(report_fd, ALCUB3_STEP_CHDIR);

    prepare_stdio_and_signals(c, report_fd);

    {
        int keep[] = { report_fd, c->status_fd };
        close_other_fds(keep, 2);
    }
    if (c->namespaces & CLONE_NEWPID) {
        /* We are pid 1 of the sandbox: the kernel ignores default-action signals
           sent to pid 1 and gives it every orphan to reap, so a small init runs
           here and the command runs as its child. */
        /* Raw clone, not fork(): glibc's fork runs atfork handlers that take locks
           another thread of the parent may have held when we were cloned. */
        pid_t command = -1;
        if (c->path) {
            command = (pid_t)syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
            if (command < 0) child_fail(report_fd, ALCUB3_STEP_CLONE);
            if (command == 0) {
                if (c->status_fd >= 0) close(c->status_fd);
                exec_command(c, report_fd);
            }
        }
        close(report_fd);
        run_init(command, c->status_fd);
    }
    exec_command(c, report_fd);
}

/* Parent side: wait for the child's report; EOF means execve succeeded (the
   CLOEXEC pipe closed), a record means a step failed and the child is reaped. */
static int await_report(int report_fd, long child, int fd, pid_t *pid, int *pidfd,
                        int *failed_step, int *failed_errno) {
    struct failure f;
    ssize_t n;
    do { n = read(report_fd, &f, sizeof f); } while (n < 0 && errno == EINTR);
    close(report_fd);
    if (n == (ssize_t)sizeof f) {
        int status;
        while (waitpid((pid_t)child, &status, 0) < 0 && errno == EINTR) {}
        close(fd);
        *failed_step = f.step;
        *failed_errno = f.err;
        return -1;
    }
    *pid = (pid_t)child;
    *pidfd = fd;
    return 0;
}

/* clone3 into the sandbox cgroup with a pidfd; returns the child's pid (0 in the child) or -1. */
static long clone_into(const struct alcub3_spawn_config *c, uint64_t namespaces, int *fd) {
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_PIDFD | namespaces | (c->cgroup_fd >= 0 ? CLONE_INTO_CGROUP : 0);
    args.pidfd = (uint64_t)(uintptr_t)fd;
    args.exit_signal = SIGCHLD;
    args.cgroup = c->cgroup_fd >= 0 ? (uint64_t)c->cgroup_fd : 0;
    return syscall(SYS_clone3, &args, sizeof args);
}

int alcub3_spawn(const struct alcub3_spawn_config *c, pid_t *pid, int *pidfd,
                 int *failed_step, int *failed_errno) {
    int report[2];
    *failed_step = ALCUB3_STEP_NONE;
    *failed_errno = 0;
    if (pipe2(report, O_CLOEXEC) != 0) {
        *failed_step = ALCUB3_STEP_CLONE;
        *failed_errno = errno;
        return -1;
    }
    int fd = -1;
    long child = clone_into(c, c->namespaces, &fd);
    if (child < 0) {
        *failed_step = ALCUB3_STEP_CLONE;
        *failed_errno = errno;
        close(report[0]);
        close(report[1]);
        return -1;
    }
    if (child == 0) {
        close(report[0]);
        child_setup_and_exec(c, report[1]);
    }
    close(report[1]);
    return await_report(report[0], child, fd, pid, pidfd, failed_step, failed_errno);
}

static void relay_exec(const struct alcub3_spawn_config *c, int target_pidfd, int report_fd) {
    prctl(PR_SET_NAME, "alcub3-exec");
    for (int i = 0; i < 8 && c->v1_procs_fds[i] >= 0; i++) {
        if (write(c->v1_procs_fds[i], "0", 1) != 1) child_fail(report_fd, ALCUB3_STEP_CGROUP_V1);
    }
    uint64_t joined = c->namespaces & (CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET |
                                       CLONE_NEWCGROUP | CLONE_NEWPID);
    if (joined && setns(target_pidfd, (int)joined) != 0) child_fail(report_fd, ALCUB3_STEP_SETNS);
    close(target_pidfd);
    if (chdir(c->cwd ? c->cwd : "/") != 0) child_fail(report_fd, ALCUB3_STEP_CHDIR);
    prepare_stdio_and_signals(c, report_fd);
    {
        int keep[] = { report_fd };
        close_other_fds(keep, 1);
    }
    if (joined & CLONE_NEWPID) {
        /* setns(CLONE_NEWPID) applies to children only: the command is our child. */
        pid_t command = (pid_t)syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
        if (command < 0) child_fail(report_fd, ALCUB3_STEP_CLONE);
        if (command == 0) exec_command(c, report_fd);
        close(report_fd);
        run_init(command, -1);
    }
    exec_command(c, report_fd);
}

int alcub3_spawn_into(const struct alcub3_spawn_config *c, int target_pidfd, pid_t *pid, int *pidfd,
                      int *failed_step, int *failed_errno) {
    int report[2];
    *failed_step = ALCUB3_STEP_NONE;
    *failed_errno = 0;
    if (!c->path || pipe2(report, O_CLOEXEC) != 0) {
        *failed_step = ALCUB3_STEP_CLONE;
        *failed_errno = c->path ? errno : EINVAL;
        return -1;
    }
    int fd = -1;
    long child = clone_into(c, 0, &fd);
    if (child < 0) {
        *failed_step = ALCUB3_STEP_CLONE;
        *failed_errno = errno;
        close(report[0]);
        close(report[1]);
        return -1;
    }
    if (child == 0) {
        close(report[0]);
        relay_exec(c, target_pidfd, report[1]);
    }
    close(report[1]);
    return await_report(report[0], child, fd, pid, pidfd, failed_step, failed_errno);
}

int alcub3_pidfd_send_signal(int pidfd, int sig) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

int alcub3_memfd_create(const char *name) {
    return memfd_create(name, MFD_CLOEXEC);
}

int alcub3_pidfd_open(pid_t pid) {
    return (int)syscall(SYS_pidfd_open, pid, 0);
}
