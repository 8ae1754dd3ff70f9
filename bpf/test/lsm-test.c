// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * lsm-test: runs bpf/lsm.bpf.c for real, inside a QEMU guest whose kernel has
 * BPF-LSM (scripts/test-lsm.sh builds the guest and boots it).
 *
 * Started by the guest's /init. It mounts what libbpf and the test need,
 * makes a sandbox cgroup under alcub3's parent cgroup, loads and attaches the
 * object, fills its maps, then for each hooked action forks one child that
 * moves itself into the sandbox and tries the action, and one child that
 * tries it outside. Where the policy refuses, the sandboxed try must get
 * EPERM and leave a record on lsm_events; where it allows (an allow-listed
 * exec, the sandbox's own child), neither. The outside try is never refused.
 * One line per check, then "LSM RESULT PASS" or "LSM RESULT FAIL".
 *
 * Static (libbpf.a, libelf.a, libz.a): the guest has no libraries.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <linux/bpf.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include "alcub3_lsm.h"

#define CGROUP_ROOT "/sys/fs/cgroup"
/* alcub3's parent cgroup one level down, as under systemd: the level reaches the programs through .rodata. */
#define PARENT_LEVEL 2
#define PARENT_CG CGROUP_ROOT "/system.slice/alcub3"
#define SANDBOX_CG PARENT_CG "/sandbox"
#define SELF "/lsm-test"
#define DEEP_LEVELS ALCUB3_LSM_DIR_DEPTH
#define NOT_LISTED "/bin/busybox"
#define MODPROBE_LOG "/tmp/modprobe.log"
#define AF_UNLOADED 12 /* AF_DECnet: no longer in the kernel, so socket() asks for "net-pf-12" */

/* A child's exit status carries the errno of its action, 0 for success, or this: */
#define BROKEN 255 /* the child could not set up its try, or died */

static pid_t bystander; /* a process outside the sandbox, the target of ptrace and kill */

static void die(const char *what)
{
	printf("\nlsm-test: %s: %s\n", what, strerror(errno));
	printf("LSM RESULT FAIL\n");
	fflush(stdout);
	exit(1);
}

/* ------------------------------------------------------------ guest set-up */

static void mount_or_die(const char *type, const char *target)
{
	mkdir(target, 0755);
	if (mount(type, target, type, 0, NULL) && errno != EBUSY)
		die(target);
}

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
		die(path);
	close(fd);
}

/* The kernel's encoding of a superblock's device (s_dev), which the programs compare. */
static __u32 kernel_dev(dev_t d)
{
	return (major(d) << 20) | minor(d);
}

/* /deep/d/.../d/file, with dirs directories above the file. */
static void deep_file(char *buf, int dirs)
{
	char *p = buf;

	for (int i = 1; i <= dirs; i++)
		p = stpcpy(p, i == 1 ? "/deep" : "/d");
	strcpy(p, "/file");
}

/*
 * A file at each level of /deep, DEEP_LEVELS directories in all. The
 * programs walk ALCUB3_LSM_DIR_DEPTH dentries from the file up, the root's
 * included: a file below ALCUB3_LSM_DIR_DEPTH - 2 directories is the deepest
 * whose walk reaches the root.
 */
static void make_deep_files(void)
{
	char path[8 + DEEP_LEVELS * 2 + 8];

	for (int i = 1; i <= DEEP_LEVELS; i++) {
		deep_file(path, i);
		*strrchr(path, '/') = '\0';
		mkdir(path, 0755);
		strcat(path, "/file");
		write_file(path, "deep\n");
	}
}

static struct alcub3_lsm_inode inode_key(const char *path, __u64 cgid)
{
	struct alcub3_lsm_inode k = { .cgid = cgid };
	struct stat st;

	if (stat(path, &st))
		die(path);
	k.ino = st.st_ino;
	k.dev = kernel_dev(st.st_dev);
	return k;
}

/* --------------------------------------------------------------- BPF side */

