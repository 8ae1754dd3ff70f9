/*
 * alcub3_events.h: the one definition of every record that crosses from the
 * BPF programs (bpf/telemetry.bpf.c) to user space (Swift, through CAlcub3).
 *
 * Rules that keep the two compilers (clang -target bpf, and the host's) in
 * agreement: fixed-width fields only, no bitfields, every struct padded by hand
 * to a multiple of 8 bytes. A test (LayoutTests) compares the Swift view of each
 * struct with the BTF that clang emits into the object.
 */
#ifndef ALCUB3_EVENTS_H
#define ALCUB3_EVENTS_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define ALCUB3_COMM_LEN 16
#define ALCUB3_PATH_LEN 256
#define ALCUB3_ARGV_LEN 256
#define ALCUB3_SYSCALL_ARGS 3

/* Record kinds: the first field after the header tells the decoder what follows. */
enum alcub3_kind {
    ALCUB3_KIND_SYSCALL = 1,      /* one syscall: number, first arguments, return value */
    ALCUB3_KIND_SYSCALL_ENTER = 2,/* entry only (split mode): ret is 0, flags has ENTRY */
    ALCUB3_KIND_FORK = 3,
    ALCUB3_KIND_EXEC = 4,
    ALCUB3_KIND_EXIT = 5,
    ALCUB3_KIND_NAMESPACE = 6,    /* setns, unshare, clone with CLONE_NEW* */
    ALCUB3_KIND_CREDENTIALS = 7,  /* setuid family, setgid family, capset */
    ALCUB3_KIND_NETWORK = 8,
    ALCUB3_KIND_FILE = 9,
    ALCUB3_KIND_SYSCALL_BATCH = 10,/* several syscalls of one thread: struct alcub3_syscall_batch */
    ALCUB3_KIND_LSM = 11,         /* a BPF-LSM refusal: struct alcub3_lsm_event (alcub3_lsm.h) */
    ALCUB3_KIND_DEVICE = 12,      /* a device access the cgroup device filter refused: struct alcub3_device_event */
};

/* hdr.flags */
#define ALCUB3_FLAG_TRUNCATED   0x1  /* a string field was cut at its bound */
#define ALCUB3_FLAG_ENTRY       0x2  /* syscall record taken at entry */
#define ALCUB3_FLAG_THREAD      0x4  /* fork created a thread, exit of a non-leader */

/* Common header of every ring buffer record. 32 bytes. */
struct alcub3_header {
    __u64 ts_ns;        /* CLOCK_BOOTTIME, nanoseconds */
    __u64 sandbox_cgid; /* cgroup v2 id of the sandbox (not of a descendant) */
    __u32 pid;          /* thread group id */
    __u32 tid;
    __u16 kind;         /* enum alcub3_kind */
    __u16 flags;
    __u32 uid;          /* real uid of the task, init user namespace */
};

/* High-volume record, its own ring buffer. 72 bytes. */
struct alcub3_syscall_event {
    struct alcub3_header hdr;
    __u32 nr;
    __u32 _pad;
    __s64 ret;
    __u64 args[ALCUB3_SYSCALL_ARGS];
};

/*
 * Exit-side syscall records (sandboxes without ALCUB3_SANDBOX_SYSCALL_ENTRY)
 * come in batches: the kernel stages each thread's syscalls and sends them as
 * one ring buffer record instead of one record per syscall. A batch holds one
 * thread's syscalls in the order they returned. It is sent when it is full;
 * before the thread's next syscall if its first entry is 2 ms old, if the
 * thread changed cgroups, or if that syscall changes credentials; before any
 * other record of the thread (fork, exec, exit, file, network, ...); when the
 * thread execs or exits; and when it is switched out (program alcub3_switch),
 * so a blocked or idle thread holds nothing back.
 *
 * The record is cut after the last entry used: its size is
 * offsetof(struct alcub3_syscall_batch, entries) + count * sizeof(struct alcub3_syscall_entry),
 * less than sizeof(struct alcub3_syscall_batch) unless the batch is full.
 */
#define ALCUB3_SYSCALL_BATCH_MAX 32
/* The kernel reads the clock for every 8th entry of a batch (the first included);
   the entries between carry the last reading, so their time may be up to seven
   syscalls early. Process, file and network records always have their own time. */
