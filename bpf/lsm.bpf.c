// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * lsm.bpf.c: refusals a sandbox cannot get round, from BPF-LSM hooks.
 *
 * Each program first asks which sandbox the current task is in (its cgroup v2
 * ancestor at the sandbox level, looked up in lsm_sandboxes); a task outside
 * every sandbox pays one helper call and one hash lookup, and is never
 * refused. For a sandboxed task the sandbox's flags (ALCUB3_LSM_*) say which
 * hooks apply. A refusal returns -EPERM and sends a struct alcub3_lsm_event
 * on lsm_events, so the refusal can be reported.
 *
 * BPF-LSM loads only where the kernel allows it: CONFIG_BPF_LSM, "bpf" in the
 * lsm= list, and no lockdown that refuses the program type. Elsewhere seccomp,
 * Landlock and cgroup BPF carry the same policy. `make test-lsm` runs these
 * programs in a QEMU guest (scripts/test-lsm.sh).
 *
 * Only helpers and kernel fields of Linux 6.1 are used (no kfuncs), so the
 * object compiled against this host's vmlinux.h loads on Debian 12's kernel.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "alcub3_lsm.h"

/* As in telemetry.bpf.c: BPF_CORE_READ of const fields (i_nlink, f_path) warns on clang 21. */
#pragma clang diagnostic ignored "-Wdefault-const-init-var-unsafe"

/* GPL-only helpers (probe reads, ancestor cgroup id) need a GPL-compatible license. */
char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by user space in .rodata before load, as in telemetry.bpf.c. */
const volatile __u32 alcub3_root_level = 1; /* level of alcub3's parent cgroup (root = 0) */

#define EPERM 1
#define AF_INET 2
#define AF_INET6 10
#define PTRACE_MODE_NOAUDIT 0x04
/* Enough for any real cgroup tree below a sandbox. */
#define CGROUP_CLIMB_MAX 32

/* ---------------------------------------------------------------- maps */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); /* sandbox cgroup id */
	__type(value, struct alcub3_lsm_sandbox);
} lsm_sandboxes SEC(".maps");

/* Protected inodes: no open of them or of anything beneath them. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct alcub3_lsm_inode);
	__type(value, __u8);
} lsm_files SEC(".maps");

/* Executables a sandbox with ALCUB3_LSM_EXEC_ALLOWLIST may run. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct alcub3_lsm_inode);
	__type(value, __u8);
} lsm_exec SEC(".maps");

/* Destinations: the longest match decides, 1 refuses, 0 allows (a hole in a refused range). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct alcub3_lsm_net_key);
	__type(value, __u8);
} lsm_nets SEC(".maps");

/* Refusals are rare: records wake the reader. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 << 10);
} lsm_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct alcub3_lsm_counters);
} lsm_counters SEC(".maps");

/* Referenced so that clang emits BTF for the shared structs (a layout test can read them). */
struct alcub3_lsm_event *alcub3_btf_lsm_event __attribute__((unused));
struct alcub3_lsm_sandbox *alcub3_btf_lsm_sandbox __attribute__((unused));
struct alcub3_lsm_inode *alcub3_btf_lsm_inode __attribute__((unused));
struct alcub3_lsm_net_key *alcub3_btf_lsm_net_key __attribute__((unused));
struct alcub3_lsm_counters *alcub3_btf_lsm_counters __attribute__((unused));

/* -------------------------------------------------------------- helpers */

/* The current task's sandbox and its flags, or 0. */
static __always_inline __u64 current_sandbox(__u32 *flags)
{
	__u64 cgid = bpf_get_current_ancestor_cgroup_id(alcub3_root_level + 1);
	struct alcub3_lsm_sandbox *sb;

	if (!cgid)
		return 0;
	sb = bpf_map_lookup_elem(&lsm_sandboxes, &cgid);
	if (!sb)
		return 0;
	*flags = sb->flags;
	return cgid;
}

