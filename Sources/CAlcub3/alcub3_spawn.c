#define _GNU_SOURCE
#include "alcub3_spawn.h"
#include "alcub3_probe.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/sched.h>
#include <linux/securebits.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <termios.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <grp.h>
#include <sys/xattr.h>
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

/* Not a failure: the seccomp listener's descriptor number follows in `err`;
   the parent takes it with pidfd_getfd and answers one byte on the socket. */
#define ALCUB3_REPORT_LISTENER 100

/* Set in the process that installed the filter; its children (a copy of its
   memory) inherit the filter and must not stack a second one. */
static int filter_installed;

/* no_new_privs, then the seccomp filter. The init (or relay) installs it
   before cloning the command, so it can hand the listener over: the command
   execs at once and a close-on-exec listener would be gone. The rest of the
   init's life runs under the filter too (profiles must allow what it needs). */
static void install_filter(const struct alcub3_spawn_config *c, int report_fd) {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) child_fail(report_fd, ALCUB3_STEP_NO_NEW_PRIVS);
    if (!c->filter || filter_installed) return;
    struct sock_fprog prog = { .len = c->filter_len, .filter = (struct sock_filter *)c->filter };
    unsigned int flags = (c->filter_log ? SECCOMP_FILTER_FLAG_LOG : 0) |
                         (c->filter_notify ? SECCOMP_FILTER_FLAG_NEW_LISTENER : 0);
    long listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
    if (listener < 0) child_fail(report_fd, ALCUB3_STEP_SECCOMP);
    filter_installed = 1;
    if (c->filter_notify) {
        struct failure f = { ALCUB3_REPORT_LISTENER, (int)listener };
        char ack;
        if (write(report_fd, &f, sizeof f) != (ssize_t)sizeof f || read(report_fd, &ack, 1) != 1) _exit(127);
        close((int)listener); /* the parent holds it now; none may stay inside */
    }
}

#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#endif
#define ALCUB3_MDWE_REFUSE_EXEC_GAIN 1UL

