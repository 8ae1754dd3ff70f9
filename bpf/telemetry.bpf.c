// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * telemetry.bpf.c: the kernel half of alcub3's sandbox telemetry.
 *
 * Every program first asks whether the current task lives under alcub3's
 * cgroup v2 directory; a task outside pays one helper call and leaves. For a
 * sandboxed task, records are built in place in a ring buffer and submitted
 * without wakeup: user space polls both buffers every millisecond. Exit-side
 * syscall records, the flood, are staged per thread instead and sent in
 * batches (see "syscall batches" below).
 *
 * Record layouts come from alcub3_events.h, shared with the Swift side.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "alcub3_events.h"

/*
 * libbpf 1.1's BPF_CORE_READ declares `typeof(field) __r;` and fills it
 * through a probe read; for const fields (d_name, f_path, cred) clang 21
 * reports that declaration, although __r is always written before use.
 */
#pragma clang diagnostic ignored "-Wdefault-const-init-var-unsafe"

/* GPL-only helpers (probe reads, ancestor cgroup id) need a GPL-compatible license. */
char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by user space in .rodata before load; the verifier then sees constants. */
const volatile __u64 alcub3_root_cgid = 0;  /* cgroup v2 id of alcub3's parent cgroup dir */
const volatile __u32 alcub3_root_level = 1; /* its level in the cgroup2 hierarchy (root = 0) */

/* ---------------------------------------------------------------- maps */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); /* sandbox cgroup id */
	__type(value, struct alcub3_sandbox_config);
} sandboxes SEC(".maps");

/* Process, network and file records. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

/* Syscall records only, so a syscall flood cannot crowd out the rarer records. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 32 << 20);
} syscalls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct alcub3_counters);
} counters SEC(".maps");

/*
 * Each sandboxed thread's syscall batch, being filled (see "syscall batches"
 * below). Task storage: a batch belongs to one thread wherever it runs, and
 * is only touched by that thread, or by sched_switch while the thread is
 * being switched out on its CPU.
 */
struct thread_batch {
	struct alcub3_syscall_batch b; /* first: sent as is */
	__u64 cset;                    /* the thread's css_set address when the batch began */
	__u32 sandbox_flags;           /* its sandbox's flags then */
	__u32 _pad;
	__u64 clock;                   /* the last clock reading of this batch */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct thread_batch);
} syscall_batches SEC(".maps");

/* LRU: a file that is never closed cleanly must not pin an entry for ever. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* file_id: address of the struct file */
	__type(value, struct alcub3_write_stats);
} write_stats SEC(".maps");

/*
 * Files each sandbox has read (struct alcub3_read_key): only a first read is
 * reported, so a compiler reading a header ten thousand times sends one record.
 * LRU: an evicted file is reported again, which costs a record, never a miss.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct alcub3_read_key);
	__type(value, __u8);
} read_seen SEC(".maps");

/*
 * Path assembly area, per CPU (the kernel never runs one program twice at
 * once on a CPU). Twice the path size: an offset masked below PATH_LEN plus a
 * length below PATH_LEN stays inside, which the verifier can check.
 */
#define SCRATCH_HALF ALCUB3_PATH_LEN
struct scratch_buf {
	char b[2 * SCRATCH_HALF];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch_buf);
} alcub3_scratch SEC(".maps");

/*
 * Referenced so that clang emits BTF for every shared struct: the Swift
 * layout test reads them from this object. (Local variables get no BTF.)
 */
struct alcub3_header *alcub3_btf_header __attribute__((unused));
struct alcub3_syscall_event *alcub3_btf_syscall __attribute__((unused));
struct alcub3_syscall_batch *alcub3_btf_syscall_batch __attribute__((unused));
struct alcub3_syscall_entry *alcub3_btf_syscall_entry __attribute__((unused));
struct alcub3_fork_event *alcub3_btf_fork __attribute__((unused));
struct alcub3_exec_event *alcub3_btf_exec __attribute__((unused));
struct alcub3_exit_event *alcub3_btf_exit __attribute__((unused));
struct alcub3_namespace_event *alcub3_btf_namespace __attribute__((unused));
struct alcub3_credentials_event *alcub3_btf_credentials __attribute__((unused));
struct alcub3_network_event *alcub3_btf_network __attribute__((unused));
struct alcub3_file_event *alcub3_btf_file __attribute__((unused));
struct alcub3_write_stats *alcub3_btf_write_stats __attribute__((unused));
struct alcub3_counters *alcub3_btf_counters __attribute__((unused));
struct alcub3_sandbox_config *alcub3_btf_sandbox __attribute__((unused));

/* ------------------------------------------------------ x86_64 constants */

/* Syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl). */
#define NR_write        1
#define NR_open         2
#define NR_pwrite64     18
#define NR_writev       20
#define NR_connect      42
#define NR_accept       43
#define NR_sendto       44
#define NR_sendmsg      46
#define NR_bind         49
#define NR_listen       50
#define NR_clone        56
#define NR_truncate     76
#define NR_ftruncate    77
#define NR_rename       82
#define NR_mkdir        83
#define NR_rmdir        84
#define NR_creat        85
#define NR_link         86
#define NR_unlink       87
#define NR_symlink      88
#define NR_chmod        90
#define NR_fchmod       91
#define NR_chown        92
#define NR_fchown       93
#define NR_lchown       94
#define NR_setuid       105
#define NR_setgid       106
#define NR_setreuid     113
#define NR_setregid     114
#define NR_setresuid    117
#define NR_setresgid    119
#define NR_setfsuid     122
#define NR_setfsgid     123
#define NR_capset       126
#define NR_unshare      272
#define NR_openat       257
#define NR_mkdirat      258
#define NR_fchownat     260
#define NR_unlinkat     263
#define NR_renameat     264
#define NR_linkat       265
#define NR_symlinkat    266
#define NR_fchmodat     268
#define NR_accept4      288
#define NR_pwritev      296
#define NR_setns        308
#define NR_renameat2    316
#define NR_pwritev2     328
#define NR_clone3       435
#define NR_openat2      437
#define NR_fchmodat2    452

#define AT_FDCWD        -100
#define AT_REMOVEDIR    0x200

#define O_WRONLY        00000001
#define O_RDWR          00000002
#define O_CREAT         00000100
#define O_TRUNC         00001000
#define FMODE_WRITE     0x2

#define S_IFMT          0170000
#define S_IFSOCK        0140000

#define AF_UNIX         1
#define AF_INET         2
#define AF_INET6        10