static int libbpf_log(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	if (level == LIBBPF_DEBUG)
		return 0;
	return vprintf(fmt, ap);
}

/* Sets a `const volatile` global in .rodata, found by name in the object's BTF. */
static void set_rodata_u32(struct bpf_object *obj, const char *name, __u32 value)
{
	struct bpf_map *map = bpf_object__find_map_by_name(obj, ".rodata");
	const struct btf *btf = bpf_object__btf(obj);
	const struct btf_var_secinfo *vs;
	const struct btf_type *sec;
	const void *init;
	char *data;
	size_t size;
	int id, i;

	if (!map || !btf)
		die(".rodata");
	id = btf__find_by_name_kind(btf, ".rodata", BTF_KIND_DATASEC);
	if (id < 0)
		die(".rodata BTF");
	sec = btf__type_by_id(btf, id);
	init = bpf_map__initial_value(map, &size);
	data = malloc(size);
	if (!init || !data)
		die(".rodata value");
	memcpy(data, init, size);
	for (i = 0, vs = btf_var_secinfos(sec); i < btf_vlen(sec); i++, vs++) {
		const struct btf_type *var = btf__type_by_id(btf, vs->type);

		if (strcmp(btf__name_by_offset(btf, var->name_off), name) == 0) {
			memcpy(data + vs->offset, &value, sizeof(value));
			if (bpf_map__set_initial_value(map, data, size))
				die("bpf_map__set_initial_value");
			free(data);
			return;
		}
	}
	errno = ENOENT;
	die(name);
}

static int map_fd(struct bpf_object *obj, const char *name)
{
	struct bpf_map *m = bpf_object__find_map_by_name(obj, name);

	if (!m)
		die(name);
	return bpf_map__fd(m);
}

static void map_put(int fd, const void *key, const void *value)
{
	if (bpf_map_update_elem(fd, key, value, BPF_ANY))
		die("bpf_map_update_elem");
}

static void net_rule(int fd, __u64 cgid, const char *addr, int bits, __u8 deny)
{
	struct alcub3_lsm_net_key k = { 0 };
	struct in_addr a4;

	memcpy(k.data, &cgid, 8);
	if (inet_pton(AF_INET, addr, &a4) == 1) {
		k.data[8 + 10] = 0xff;
		k.data[8 + 11] = 0xff;
		memcpy(k.data + 8 + 12, &a4, 4);
		k.prefixlen = 64 + 96 + bits;
	} else if (inet_pton(AF_INET6, addr, k.data + 8) == 1) {
		k.prefixlen = 64 + bits;
	} else {
		errno = EINVAL;
		die(addr);
	}
	map_put(fd, &k, &deny);
}

/* Refusal records seen so far. */
#define MAX_RECORDS 256
static struct alcub3_lsm_event records[MAX_RECORDS];
static int nrecords;

static int on_record(void *ctx, void *data, size_t size)
{
	(void)ctx;
	if (size >= sizeof(struct alcub3_lsm_event) && nrecords < MAX_RECORDS)
		memcpy(&records[nrecords++], data, sizeof(struct alcub3_lsm_event));
	return 0;
}

static const struct alcub3_lsm_event *find_record(__u32 hook, pid_t pid)
{
	for (int i = 0; i < nrecords; i++)
		if (records[i].hook == hook && records[i].hdr.pid == (__u32)pid)
			return &records[i];
	return NULL;
}

/* ---------------------------------------------------------------- actions */

/* Each returns 0 when the action succeeded, else its errno. */

static int try_open(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return errno;
	close(fd);
	return 0;
}

static int open_protected_file(void) { return try_open("/secret"); }
static int open_in_protected_dir(void) { return try_open("/vault/sub/key"); }

static int open_at_depth(int dirs)
{
	char path[8 + DEEP_LEVELS * 2 + 8];

	deep_file(path, dirs);
	return try_open(path);
}