/* The current task's sandbox if its flags include any of `want`, else 0. */
static __always_inline __u64 sandbox_refusing(__u32 want)
{
	__u32 flags = 0;
	__u64 cgid = current_sandbox(&flags);

	return flags & want ? cgid : 0;
}

/*
 * The cgroup id of task t's ancestor at the sandbox level, or 0 above it.
 * A walk up the parents rather than cgroup->ancestors[], whose form changed
 * in 6.0 and which the verifier will not index with a variable.
 */
static __always_inline __u64 task_sandbox_cgroup(struct task_struct *t)
{
	struct cgroup *cg = BPF_CORE_READ(t, cgroups, dfl_cgrp);
	int want = alcub3_root_level + 1;
	int i;

	for (i = 0; i < CGROUP_CLIMB_MAX && cg; i++) {
		if (BPF_CORE_READ(cg, level) <= want)
			break;
		cg = (struct cgroup *)((void *)BPF_CORE_READ(cg, self.parent) -
				       bpf_core_field_offset(struct cgroup, self));
	}
	if (!cg || BPF_CORE_READ(cg, level) != want)
		return 0;
	return BPF_CORE_READ(cg, kn, id);
}

static __always_inline void count(int dropped)
{
	__u32 zero = 0;
	struct alcub3_lsm_counters *c = bpf_map_lookup_elem(&lsm_counters, &zero);

	if (c) {
		c->refused++;
		if (dropped)
			c->dropped++;
	}
}

/*
 * A zeroed refusal record with its header filled, or NULL when the ring
 * buffer is full (the refusal stands; the drop is counted).
 */
static __always_inline struct alcub3_lsm_event *refusal(__u64 cgid, __u32 hook)
{
	struct alcub3_lsm_event *e = bpf_ringbuf_reserve(&lsm_events, sizeof(*e), 0);
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	count(!e);
	if (!e)
		return NULL;
	__builtin_memset(e, 0, sizeof(*e));
	e->hdr.ts_ns = bpf_ktime_get_boot_ns();
	e->hdr.sandbox_cgid = cgid;
	e->hdr.pid = pid_tgid >> 32;
	e->hdr.tid = (__u32)pid_tgid;
	e->hdr.kind = ALCUB3_KIND_LSM;
	e->hdr.uid = (__u32)bpf_get_current_uid_gid();
	e->hook = hook;
	return e;
}

/*
 * Refuses, with a record of the hook, target, arg and name (a kernel string,
 * or NULL), for the hooks whose record needs nothing else.
 */
static __always_inline int refuse(__u64 cgid, __u32 hook, __u64 target, __u64 arg, const void *name)
{
	struct alcub3_lsm_event *e = refusal(cgid, hook);

	if (e) {
		e->target = target;
		e->arg = arg;
		if (name)
			bpf_probe_read_kernel_str(e->name, sizeof(e->name), name);
		bpf_ringbuf_submit(e, 0);
	}
	return -EPERM;
}

static __always_inline void dentry_name(char *dst, struct dentry *d)
{
	bpf_probe_read_kernel_str(dst, ALCUB3_LSM_NAME_LEN, BPF_CORE_READ(d, d_name.name));
}

/* An inode key in map m, for this sandbox or for every sandbox (cgid 0). */
static __always_inline int inode_listed(void *m, __u64 cgid, __u64 ino, __u32 dev)
{
	struct alcub3_lsm_inode key = { .cgid = cgid, .ino = ino, .dev = dev };

	if (bpf_map_lookup_elem(m, &key))
		return 1;
	key.cgid = 0;
	return bpf_map_lookup_elem(m, &key) != NULL;
}

/* ------------------------------------------------------------- programs */

/*
 * Protected files are inodes, not path prefixes: an inode is one hash lookup
 * the verifier accepts at once, and it cannot be dodged by a hard link, a
 * bind mount, a rename or a path with "..", which a prefix compare of a
 * d_path string would be. A directory protects its subtree: the opened
 * dentry and its parents up to the filesystem's root are looked up. A file
 * too deep for the walk (ALCUB3_LSM_DIR_DEPTH) is refused: fail closed.
 * User space refreshes the map when a protected file is replaced.
 */