/* CLONE_NEWTIME (0x80) overlaps the exit-signal byte of clone(2); only clone3/unshare carry it. */
#define CLONE_NEWTIME   0x00000080ULL
#define CLONE_NEWNS     0x00020000ULL
#define CLONE_NEWCGROUP 0x02000000ULL
#define CLONE_NEWUTS    0x04000000ULL
#define CLONE_NEWIPC    0x08000000ULL
#define CLONE_NEWUSER   0x10000000ULL
#define CLONE_NEWPID    0x20000000ULL
#define CLONE_NEWNET    0x40000000ULL
#define CLONE_NEW_CLONE (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | \
			 CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET)
#define CLONE_NEW_ANY   (CLONE_NEW_CLONE | CLONE_NEWTIME)

#define TS_COMPAT       0x0002 /* thread_info.status: a 32-bit syscall is running */

/* -------------------------------------------------------------- helpers */

/*
 * Sandbox of the current task, or 0. The first comparison is all a task
 * outside alcub3's tree pays.
 */
/*
 * Whether task t is in alcub3's cgroup tree: all a task outside it pays at
 * each syscall. Plain typed loads (task -> css_set -> cgroup2 cgroup -> its
 * ancestor at alcub3's level -> kernfs id), no helper call; the level is a
 * load-time constant, so the ancestors[] index is a fixed offset.
 */
#ifdef ALCUB3_GUEST_KERNEL
/*
 * The vm level's guest (bpf/telemetry_guest.bpf.c): Debian's 6.12 cloud
 * kernel refuses bpf_rdonly_cast to an untyped pointer (btf id 0), so the
 * ancestor is read with a probe read, one helper call per syscall that only
 * the guest pays.
 */
static __always_inline int in_alcub3_tree(struct task_struct *t)
{
	struct cgroup *cg = t->cgroups->dfl_cgrp;
	struct cgroup *a = NULL;

	if (cg->level < (int)alcub3_root_level)
		return 0;
	if (bpf_probe_read_kernel(&a, sizeof(a), &cg->ancestors[alcub3_root_level]) || !a)
		return 0;
	return BPF_CORE_READ(a, kn, id) == alcub3_root_cgid;
}
#else
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

static __always_inline int in_alcub3_tree(struct task_struct *t)
{
	struct cgroup *cg = t->cgroups->dfl_cgrp;
	struct cgroup **ancestors;
	struct cgroup *a;

	if (cg->level < (int)alcub3_root_level)
		return 0;
	/*
	 * ancestors[] is a flexible array the verifier will not index past its
	 * first slot; bpf_rdonly_cast (inlined to a move) makes the reads
	 * untrusted, fault-safe loads.
	 */
	ancestors = bpf_rdonly_cast(cg->ancestors, 0);
	a = bpf_rdonly_cast(ancestors[alcub3_root_level], bpf_core_type_id_kernel(struct cgroup));
	return a->kn->id == alcub3_root_cgid;
}
#endif

static __always_inline __u64 current_sandbox(struct alcub3_sandbox_config **cfg)
{
	__u64 cgid;

	if (!in_alcub3_tree(bpf_get_current_task_btf()))
		return 0;
	cgid = bpf_get_current_ancestor_cgroup_id(alcub3_root_level + 1);
	*cfg = bpf_map_lookup_elem(&sandboxes, &cgid);
	return *cfg ? cgid : 0;
}

/*
 * Reserve a record and count it. No path below discards a reserved record,
 * so a successful reserve is counted as submitted here, saving a second
 * counter lookup after the submit.
 */
static __always_inline void *rb_reserve(void *rb, __u64 size, int is_syscall)
{
	__u32 zero = 0;
	struct alcub3_counters *c = bpf_map_lookup_elem(&counters, &zero);
	void *p = bpf_ringbuf_reserve(rb, size, 0);

	if (c) {
		c->seen++;
		if (p) {
			c->submitted++;
		} else {
			c->dropped++;
			if (is_syscall)
				c->syscall_dropped++;
		}
	}
	return p;
}

#define RESERVE(rb, type, is_sys) ((type *)rb_reserve(&(rb), sizeof(type), (is_sys)))
#define SUBMIT(p) bpf_ringbuf_submit((p), BPF_RB_NO_WAKEUP)

static __always_inline void fill_hdr(struct alcub3_header *h, __u64 cgid, __u16 kind, __u16 flags)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	h->ts_ns = bpf_ktime_get_boot_ns();
	h->sandbox_cgid = cgid;
	h->pid = pid_tgid >> 32;
	h->tid = (__u32)pid_tgid;
	h->kind = kind;
	h->flags = flags;
	/* Low half: real uid of current_cred(), mapped into the init user namespace. */
	h->uid = (__u32)bpf_get_current_uid_gid();
}

/* struct file * for a descriptor of the current task, or 0. */
static __always_inline __u64 fd_file(long fd)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct fdtable *fdt;
	struct file **arr;
	struct file *f = NULL;
	__u32 max;

	if (fd < 0)
		return 0;
	fdt = BPF_CORE_READ(t, files, fdt);
	if (!fdt)
		return 0;
	max = BPF_CORE_READ(fdt, max_fds);
	if ((__u64)fd >= max)
		return 0;
	arr = BPF_CORE_READ(fdt, fd);
	bpf_probe_read_kernel(&f, sizeof(f), &arr[fd]);
	return (__u64)f;
}

/* Syscall arguments handed to the per-category handlers (global functions). */
struct sc_args {
	__u64 cgid;
	__s64 ret;
	__u64 a[6]; /* di, si, dx, r10, r8, r9 */
	__u32 nr;
	__u32 _pad;
};

/* A record's path field, as a sized type so a global function can take it. */
struct path_field {
	char s[ALCUB3_PATH_LEN];
};

#define PATH_TRUNC  0x10000 /* in the return value of the path resolvers */
#define MAX_WALK    32      /* dentry components plus mount crossings */

/*
 * Absolute path of (dentry, vfsmount), as seen from the task's root (like
 * d_path), written into out. Built backwards from the middle of the scratch
 * buffer, then copied. Returns the length, | PATH_TRUNC if the path did not
 * fit or the walk ran out of steps (then out holds the deepest components,
 * without the leading '/'), or < 0 if nothing was written.
 * A global function: the verifier checks its loop once, not at every call.
 */