static int open_deepest_walked(void) { return open_at_depth(ALCUB3_LSM_DIR_DEPTH - 2); }
static int open_too_deep(void) { return open_at_depth(ALCUB3_LSM_DIR_DEPTH - 1); }

/* Runs a program that exits 0 at once: success is its exit status. */
static int exec_path(const char *path, const char *arg)
{
	char *argv[] = { (char *)path, (char *)arg, NULL };
	char *envp[] = { NULL };

	execve(path, argv, envp);
	return errno;
}

static int exec_not_listed(void) { return exec_path(NOT_LISTED, "true"); }
static int exec_listed(void) { return exec_path(SELF, "--true"); }

/* A copy of this (allow-listed) program in a memfd: only its being fileless differs. */
static int exec_memfd(void)
{
	char *argv[] = { "payload", "--true", NULL };
	char *envp[] = { NULL };
	char buf[65536];
	int in = open(SELF, O_RDONLY | O_CLOEXEC);
	int fd = memfd_create("payload", MFD_CLOEXEC);
	ssize_t n;

	if (in < 0 || fd < 0)
		return BROKEN;
	while ((n = read(in, buf, sizeof(buf))) > 0)
		if (write(fd, buf, n) != n)
			return BROKEN;
	fexecve(fd, argv, envp);
	return errno;
}

static int try_connect(int family, const char *addr)
{
	struct sockaddr_storage ss = { 0 };
	socklen_t len;
	int fd, r;

	if (family == AF_INET) {
		struct sockaddr_in *s = (struct sockaddr_in *)&ss;

		s->sin_family = AF_INET;
		s->sin_port = htons(80);
		inet_pton(AF_INET, addr, &s->sin_addr);
		len = sizeof(*s);
	} else {
		struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;

		s->sin6_family = AF_INET6;
		s->sin6_port = htons(80);
		inet_pton(AF_INET6, addr, &s->sin6_addr);
		len = sizeof(*s);
	}
	fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return BROKEN;
	r = connect(fd, (struct sockaddr *)&ss, len) ? errno : 0;
	close(fd);
	return r;
}

static int connect_metadata4(void) { return try_connect(AF_INET, "169.254.169.254"); }
static int connect_metadata6(void) { return try_connect(AF_INET6, "fd00:ec2::254"); }
static int connect_hole(void) { return try_connect(AF_INET, "169.254.1.1"); }

/* PTRACE_SEIZE checks access like PTRACE_ATTACH without stopping the target. */
static int try_seize(pid_t pid)
{
	return ptrace(PTRACE_SEIZE, pid, 0, 0) ? errno : 0;
}

static int ptrace_outsider(void) { return try_seize(bystander); }

static pid_t spawn_sleeper(void)
{
	pid_t pid = fork();

	if (pid == 0) {
		pause();
		_exit(0);
	}
	return pid;
}

static int ptrace_own_child(void)
{
	pid_t pid = spawn_sleeper();
	int r;

	if (pid < 0)
		return BROKEN;
	r = try_seize(pid);
	kill(pid, SIGKILL);
	return r;
}

static int mount_tmpfs(void)
{
	if (mount("none", "/mnt", "tmpfs", 0, NULL))
		return errno;
	umount("/mnt");
	return 0;
}

static int move_mount_tmpfs(void)
{
	int fs = fsopen("tmpfs", FSOPEN_CLOEXEC), m, r;

	if (fs < 0)
		return errno;
	if (fsconfig(fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0))
		return errno;
	m = fsmount(fs, FSMOUNT_CLOEXEC, 0);
	if (m < 0)
		return errno;
	r = move_mount(m, "", AT_FDCWD, "/mnt", MOVE_MOUNT_F_EMPTY_PATH) ? errno : 0;
	if (r == 0)
		umount("/mnt");
	return r;
}