SEC("lsm/file_open")
int BPF_PROG(alcub3_lsm_file_open, struct file *file)
{
	struct dentry *d = BPF_CORE_READ(file, f_path.dentry);
	__u64 cgid = sandbox_refusing(ALCUB3_LSM_PROTECT_FILES);
	__u32 dev, reason = ALCUB3_LSM_REASON_TOO_DEEP;
	struct alcub3_lsm_event *e;
	__u64 ino = 0;
	int i;

	if (!cgid)
		return 0;
	dev = BPF_CORE_READ(d, d_sb, s_dev);
	for (i = 0; i < ALCUB3_LSM_DIR_DEPTH; i++) {
		struct dentry *parent;

		ino = BPF_CORE_READ(d, d_inode, i_ino);
		if (inode_listed(&lsm_files, cgid, ino, dev)) {
			reason = 0;
			break;
		}
		parent = BPF_CORE_READ(d, d_parent);
		if (!parent || parent == d) /* the filesystem's root */
			return 0;
		d = parent;
	}
	e = refusal(cgid, ALCUB3_LSM_HOOK_FILE_OPEN);
	if (e) {
		e->reason = reason;
		e->target = BPF_CORE_READ(file, f_inode, i_ino);
		e->arg = reason ? 0 : ino;
		e->dev = dev;
		dentry_name(e->name, BPF_CORE_READ(file, f_path.dentry));
		bpf_ringbuf_submit(e, 0);
	}
	return -EPERM;
}

/*
 * Runs for each file the exec goes through (a script, then its interpreter),
 * so each must be allowed. Fileless: a file with no link left. memfd files
 * are unlinked by construction (shmem clears i_nlink), and so are O_TMPFILE
 * files and files deleted after opening; a magic-number test for the
 * internal shm mount would miss the last two and also catch tmpfs files that
 * do have a name.
 */
SEC("lsm/bprm_check_security")
int BPF_PROG(alcub3_lsm_bprm_check, struct linux_binprm *bprm)
{
	struct alcub3_lsm_event *e;
	__u32 flags = 0, reason, dev;
	__u64 cgid = current_sandbox(&flags);
	struct inode *inode;
	__u64 ino;

	if (!cgid || !(flags & (ALCUB3_LSM_EXEC_ALLOWLIST | ALCUB3_LSM_NO_FILELESS_EXEC)))
		return 0;
	inode = BPF_CORE_READ(bprm, file, f_inode);
	ino = BPF_CORE_READ(inode, i_ino);
	dev = BPF_CORE_READ(inode, i_sb, s_dev);
	if ((flags & ALCUB3_LSM_NO_FILELESS_EXEC) && BPF_CORE_READ(inode, i_nlink) == 0)
		reason = ALCUB3_LSM_REASON_FILELESS;
	else if ((flags & ALCUB3_LSM_EXEC_ALLOWLIST) && !inode_listed(&lsm_exec, cgid, ino, dev))
		reason = ALCUB3_LSM_REASON_NOT_ALLOWED;
	else
		return 0;
	e = refusal(cgid, ALCUB3_LSM_HOOK_BPRM_CHECK);
	if (e) {
		e->reason = reason;
		e->target = ino;
		e->dev = dev;
		dentry_name(e->name, BPF_CORE_READ(bprm, file, f_path.dentry));
		bpf_ringbuf_submit(e, 0);
	}
	return -EPERM;
}