__noinline int resolve_path(struct path_field *out, __u64 dentry, __u64 vfsmnt)
{
	struct task_struct *t = bpf_get_current_task_btf();
	__u64 mnt_off = bpf_core_field_offset(struct mount, mnt);
	struct dentry *d = (struct dentry *)dentry;
	struct vfsmount *vm = (struct vfsmount *)vfsmnt;
	struct mount *m = (struct mount *)(vfsmnt - mnt_off);
	struct dentry *root_d, *mnt_root, *parent;
	struct vfsmount *root_m;
	struct mount *mp;
	struct scratch_buf *sb;
	const unsigned char *name;
	__u32 zero = 0, pos = SCRATCH_HALF - 1, n;
	__u64 len;
	int i, trunc = 0;

	if (!out || !d || !vm)
		return -1;
	sb = bpf_map_lookup_elem(&alcub3_scratch, &zero);
	if (!sb)
		return -1;
	root_d = BPF_CORE_READ(t, fs, root.dentry);
	root_m = BPF_CORE_READ(t, fs, root.mnt);

	sb->b[SCRATCH_HALF - 1] = '\0';
	for (i = 0; i < MAX_WALK; i++) {
		if (d == root_d && vm == root_m)
			break;
		mnt_root = BPF_CORE_READ(vm, mnt_root);
		parent = BPF_CORE_READ(d, d_parent);
		if (d == mnt_root || d == parent) {
			/* Root of this mount: continue from where it is mounted. */
			mp = BPF_CORE_READ(m, mnt_parent);
			if (d != mnt_root || !mp || mp == m)
				break; /* top of the mount tree, or a disconnected dentry */
			d = BPF_CORE_READ(m, mnt_mountpoint);
			m = mp;
			vm = (struct vfsmount *)((__u64)mp + mnt_off);
			continue;
		}
		len = BPF_CORE_READ(d, d_name.len);
		name = BPF_CORE_READ(d, d_name.name);
		if (len + 1 > pos) {
			trunc = 1;
			break;
		}
		/*
		 * The masks restate bounds the check above guarantees, for the
		 * verifier; barrier_var keeps clang from dropping them as redundant.
		 */
		barrier_var(len);
		len &= SCRATCH_HALF - 1;
		pos -= len;
		barrier_var(pos);
		pos &= SCRATCH_HALF - 1;
		bpf_probe_read_kernel(&sb->b[pos], len, name);
		pos = (pos - 1) & (SCRATCH_HALF - 1);
		sb->b[pos] = '/';
		d = parent;
	}
	if (i == MAX_WALK && !(d == root_d && vm == root_m))
		trunc = 1; /* ran out of steps before the root */
	if (trunc) {
		if (pos < SCRATCH_HALF - 1)
			pos++; /* drop the '/': a cut path must not pass for an absolute one */
	} else if (pos == SCRATCH_HALF - 1) {
		pos--; /* the root itself */
		sb->b[pos] = '/';
	}
	pos &= SCRATCH_HALF - 1;
	n = SCRATCH_HALF - pos; /* bytes including the NUL, 1..PATH_LEN */
	bpf_probe_read_kernel(out->s, n, &sb->b[pos]);
	return (int)(n - 1) | (trunc ? PATH_TRUNC : 0);
}

/* Path of a descriptor, or of the working directory for AT_FDCWD. */
__noinline int resolve_fd(struct path_field *out, long fd)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct file *f;

	if (!out)
		return -1;
	if (fd == AT_FDCWD)
		return resolve_path(out, (__u64)BPF_CORE_READ(t, fs, pwd.dentry),
				    (__u64)BPF_CORE_READ(t, fs, pwd.mnt));
	f = (struct file *)fd_file(fd);
	if (!f)
		return -1;
	return resolve_path(out, (__u64)BPF_CORE_READ(f, f_path.dentry),
			    (__u64)BPF_CORE_READ(f, f_path.mnt));
}

/* A user string into a PATH_LEN field; 1 if it was cut, 0 otherwise. */
static __always_inline int read_user_path(char *dst, __u64 src)
{
	long n = bpf_probe_read_user_str(dst, ALCUB3_PATH_LEN, (const void *)src);
	char c = 0;

	if (n < ALCUB3_PATH_LEN)
		return 0;
	/* Full buffer: cut only if the string goes on past the last byte we kept. */
	bpf_probe_read_user(&c, 1, (const void *)(src + ALCUB3_PATH_LEN - 1));
	return c != 0;
}

/* ------------------------------------------------------- record builders */

static __always_inline void emit_syscall(__u64 cgid, struct pt_regs *regs, __u32 nr, long ret,
					 __u16 kind, __u16 flags)
{
	struct alcub3_syscall_event *e = RESERVE(syscalls, struct alcub3_syscall_event, 1);

	if (!e)
		return;
	fill_hdr(&e->hdr, cgid, kind, flags);
	e->nr = nr;
	e->_pad = 0;
	e->ret = ret;
	e->args[0] = regs->di;
	e->args[1] = regs->si;
	e->args[2] = regs->dx;
	SUBMIT(e);
}

/*
 * Syscall batches. One ring buffer record per syscall costs the traced thread
 * more than all the rest of the program (the reserve and commit, and the
 * ring's cache lines shared with the consumer on another CPU), so exit-side
 * syscalls are staged in the thread's task storage and copied out as one
 * record of up to ALCUB3_SYSCALL_BATCH_MAX entries. A batch is sent:
 *   - when it is full;
 *   - before a syscall is added, if its first entry is older than
 *     BATCH_MAX_AGE_NS, if the thread changed cgroups, or if the syscall is a
 *     credentials change (the header's uid then describes every entry);
 *   - before any other record of the thread (fork, exec, exit, namespace,
 *     credentials, network, file) and before an entry-mode syscall record, so
 *     each thread's records keep their order;
 *   - when the thread exits or execs;
 *   - when the thread is switched out (alcub3_switch), so that one that blocks
 *     or goes idle holds nothing back. Only this rule needs that program:
 *     without it, a batch waits for one of the others.
 * The counters count a batch's entries when the batch is sent.
 */
#define BATCH_MAX_AGE_NS 2000000ULL /* 2 ms: twice the consumer's polling period */
#define BATCH_HDR_SIZE   __builtin_offsetof(struct alcub3_syscall_batch, entries)