/* Remounts /mnt-reconf (a tmpfs mounted at set-up) read-only through the new mount API. */
static int reconfigure_mount(void)
{
	int fd = fspick(AT_FDCWD, "/mnt-reconf", FSPICK_CLOEXEC), r;

	if (fd < 0)
		return errno;
	r = fsconfig(fd, FSCONFIG_SET_FLAG, "ro", NULL, 0) || fsconfig(fd, FSCONFIG_CMD_RECONFIGURE, NULL, NULL, 0)
		? errno : 0;
	close(fd);
	return r;
}

/* Unmounts /mnt-umount (a tmpfs mounted at set-up); a sandboxed try leaves it for the outside one. */
static int unmount(void)
{
	return umount("/mnt-umount") ? errno : 0;
}

static int pivot(void)
{
	return syscall(SYS_pivot_root, "/pivot", "/pivot/old") ? errno : 0;
}

/* Any regular file: the LSM decides before the module loader sees that it is no module. */
static int load_module_file(void)
{
	int fd = open(SELF, O_RDONLY | O_CLOEXEC), r;

	if (fd < 0)
		return BROKEN;
	r = syscall(SYS_finit_module, fd, "", 0) ? errno : 0;
	close(fd);
	return r;
}

static int load_module_data(void)
{
	static char image[4096] = "not a module";

	return syscall(SYS_init_module, image, sizeof(image), "") ? errno : 0;
}

/*
 * socket() drops request_module's result, so the action's own answer is the
 * same either way; what tells is whether the kernel ran its modprobe helper
 * (the guest's /sbin/modprobe appends its arguments to MODPROBE_LOG).
 */
static int request_module(void)
{
	int fd;

	unlink(MODPROBE_LOG);
	fd = socket(AF_UNLOADED, SOCK_STREAM, 0);
	if (fd >= 0)
		close(fd);
	return access(MODPROBE_LOG, F_OK) == 0 ? 0 : EPERM;
}

static int bpf_map_create_call(void)
{
	int fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, "probe", 4, 4, 1, NULL);

	if (fd < 0)
		return -fd;
	close(fd);
	return 0;
}

static int kill_outsider(void) { return kill(bystander, 0) ? errno : 0; }

static int kill_own_child(void)
{
	pid_t pid = spawn_sleeper();

	if (pid < 0)
		return BROKEN;
	if (kill(pid, SIGKILL))
		return errno;
	waitpid(pid, NULL, 0);
	return 0;
}

/* ------------------------------------------------------------------ checks */

struct check {
	const char *name;
	__u32 hook;
	int (*action)(void);
	int refused_inside; /* 1: the sandbox must get EPERM and a record; 0: it must not be refused */
	__u32 reason;       /* the record's reason, when refused */
	int succeeds;       /* the action can succeed here: success is required where not refused */
	const char *note;
};