/* Before any packet: the destination as connect() was given it. */
SEC("lsm/socket_connect")
int BPF_PROG(alcub3_lsm_socket_connect, struct socket *sock, struct sockaddr *address, int addrlen)
{
	__u64 cgid = sandbox_refusing(ALCUB3_LSM_DENY_NETWORKS);
	struct alcub3_lsm_net_key key = { .prefixlen = 64 + 128 };
	struct alcub3_lsm_event *e;
	__u8 addr[16] = {};
	__u16 family, port;
	__u8 *deny;

	if (!cgid)
		return 0;
	family = BPF_CORE_READ(address, sa_family);
	if (family == AF_INET && addrlen >= (int)sizeof(struct sockaddr_in)) {
		struct sockaddr_in sin;

		bpf_probe_read_kernel(&sin, sizeof(sin), address);
		addr[10] = 0xff;
		addr[11] = 0xff;
		__builtin_memcpy(addr + 12, &sin.sin_addr.s_addr, 4);
		port = bpf_ntohs(sin.sin_port);
	} else if (family == AF_INET6 && addrlen >= (int)sizeof(struct sockaddr_in6)) {
		struct sockaddr_in6 sin6;

		bpf_probe_read_kernel(&sin6, sizeof(sin6), address);
		__builtin_memcpy(addr, &sin6.sin6_addr, 16);
		port = bpf_ntohs(sin6.sin6_port);
	} else {
		return 0;
	}
	__builtin_memcpy(key.data, &cgid, 8);
	__builtin_memcpy(key.data + 8, addr, 16);
	deny = bpf_map_lookup_elem(&lsm_nets, &key);
	if (!deny) {
		__u64 every = 0;

		__builtin_memcpy(key.data, &every, 8);
		deny = bpf_map_lookup_elem(&lsm_nets, &key);
	}
	if (!deny || !*deny)
		return 0;
	e = refusal(cgid, ALCUB3_LSM_HOOK_SOCKET_CONNECT);
	if (e) {
		e->target = port;
		e->arg = family;
		__builtin_memcpy(e->addr, addr, 16);
		bpf_ringbuf_submit(e, 0);
	}
	return -EPERM;
}

/*
 * Every ptrace mode, reads of /proc/<pid>/mem, environ and the like included:
 * nothing outside the sandbox is the sandbox's to inspect. Checks the kernel
 * marks NOAUDIT (fields of /proc/<pid>/stat) are refused without a record.
 */
SEC("lsm/ptrace_access_check")
int BPF_PROG(alcub3_lsm_ptrace, struct task_struct *child, unsigned int mode)
{
	__u64 cgid = sandbox_refusing(ALCUB3_LSM_CONFINE_PTRACE);

	if (!cgid || task_sandbox_cgroup(child) == cgid)
		return 0;
	if (mode & PTRACE_MODE_NOAUDIT) {
		count(0);
		return -EPERM;
	}
	return refuse(cgid, ALCUB3_LSM_HOOK_PTRACE, BPF_CORE_READ(child, tgid), mode, NULL);
}

SEC("lsm/sb_mount")
int BPF_PROG(alcub3_lsm_sb_mount, const char *dev_name, const struct path *path, const char *type,
	     unsigned long mount_flags)
{
	__u64 cgid = sandbox_refusing(ALCUB3_LSM_NO_MOUNT);

	return cgid ? refuse(cgid, ALCUB3_LSM_HOOK_SB_MOUNT, mount_flags, 0, type) : 0;
}

/* The new mount API (fsopen, fsmount, open_tree, move_mount) never reaches sb_mount. */
SEC("lsm/move_mount")
int BPF_PROG(alcub3_lsm_move_mount, const struct path *from_path, const struct path *to_path)
{
	__u64 cgid = sandbox_refusing(ALCUB3_LSM_NO_MOUNT);

	return cgid ? refuse(cgid, ALCUB3_LSM_HOOK_MOVE_MOUNT, 0, 0, NULL) : 0;
}

/*
 * fspick + fsconfig(FSCONFIG_CMD_RECONFIGURE) changes a mounted superblock
 * (read-only to writable, say) without passing sb_mount.
 */
SEC("lsm/sb_remount")
int BPF_PROG(alcub3_lsm_sb_remount, struct super_block *sb)
{
	__u64 cgid = sandbox_refusing(ALCUB3_LSM_NO_MOUNT);

	return cgid ? refuse(cgid, ALCUB3_LSM_HOOK_SB_REMOUNT, 0, 0, BPF_CORE_READ(sb, s_type, name)) : 0;
}