static __always_inline void batch_send(struct alcub3_syscall_batch *b)
{
	struct alcub3_counters *c;
	__u32 zero = 0, n = b->count;
	long err;

	if (!n)
		return;
	if (n > ALCUB3_SYSCALL_BATCH_MAX) /* cannot happen; bounds the size for the verifier */
		n = ALCUB3_SYSCALL_BATCH_MAX;
	err = bpf_ringbuf_output(&syscalls, b, BATCH_HDR_SIZE + n * sizeof(struct alcub3_syscall_entry),
				 BPF_RB_NO_WAKEUP);
	b->count = 0;
	c = bpf_map_lookup_elem(&counters, &zero);
	if (c) {
		c->seen += n;
		if (!err) {
			c->submitted += n;
		} else {
			c->dropped += n;
			c->syscall_dropped += n;
		}
	}
}

/* Sends the staged syscalls of task t, if any. */
static __always_inline void batch_flush_task(struct task_struct *t)
{
	struct thread_batch *tb = bpf_task_storage_get(&syscall_batches, t, 0, 0);

	if (tb && tb->b.count)
		batch_send(&tb->b);
}

static __always_inline void batch_flush_current(void)
{
	batch_flush_task(bpf_get_current_task_btf());
}

/*
 * Adds one exit-side syscall of the current thread, whose css_set is cset and
 * sandbox (cgid, sandbox_flags), to its batch tb.
 */
static __always_inline void batch_add(struct thread_batch *tb, __u64 cset, __u64 cgid, __u32 sandbox_flags,
				      struct pt_regs *regs, __u32 nr, long ret, int new_uid)
{
	struct alcub3_syscall_batch *b = &tb->b;
	struct alcub3_syscall_entry *e;
	__u64 now, pid_tgid;
	__u32 n;

	/* The clock costs ~30 ns a read here (a third of a getppid): read it for
	   the first entry and every ALCUB3_SYSCALL_CLOCK_EVERY-th, the others
	   carry the last reading. */
	n = b->count;
	if (n == 0 || (n % ALCUB3_SYSCALL_CLOCK_EVERY) == 0) {
		now = bpf_ktime_get_boot_ns();
		tb->clock = now;
	} else {
		now = tb->clock;
	}
	if (n && (now - b->hdr.ts_ns >= BATCH_MAX_AGE_NS || tb->cset != cset ||
		  b->hdr.sandbox_cgid != cgid || new_uid)) {
		batch_send(b);
		n = 0;
	}
	if (n >= ALCUB3_SYSCALL_BATCH_MAX) { /* cannot happen: a full batch is sent at once */
		batch_send(b);
		n = 0;
	}
	if (n == 0) {
		pid_tgid = bpf_get_current_pid_tgid();
		tb->cset = cset;
		tb->sandbox_flags = sandbox_flags;
		b->hdr.ts_ns = now;
		b->hdr.sandbox_cgid = cgid;
		b->hdr.pid = pid_tgid >> 32;
		b->hdr.tid = (__u32)pid_tgid;
		b->hdr.kind = ALCUB3_KIND_SYSCALL_BATCH;
		b->hdr.flags = 0;
		b->hdr.uid = (__u32)bpf_get_current_uid_gid();
		b->_pad = 0;
	}
	e = &b->entries[n];
	e->ts_delta = now - b->hdr.ts_ns;
	e->nr = nr;
	e->ret = ret;
	e->args[0] = regs->di;
	e->args[1] = regs->si;
	e->args[2] = regs->dx;
	b->count = ++n;
	if (n == ALCUB3_SYSCALL_BATCH_MAX)
		batch_send(b);
}

/* A record of the events buffer: the thread's staged syscalls go out first. */
#define RESERVE_EVENT(type) (batch_flush_current(), RESERVE(events, type, 0))

__noinline int handle_namespace(struct sc_args *a)
{
	struct alcub3_namespace_event *e;
	__u64 flags = 0;
	__s32 fd = -1;

	if (!a)
		return 0;
	switch (a->nr) {
	case NR_setns:
		fd = (__s32)a->a[0];
		flags = a->a[1];
		break;
	case NR_unshare:
		flags = a->a[0];
		break;
	case NR_clone:
		/* ret 0 is the child returning; the parent side reports. */
		if (a->ret == 0 || !(a->a[0] & CLONE_NEW_CLONE))
			return 0;
		flags = a->a[0];
		break;
	case NR_clone3:
		if (a->ret == 0)
			return 0;
		/* struct clone_args begins with the u64 flags. */
		if (bpf_probe_read_user(&flags, sizeof(flags), (const void *)a->a[0]) ||
		    !(flags & CLONE_NEW_ANY))
			return 0;
		break;
	default:
		return 0;
	}
	e = RESERVE_EVENT(struct alcub3_namespace_event);
	if (!e)
		return 0;
	fill_hdr(&e->hdr, a->cgid, ALCUB3_KIND_NAMESPACE, 0);
	e->nr = a->nr;
	e->fd = fd;
	e->ret = a->ret;
	e->flags = flags;
	SUBMIT(e);
	return 0;
}

__noinline int handle_credentials(struct sc_args *a)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct alcub3_credentials_event *e;
	const struct cred *cred;

	if (!a)
		return 0;
	e = RESERVE_EVENT(struct alcub3_credentials_event);
	if (!e)
		return 0;
	fill_hdr(&e->hdr, a->cgid, ALCUB3_KIND_CREDENTIALS, 0);
	e->nr = a->nr;
	e->_pad = 0;
	e->ret = a->ret;
	/* current->cred after the call: commit_creds() has already swapped it in. */
	cred = BPF_CORE_READ(t, cred);
	e->new_uid = BPF_CORE_READ(cred, uid.val);
	e->new_euid = BPF_CORE_READ(cred, euid.val);
	e->new_gid = BPF_CORE_READ(cred, gid.val);
	e->new_egid = BPF_CORE_READ(cred, egid.val);
	/*
	 * 8 raw bytes: the u64 `val` on 6.x, and on older kernels the same
	 * value as the little-endian u32[2] it replaced.
	 */
	e->cap_effective = 0;
	e->cap_permitted = 0;
	bpf_probe_read_kernel(&e->cap_effective, 8, __builtin_preserve_access_index(&cred->cap_effective));
	bpf_probe_read_kernel(&e->cap_permitted, 8, __builtin_preserve_access_index(&cred->cap_permitted));
	SUBMIT(e);
	return 0;
}

/* Bytes of sun_path to copy, in [0, 108], in a form the verifier can bound. */
static __always_inline __u32 unix_path_len(__s64 n)
{
	/* barrier_var: clang must not fold the clamp into the caller's arithmetic. */
	barrier_var(n);
	if (n <= 0)
		return 0;
	if (n > 108)
		n = 108;
	return n;
}