static const struct check checks[] = {
	{ "file_open", ALCUB3_LSM_HOOK_FILE_OPEN, open_protected_file, 1, 0, 1, "a protected inode" },
	{ "file_open:subtree", ALCUB3_LSM_HOOK_FILE_OPEN, open_in_protected_dir, 1, 0, 1,
	  "a file two levels beneath a protected directory" },
	{ "file_open:depth-30", ALCUB3_LSM_HOOK_FILE_OPEN, open_deepest_walked, 0, 0, 1,
	  "a file below 30 directories, the deepest the walk covers" },
	{ "file_open:depth-31", ALCUB3_LSM_HOOK_FILE_OPEN, open_too_deep, 1, ALCUB3_LSM_REASON_TOO_DEEP, 1,
	  "a file below 31 directories, beyond the walk: fail closed" },
	{ "bprm_check_security", ALCUB3_LSM_HOOK_BPRM_CHECK, exec_not_listed, 1, ALCUB3_LSM_REASON_NOT_ALLOWED, 1,
	  "busybox, not allow-listed" },
	{ "bprm_check_security:memfd", ALCUB3_LSM_HOOK_BPRM_CHECK, exec_memfd, 1, ALCUB3_LSM_REASON_FILELESS, 1,
	  "fexecve of a memfd copy of this program" },
	{ "bprm_check_security:listed", ALCUB3_LSM_HOOK_BPRM_CHECK, exec_listed, 0, 0, 1, "this program, allow-listed" },
	{ "socket_connect", ALCUB3_LSM_HOOK_SOCKET_CONNECT, connect_metadata4, 1, 0, 0,
	  "169.254.169.254:80; the guest has no network, so outside gets ENETUNREACH" },
	{ "socket_connect:ipv6", ALCUB3_LSM_HOOK_SOCKET_CONNECT, connect_metadata6, 1, 0, 0, "[fd00:ec2::254]:80" },
	{ "socket_connect:hole", ALCUB3_LSM_HOOK_SOCKET_CONNECT, connect_hole, 0, 0, 0,
	  "169.254.1.1:80, allowed by the sandbox's own /32 inside the refused 169.254.0.0/16" },
	{ "ptrace_access_check", ALCUB3_LSM_HOOK_PTRACE, ptrace_outsider, 1, 0, 1, "PTRACE_SEIZE of a process outside" },
	{ "ptrace_access_check:same-sandbox", ALCUB3_LSM_HOOK_PTRACE, ptrace_own_child, 0, 0, 1,
	  "PTRACE_SEIZE of its own child" },
	{ "sb_mount", ALCUB3_LSM_HOOK_SB_MOUNT, mount_tmpfs, 1, 0, 1, "mount -t tmpfs" },
	{ "move_mount", ALCUB3_LSM_HOOK_MOVE_MOUNT, move_mount_tmpfs, 1, 0, 1, "fsopen/fsmount/move_mount of a tmpfs" },
	{ "sb_remount", ALCUB3_LSM_HOOK_SB_REMOUNT, reconfigure_mount, 1, 0, 1,
	  "fspick + fsconfig(FSCONFIG_CMD_RECONFIGURE) of a tmpfs, read-only" },
	{ "sb_umount", ALCUB3_LSM_HOOK_SB_UMOUNT, unmount, 1, 0, 1, "umount of a tmpfs mounted at set-up" },
	{ "sb_pivotroot", ALCUB3_LSM_HOOK_SB_PIVOTROOT, pivot, 1, 0, 0,
	  "pivot_root; outside, the initramfs cannot be pivoted (EINVAL)" },
	{ "kernel_read_file", ALCUB3_LSM_HOOK_KERNEL_READ_FILE, load_module_file, 1, 0, 0,
	  "finit_module; outside, the loader rejects the file (ENOEXEC)" },
	{ "kernel_load_data", ALCUB3_LSM_HOOK_KERNEL_LOAD_DATA, load_module_data, 1, 0, 0,
	  "init_module; outside, the loader rejects the image (ENOEXEC)" },
	{ "kernel_module_request", ALCUB3_LSM_HOOK_MODULE_REQUEST, request_module, 1, 0, 1,
	  "socket(AF_DECnet); allowed = the kernel ran modprobe for net-pf-12" },
	{ "bpf", ALCUB3_LSM_HOOK_BPF, bpf_map_create_call, 1, 0, 1, "BPF_MAP_CREATE" },
	{ "task_kill", ALCUB3_LSM_HOOK_TASK_KILL, kill_outsider, 1, 0, 1, "kill(outside pid, 0)" },
	{ "task_kill:same-sandbox", ALCUB3_LSM_HOOK_TASK_KILL, kill_own_child, 0, 0, 1, "SIGKILL to its own child" },
};