#define ALCUB3_SYSCALL_CLOCK_EVERY 8

/* One syscall of a batch. 40 bytes. */
struct alcub3_syscall_entry {
    __u32 ts_delta;     /* ns after the batch's hdr.ts_ns (first entry: 0) */
    __u32 nr;
    __s64 ret;
    __u64 args[ALCUB3_SYSCALL_ARGS];
};

/*
 * hdr: ts_ns is the return time of the first entry; pid, tid, uid and
 * sandbox_cgid hold for every entry; flags is 0. 40 + count * 40 bytes.
 */
struct alcub3_syscall_batch {
    struct alcub3_header hdr;
    __u32 count;        /* entries used, 1..ALCUB3_SYSCALL_BATCH_MAX */
    __u32 _pad;
    struct alcub3_syscall_entry entries[ALCUB3_SYSCALL_BATCH_MAX];
};

struct alcub3_fork_event {
    struct alcub3_header hdr;   /* pid/tid: the parent */
    __u32 child_pid;
    __u32 child_tid;
    char comm[ALCUB3_COMM_LEN];
};

struct alcub3_exec_event {
    struct alcub3_header hdr;
    __u32 ppid;
    __u32 old_tid;              /* tid before exec (a non-leader thread may exec) */
    __u32 euid;
    __u32 argv_len;             /* bytes used in argv, NUL separated */
    char comm[ALCUB3_COMM_LEN];
    char filename[ALCUB3_PATH_LEN];
    char argv[ALCUB3_ARGV_LEN];
};

struct alcub3_exit_event {
    struct alcub3_header hdr;
    __u32 ppid;
    __s32 exit_code;            /* wait status: (code << 8) | signal */
    char comm[ALCUB3_COMM_LEN];
};

struct alcub3_namespace_event {
    struct alcub3_header hdr;
    __u32 nr;                   /* syscall number */
    __s32 fd;                   /* setns fd, else -1 */
    __s64 ret;
    __u64 flags;                /* unshare/clone flags or setns nstype */
};

struct alcub3_credentials_event {
    struct alcub3_header hdr;
    __u32 nr;
    __u32 _pad;
    __s64 ret;
    __u32 new_uid, new_euid, new_gid, new_egid; /* credentials after the call */
    __u64 cap_effective;
    __u64 cap_permitted;
};

enum alcub3_net_op {
    ALCUB3_NET_CONNECT = 1,
    ALCUB3_NET_BIND = 2,
    ALCUB3_NET_LISTEN = 3,
    ALCUB3_NET_ACCEPT = 4,
    ALCUB3_NET_SENDTO = 5,
    ALCUB3_NET_SENDMSG = 6,
};

struct alcub3_network_event {
    struct alcub3_header hdr;
    __u32 op;                   /* enum alcub3_net_op */
    __s32 fd;
    __s64 ret;
    __u16 family;               /* AF_INET, AF_INET6, AF_UNIX, ... */
    __u16 sock_type;            /* SOCK_STREAM, SOCK_DGRAM, ... (0 if unknown) */
    __u16 protocol;             /* IPPROTO_TCP, IPPROTO_UDP, ... (0 if unknown) */
    __u16 port;                 /* remote (or bound) port, host byte order */
    __u16 local_port;           /* host byte order */
    __u16 _pad[3];
    __u8 addr[16];              /* remote (or bound) address: 4 bytes for AF_INET */
    __u8 local_addr[16];
    char unix_path[108];        /* AF_UNIX only; abstract names start with NUL */
    __u32 _pad2;
};

enum alcub3_file_op {
    ALCUB3_FILE_OPEN = 1,       /* open/openat/openat2/creat with write, create or truncate */
    ALCUB3_FILE_TRUNCATE = 2,
    ALCUB3_FILE_RENAME = 3,
    ALCUB3_FILE_UNLINK = 4,
    ALCUB3_FILE_MKDIR = 5,
    ALCUB3_FILE_RMDIR = 6,
    ALCUB3_FILE_LINK = 7,
    ALCUB3_FILE_SYMLINK = 8,
    ALCUB3_FILE_CHMOD = 9,
    ALCUB3_FILE_CHOWN = 10,
    ALCUB3_FILE_READ = 11,      /* a read-only open: the first of each file by each sandbox, or one refused */
};