/* User sockaddr into the record; returns 1 if an address was read. */
static __always_inline int read_user_sockaddr(struct alcub3_network_event *e, __u64 uaddr, __s64 ulen)
{
	__u8 buf[24] = {};
	__u16 family = 0;
	__u32 n;

	if (!uaddr || ulen < 2)
		return 0;
	if (bpf_probe_read_user(&family, sizeof(family), (const void *)uaddr))
		return 0;
	e->family = family;
	if (family == AF_INET && ulen >= 8) {
		/* sockaddr_in: family, port (BE), 4-byte address */
		if (bpf_probe_read_user(buf, 8, (const void *)uaddr))
			return 0;
		e->port = bpf_ntohs(*(__u16 *)&buf[2]);
		__builtin_memcpy(e->addr, &buf[4], 4);
	} else if (family == AF_INET6 && ulen >= 24) {
		/* sockaddr_in6: family, port (BE), flowinfo, 16-byte address */
		if (bpf_probe_read_user(buf, 24, (const void *)uaddr))
			return 0;
		e->port = bpf_ntohs(*(__u16 *)&buf[2]);
		__builtin_memcpy(e->addr, &buf[8], 16);
	} else if (family == AF_UNIX) {
		/* sun_path, read raw: an abstract name starts with a NUL. */
		n = unix_path_len(ulen - 2);
		if (n > 0)
			bpf_probe_read_user(e->unix_path, n, (const void *)(uaddr + 2));
	}
	return 1;
}

/*
 * Fill what the socket behind file knows: family, type, protocol, the local
 * address, and (when the task gave no address) the address the operation is
 * about: the bound address for bind/listen, the peer for accept.
 */