/* Runs the action in a new child, in the sandbox or not; returns the child's pid and its result. */
static pid_t run(const struct check *c, int in_sandbox, int *result)
{
	int status;
	pid_t pid = fork();

	if (pid < 0)
		die("fork");
	if (pid == 0) {
		alarm(20);
		if (in_sandbox) {
			int fd = open(SANDBOX_CG "/cgroup.procs", O_WRONLY | O_CLOEXEC);

			if (fd < 0 || write(fd, "0", 1) != 1)
				_exit(BROKEN);
			close(fd);
		}
		_exit(c->action());
	}
	if (waitpid(pid, &status, 0) != pid)
		die("waitpid");
	*result = WIFEXITED(status) ? WEXITSTATUS(status) : BROKEN;
	return pid;
}

static const char *errname(int e)
{
	const char *name = e == BROKEN ? "set-up failed or the child died" : strerrorname_np(e);

	return name ? name : "unknown errno";
}

/* "refused EPERM", "allowed" or "allowed (ENETUNREACH)". */
static const char *outcome(int r, char *buf, size_t n)
{
	if (r == EPERM)
		snprintf(buf, n, "refused EPERM");
	else if (r == 0)
		snprintf(buf, n, "allowed");
	else
		snprintf(buf, n, "allowed (%s)", errname(r));
	return buf;
}

static int run_check(const struct check *c, struct ring_buffer *rb, __u64 cgid)
{
	char in_s[48], out_s[48];
	const struct alcub3_lsm_event *rec, *out_rec;
	int in_r, out_r, ok;
	pid_t in_pid, out_pid;

	in_pid = run(c, 1, &in_r);
	out_pid = run(c, 0, &out_r);
	ring_buffer__consume(rb);
	rec = find_record(c->hook, in_pid);
	out_rec = find_record(c->hook, out_pid);

	if (c->refused_inside)
		ok = in_r == EPERM && rec && rec->hdr.sandbox_cgid == cgid && rec->reason == c->reason;
	else
		ok = in_r != EPERM && in_r != BROKEN && !rec && (!c->succeeds || in_r == 0);
	ok = ok && out_r != EPERM && out_r != BROKEN && !out_rec && (!c->succeeds || out_r == 0);

	printf("LSM %s sandbox=%s outside=%s record=%s%s  # %s\n", c->name, outcome(in_r, in_s, sizeof(in_s)),
	       outcome(out_r, out_s, sizeof(out_s)), rec ? "yes" : "no", ok ? "" : " FAIL", c->note);
	if (rec)
		printf("    record: hook=%u reason=%u target=%llu arg=%llu dev=%u name=\"%s\"\n", rec->hook,
		       rec->reason, (unsigned long long)rec->target, (unsigned long long)rec->arg, rec->dev,
		       rec->name);
	fflush(stdout);
	return ok;
}

/* Every record was counted as a refusal, and none was dropped. */
static int counters_agree(int fd)
{
	int ncpus = libbpf_num_possible_cpus();
	struct alcub3_lsm_counters *per_cpu = calloc(ncpus > 0 ? ncpus : 1, sizeof(*per_cpu));
	unsigned long long refused = 0, dropped = 0;
	__u32 zero = 0;
	int ok;

	if (ncpus <= 0 || !per_cpu || bpf_map_lookup_elem(fd, &zero, per_cpu))
		die("lsm_counters");
	for (int i = 0; i < ncpus; i++) {
		refused += per_cpu[i].refused;
		dropped += per_cpu[i].dropped;
	}
	free(per_cpu);
	ok = dropped == 0 && refused >= (unsigned long long)nrecords;
	printf("LSM counters refused=%llu dropped=%llu records=%d%s\n", refused, dropped, nrecords, ok ? "" : " FAIL");
	return ok;
}

/* ------------------------------------------------------------------- main */