/*
 * Paths: each of the two paths is a pair (dir, name). The kernel side fills
 * `dir` with an absolute path it resolved itself (from the opened file, the
 * dirfd, or the working directory) and `name` with the string the task passed.
 * The full path is: name if it is absolute or dir is empty; dir if name is
 * empty; else dir + "/" + name.
 */
struct alcub3_file_event {
    struct alcub3_header hdr;
    __u32 op;                   /* enum alcub3_file_op */
    __u32 nr;                   /* syscall number */
    __s64 ret;
    __u32 open_flags;
    __u32 mode;
    __u32 owner_uid, owner_gid; /* chown targets */
    __u64 file_id;              /* open: key of the write-volume map entry, else 0 */
    char dir[ALCUB3_PATH_LEN];
    char name[ALCUB3_PATH_LEN];
    char dir2[ALCUB3_PATH_LEN]; /* rename/link/symlink: the second path */
    char name2[ALCUB3_PATH_LEN];
};

/*
 * A device access refused by the cgroup device filter (bpf/devfilter.bpf.c),
 * sent on the telemetry's events ring buffer. hdr.pid/tid: the refused task.
 * access and type are the kernel's (bpf_cgroup_dev_ctx): access is a mask of
 * ALCUB3_DEVICE_MKNOD, _READ, _WRITE; type is ALCUB3_DEVICE_BLOCK or _CHAR.
 * 48 bytes.
 */
#define ALCUB3_DEVICE_MKNOD 1
#define ALCUB3_DEVICE_READ  2
#define ALCUB3_DEVICE_WRITE 4
#define ALCUB3_DEVICE_BLOCK 1
#define ALCUB3_DEVICE_CHAR  2

struct alcub3_device_event {
    struct alcub3_header hdr;
    __u32 type;
    __u32 access;
    __u32 major;
    __u32 minor;
};

/*
 * Value of the device filter's per-sandbox map (key: sandbox cgroup id):
 * which extra devices it may use, and its refusals, counted in the kernel so
 * a refusal whose record found the ring buffer full is still known.
 */
struct alcub3_device_sandbox {
    __u32 flags;                /* ALCUB3_DEVICE_ALLOW_* */
    __u32 _pad;
    __u64 refused;
    __u64 unreported;           /* refusals whose record found the ring buffer full */
};

#define ALCUB3_DEVICE_ALLOW_KVM 0x1 /* /dev/kvm (10:232): the vm level's QEMU */

/*
 * Write volume, aggregated in the kernel: one entry per open file description
 * that a sandboxed task opened for writing, keyed by file_id (the address of
 * the struct file). User space sweeps the map and reports the deltas.
 */
struct alcub3_write_stats {
    __u64 sandbox_cgid;
    __u64 bytes;
    __u64 writes;
    __u64 inode;                /* guards against reuse of the struct file address */
    __u32 pid;
    __u32 _pad;
};

/*
 * Per-CPU counters (one array slot). A syscall batch counts as its entries,
 * when it is sent: seen counts syscalls still staged in the kernel only once
 * their batch goes out.
 */
struct alcub3_counters {
    __u64 seen;                 /* records (batch entries) the programs wanted to send */
    __u64 submitted;
    __u64 dropped;              /* ring buffer full */
    __u64 syscall_dropped;      /* of which from the syscall ring buffer */
};

/*
 * Key of the read-novelty map: a sandbox's first read of a file is reported,
 * later reads of the same file are not (decided in the kernel).
 */
struct alcub3_read_key {
    __u64 sandbox_cgid;
    __u64 inode;
    __u32 dev;
    __u32 _pad;
};

/* Value of the monitored-sandbox map (key: sandbox cgroup id). */
struct alcub3_sandbox_config {
    __u32 flags;                /* ALCUB3_SANDBOX_* */
    __u32 _pad;
};

#define ALCUB3_SANDBOX_SYSCALLS      0x1  /* send one record per syscall */
#define ALCUB3_SANDBOX_SYSCALL_ENTRY 0x2  /* also send a record at syscall entry */

#endif
