/*
 * alcub3_lsm.h: the BPF-LSM programs' maps and refusal record (bpf/lsm.bpf.c),
 * shared by the kernel side and user space. Same rules as alcub3_events.h:
 * fixed-width fields, no bitfields, every struct padded by hand to a multiple
 * of 8 bytes.
 *
 * Every key carries a sandbox cgroup id; an entry with cgid 0 applies to
 * every sandbox (the metadata addresses, the host's secrets).
 */
#ifndef ALCUB3_LSM_H
#define ALCUB3_LSM_H

#include "alcub3_events.h"

/* Value of the lsm_sandboxes map (key: sandbox cgroup id): what to refuse. */
struct alcub3_lsm_sandbox {
    __u32 flags;                /* ALCUB3_LSM_* */
    __u32 _pad;
};

#define ALCUB3_LSM_PROTECT_FILES    0x001 /* file_open: no open of an inode in lsm_files, or beneath one */
#define ALCUB3_LSM_EXEC_ALLOWLIST   0x002 /* bprm_check_security: exec only inodes in lsm_exec */
#define ALCUB3_LSM_NO_FILELESS_EXEC 0x004 /* bprm_check_security: no exec of a file without a link (memfd, O_TMPFILE, deleted) */
#define ALCUB3_LSM_DENY_NETWORKS    0x008 /* socket_connect: no IPv4/IPv6 destination in lsm_nets */
#define ALCUB3_LSM_CONFINE_PTRACE   0x010 /* ptrace_access_check: no target outside the sandbox */
#define ALCUB3_LSM_NO_MOUNT         0x020 /* sb_mount, move_mount, sb_remount, sb_umount, sb_pivotroot */
#define ALCUB3_LSM_NO_KERNEL_LOAD   0x040 /* kernel_read_file, kernel_load_data, kernel_module_request */
#define ALCUB3_LSM_NO_BPF           0x080 /* bpf */
#define ALCUB3_LSM_CONFINE_SIGNALS  0x100 /* task_kill: no signal to a task outside the sandbox */
#define ALCUB3_LSM_ALL              0x1ff

/*
 * Key of lsm_files (protected) and lsm_exec (allowed): an inode. dev is the
 * kernel's internal encoding of the superblock's device, (major << 20) | minor,
 * not st_dev's: user space converts with major()/minor().
 */
struct alcub3_lsm_inode {
    __u64 cgid;
    __u64 ino;
    __u32 dev;
    __u32 _pad;
};

/*
 * file_open looks up the opened inode and its parents up to the root of its
 * filesystem, so a protected directory protects its subtree through any
 * mount or bind mount of that filesystem. The walk covers this many dentries,
 * the root's included: a file below more than ALCUB3_LSM_DIR_DEPTH - 2 (30)
 * directories of its filesystem is refused with ALCUB3_LSM_REASON_TOO_DEEP
 * rather than let through unchecked.
 */
#define ALCUB3_LSM_DIR_DEPTH 32

/*
 * Key of lsm_nets (an LPM trie): prefixlen counts the 64 bits of cgid, then
 * address bits. The longest match among the sandbox's own entries decides;
 * only when none matches do the entries for every sandbox (cgid 0) decide.
 * Value: 1 refuses, 0 allows (a hole in a refused range).
 */
struct alcub3_lsm_net_key {
    __u32 prefixlen;
    __u8 data[24];              /* cgid (8, host order), then the IPv6 or IPv4-mapped address (16) */
};

/* What each refusal reports (struct alcub3_lsm_event.hook). */
enum alcub3_lsm_hook {
    ALCUB3_LSM_HOOK_FILE_OPEN = 1,
    ALCUB3_LSM_HOOK_BPRM_CHECK = 2,
    ALCUB3_LSM_HOOK_SOCKET_CONNECT = 3,
    ALCUB3_LSM_HOOK_PTRACE = 4,
    ALCUB3_LSM_HOOK_SB_MOUNT = 5,
    ALCUB3_LSM_HOOK_MOVE_MOUNT = 6,
    ALCUB3_LSM_HOOK_SB_REMOUNT = 7,
    ALCUB3_LSM_HOOK_SB_UMOUNT = 8,
    ALCUB3_LSM_HOOK_SB_PIVOTROOT = 9,
    ALCUB3_LSM_HOOK_KERNEL_READ_FILE = 10,
    ALCUB3_LSM_HOOK_KERNEL_LOAD_DATA = 11,
    ALCUB3_LSM_HOOK_MODULE_REQUEST = 12,
    ALCUB3_LSM_HOOK_BPF = 13,
    ALCUB3_LSM_HOOK_TASK_KILL = 14,
};

/* Why file_open or bprm_check_security refused (alcub3_lsm_event.reason); 0 otherwise. */
#define ALCUB3_LSM_REASON_NOT_ALLOWED 1 /* bprm_check: the inode is not in lsm_exec */
#define ALCUB3_LSM_REASON_FILELESS    2 /* bprm_check: the file has no link: memfd, O_TMPFILE, deleted */
#define ALCUB3_LSM_REASON_TOO_DEEP    3 /* file_open: beyond ALCUB3_LSM_DIR_DEPTH, not checked */

/*
 * One refusal, on the lsm_events ring buffer. hdr.kind is ALCUB3_KIND_LSM,
 * hdr.pid/tid the refused task. 136 bytes. Per hook:
 *
 *   hook                 target              arg                 addr       name
 *   file_open            inode opened        protected inode     -          file name (last component)
 *   bprm_check           inode               -                   -          file name
 *   socket_connect       port (host order)   family              dest.      -
 *   ptrace               target tgid         ptrace mode         -          -
 *   sb_mount             mount flags         -                   -          filesystem type
 *   move_mount           -                   -                   -          -
 *   sb_remount           -                   -                   -          filesystem type
 *   sb_umount            umount flags        -                   -          filesystem type
 *   sb_pivotroot         -                   -                   -          new root (last component)
 *   kernel_read_file     kernel_read_file_id -                   -          file name
 *   kernel_load_data     kernel_load_data_id -                   -          -
 *   module_request       -                   -                   -          module name
 *   bpf                  bpf command         -                   -          -
 *   task_kill            target tgid         signal              -          -
 *
 * dev is the device of the inode in target (file_open, bprm_check,
 * kernel_read_file), else 0. addr holds IPv4 as IPv4-mapped IPv6.
 */
#define ALCUB3_LSM_NAME_LEN 56

struct alcub3_lsm_event {
    struct alcub3_header hdr;
    __u32 hook;                 /* enum alcub3_lsm_hook */
    __u32 reason;               /* ALCUB3_LSM_REASON_* */
    __u64 target;
    __u64 arg;
    __u32 dev;
    __u32 _pad;
    __u8 addr[16];
    char name[ALCUB3_LSM_NAME_LEN];
};

/* Per-CPU counters (one array slot). */
struct alcub3_lsm_counters {
    __u64 refused;
    __u64 dropped;              /* refusals whose record found the ring buffer full */
};

#endif