static __always_inline void fill_from_socket(struct alcub3_network_event *e, __u64 file, __u32 op, int have_addr)
{
	struct file *f = (struct file *)file;
	struct socket *sock;
	struct sock *sk;
	struct unix_address *ua;
	__u16 family, mode;
	__u32 n;

	mode = BPF_CORE_READ(f, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return;
	sock = BPF_CORE_READ(f, private_data);
	sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	e->family = family;
	e->sock_type = BPF_CORE_READ(sk, sk_type);
	e->protocol = BPF_CORE_READ(sk, sk_protocol);
	if (family == AF_INET) {
		BPF_CORE_READ_INTO((__u32 *)e->local_addr, sk, __sk_common.skc_rcv_saddr);
		e->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	} else if (family == AF_INET6) {
		BPF_CORE_READ_INTO((struct in6_addr *)e->local_addr, sk, __sk_common.skc_v6_rcv_saddr);
		e->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	}
	if (have_addr)
		return;
	if (op == ALCUB3_NET_BIND || op == ALCUB3_NET_LISTEN) {
		if (family == AF_INET || family == AF_INET6) {
			__builtin_memcpy(e->addr, e->local_addr, 16);
			e->port = e->local_port;
		} else if (family == AF_UNIX) {
			/* unix_address: refcnt, len (incl. sun_family), sockaddr_un name[] */
			ua = BPF_CORE_READ((struct unix_sock *)sk, addr);
			if (!ua)
				return;
			n = unix_path_len((__s64)BPF_CORE_READ(ua, len) - 2);
			if (n > 0)
				bpf_probe_read_kernel(e->unix_path, n,
						      (void *)ua + bpf_core_field_offset(struct unix_address, name) + 2);
		}
	} else if (op == ALCUB3_NET_ACCEPT) {
		if (family == AF_INET) {
			BPF_CORE_READ_INTO((__u32 *)e->addr, sk, __sk_common.skc_daddr);
			e->port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
		} else if (family == AF_INET6) {
			BPF_CORE_READ_INTO((struct in6_addr *)e->addr, sk, __sk_common.skc_v6_daddr);
			e->port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
		}
	}
}

__noinline int handle_network(struct sc_args *a)
{
	struct alcub3_network_event *e;
	__u64 uaddr = 0, file;
	__s64 ulen = 0;
	long sockfd;
	__u32 op;
	int have_addr;
	struct {
		__u64 name;
		__s32 namelen;
	} msg;

	if (!a)
		return 0;
	sockfd = (__s32)a->a[0];
	switch (a->nr) {
	case NR_connect:
		op = ALCUB3_NET_CONNECT;
		uaddr = a->a[1];
		ulen = (__s32)a->a[2];
		break;
	case NR_bind:
		op = ALCUB3_NET_BIND;
		uaddr = a->a[1];
		ulen = (__s32)a->a[2];
		break;
	case NR_listen:
		op = ALCUB3_NET_LISTEN;
		break;
	case NR_accept:
	case NR_accept4:
		op = ALCUB3_NET_ACCEPT;
		if (a->ret >= 0) {
			__s32 l = 0;

			/* The kernel wrote the peer's address and its length back. */
			if (a->a[1] && a->a[2] &&
			    !bpf_probe_read_user(&l, sizeof(l), (const void *)a->a[2])) {
				uaddr = a->a[1];
				ulen = l;
			}
			sockfd = a->ret; /* describe the new connection */
		}
		break;
	case NR_sendto:
		if (!a->a[4])
			return 0; /* connected socket: no destination to report */
		op = ALCUB3_NET_SENDTO;
		uaddr = a->a[4];
		ulen = (__s32)a->a[5];
		break;
	case NR_sendmsg:
		/* struct user_msghdr begins with msg_name, msg_namelen. */
		if (bpf_probe_read_user(&msg, 12, (const void *)a->a[1]) || !msg.name)
			return 0;
		op = ALCUB3_NET_SENDMSG;
		uaddr = msg.name;
		ulen = msg.namelen;
		break;
	default:
		return 0;
	}

	e = RESERVE_EVENT(struct alcub3_network_event);
	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	fill_hdr(&e->hdr, a->cgid, ALCUB3_KIND_NETWORK, 0);
	e->op = op;
	e->fd = (__s32)a->a[0];
	e->ret = a->ret;
	have_addr = read_user_sockaddr(e, uaddr, ulen);
	file = fd_file(sockfd);
	if (file)
		fill_from_socket(e, file, op, have_addr);
	SUBMIT(e);
	return 0;
}

#define EPERM  1
#define EACCES 13

/* Whether this is the sandbox's first read of the file open at fd (and remembers it). */
static __always_inline int first_read(__u64 cgid, long fd)
{
	struct file *f = (struct file *)fd_file(fd);
	struct alcub3_read_key key = {};
	__u8 one = 1;

	if (!f)
		return 0;
	key.sandbox_cgid = cgid;
	key.inode = BPF_CORE_READ(f, f_inode, i_ino);
	key.dev = BPF_CORE_READ(f, f_inode, i_sb, s_dev);
	return bpf_map_update_elem(&read_seen, &key, &one, BPF_NOEXIST) == 0;
}

__noinline int handle_file(struct sc_args *a)
{
	struct alcub3_file_event *e;
	struct file *f;
	__u64 name = 0, name2 = 0;
	__u32 op = 0, oflags = 0, mode = 0, ouid = 0, ogid = 0;
	long dfd = AT_FDCWD, dfd2 = AT_FDCWD, fd = -1;
	int is_open = 0, name_has_dir = 1, r;
	__u16 flags = 0;
	struct {
		__u64 flags;
		__u64 mode;
	} how;

	if (!a)
		return 0;
	switch (a->nr) {
	case NR_open:
		is_open = 1;
		name = a->a[0];
		oflags = a->a[1];
		mode = a->a[2];
		break;
	case NR_openat:
		is_open = 1;
		dfd = (__s32)a->a[0];
		name = a->a[1];
		oflags = a->a[2];
		mode = a->a[3];
		break;
	case NR_openat2:
		is_open = 1;
		dfd = (__s32)a->a[0];
		name = a->a[1];
		/* struct open_how begins with u64 flags, u64 mode. */
		if (bpf_probe_read_user(&how, sizeof(how), (const void *)a->a[2]))
			return 0;
		oflags = how.flags;
		mode = how.mode;
		break;
	case NR_creat:
		is_open = 1;
		name = a->a[0];
		oflags = O_CREAT | O_WRONLY | O_TRUNC;
		mode = a->a[1];
		break;
	case NR_truncate:
		op = ALCUB3_FILE_TRUNCATE;
		name = a->a[0];
		break;
	case NR_ftruncate:
		op = ALCUB3_FILE_TRUNCATE;
		fd = (__s32)a->a[0];
		break;
	case NR_rename:
		op = ALCUB3_FILE_RENAME;
		name = a->a[0];
		name2 = a->a[1];
		break;
	case NR_renameat:
	case NR_renameat2:
		op = ALCUB3_FILE_RENAME;
		dfd = (__s32)a->a[0];
		name = a->a[1];
		dfd2 = (__s32)a->a[2];
		name2 = a->a[3];
		break;
	case NR_unlink:
		op = ALCUB3_FILE_UNLINK;
		name = a->a[0];
		break;
	case NR_unlinkat:
		op = (a->a[2] & AT_REMOVEDIR) ? ALCUB3_FILE_RMDIR : ALCUB3_FILE_UNLINK;
		dfd = (__s32)a->a[0];
		name = a->a[1];
		break;
	case NR_mkdir:
		op = ALCUB3_FILE_MKDIR;
		name = a->a[0];
		mode = a->a[1];
		break;
	case NR_mkdirat:
		op = ALCUB3_FILE_MKDIR;
		dfd = (__s32)a->a[0];
		name = a->a[1];
		mode = a->a[2];
		break;
	case NR_rmdir:
		op = ALCUB3_FILE_RMDIR;
		name = a->a[0];
		break;
	case NR_link:
		op = ALCUB3_FILE_LINK;
		name = a->a[0];
		name2 = a->a[1];
		break;
	case NR_linkat:
		op = ALCUB3_FILE_LINK;
		dfd = (__s32)a->a[0];
		name = a->a[1];
		dfd2 = (__s32)a->a[2];
		name2 = a->a[3];
		break;
	case NR_symlink:
		/* The target is stored as given: it is relative to the link, not to a directory we know. */
		op = ALCUB3_FILE_SYMLINK;
		name = a->a[0];
		name_has_dir = 0;
		name2 = a->a[1];
		break;
	case NR_symlinkat:
		op = ALCUB3_FILE_SYMLINK;
		name = a->a[0];
		name_has_dir = 0;
		dfd2 = (__s32)a->a[1];
		name2 = a->a[2];
		break;
	case NR_chmod:
		op = ALCUB3_FILE_CHMOD;
		name = a->a[0];
		mode = a->a[1];
		break;
	case NR_fchmod:
		op = ALCUB3_FILE_CHMOD;
		fd = (__s32)a->a[0];
		mode = a->a[1];
		break;
	case NR_fchmodat:
	case NR_fchmodat2:
		op = ALCUB3_FILE_CHMOD;
		dfd = (__s32)a->a[0];
		name = a->a[1];
		mode = a->a[2];
		break;
	case NR_chown:
	case NR_lchown:
		op = ALCUB3_FILE_CHOWN;
		name = a->a[0];
		ouid = a->a[1];
		ogid = a->a[2];
		break;
	case NR_fchown:
		op = ALCUB3_FILE_CHOWN;
		fd = (__s32)a->a[0];
		ouid = a->a[1];
		ogid = a->a[2];
		break;
	case NR_fchownat:
		op = ALCUB3_FILE_CHOWN;
		dfd = (__s32)a->a[0];
		name = a->a[1];
		ouid = a->a[2];
		ogid = a->a[3];
		break;
	default:
		return 0;
	}
	if (is_open) {
		op = ALCUB3_FILE_OPEN;
		if (!(oflags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC))) {
			/*
			 * A read changes nothing, but what an agent reads matters (a
			 * credential file): the first read of each file is reported, and
			 * a refused one; ENOENT (path probing) is not.
			 */
			if (a->ret == -EACCES || a->ret == -EPERM)
				op = ALCUB3_FILE_READ;
			else if (a->ret < 0 || !first_read(a->cgid, a->ret))
				return 0;
			else
				op = ALCUB3_FILE_READ;
		}
	}

	e = RESERVE_EVENT(struct alcub3_file_event);
	if (!e)
		return 0;
	/*
	 * Clear in parts: BPF has no memset call, and clang expands one inline
	 * only up to a size bound (this record is past it); the barriers stop
	 * it merging the parts back into one, the u64 casts keep 8-byte stores.
	 */
	__builtin_memset(e, 0, 512);
	asm volatile("" ::: "memory");
	__builtin_memset((__u64 *)e + 64, 0, 512);
	asm volatile("" ::: "memory");
	__builtin_memset((__u64 *)e + 128, 0, sizeof(*e) - 1024);
	fill_hdr(&e->hdr, a->cgid, ALCUB3_KIND_FILE, 0);
	e->op = op;
	e->nr = a->nr;
	e->ret = a->ret;
	e->open_flags = oflags;
	e->mode = mode;
	e->owner_uid = ouid;
	e->owner_gid = ogid;

	if (is_open && a->ret >= 0) {
		/* Opened: the file itself names the path, whatever the task wrote. */
		f = (struct file *)fd_file(a->ret);
		if (f) {
			r = resolve_path((struct path_field *)e->dir, (__u64)BPF_CORE_READ(f, f_path.dentry),
					 (__u64)BPF_CORE_READ(f, f_path.mnt));
			if (r > 0 && (r & PATH_TRUNC))
				flags |= ALCUB3_FLAG_TRUNCATED;
			if (BPF_CORE_READ(f, f_mode) & FMODE_WRITE) {
				struct alcub3_write_stats ws = {
					.sandbox_cgid = a->cgid,
					.inode = BPF_CORE_READ(f, f_inode, i_ino),
					.pid = e->hdr.pid,
				};
				__u64 key = (__u64)f;

				if (!bpf_map_update_elem(&write_stats, &key, &ws, BPF_ANY))
					e->file_id = key;
			}
		}
	} else if (fd >= 0) {
		r = resolve_fd((struct path_field *)e->dir, fd);
		if (r > 0 && (r & PATH_TRUNC))
			flags |= ALCUB3_FLAG_TRUNCATED;
	} else if (name) {
		if (read_user_path(e->name, name))
			flags |= ALCUB3_FLAG_TRUNCATED;
		if (name_has_dir && e->name[0] != '/') {
			r = resolve_fd((struct path_field *)e->dir, dfd);
			if (r > 0 && (r & PATH_TRUNC))
				flags |= ALCUB3_FLAG_TRUNCATED;
		}
	}
	if (name2) {
		if (read_user_path(e->name2, name2))
			flags |= ALCUB3_FLAG_TRUNCATED;
		if (e->name2[0] != '/') {
			r = resolve_fd((struct path_field *)e->dir2, dfd2);
			if (r > 0 && (r & PATH_TRUNC))
				flags |= ALCUB3_FLAG_TRUNCATED;
		}
	}
	e->hdr.flags = flags;
	SUBMIT(e);
	return 0;
}

