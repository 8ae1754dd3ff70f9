/*
 * alcub3_spawn: start one process in a new sandbox.
 *
 * Why C: the child runs between clone3 and execve in a copy of a multithreaded
 * Swift process, where only async-signal-safe calls are allowed. Everything the
 * child does (mounts, hostname, loopback, no_new_privs, the seccomp filter) is a
 * raw syscall on memory prepared by the parent.
 */
#ifndef ALCUB3_SPAWN_H
#define ALCUB3_SPAWN_H

#include <stdint.h>
#include <sys/types.h>
#include <linux/filter.h>

/* Which step failed in the child; sent back with its errno over a CLOEXEC pipe. */
enum alcub3_spawn_step {
    ALCUB3_STEP_NONE = 0,
    ALCUB3_STEP_CLONE = 1,
    ALCUB3_STEP_MOUNT_PRIVATE = 2,
    ALCUB3_STEP_MOUNT_PROC = 3,
    ALCUB3_STEP_HOSTNAME = 4,
    ALCUB3_STEP_LOOPBACK = 5,
    ALCUB3_STEP_CHDIR = 6,
    ALCUB3_STEP_NO_NEW_PRIVS = 7,
    ALCUB3_STEP_SECCOMP = 8,
    ALCUB3_STEP_EXEC = 9,
    ALCUB3_STEP_CGROUP_V1 = 10,
    ALCUB3_STEP_WAIT_PARENT = 11,
    ALCUB3_STEP_HIDE_PATH = 12,
    ALCUB3_STEP_SETNS = 13,
    ALCUB3_STEP_READ_ONLY = 14,
    ALCUB3_STEP_LANDLOCK = 15,
    ALCUB3_STEP_CAPABILITIES = 16,
    ALCUB3_STEP_WORKSPACE = 17,
    ALCUB3_STEP_DEV = 18,
    ALCUB3_STEP_USERNS = 19,
    ALCUB3_STEP_SESSION = 20,
    ALCUB3_STEP_MDWE = 21,
    ALCUB3_STEP_IDMAP = 22,
    ALCUB3_STEP_OVERLAY = 23,
};

struct alcub3_spawn_config {
    const char *path;               /* absolute path of the program */
    char *const *argv;
    char *const *envp;
    const char *cwd;                /* NULL: keep the parent's */
    const char *hostname;           /* used when CLONE_NEWUTS is set */
    int cgroup_fd;                  /* cgroup2 directory, for CLONE_INTO_CGROUP */
    int v1_procs_fds[8];            /* cgroup v1 cgroup.procs files to join, -1 ends */
    uint64_t namespaces;            /* CLONE_NEW* flags */
    const struct sock_filter *filter; /* seccomp program, NULL for none */
    unsigned short filter_len;
    int filter_log;                 /* SECCOMP_FILTER_FLAG_LOG: the kernel logs every refusal */
    /* The filter has SCMP_ACT_NOTIFY rules: it is installed with a listener
       (by the init, or the relay of spawn_into, before the command is cloned),
       which the parent takes with pidfd_getfd and stores in *seccomp_listener. */
    int filter_notify;
    int *seccomp_listener;
    int stdin_fd, stdout_fd, stderr_fd; /* -1: inherit */
    int die_with_parent;            /* PR_SET_PDEATHSIG SIGKILL: for the daemonless `run` */
    const char *const *hidden_paths;/* NULL-terminated; each gets an empty read-only tmpfs */
    int status_fd;                  /* init writes the command's wait status here at its end; -1: none */
    int read_only_root;             /* every mount read-only but writable_paths, a private /tmp */
    const char *const *writable_paths; /* NULL-terminated host directories that stay writable, at their own paths */
    /* With read_only_root: a private tmpfs of workspace_bytes at this path (the
       agent's workspace; full means ENOSPC, never the host's disk). NULL: none. */
    const char *workspace;
    unsigned long long workspace_bytes;
    uint64_t keep_capabilities;     /* bit n keeps capability n; every other one is dropped from all five sets */
    /* Landlock (0: off): read and execute everywhere, write only beneath
       writable_paths, the private /tmp (read_only_root) and a few devices. */
    int landlock;
    int landlock_connect;           /* 1: TCP connect only to connect_ports (Landlock ABI >= 4) */
    const uint16_t *connect_ports;
    int connect_ports_count;
    int landlock_bind;              /* 1: TCP bind only to bind_ports (Landlock ABI >= 4) */
    const uint16_t *bind_ports;
    int bind_ports_count;
    /* A private /dev: a tmpfs with null, zero, full, random, urandom and tty
       nodes, a new devpts instance (pts, ptmx) and a private /dev/shm tmpfs of
       shm_bytes. The host's /dev (disks, consoles, loop devices) is not seen. */
    int minimal_dev;
    unsigned long long shm_bytes;
    /* The command gets fd 0 as its controlling terminal (a pty alcub3 relays);
       without it the sandbox is a session of its own with no terminal. */
    int controlling_tty;
    /* PR_SET_MDWE(PR_MDWE_REFUSE_EXEC_GAIN) for the command: memory that was
       ever writable is never made executable. 0 for JIT runtimes. */
    int deny_write_execute;
    /* The agent is never host root: after its mounts the init (or the relay)
       joins this user namespace (setns) and becomes its uid/gid 0, a host uid
       of alcub3's range (userns_root). -1: no user namespace. */
    int userns_fd;
    unsigned int userns_root;
    /* With a user namespace: writable_paths are bound through mounts idmapped
       with this namespace (their owner on disk is the agent's root inside),
       so what the agent writes there belongs to the directory's owner. */
    int idmap_userns_fd;
    /* A descriptor the init keeps open for its whole life, never passed to
       the command (the lock that reserves the sandbox's uid range); -1: none. */
    int keep_fd;
    /* A copy-on-write view of writable_paths[0] (the caller's directory): an
       overlay whose lower layer is that directory (idmapped as above) and
       whose upper and work directories are overlay_dir/upper and /work, on a
       size-capped tmpfs alcub3 made on the host; overlay_dir/lower is where
       the lower layer is staged. alcub3 applies the changes after the run.
       NULL: the directory is bound writable as it is. */
    const char *overlay_dir;
};