/* An unmount would uncover what a sandbox's mounts hide. */
SEC("lsm/sb_umount")
int BPF_PROG(alcub3_lsm_sb_umount, struct vfsmount *mnt, int umount_flags)
{
	__u64 cgid = sandbox_refusing(ALCUB3_LSM_NO_MOUNT);

	return cgid ? refuse(cgid, ALCUB3_LSM_HOOK_SB_UMOUNT, umount_flags, 0,
			     BPF_CORE_READ(mnt, mnt_sb, s_type, name)) : 0;
}

SEC("lsm/sb_pivotroot")
int BPF_PROG(alcub3_lsm_sb_pivotroot, const struct path *old_path, const struct path *new_path)
{
	__u64 cgid = sandbox_refusing(ALCUB3_LSM_NO_MOUNT);

	return cgid ? refuse(cgid, ALCUB3_LSM_HOOK_SB_PIVOTROOT, 0, 0,
			     BPF_CORE_READ(new_path, dentry, d_name.name)) : 0;
}

/* finit_module, kexec_file_load, firmware, IMA policy, X.509 keys: nothing read into the kernel. */
SEC("lsm/kernel_read_file")
int BPF_PROG(alcub3_lsm_kernel_read_file, struct file *file, enum kernel_read_file_id id)
{
	__u64 cgid = sandbox_refusing(ALCUB3_LSM_NO_KERNEL_LOAD);
	struct alcub3_lsm_event *e;

	if (!cgid)
		return 0;
	e = refusal(cgid, ALCUB3_LSM_HOOK_KERNEL_READ_FILE);
	if (e) {
		e->target = id;
		e->dev = BPF_CORE_READ(file, f_inode, i_sb, s_dev);
		dentry_name(e->name, BPF_CORE_READ(file, f_path.dentry));
		bpf_ringbuf_submit(e, 0);
	}
	return -EPERM;
}

/* init_module, kexec_load and firmware from memory. */
SEC("lsm/kernel_load_data")
int BPF_PROG(alcub3_lsm_kernel_load_data, enum kernel_load_data_id id)
{
	__u64 cgid = sandbox_refusing(ALCUB3_LSM_NO_KERNEL_LOAD);

	return cgid ? refuse(cgid, ALCUB3_LSM_HOOK_KERNEL_LOAD_DATA, id, 0, NULL) : 0;
}

/*
 * A module the kernel would load on the sandbox's behalf (a socket family, a
 * filesystem type, a line discipline). The callers mostly drop the error, so
 * the record is the evidence.
 */
SEC("lsm/kernel_module_request")
int BPF_PROG(alcub3_lsm_module_request, char *kmod_name)
{
	__u64 cgid = sandbox_refusing(ALCUB3_LSM_NO_KERNEL_LOAD);

	return cgid ? refuse(cgid, ALCUB3_LSM_HOOK_MODULE_REQUEST, 0, 0, kmod_name) : 0;
}

/* Every bpf() command: a sandbox must not load, read or detach programs and maps, these included. */
SEC("lsm/bpf")
int BPF_PROG(alcub3_lsm_bpf, int cmd)
{
	__u64 cgid = sandbox_refusing(ALCUB3_LSM_NO_BPF);

	return cgid ? refuse(cgid, ALCUB3_LSM_HOOK_BPF, cmd, 0, NULL) : 0;
}

/*
 * Signals the sandbox sends (kill, tgkill, sigqueue, pidfd_send_signal, and
 * probes with signal 0) to tasks outside it. The kernel's own signals
 * (SIGCHLD to the parent, a fatal fault) do not pass this hook.
 */
SEC("lsm/task_kill")
int BPF_PROG(alcub3_lsm_task_kill, struct task_struct *p, struct kernel_siginfo *info, int sig)
{
	__u64 cgid = sandbox_refusing(ALCUB3_LSM_CONFINE_SIGNALS);

	if (!cgid || task_sandbox_cgroup(p) == cgid)
		return 0;
	return refuse(cgid, ALCUB3_LSM_HOOK_TASK_KILL, BPF_CORE_READ(p, tgid), sig, NULL);
}