/* Write volume: no record, just add to the entry made when the file was opened. */
__noinline int handle_write(struct sc_args *a)
{
	struct alcub3_write_stats *ws;
	struct file *f;
	__u64 key;

	if (!a)
		return 0;
	key = fd_file((__s32)a->a[0]);
	if (!key)
		return 0;
	ws = bpf_map_lookup_elem(&write_stats, &key);
	if (!ws)
		return 0;
	f = (struct file *)key;
	/* A freed and reused struct file would point at another inode. */
	if (BPF_CORE_READ(f, f_inode, i_ino) != ws->inode)
		return 0;
	__sync_fetch_and_add(&ws->bytes, a->ret);
	__sync_fetch_and_add(&ws->writes, 1);
	return 0;
}

/* ------------------------------------------------------------- programs */

enum { CAT_WRITE = 1, CAT_NAMESPACE, CAT_CREDENTIALS, CAT_NETWORK, CAT_FILE };

/*
 * tp_btf rather than raw_tp: regs is a typed pointer, so reading the saved
 * registers is a plain load instead of a probe-read helper call.
 */
SEC("tp_btf/sys_exit")
int BPF_PROG(alcub3_sys_exit, struct pt_regs *regs, long ret)
{
	struct alcub3_sandbox_config *cfg;
	struct thread_batch *tb;
	struct task_struct *t;
	struct sc_args a;
	__u64 cgid, cset;
	__u32 nr, flags;
	int cat;

	t = bpf_get_current_task_btf();
	if (!in_alcub3_tree(t)) /* all a task outside alcub3's tree pays */
		return 0;
	cset = (__u64)t->cgroups;
	tb = bpf_task_storage_get(&syscall_batches, t, 0, 0);
	if (tb && tb->b.count && tb->cset == cset) {
		/*
		 * The thread is in the cgroups its batch began in: its sandbox is
		 * the batch's, as looked up then. (Unwatching a sandbox thus takes
		 * effect at its threads' next batch, at most 2 ms later.)
		 */
		cgid = tb->b.hdr.sandbox_cgid;
		flags = tb->sandbox_flags;
	} else {
		cgid = bpf_get_current_ancestor_cgroup_id(alcub3_root_level + 1);
		cfg = bpf_map_lookup_elem(&sandboxes, &cgid);
		if (!cfg)
			return 0;
		flags = cfg->flags;
	}
	nr = regs->orig_ax;

	switch (nr) {
	case NR_write:
	case NR_writev:
	case NR_pwrite64:
	case NR_pwritev:
	case NR_pwritev2:
		cat = ret > 0 ? CAT_WRITE : 0;
		break;
	case NR_setns:
	case NR_unshare:
	case NR_clone:
	case NR_clone3:
		cat = CAT_NAMESPACE;
		break;
	case NR_setuid:
	case NR_setgid:
	case NR_setreuid:
	case NR_setregid:
	case NR_setresuid:
	case NR_setresgid:
	case NR_setfsuid:
	case NR_setfsgid:
	case NR_capset:
		cat = CAT_CREDENTIALS;
		break;
	case NR_connect:
	case NR_bind:
	case NR_sendto:
	case NR_sendmsg:
	case NR_listen:
	case NR_accept:
	case NR_accept4:
		cat = CAT_NETWORK;
		break;
	case NR_open:
	case NR_openat:
	case NR_openat2:
	case NR_creat:
	case NR_truncate:
	case NR_ftruncate:
	case NR_rename:
	case NR_renameat:
	case NR_renameat2:
	case NR_unlink:
	case NR_unlinkat:
	case NR_mkdir:
	case NR_mkdirat:
	case NR_rmdir:
	case NR_link:
	case NR_linkat:
	case NR_symlink:
	case NR_symlinkat:
	case NR_chmod:
	case NR_fchmod:
	case NR_fchmodat:
	case NR_fchmodat2:
	case NR_chown:
	case NR_fchown:
	case NR_lchown:
	case NR_fchownat:
		cat = CAT_FILE;
		break;
	default:
		cat = 0;
	}

	if (flags & ALCUB3_SANDBOX_SYSCALLS) {
		if (flags & ALCUB3_SANDBOX_SYSCALL_ENTRY) {
			/* Entry mode: single records, so entry and exit records alternate in order. */
			if (tb && tb->b.count)
				batch_send(&tb->b);
			emit_syscall(cgid, regs, nr, ret, ALCUB3_KIND_SYSCALL, 0);
		} else {
			if (!tb)
				tb = bpf_task_storage_get(&syscall_batches, t, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
			if (tb)
				batch_add(tb, cset, cgid, flags, regs, nr, ret, cat == CAT_CREDENTIALS);
			else /* no memory for the thread's batch */
				emit_syscall(cgid, regs, nr, ret, ALCUB3_KIND_SYSCALL, 0);
		}
	}
	if (!cat)
		return 0;
	/*
	 * An ia32 syscall (int 0x80 or a 32-bit task) has other numbers and
	 * argument registers: the decoders below do not apply. The generic record
	 * above still went out, with the ia32 number and di/si/dx.
	 */
	t = bpf_get_current_task_btf();
	if (t->thread_info.status & TS_COMPAT)
		return 0;

	a.cgid = cgid;
	a.ret = ret;
	a.a[0] = regs->di;
	a.a[1] = regs->si;
	a.a[2] = regs->dx;
	a.a[3] = regs->r10;
	a.a[4] = regs->r8;
	a.a[5] = regs->r9;
	a.nr = nr;
	a._pad = 0;
	switch (cat) {
	case CAT_WRITE:
		return handle_write(&a);
	case CAT_NAMESPACE:
		return handle_namespace(&a);
	case CAT_CREDENTIALS:
		return handle_credentials(&a);
	case CAT_NETWORK:
		return handle_network(&a);
	default:
		return handle_file(&a);
	}
}

/* Attached only while some sandbox asks for split (entry + exit) syscall records. */
SEC("tp_btf/sys_enter")
int BPF_PROG(alcub3_sys_enter, struct pt_regs *regs, long id)
{
	struct alcub3_sandbox_config *cfg;
	__u64 cgid = current_sandbox(&cfg);

	if (!cgid || !(cfg->flags & ALCUB3_SANDBOX_SYSCALL_ENTRY))
		return 0;
	batch_flush_current(); /* staged before entry mode was turned on */
	emit_syscall(cgid, regs, (__u32)id, 0, ALCUB3_KIND_SYSCALL_ENTER, ALCUB3_FLAG_ENTRY);
	return 0;
}

/* Runs in the parent, so the parent's cgroup decides (the child inherits it). */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(alcub3_fork, struct task_struct *parent, struct task_struct *child)
{
	struct alcub3_sandbox_config *cfg;
	struct alcub3_fork_event *e;
	__u64 cgid = current_sandbox(&cfg);
	__u32 pid, tgid;

	if (!cgid)
		return 0;
	e = RESERVE_EVENT(struct alcub3_fork_event);
	if (!e)
		return 0;
	pid = child->pid;
	tgid = child->tgid;
	fill_hdr(&e->hdr, cgid, ALCUB3_KIND_FORK, pid != tgid ? ALCUB3_FLAG_THREAD : 0);
	e->child_pid = tgid;
	e->child_tid = pid;
	bpf_probe_read_kernel(e->comm, sizeof(e->comm), child->comm);
	SUBMIT(e);
	return 0;
}

/* Runs in the task after the new image is in place: comm and mm are the new ones. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(alcub3_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct alcub3_sandbox_config *cfg;
	struct alcub3_exec_event *e;
	__u64 cgid, start, end, len;
	const char *fname;
	__u16 flags = 0;
	long n;
	char c = 0;

	/*
	 * Staged syscalls go out under the old image, even if the sandbox was
	 * unwatched since: a batch header (pid, tid, uid) must not cover
	 * syscalls from both sides of an exec.
	 */
	batch_flush_current();
	cgid = current_sandbox(&cfg);
	if (!cgid)
		return 0;
	e = RESERVE(events, struct alcub3_exec_event, 0);
	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	fill_hdr(&e->hdr, cgid, ALCUB3_KIND_EXEC, 0);
	e->ppid = BPF_CORE_READ(p, real_parent, tgid);
	e->old_tid = old_pid;
	e->euid = BPF_CORE_READ(p, cred, euid.val);
	bpf_get_current_comm(e->comm, sizeof(e->comm));

	fname = BPF_CORE_READ(bprm, filename);
	n = bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), fname);
	if (n == sizeof(e->filename) &&
	    !bpf_probe_read_kernel(&c, 1, fname + sizeof(e->filename) - 1) && c)
		flags |= ALCUB3_FLAG_TRUNCATED;

	/* The argument strings sit back to back, NUL separated, on the new stack. */
	start = BPF_CORE_READ(p, mm, arg_start);
	end = BPF_CORE_READ(p, mm, arg_end);
	len = end > start ? end - start : 0;
	if (len > ALCUB3_ARGV_LEN) {
		len = ALCUB3_ARGV_LEN;
		flags |= ALCUB3_FLAG_TRUNCATED;
	}
	if (len && !bpf_probe_read_user(e->argv, len, (const void *)start))
		e->argv_len = len;
	e->hdr.flags = flags;
	SUBMIT(e);
	return 0;
}