/*
 * Starts the child and waits until it has exec'd or failed.
 * Returns 0 and sets *pid and *pidfd on success. On failure returns -1 with
 * *failed_step and *failed_errno saying what the child (or clone3) could not do;
 * a child that failed has been reaped. *landlock_abi is the Landlock ABI the
 * sandbox is confined with, 0 when Landlock is off or the kernel lacks it.
 */
int alcub3_spawn(const struct alcub3_spawn_config *config, pid_t *pid, int *pidfd,
                 int *failed_step, int *failed_errno, int *landlock_abi);

/*
 * Starts a command inside a running sandbox, beside its init: joins the
 * sandbox's cgroup (CLONE_INTO_CGROUP with config->cgroup_fd) and the
 * namespaces in config->namespaces of the process behind target_pidfd
 * (setns with a pidfd), then applies Landlock (its own domain, built from the
 * same config, with paths as the sandbox sees them), drops capabilities,
 * applies no_new_privs and the seccomp filter and execs. With CLONE_NEWPID the
 * command runs as the child of a small relay that exits with the command's
 * status. config->path NULL is not allowed here.
 */
int alcub3_spawn_into(const struct alcub3_spawn_config *config, int target_pidfd, pid_t *pid,
                      int *pidfd, int *failed_step, int *failed_errno, int *landlock_abi);

/*
 * A new user namespace mapping [inside, inside+count) to [outside, ...) for
 * uids and gids alike, held by the returned descriptor (its short-lived
 * holder process is gone when this returns). Returns the fd or -errno.
 */
int alcub3_userns_create(unsigned int uid_inside, unsigned int uid_outside, unsigned int gid_inside,
                         unsigned int gid_outside, unsigned int count);

/* A new pty pair (both close-on-exec, neither a controlling terminal of
   ours); 0 or -errno. posix_openpt and friends need feature macros Swift's
   Glibc module lacks. */
int alcub3_open_pty(int *master, int *slave);
/* The window size of terminal `from` given to terminal `to`; 0 or -errno. */
int alcub3_copy_window_size(int from, int to);

/* Mounts at target a copy of the mount at source (not its submounts),
   idmapped with userns_fd; 0 or -errno. */
int alcub3_mount_idmapped(const char *source, const char *target, int userns_fd);

/* Mounts at target a new read-only sysfs of the network namespace at
   netns_path (sysfs shows the namespace of whoever makes it): a child joins
   the namespace, makes the mount with the new mount API and attaches it in
   the shared mount namespace. 0 or -errno. */
int alcub3_mount_sysfs_of(const char *netns_path, const char *target);

/* 0 when the kernel has PR_SET_MDWE (Linux 6.3+), else -errno. */
int alcub3_mdwe_available(void);

/* 1 when the directory open at fd is an opaque overlay directory (its
   trusted.overlay.opaque xattr is "y"); <sys/xattr.h> is not in Swift's Glibc. */
int alcub3_overlay_opaque(int fd);

/* pidfd_send_signal has no glibc wrapper; memfd_create needs _GNU_SOURCE, which Swift's Glibc lacks. */
int alcub3_pidfd_send_signal(int pidfd, int sig);
int alcub3_pidfd_open(pid_t pid);
int alcub3_memfd_create(const char *name);

#endif