int main(int argc, char **argv)
{
	struct alcub3_lsm_sandbox sb = { .flags = ALCUB3_LSM_ALL };
	struct alcub3_lsm_inode key;
	struct bpf_program *prog;
	struct bpf_object *obj;
	struct ring_buffer *rb;
	struct stat st;
	__u8 one = 1;
	__u64 cgid;
	int failed = 0, nprogs = 0, err, fd;

	if (argc > 1 && strcmp(argv[1], "--true") == 0)
		return 0;
	setvbuf(stdout, NULL, _IOLBF, 0);

	mount_or_die("proc", "/proc");
	mount_or_die("sysfs", "/sys");
	mount_or_die("bpf", "/sys/fs/bpf");
	mount_or_die("cgroup2", CGROUP_ROOT);
	mkdir("/tmp", 01777);
	mkdir("/mnt", 0755);
	mkdir("/vault", 0700);
	mkdir("/vault/sub", 0700);
	write_file("/secret", "secret\n");
	write_file("/vault/sub/key", "key\n");
	make_deep_files();
	mkdir("/mnt-reconf", 0755);
	if (mount("none", "/mnt-reconf", "tmpfs", 0, NULL))
		die("/mnt-reconf");
	mkdir("/mnt-umount", 0755);
	if (mount("none", "/mnt-umount", "tmpfs", 0, NULL))
		die("/mnt-umount");
	mkdir("/pivot", 0755);
	mkdir("/pivot/old", 0755);
	if (mkdir(CGROUP_ROOT "/system.slice", 0755) && errno != EEXIST)
		die(CGROUP_ROOT "/system.slice");
	if (mkdir(PARENT_CG, 0755) && errno != EEXIST)
		die(PARENT_CG);
	if (mkdir(SANDBOX_CG, 0755) && errno != EEXIST)
		die(SANDBOX_CG);
	/* A cgroup v2 id is the inode number of its directory. */
	if (stat(SANDBOX_CG, &st))
		die(SANDBOX_CG);
	cgid = st.st_ino;

	libbpf_set_print(libbpf_log);
	obj = bpf_object__open_file(argc > 1 ? argv[1] : "/lsm.bpf.o", NULL);
	if (!obj)
		die("bpf_object__open_file");
	set_rodata_u32(obj, "alcub3_root_level", PARENT_LEVEL);
	err = bpf_object__load(obj);
	if (err) {
		errno = -err;
		die("bpf_object__load");
	}
	bpf_object__for_each_program(prog, obj) {
		if (!bpf_program__attach(prog)) {
			printf("lsm-test: attach %s: %s\n", bpf_program__name(prog), strerror(errno));
			failed = 1;
		}
		nprogs++;
	}
	/* On a line of its own: the firmware's last console line may lack its newline. */
	printf("\nlsm-test: %d programs loaded and attached, sandbox cgroup id %llu\n", nprogs,
	       (unsigned long long)cgid);

	map_put(map_fd(obj, "lsm_sandboxes"), &cgid, &sb);
	fd = map_fd(obj, "lsm_files");
	key = inode_key("/secret", cgid); /* this sandbox only */
	map_put(fd, &key, &one);
	key = inode_key("/vault", 0); /* every sandbox */
	map_put(fd, &key, &one);
	key = inode_key(SELF, cgid);
	map_put(map_fd(obj, "lsm_exec"), &key, &one);
	fd = map_fd(obj, "lsm_nets");
	net_rule(fd, 0, "169.254.0.0", 16, 1);
	net_rule(fd, 0, "fd00:ec2::254", 128, 1);
	net_rule(fd, cgid, "169.254.1.1", 32, 0);
	rb = ring_buffer__new(map_fd(obj, "lsm_events"), on_record, NULL, NULL);
	if (!rb)
		die("ring_buffer__new");

	bystander = spawn_sleeper();
	if (bystander < 0)
		die("fork");
	for (size_t i = 0; i < sizeof(checks) / sizeof(checks[0]); i++)
		if (!run_check(&checks[i], rb, cgid))
			failed = 1;
	kill(bystander, SIGKILL);
	waitpid(bystander, NULL, 0);
	if (!counters_agree(map_fd(obj, "lsm_counters")))
		failed = 1;

	printf("LSM RESULT %s\n", failed ? "FAIL" : "PASS");
	ring_buffer__free(rb);
	bpf_object__close(obj);
	return failed;
}