/* Every exiting task, threads included; runs in the exiting task itself. */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(alcub3_exit, struct task_struct *p)
{
	struct alcub3_sandbox_config *cfg;
	struct alcub3_exit_event *e;
	__u64 cgid;

	/* Whatever the thread staged goes out, even if it left the sandbox since. */
	batch_flush_current();
	cgid = current_sandbox(&cfg);
	if (!cgid)
		return 0;
	e = RESERVE(events, struct alcub3_exit_event, 0);
	if (!e)
		return 0;
	fill_hdr(&e->hdr, cgid, ALCUB3_KIND_EXIT, p->pid != p->tgid ? ALCUB3_FLAG_THREAD : 0);
	e->ppid = BPF_CORE_READ(p, real_parent, tgid);
	e->exit_code = p->exit_code; /* wait status, (code << 8) | signal */
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	SUBMIT(e);
	return 0;
}

/*
 * A thread being switched out sends its staged syscalls: one that blocks or
 * goes idle would otherwise hold them until its next syscall, exec or exit.
 * Runs at every context switch of the machine; a thread that never staged
 * anything pays one task storage lookup that finds nothing. Nothing else
 * depends on this program: leaving it detached trades that cost for the wait.
 */
SEC("tp_btf/sched_switch")
int BPF_PROG(alcub3_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	batch_flush_task(prev);
	return 0;
}