static void exec_command(const struct alcub3_spawn_config *c, int report_fd) {
    int keep[] = { report_fd };
    close_other_fds(keep, 1);
    if (c->controlling_tty) {
        /* Its own session, with the relayed pty as its terminal: a session
           leader already (no pid namespace: the init is the command) keeps it. */
        if (setsid() < 0 && errno != EPERM) child_fail(report_fd, ALCUB3_STEP_SESSION);
        if (ioctl(0, TIOCSCTTY, 0) != 0) child_fail(report_fd, ALCUB3_STEP_SESSION);
    }
    /* Memory that was writable never becomes executable (mprotect RW -> RX
       answers EACCES); kept across execve and by every child. */
    if (c->deny_write_execute && prctl(PR_SET_MDWE, ALCUB3_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0 && errno != EINVAL)
        child_fail(report_fd, ALCUB3_STEP_MDWE);  /* EINVAL: a kernel before 6.3; the filter's fallback rules stand in */
    /* Last step before exec (unless the init did it): the filter may deny the syscalls used above. */
    install_filter(c, report_fd);
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

#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#define ALCUB3_OPEN_TREE_CLONE 1
#define ALCUB3_MOVE_MOUNT_F_EMPTY_PATH 0x4
#define ALCUB3_MOUNT_ATTR_IDMAP 0x00100000

/* A detached copy of the mount at path (not its submounts: idmapping a tree
   needs every mount in it to support it), idmapped with userns_fd. */
static int idmapped_tree(const char *path, int userns_fd) {
    int fd = (int)syscall(SYS_open_tree, AT_FDCWD, path, ALCUB3_OPEN_TREE_CLONE | O_CLOEXEC);
    if (fd < 0) return -1;
    struct alcub3_mount_attr attr = { ALCUB3_MOUNT_ATTR_IDMAP, 0, 0, (uint64_t)userns_fd };
    if (syscall(SYS_mount_setattr, fd, "", AT_EMPTY_PATH, &attr, sizeof attr) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
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

/* "/proc/self/fd/N" for a descriptor (no malloc, no stdio formatting of untrusted text). */
static void fd_path(int fd, char out[32]) {
    char digits[16];
    int n = 0;
    do { digits[n++] = (char)('0' + fd % 10); fd /= 10; } while (fd > 0);
    memcpy(out, "/proc/self/fd/", 14);
    for (int j = 0; j < n; j++) out[14 + j] = digits[n - 1 - j];
    out[14 + n] = '\0';
}

/*
 * The caller's directory as a copy-on-write overlay at its own path: reads
 * come from the directory (lower, staged at overlay_dir/lower, idmapped when
 * the sandbox has a user namespace), every change lands in overlay_dir/upper
 * on alcub3's size-capped tmpfs, so a full workspace is ENOSPC inside and
 * never the host's disk, and nothing reaches the directory until alcub3
 * applies the changes. redirect_dir and metacopy off: the upper holds whole
 * files and plain whiteouts, which is all the applier reads.
 */
static void copy_on_write_view(const struct alcub3_spawn_config *c, int lower_fd, int report_fd) {
    char lower[4096], options[4096 * 3 + 128];
    int n = snprintf(lower, sizeof lower, "%s/lower", c->overlay_dir);
    if (n < 0 || (size_t)n >= sizeof lower) { errno = ENAMETOOLONG; child_fail(report_fd, ALCUB3_STEP_OVERLAY); }
    if (c->idmap_userns_fd >= 0) {
        if (syscall(SYS_move_mount, lower_fd, "", AT_FDCWD, lower, ALCUB3_MOVE_MOUNT_F_EMPTY_PATH) != 0)
            child_fail(report_fd, ALCUB3_STEP_IDMAP);
    } else {
        char source[32];
        fd_path(lower_fd, source);
        if (mount(source, lower, NULL, MS_BIND, NULL) != 0) child_fail(report_fd, ALCUB3_STEP_OVERLAY);
    }
    n = snprintf(options, sizeof options,
                 "lowerdir=%s/lower,upperdir=%s/upper,workdir=%s/work,redirect_dir=off,metacopy=off,index=off",
                 c->overlay_dir, c->overlay_dir, c->overlay_dir);
    if (n < 0 || (size_t)n >= sizeof options) { errno = ENAMETOOLONG; child_fail(report_fd, ALCUB3_STEP_OVERLAY); }
    const char *target = c->writable_paths[0];
    if (make_path(target) != 0 || mount("overlay", target, "overlay", MS_NOSUID | MS_NODEV, options) != 0)
        child_fail(report_fd, ALCUB3_STEP_OVERLAY);
    /* The layers are the overlay's own clones now; the staging mount goes. */
    umount2(lower, MNT_DETACH);
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
        /* Taken before /tmp is covered. With a user namespace, a detached copy
           of the mount idmapped so the directory's owner is the agent's root. */
        fds[count] = c->idmap_userns_fd >= 0 ? idmapped_tree(*p, c->idmap_userns_fd)
                                             : open(*p, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (fds[count] < 0) child_fail(report_fd, c->idmap_userns_fd >= 0 ? ALCUB3_STEP_IDMAP : ALCUB3_STEP_READ_ONLY);
        count++;
    }
    if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=256m") != 0)
        child_fail(report_fd, ALCUB3_STEP_READ_ONLY);
    if (c->workspace) {
        /* The mount point is made on the host's filesystem if missing (an empty
           directory), before the view turns read-only; the tmpfs is private,
           and belongs to the agent's root. */
        char options[96];
        if (c->userns_fd >= 0)
            snprintf(options, sizeof options, "mode=0755,uid=%u,gid=%u,size=%llu", c->userns_root, c->userns_root,
                     c->workspace_bytes);
        else
            snprintf(options, sizeof options, "mode=0755,size=%llu", c->workspace_bytes);
        if (make_path(c->workspace) != 0 ||
            mount("tmpfs", c->workspace, "tmpfs", MS_NOSUID | MS_NODEV, options) != 0)
            child_fail(report_fd, ALCUB3_STEP_WORKSPACE);
    }
    int first = 0;
    if (c->overlay_dir && count > 0) {
        copy_on_write_view(c, fds[0], report_fd);
        first = 1;
    }
    for (int i = first; i < count && c->idmap_userns_fd >= 0; i++) {
        if (make_path(c->writable_paths[i]) != 0 ||
            syscall(SYS_move_mount, fds[i], "", AT_FDCWD, c->writable_paths[i], ALCUB3_MOVE_MOUNT_F_EMPTY_PATH) != 0)
            child_fail(report_fd, ALCUB3_STEP_IDMAP);
    }
    for (int i = first; i < count && c->idmap_userns_fd < 0; i++) {
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
    if (c->minimal_dev && (set_read_only("/dev/shm", 0) != 0 || set_read_only("/dev/pts", 0) != 0))
        child_fail(report_fd, ALCUB3_STEP_DEV);
    if (c->workspace && set_read_only(c->workspace, 0) != 0) child_fail(report_fd, ALCUB3_STEP_WORKSPACE);
    for (int i = 0; i < count; i++) {
        if (set_read_only(c->writable_paths[i], 0) != 0) child_fail(report_fd, ALCUB3_STEP_READ_ONLY);
        close(fds[i]);
    }
}

/*
 * A private /dev, as the sandbox's only view of devices: a small tmpfs with
 * the nodes every program opens (made here with mknod: this tmpfs is ours and
 * not nodev), symlinks for /dev/fd and stdio, a new devpts instance whose
 * ptmx anyone may open (the agent's own terminals, never the host's), and a
 * private size-capped /dev/shm (POSIX semaphores and shared memory, as
 * Python's multiprocessing uses). The host's disks, consoles, loop and
 * kvm devices are not there to open; the cgroup device filter refuses them
 * anyway.
 */
static void private_dev(const struct alcub3_spawn_config *c, int report_fd) {
    static const struct { const char *name; unsigned major, minor; } nodes[] = {
        { "/dev/null", 1, 3 }, { "/dev/zero", 1, 5 }, { "/dev/full", 1, 7 },
        { "/dev/random", 1, 8 }, { "/dev/urandom", 1, 9 }, { "/dev/tty", 5, 0 },
    };
    static const char *const links[][2] = {
        { "/proc/self/fd", "/dev/fd" }, { "/proc/self/fd/0", "/dev/stdin" },
        { "/proc/self/fd/1", "/dev/stdout" }, { "/proc/self/fd/2", "/dev/stderr" }, { "pts/ptmx", "/dev/ptmx" },
    };
    char options[64];
    if (mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k,nr_inodes=64") != 0)
        child_fail(report_fd, ALCUB3_STEP_DEV);
    for (unsigned i = 0; i < sizeof nodes / sizeof nodes[0]; i++) {
        if (mknod(nodes[i].name, S_IFCHR | 0666, makedev(nodes[i].major, nodes[i].minor)) != 0 ||
            chmod(nodes[i].name, 0666) != 0)
            child_fail(report_fd, ALCUB3_STEP_DEV);
    }
    for (unsigned i = 0; i < sizeof links / sizeof links[0]; i++) {
        if (symlink(links[i][0], links[i][1]) != 0) child_fail(report_fd, ALCUB3_STEP_DEV);
    }
    if (mkdir("/dev/pts", 0755) != 0 || mkdir("/dev/shm", 01777) != 0 || chmod("/dev/shm", 01777) != 0)
        child_fail(report_fd, ALCUB3_STEP_DEV);
    if (mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620") != 0)
        child_fail(report_fd, ALCUB3_STEP_DEV);
    snprintf(options, sizeof options, "mode=1777,size=%llu", c->shm_bytes ? c->shm_bytes : (64ULL << 20));
    if (mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, options) != 0)
        child_fail(report_fd, ALCUB3_STEP_DEV);
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

/*
 * Landlock. Debian 12's <linux/landlock.h> (linux-libc-dev 6.1) knows ABI 1
 * and 2 only; the constants and struct fields of later ABIs (truncate 3,
 * network 4, ioctl on devices 5, scopes 6, logging flags 7) are defined here,
 * as in the kernel's uapi header, with an LL_ prefix so they cannot clash.
 */
#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#define SYS_landlock_add_rule 445
#define SYS_landlock_restrict_self 446
#endif
#define LL_RULE_PATH_BENEATH 1
#define LL_RULE_NET_PORT 2
#define LL_FS_EXECUTE (1ULL << 0)
#define LL_FS_WRITE_FILE (1ULL << 1)
#define LL_FS_READ_FILE (1ULL << 2)
#define LL_FS_READ_DIR (1ULL << 3)
#define LL_FS_MAKE_SYM (1ULL << 12)      /* the last right of ABI 1 */
#define LL_FS_REFER (1ULL << 13)         /* ABI 2 */
#define LL_FS_TRUNCATE (1ULL << 14)      /* ABI 3 */
#define LL_FS_IOCTL_DEV (1ULL << 15)     /* ABI 5 */
#define LL_NET_BIND_TCP (1ULL << 0)      /* ABI 4 */
#define LL_NET_CONNECT_TCP (1ULL << 1)   /* ABI 4 */
#define LL_SCOPE_ABSTRACT_UNIX_SOCKET (1ULL << 0) /* ABI 6 */
#define LL_SCOPE_SIGNAL (1ULL << 1)               /* ABI 6 */
#define LL_RESTRICT_SELF_LOG_NEW_EXEC_ON (1U << 1) /* ABI 7: keep logging denials after execve */

struct ll_ruleset_attr { uint64_t handled_access_fs, handled_access_net, scoped; };
struct ll_path_beneath_attr { uint64_t allowed_access; int32_t parent_fd; } __attribute__((packed));
struct ll_net_port_attr { uint64_t allowed_access, port; };

/* Every filesystem right the ABI knows: all of them are handled (denied unless a rule allows). */
static uint64_t landlock_fs_rights(int abi) {
    uint64_t rights = (LL_FS_MAKE_SYM << 1) - 1;
    if (abi >= 2) rights |= LL_FS_REFER;
    if (abi >= 3) rights |= LL_FS_TRUNCATE;
    if (abi >= 5) rights |= LL_FS_IOCTL_DEV;
    return rights;
}

/* One path_beneath rule; a missing path is an error unless optional. */
static int landlock_allow_path(int ruleset, const char *path, uint64_t rights, int optional) {
    int fd = open(path, O_PATH | O_CLOEXEC);
    if (fd < 0) return (optional && errno == ENOENT) ? 0 : -1;
    struct ll_path_beneath_attr rule = { rights, fd };
    int rc = (int)syscall(SYS_landlock_add_rule, ruleset, LL_RULE_PATH_BENEATH, &rule, 0);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

static int landlock_allow_ports(int ruleset, uint64_t right, const uint16_t *ports, int count) {
    for (int i = 0; i < count; i++) {
        struct ll_net_port_attr rule = { right, ports[i] };
        if (syscall(SYS_landlock_add_rule, ruleset, LL_RULE_NET_PORT, &rule, 0) != 0) return -1;
    }
    return 0;
}

/*
 * Read and execute beneath /, every right beneath the writable paths and the
 * private /tmp, reading and writing (with ioctl) the character devices a
 * program commonly opens; TCP ports and scopes when the ABI has them. Paths
 * resolve in the caller's mount namespace: the sandbox's, after its mounts or
 * after setns.
 */
static void apply_landlock(const struct alcub3_spawn_config *c, int abi, int report_fd) {
    if (!c->landlock || abi < 1) return;
    uint64_t fs = landlock_fs_rights(abi);
    struct ll_ruleset_attr attr = { fs, 0, 0 };
    if (abi >= 4) {
        if (c->landlock_connect) attr.handled_access_net |= LL_NET_CONNECT_TCP;
        if (c->landlock_bind) attr.handled_access_net |= LL_NET_BIND_TCP;
    }
    /* Neither signals nor abstract Unix sockets reach processes outside the domain. */
    if (abi >= 6) attr.scoped = LL_SCOPE_ABSTRACT_UNIX_SOCKET | LL_SCOPE_SIGNAL;
    /* The kernel accepts a larger struct whose unknown tail is zero. */
    int ruleset = (int)syscall(SYS_landlock_create_ruleset, &attr, sizeof attr, 0);
    if (ruleset < 0) child_fail(report_fd, ALCUB3_STEP_LANDLOCK);
    uint64_t device = fs & (LL_FS_READ_FILE | LL_FS_WRITE_FILE | LL_FS_TRUNCATE | LL_FS_IOCTL_DEV);
    static const char *const devices[] = {
        "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/ptmx", "/dev/pts",
    };
    int rc = landlock_allow_path(ruleset, "/", LL_FS_READ_FILE | LL_FS_READ_DIR | LL_FS_EXECUTE, 0);
    for (const char *const *p = c->writable_paths; rc == 0 && p && *p; p++) rc = landlock_allow_path(ruleset, *p, fs, 0);
    if (rc == 0 && c->read_only_root && (c->namespaces & CLONE_NEWNS)) rc = landlock_allow_path(ruleset, "/tmp", fs, 0);
    if (rc == 0 && c->minimal_dev && (c->namespaces & CLONE_NEWNS)) rc = landlock_allow_path(ruleset, "/dev/shm", fs, 0);
    if (rc == 0 && c->workspace && c->read_only_root && (c->namespaces & CLONE_NEWNS))
        rc = landlock_allow_path(ruleset, c->workspace, fs, 0);
    for (unsigned i = 0; rc == 0 && i < sizeof devices / sizeof devices[0]; i++)
        rc = landlock_allow_path(ruleset, devices[i], device, 1);
    if (rc == 0 && (attr.handled_access_net & LL_NET_CONNECT_TCP))
        rc = landlock_allow_ports(ruleset, LL_NET_CONNECT_TCP, c->connect_ports, c->connect_ports_count);
    if (rc == 0 && (attr.handled_access_net & LL_NET_BIND_TCP))
        rc = landlock_allow_ports(ruleset, LL_NET_BIND_TCP, c->bind_ports, c->bind_ports_count);
    /* Denials of the agent (after its execve) go to the audit log too. */
    unsigned flags = abi >= 7 ? LL_RESTRICT_SELF_LOG_NEW_EXEC_ON : 0;
    if (rc == 0) rc = (int)syscall(SYS_landlock_restrict_self, ruleset, flags);
    if (rc != 0) child_fail(report_fd, ALCUB3_STEP_LANDLOCK);
    close(ruleset);
}

/*
 * Capabilities: uid 0 stays, its privileges go. The bounding set is cut
 * first (that needs CAP_SETPCAP, as the securebits do); the securebits make
 * uid 0 gain nothing at execve or from setuid, and are locked; the kept
 * capabilities are raised as ambient so they survive the execve.
 */
static void drop_capabilities(uint64_t keep, int report_fd) {
    for (int cap = 0; cap < 64; cap++) {
        if (keep & (1ULL << cap)) continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
            if (errno == EINVAL) break; /* past the kernel's last capability */
            child_fail(report_fd, ALCUB3_STEP_CAPABILITIES);
        }
    }
    unsigned long bits = SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP |
                         SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED;
    if (prctl(PR_SET_SECUREBITS, bits, 0, 0, 0) != 0) child_fail(report_fd, ALCUB3_STEP_CAPABILITIES);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0) child_fail(report_fd, ALCUB3_STEP_CAPABILITIES);
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    uint32_t low = (uint32_t)keep, high = (uint32_t)(keep >> 32);
    struct __user_cap_data_struct data[2] = { { low, low, low }, { high, high, high } };
    if (syscall(SYS_capset, &header, data) != 0) child_fail(report_fd, ALCUB3_STEP_CAPABILITIES);
    for (int cap = 0; cap < 64; cap++) {
        if ((keep & (1ULL << cap)) && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0)
            child_fail(report_fd, ALCUB3_STEP_CAPABILITIES);
    }
}

/* Joins the sandbox's user namespace and becomes its root: a host uid of
   alcub3's range, owner of nothing on the host. setns (not unshare) because
   alcub3 made and mapped the namespace beforehand; the mount, pid, network
   and other namespaces stay owned by the initial one, so the agent's
   capabilities in its own namespace reach none of them. */
static void enter_user_namespace(const struct alcub3_spawn_config *c, int report_fd) {
    if (c->userns_fd < 0) return;
    if (setns(c->userns_fd, CLONE_NEWUSER) != 0) child_fail(report_fd, ALCUB3_STEP_USERNS);
    close(c->userns_fd);
    if (setgroups(0, NULL) != 0 || setresgid(0, 0, 0) != 0 || setresuid(0, 0, 0) != 0)
        child_fail(report_fd, ALCUB3_STEP_USERNS);
    /* A change of credentials clears the parent-death signal and resets
       dumpability: both are set again. */
    prctl(PR_SET_DUMPABLE, 0);
    if (c->die_with_parent) prctl(PR_SET_PDEATHSIG, SIGKILL);
}

/* Landlock while CAP_SYS_ADMIN still allows restrict_self without
   no_new_privs (no_new_privs comes with the seccomp filter), then the user
   namespace, then capabilities (in that namespace). */
static void confine(const struct alcub3_spawn_config *c, int landlock_abi, int report_fd) {
    apply_landlock(c, landlock_abi, report_fd);
    enter_user_namespace(c, report_fd);
    drop_capabilities(c->keep_capabilities, report_fd);
}

static void child_setup_and_exec(const struct alcub3_spawn_config *c, int landlock_abi, int report_fd) {
    /* Named before anything else, so the fork of the command already says what it is. */
    prctl(PR_SET_NAME, "alcub3-init");
    /* The init is a copy of alcub3's memory (other agents' data, keys, the
       operator's environment): nothing in the sandbox may read it through
       /proc/1/mem, environ or ptrace. Execve in the command sets it back. */
    prctl(PR_SET_DUMPABLE, 0);
    /* `run` owns its sandbox: it must not outlive the process that watches it. */
    if (c->die_with_parent) prctl(PR_SET_PDEATHSIG, SIGKILL);
    /* A session of its own: the operator's terminal is not the sandbox's
       controlling terminal, so TIOCSTI cannot type into the operator's shell. */
    if (setsid() < 0) child_fail(report_fd, ALCUB3_STEP_SESSION);

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
        if (c->minimal_dev) private_dev(c, report_fd);
        if (c->read_only_root) read_only_view(c, report_fd);
        for (const char *const *p = c->hidden_paths; p && *p; p++) {
            /* A directory gets an empty read-only tmpfs over it, a file /dev/null:
               the sandbox sees nothing there. A path that does not exist needs nothing.
               The tmpfs may be listed (0555): a program looking for its
               configuration under a hidden HOME finds nothing (ENOENT) instead
               of failing on a permission (git warned on every command). */
            struct stat st;
            if (lstat(*p, &st) != 0) continue;
            int rc = S_ISDIR(st.st_mode)
                ? mount("tmpfs", *p, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0555")
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
        int keep[] = { report_fd, c->status_fd, c->userns_fd, c->keep_fd };
        close_other_fds(keep, 4);
    }
    /* The mounts are done: the init needs no privilege to reap and forward
       signals, so it is confined too, and its command inherits one domain. */
    confine(c, landlock_abi, report_fd);
    if (c->namespaces & CLONE_NEWPID) install_filter(c, report_fd);
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
                if (c->keep_fd >= 0) close(c->keep_fd);
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
static int await_report(const struct alcub3_spawn_config *c, int report_fd, long child, int fd, pid_t *pid,
                        int *pidfd, int *failed_step, int *failed_errno) {
    struct failure f;
    ssize_t n;
    int listener = -1;
    for (;;) {
        do { n = read(report_fd, &f, sizeof f); } while (n < 0 && errno == EINTR);
        if (n != (ssize_t)sizeof f || f.step != ALCUB3_REPORT_LISTENER) break;
        /* The filter's listener: take a copy out of the child, then let it go on. */
        listener = (int)syscall(SYS_pidfd_getfd, fd, f.err, 0);
        if (listener < 0) {
            f.step = ALCUB3_STEP_SECCOMP;
            f.err = errno;
            syscall(SYS_pidfd_send_signal, fd, SIGKILL, NULL, 0);
            n = (ssize_t)sizeof f;
            break;
        }
        char ack = 1;
        if (write(report_fd, &ack, 1) != 1) {} /* a dead child shows as EOF or a failure next */
    }
    close(report_fd);
    if (n == (ssize_t)sizeof f) {
        int status;
        while (waitpid((pid_t)child, &status, 0) < 0 && errno == EINTR) {}
        close(fd);
        if (listener >= 0) close(listener);
        *failed_step = f.step;
        *failed_errno = f.err;
        return -1;
    }
    if (c->seccomp_listener) *c->seccomp_listener = listener;
    else if (listener >= 0) close(listener);
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

/* The ABI is asked in the parent, so the caller learns it and the child (a copy) knows it.
   A kernel without Landlock (not built, not enabled) gives 0: the sandbox starts without it. */
static int landlock_abi_for(const struct alcub3_spawn_config *c, int *failed_step, int *failed_errno) {
    int abi = c->landlock ? alcub3_landlock_abi() : 0;
    if (abi == -ENOSYS || abi == -EOPNOTSUPP) abi = 0;
    if (abi < 0) {
        *failed_step = ALCUB3_STEP_LANDLOCK;
        *failed_errno = -abi;
    }
    return abi;
}

int alcub3_spawn(const struct alcub3_spawn_config *c, pid_t *pid, int *pidfd,
                 int *failed_step, int *failed_errno, int *landlock_abi) {
    int report[2];
    *failed_step = ALCUB3_STEP_NONE;
    *failed_errno = 0;
    *landlock_abi = landlock_abi_for(c, failed_step, failed_errno);
    if (*landlock_abi < 0) return -1;
    /* A socket pair, not a pipe: the child also reads on it (the listener's acknowledgement). */
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, report) != 0) {
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
        child_setup_and_exec(c, *landlock_abi, report[1]);
    }
    close(report[1]);
    return await_report(c, report[0], child, fd, pid, pidfd, failed_step, failed_errno);
}

static void relay_exec(const struct alcub3_spawn_config *c, int target_pidfd, int landlock_abi, int report_fd) {
    prctl(PR_SET_NAME, "alcub3-exec");
    prctl(PR_SET_DUMPABLE, 0);  /* as the init: a copy of the service's memory */
    if (setsid() < 0) child_fail(report_fd, ALCUB3_STEP_SESSION);
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
        int keep[] = { report_fd, c->userns_fd };
        close_other_fds(keep, 2);
    }
    /* Landlock has no way to join the init's domain: this is a new one with the same rules. */
    confine(c, landlock_abi, report_fd);
    if (joined & CLONE_NEWPID) install_filter(c, report_fd);
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
                      int *failed_step, int *failed_errno, int *landlock_abi) {
    int report[2];
    *failed_step = ALCUB3_STEP_NONE;
    *failed_errno = 0;
    *landlock_abi = landlock_abi_for(c, failed_step, failed_errno);
    if (*landlock_abi < 0) return -1;
    if (!c->path || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, report) != 0) {
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
        relay_exec(c, target_pidfd, *landlock_abi, report[1]);
    }
    close(report[1]);
    return await_report(c, report[0], child, fd, pid, pidfd, failed_step, failed_errno);
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

int alcub3_userns_create(unsigned int uid_inside, unsigned int uid_outside, unsigned int gid_inside,
                         unsigned int gid_outside, unsigned int count) {
    int hold[2];
    if (pipe2(hold, O_CLOEXEC) != 0) return -errno;
    /* A raw clone, as in alcub3_spawn: the child only waits for EOF and exits. */
    long child = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (child < 0) {
        int saved = errno;
        close(hold[0]);
        close(hold[1]);
        return -saved;
    }
    if (child == 0) {
        char byte;
        close(hold[1]);
        while (read(hold[0], &byte, 1) < 0 && errno == EINTR) {}
        _exit(0);
    }
    close(hold[0]);
    int rc = 0, fd = -1;
    char path[64], line[64];
    const char *files[] = { "uid_map", "gid_map" };
    unsigned int inside[] = { uid_inside, gid_inside }, outside[] = { uid_outside, gid_outside };
    for (int i = 0; i < 2 && rc == 0; i++) {
        snprintf(path, sizeof path, "/proc/%ld/%s", child, files[i]);
        int n = snprintf(line, sizeof line, "%u %u %u\n", inside[i], outside[i], count);
        int map = open(path, O_WRONLY | O_CLOEXEC);
        if (map < 0 || write(map, line, (size_t)n) != n) rc = -errno;
        if (map >= 0) close(map);
    }
    if (rc == 0) {
        snprintf(path, sizeof path, "/proc/%ld/ns/user", child);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) rc = -errno;
    }
    close(hold[1]);
    int status;
    while (waitpid((pid_t)child, &status, 0) < 0 && errno == EINTR) {}
    return rc == 0 ? fd : rc;
}

int alcub3_overlay_opaque(int fd) {
    char value[4];
    ssize_t n = fgetxattr(fd, "trusted.overlay.opaque", value, sizeof value);
    return n == 1 && value[0] == 'y';
}

int alcub3_open_pty(int *master, int *slave) {
    int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (m < 0) return -errno;
    if (grantpt(m) != 0 || unlockpt(m) != 0) {
        int saved = errno;
        close(m);
        return -saved;
    }
    char name[64];
    if (ptsname_r(m, name, sizeof name) != 0) {
        int saved = errno;
        close(m);
        return -saved;
    }
    int s = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (s < 0) {
        int saved = errno;
        close(m);
        return -saved;
    }
    *master = m;
    *slave = s;
    return 0;
}

int alcub3_copy_window_size(int from, int to) {
    struct winsize size;
    if (ioctl(from, TIOCGWINSZ, &size) != 0 || ioctl(to, TIOCSWINSZ, &size) != 0) return -errno;
    return 0;
}

int alcub3_mount_idmapped(const char *source, const char *target, int userns_fd) {
    int fd = idmapped_tree(source, userns_fd);
    if (fd < 0) return -errno;
    int rc = (int)syscall(SYS_move_mount, fd, "", AT_FDCWD, target, ALCUB3_MOVE_MOUNT_F_EMPTY_PATH);
    int saved = errno;
    close(fd);
    return rc == 0 ? 0 : -saved;
}

#ifndef SYS_fsopen
#define SYS_fsopen 430
#define SYS_fsconfig 431
#define SYS_fsmount 432
#endif
#define ALCUB3_FSCONFIG_CMD_CREATE 6
#define ALCUB3_MOUNT_ATTR_NOSUID 0x2
#define ALCUB3_MOUNT_ATTR_NODEV 0x4
#define ALCUB3_MOUNT_ATTR_NOEXEC 0x8

int alcub3_mount_sysfs_of(const char *netns_path, const char *target) {
    int netns = open(netns_path, O_RDONLY | O_CLOEXEC);
    if (netns < 0) return -errno;
    long child = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
    if (child < 0) {
        int saved = errno;
        close(netns);
        return -saved;
    }
    if (child == 0) {
        /* Single-threaded: may join the namespace; shares the parent's mount namespace. */
        if (setns(netns, CLONE_NEWNET) != 0) _exit(errno);
        int fs = (int)syscall(SYS_fsopen, "sysfs", 1 /* FSOPEN_CLOEXEC */);
        if (fs < 0 || syscall(SYS_fsconfig, fs, ALCUB3_FSCONFIG_CMD_CREATE, NULL, NULL, 0) != 0) _exit(errno);
        int m = (int)syscall(SYS_fsmount, fs, 1 /* FSMOUNT_CLOEXEC */,
                             ALCUB3_MOUNT_ATTR_RDONLY | ALCUB3_MOUNT_ATTR_NOSUID | ALCUB3_MOUNT_ATTR_NODEV | ALCUB3_MOUNT_ATTR_NOEXEC);
        if (m < 0 || syscall(SYS_move_mount, m, "", AT_FDCWD, target, ALCUB3_MOVE_MOUNT_F_EMPTY_PATH) != 0) _exit(errno);
        _exit(0);
    }
    close(netns);
    int status;
    while (waitpid((pid_t)child, &status, 0) < 0 && errno == EINTR) {}
    if (!WIFEXITED(status)) return -ECHILD;
    return -WEXITSTATUS(status);
}

int alcub3_mdwe_available(void) {
    /* PR_GET_MDWE (66) answers EINVAL on kernels without memory-deny-write-execute. */
    return prctl(66, 0, 0, 0, 0) >= 0 ? 0 : -errno;
}
