// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * alcub3-guest: the /init of a vm sandbox's guest (scripts/build-guest.sh
 * links it statically with libbpf.a, libelf.a and libz.a into the initramfs).
 *
 * As pid 1 it mounts what the telemetry needs, finds the virtio-serial port
 * named ALCUB3_GUEST_PORT_NAME, says HELLO, and receives from the host the
 * telemetry BPF object (the one embedded in alcub3, so host and guest run the
 * same programs) and the command to run. The command is not on the kernel
 * command line: that is limited to 2 KiB and would need quoting; the channel
 * carries any argv byte for byte.
 *
 * It loads the object with alcub3's parent cgroup (/sys/fs/cgroup/alcub3,
 * level 1) in .rodata, puts the agent's cgroup (/sys/fs/cgroup/alcub3/agent)
 * in the `sandboxes` map, execs the command in that cgroup, and forwards raw
 * ring buffer records, write-volume growth and the command's stdout/stderr as
 * frames (alcub3_guest.h) until the command exits. Then it kills what is left
 * in the cgroup, drains the rings, reports the exit status and powers off.
 * Any failure is an ERROR frame (and a console line), then power-off.
 */
#define _GNU_SOURCE
#include "alcub3-scan.h"
#include "alcub3-tpm.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include "alcub3_events.h"
#include "alcub3_guest.h"

#define CGROUP_ROOT "/sys/fs/cgroup"
#define PARENT_CGROUP CGROUP_ROOT "/alcub3"
#define AGENT_CGROUP PARENT_CGROUP "/agent"

static int port = -1;

/* Frames go out through one buffer, flushed when full and once per loop turn. */
static unsigned char out[1 << 18];
static size_t out_len;

static void write_all(int fd, const void *data, size_t len)
{
	const unsigned char *p = data;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return; /* the host is gone: nothing left to tell */
		p += n;
		len -= (size_t)n;
	}
}

static void flush_out(void)
{
	if (out_len > 0 && port >= 0)
		write_all(port, out, out_len);
	out_len = 0;
}

static void send_frame(__u32 type, const void *a, size_t alen, const void *b, size_t blen)
{
	struct alcub3_frame_header h = { .type = type, .length = (__u32)(alen + blen) };

	if (sizeof(h) + alen + blen > sizeof(out) - out_len)
		flush_out();
	if (sizeof(h) + alen + blen > sizeof(out)) {
		write_all(port, &h, sizeof(h));
		write_all(port, a, alen);
		write_all(port, b, blen);
		return;
	}
	memcpy(out + out_len, &h, sizeof(h));
	out_len += sizeof(h);
	if (alen) memcpy(out + out_len, a, alen);
	out_len += alen;
	if (blen) memcpy(out + out_len, b, blen);
	out_len += blen;
}

static void power_off(void)
{
	flush_out();
	sync();
	reboot(RB_POWER_OFF);
	_exit(1); /* pid 1 exiting panics; panic=-1 and -no-reboot end QEMU either way */
}

static void fail(const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n < 0) n = 0;
	if ((size_t)n >= sizeof(msg)) n = sizeof(msg) - 1;
	fprintf(stderr, "alcub3-guest: %s\n", msg);
	if (port >= 0)
		send_frame(ALCUB3_FRAME_ERROR, msg, (size_t)n, NULL, 0);
	power_off();
}

static __u64 boot_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_BOOTTIME, &ts);
	return (__u64)ts.tv_sec * 1000000000ull + (__u64)ts.tv_nsec;
}

static void mount_or_fail(const char *src, const char *target, const char *type, const char *data)
{
	/* Device nodes only where devtmpfs puts them. */
	unsigned long flags = MS_NOSUID | (strcmp(type, "devtmpfs") == 0 ? 0 : MS_NODEV);

	mkdir(target, 0755);
	if (mount(src, target, type, flags, data) != 0 && errno != EBUSY)
		fail("mount %s on %s: %s", type, target, strerror(errno));
}

/* Modules the kernel lacks built in, listed in order in `list` under /lib/modules:
 * "load" (virtio_mmio for microvm) always, "load-net" (virtio_net) for a guest with a network. */
static void load_modules(const char *list_name)
{
	char line[256], list_path[128];
	snprintf(list_path, sizeof(list_path), "/lib/modules/%s", list_name);
	FILE *list = fopen(list_path, "r");

	if (!list)
		return;
	while (fgets(line, sizeof(line), list)) {
		char path[300];
		int fd;

		line[strcspn(line, "\n")] = 0;
		if (!line[0])
			continue;
		snprintf(path, sizeof(path), "/lib/modules/%s", line);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST))
			fprintf(stderr, "alcub3-guest: module %s: %s\n", line, strerror(errno));
		if (fd >= 0)
			close(fd);
	}
	fclose(list);
}

static int interface_up(int s, const char *name)
{
	struct ifreq ifr = { 0 };

	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0)
		return -1;
	ifr.ifr_flags |= IFF_UP;
	return ioctl(s, SIOCSIFFLAGS, &ifr);
}

static void loopback_up(void)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (s < 0)
		return;
	interface_up(s, "lo");
	close(s);
}

/* Whether the kernel command line holds `word` (alcub3.net=user: the host gave a network). */
static int cmdline_has(const char *word)
{
	char line[2048] = { 0 };
	int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return 0;
	ssize_t n = read(fd, line, sizeof(line) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	line[strcspn(line, "\n")] = 0;
	for (char *w = strtok(line, " "); w; w = strtok(NULL, " "))
		if (strcmp(w, word) == 0)
			return 1;
	return 0;
}

static void set_address(int s, unsigned long request, const char *name, const char *address)
{
	struct ifreq ifr = { 0 };
	struct sockaddr_in *in = (struct sockaddr_in *)&ifr.ifr_addr;

	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	in->sin_family = AF_INET;
	inet_pton(AF_INET, address, &in->sin_addr);
	if (ioctl(s, request, &ifr) != 0)
		fail("configuring %s (%s): %s", name, address, strerror(errno));
}

/*
 * The guest's network when the host gave one (QEMU's user-mode network: the
 * host's side is QEMU's own sockets, which the sandbox cgroup's BPF programs
 * police like any sandboxed process's). eth0 gets QEMU's fixed addresses:
 * 10.0.2.15/24, the gateway 10.0.2.2 and the DNS forwarder 10.0.2.3.
 */
static void network_up(void)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct rtentry route = { 0 };
	struct sockaddr_in *gateway = (struct sockaddr_in *)&route.rt_gateway;

	load_modules("load-net");
	if (s < 0)
		fail("socket: %s", strerror(errno));
	/* virtio_net's probe ends within the module load; a moment more for udev-less naming is never needed, but allowed. */
	for (int i = 0; i < 100 && if_nametoindex("eth0") == 0; i++)
		usleep(10000);
	if (if_nametoindex("eth0") == 0)
		fail("the host gave a network device but the guest has no eth0");
	set_address(s, SIOCSIFADDR, "eth0", "10.0.2.15");
	set_address(s, SIOCSIFNETMASK, "eth0", "255.255.255.0");
	if (interface_up(s, "eth0") != 0)
		fail("bringing eth0 up: %s", strerror(errno));
	gateway->sin_family = AF_INET;
	inet_pton(AF_INET, "10.0.2.2", &gateway->sin_addr);
	((struct sockaddr_in *)&route.rt_dst)->sin_family = AF_INET;
	((struct sockaddr_in *)&route.rt_genmask)->sin_family = AF_INET;
	route.rt_flags = RTF_UP | RTF_GATEWAY;
	if (ioctl(s, SIOCADDRT, &route) != 0)
		fail("adding the default route: %s", strerror(errno));
	close(s);
	int resolv = open("/etc/resolv.conf", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (resolv >= 0) {
		dprintf(resolv, "nameserver 10.0.2.3\n");
		close(resolv);
	}
}

/* /dev/vportNpM of the port named ALCUB3_GUEST_PORT_NAME; probing may lag /init by a moment. */
static char port_problem[512] = "no such port under /sys/class/virtio-ports";

static int open_port(void)
{
	for (int tries = 0; tries < 500; tries++) {
		DIR *dir = opendir("/sys/class/virtio-ports");
		struct dirent *e;

		while (dir && (e = readdir(dir))) {
			char path[300], name[128] = { 0 };
			int fd;

			if (e->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", e->d_name);
			fd = open(path, O_RDONLY | O_CLOEXEC);
			if (fd < 0)
				continue;
			if (read(fd, name, sizeof(name) - 1) < 0)
				name[0] = 0;
			close(fd);
			name[strcspn(name, "\n")] = 0;
			if (strcmp(name, ALCUB3_GUEST_PORT_NAME) == 0) {
				snprintf(path, sizeof(path), "/dev/%s", e->d_name);
				fd = open(path, O_RDWR | O_CLOEXEC);
				if (fd < 0)
					snprintf(port_problem, sizeof(port_problem), "open %s: %s", path, strerror(errno));
				if (fd >= 0) {
					closedir(dir);
					return fd;
				}
			}
		}
		if (dir)
			closedir(dir);
		usleep(10000);
	}
	return -1;
}

static void read_exact(void *buf, size_t len)
{
	unsigned char *p = buf;
	while (len > 0) {
		ssize_t n = read(port, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			fail("the host closed the channel");
		p += n;
		len -= (size_t)n;
	}
}

/* The next host frame, which must be of `type`; its payload is malloc'ed. */
/* The next frame, whatever its type. */
static unsigned char *receive_any(__u32 *type, __u32 *length)
{
	struct alcub3_frame_header h;
	unsigned char *data;

	read_exact(&h, sizeof(h));
	if (h.length > 64u << 20)
		fail("a %u-byte frame from the host", h.length);
	data = malloc(h.length + 1);
	if (!data)
		fail("out of memory for a %u-byte frame", h.length);
	read_exact(data, h.length);
	data[h.length] = 0;
	*type = h.type;
	*length = h.length;
	return data;
}

/* MEASURE: extends the three digests into PCR 9 and answers with the TPM's
 * quote of it over the host's nonce (the host trusts the signature, not us). */
static void measure(const unsigned char *payload, __u32 length)
{
	struct alcub3_guest_measure m;
	char why[256];
	unsigned char attest[ALCUB3_GUEST_QUOTE_MAX], signature[ALCUB3_GUEST_QUOTE_MAX];
	size_t attest_len, signature_len;

	if (length != sizeof(m))
		fail("MEASURE frame of %u bytes, not %zu", length, sizeof(m));
	memcpy(&m, payload, sizeof(m));
	int tpm = alcub3_tpm_open(why, sizeof(why));
	if (tpm < 0)
		fail("measured boot: %s", why);
	for (int i = 0; i < 3; i++)
		if (alcub3_tpm_extend(tpm, ALCUB3_TPM_PCR, m.digests[i], why, sizeof(why)) < 0)
			fail("measured boot: %s", why);
	if (alcub3_tpm_quote(tpm, ALCUB3_TPM_PCR, m.nonce, attest, &attest_len, signature, &signature_len,
			     sizeof(attest), why, sizeof(why)) < 0)
		fail("measured boot: %s", why);
	close(tpm);
	if (sizeof(struct alcub3_guest_quote) + attest_len + signature_len > ALCUB3_GUEST_QUOTE_MAX)
		fail("measured boot: a quote of %zu bytes", attest_len + signature_len);
	struct alcub3_guest_quote q = { .attest_size = (__u32)attest_len, .signature_size = (__u32)signature_len };
	unsigned char body[ALCUB3_GUEST_QUOTE_MAX];
	memcpy(body, attest, attest_len);
	memcpy(body + attest_len, signature, signature_len);
	send_frame(ALCUB3_FRAME_QUOTE, &q, sizeof(q), body, attest_len + signature_len);
	flush_out();
}

static unsigned char *receive(__u32 type, __u32 *length)
{
	__u32 got;
	unsigned char *data = receive_any(&got, length);

	if (got != type)
		fail("expected frame %u from the host, got %u (%u bytes)", type, got, *length);
	return data;
}

/* Sets a `const volatile` global in .rodata, found by name in the object's BTF (as BPFObject.setReadOnlyGlobal). */
static void set_rodata(struct bpf_object *obj, const char *name, const void *value, size_t size)
{
	struct bpf_map *map = bpf_object__find_map_by_name(obj, ".rodata");
	const struct btf *btf = bpf_object__btf(obj);
	const struct btf_var_secinfo *vs;
	const struct btf_type *sec;
	size_t total;
	const void *init;
	int id;

	if (!map || !btf || (id = btf__find_by_name_kind(btf, ".rodata", BTF_KIND_DATASEC)) < 0)
		fail("no .rodata in the telemetry object");
	sec = btf__type_by_id(btf, id);
	init = bpf_map__initial_value(map, &total);
	if (!init)
		fail("no .rodata value");
	vs = btf_var_secinfos(sec);
	for (int i = 0; i < btf_vlen(sec); i++, vs++) {
		const struct btf_type *var = btf__type_by_id(btf, vs->type);
		if (strcmp(btf__name_by_offset(btf, var->name_off), name) == 0 && vs->size == size) {
			unsigned char copy[total];
			memcpy(copy, init, total);
			memcpy(copy + vs->offset, value, size);
			if (bpf_map__set_initial_value(map, copy, total))
				fail("bpf_map__set_initial_value %s", name);
			return;
		}
	}
	fail("no global %s in .rodata", name);
}

static __u64 inode_of(const char *path)
{
	struct stat st;
	if (stat(path, &st) != 0)
		fail("stat %s: %s", path, strerror(errno));
	return st.st_ino;
}

static int ring_record(void *ctx, void *data, size_t size)
{
	(void)ctx;
	send_frame(ALCUB3_FRAME_EVENT, data, size, NULL, 0);
	return 0;
}

/* Write-volume entries' growth since the last sweep, as the host's RingConsumer reports it. */
#define TRACKED 1024
static struct { __u64 key, bytes; } tracked[TRACKED];

static void sweep_write_stats(int map_fd)
{
	__u64 key, next, *prev = NULL;

	while (bpf_map_get_next_key(map_fd, prev, &next) == 0) {
		struct alcub3_write_stats st;
		key = next;
		prev = &key;
		if (bpf_map_lookup_elem(map_fd, &key, &st) != 0)
			continue;
		int slot = -1, free_slot = -1;
		for (int i = 0; i < TRACKED; i++) {
			if (tracked[i].key == key) { slot = i; break; }
			if (free_slot < 0 && tracked[i].key == 0) free_slot = i;
		}
		__u64 last = slot >= 0 ? tracked[slot].bytes : 0;
		if (st.bytes == last)
			continue;
		if (slot < 0) slot = free_slot >= 0 ? free_slot : (int)(key % TRACKED);
		tracked[slot].key = key;
		tracked[slot].bytes = st.bytes;
		struct alcub3_guest_write_stats w = {
			.file_id = key, .sandbox_cgid = st.sandbox_cgid, .total_bytes = st.bytes,
			.total_writes = st.writes, .new_bytes = st.bytes > last ? st.bytes - last : st.bytes, .pid = st.pid,
		};
		send_frame(ALCUB3_FRAME_WRITE_STATS, &w, sizeof(w), NULL, 0);
	}
}

static void send_counters(int map_fd)
{
	int ncpu = libbpf_num_possible_cpus();
	struct alcub3_counters sum = { 0 };
	__u32 zero = 0;

	if (ncpu <= 0)
		return;
	struct alcub3_counters per[ncpu];
	if (bpf_map_lookup_elem(map_fd, &zero, per) != 0)
		return;
	for (int i = 0; i < ncpu; i++) {
		sum.seen += per[i].seen;
		sum.submitted += per[i].submitted;
		sum.dropped += per[i].dropped;
		sum.syscall_dropped += per[i].syscall_dropped;
	}
	send_frame(ALCUB3_FRAME_COUNTERS, &sum, sizeof(sum), NULL, 0);
}

static int cgroup_empty(void)
{
	char buf[64];
	int fd = open(AGENT_CGROUP "/cgroup.procs", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf)) : 0;
	if (fd >= 0) close(fd);
	return n <= 0;
}

/* Forwards what a pipe has; returns 0 at end of file. */
static int forward(int fd, __u32 type)
{
	char buf[65536];
	ssize_t n = read(fd, buf, sizeof(buf));
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return 1;
	if (n <= 0)
		return 0;
	send_frame(type, buf, (size_t)n, NULL, 0);
	return 1;
}

/* In a forked child: joins the agent's cgroup, takes /dev/null, `out` and `err` as
 * stdio, a session of its own and /root, and execs; never returns. */
static void exec_in_agent_cgroup(char **argv, char **envp, int out, int err)
{
	int devnull = open("/dev/null", O_RDONLY);
	int procs = open(AGENT_CGROUP "/cgroup.procs", O_WRONLY);
	if (procs < 0 || write(procs, "0", 1) != 1)
		_exit(126);
	close(procs);
	dup2(devnull, 0);
	dup2(out, 1);
	dup2(err, 2);
	setsid();
	if (chdir("/root") != 0) _exit(126);
	environ = envp;
	execvp(argv[0], argv);
	dprintf(2, "alcub3-guest: %s: %s\n", argv[0], strerror(errno));
	_exit(errno == ENOENT ? 127 : 126);
}

/* `sandbox exec` sessions: commands the host asks for while the command runs, in the agent's cgroup. */
static struct session {
	__u32 id;
	pid_t pid;              /* 0: the slot is free */
	int out, err;           /* -1 once at EOF */
	int exited, status;
} sessions[ALCUB3_GUEST_EXEC_MAX];

static void exec_output(struct session *s, __u32 stream, const void *bytes, size_t length)
{
	struct alcub3_guest_exec_output h = { .id = s->id, .stream = stream };
	send_frame(ALCUB3_FRAME_EXEC_OUTPUT, &h, sizeof(h), bytes, length);
}

static void exec_end(__u32 id, int status)
{
	struct alcub3_guest_exec_exit e = { .id = id, .status = status };
	send_frame(ALCUB3_FRAME_EXEC_EXIT, &e, sizeof(e), NULL, 0);
}

/* EXEC: argv and envp as in RUN; the command starts in the agent's cgroup, in /root, stdin /dev/null. */
static void start_exec(unsigned char *payload, __u32 length)
{
	struct alcub3_guest_exec *x = (struct alcub3_guest_exec *)payload;
	struct session *s = NULL;
	int out[2], err[2];

	if (length < sizeof(*x))
		return;
	for (int i = 0; i < ALCUB3_GUEST_EXEC_MAX && !s; i++)
		if (sessions[i].pid == 0)
			s = &sessions[i];
	if (!s || x->argc == 0 || x->argc > 4096 || x->envc > 4096) {
		struct session refused = { .id = x->id };
		const char *why = !s ? "alcub3-guest: too many exec sessions at once\n" : "alcub3-guest: exec without a command\n";
		exec_output(&refused, 2, why, strlen(why));
		exec_end(x->id, -1);
		return;
	}
	char **argv = calloc(x->argc + 1, sizeof(char *)), **envp = calloc(x->envc + 1, sizeof(char *));
	char *p = (char *)payload + sizeof(*x), *end = (char *)payload + length;
	for (__u32 i = 0; argv && envp && i < x->argc + x->envc; i++) {
		char *nul = p < end ? memchr(p, 0, (size_t)(end - p)) : NULL;
		if (!nul) {
			free(argv);
			argv = NULL;
			break;
		}
		if (i < x->argc) argv[i] = p; else envp[i - x->argc] = p;
		p = nul + 1;
	}
	if (!argv || !envp || pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
		struct session refused = { .id = x->id };
		const char *why = "alcub3-guest: the exec request was cut short or no pipe could be made\n";
		exec_output(&refused, 2, why, strlen(why));
		exec_end(x->id, -1);
		free(argv);
		free(envp);
		return;
	}
	pid_t child = fork();
	if (child == 0)
		exec_in_agent_cgroup(argv, envp, out[1], err[1]);
	close(out[1]);
	close(err[1]);
	free(argv);
	free(envp);
	if (child < 0) {
		close(out[0]);
		close(err[0]);
		struct session refused = { .id = x->id };
		const char *why = "alcub3-guest: fork failed\n";
		exec_output(&refused, 2, why, strlen(why));
		exec_end(x->id, -1);
		return;
	}
	fcntl(out[0], F_SETFL, O_NONBLOCK);
	fcntl(err[0], F_SETFL, O_NONBLOCK);
	*s = (struct session){ .id = x->id, .pid = child, .out = out[0], .err = err[0] };
}

/* One read from a session's pipe; at EOF the pipe is closed. */
static void session_read(struct session *s, int which)
{
	char buf[65536];
	int *fd = which == 1 ? &s->out : &s->err;
	ssize_t n = read(*fd, buf, sizeof(buf));
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n <= 0) {
		close(*fd);
		*fd = -1;
		return;
	}
	exec_output(s, (__u32)which, buf, (size_t)n);
}

/* A session whose process was reaped and whose output ended is reported and freed. */
static void sessions_finish(void)
{
	for (int i = 0; i < ALCUB3_GUEST_EXEC_MAX; i++) {
		struct session *s = &sessions[i];
		if (s->pid != 0 && s->exited && s->out < 0 && s->err < 0) {
			exec_end(s->id, s->status);
			s->pid = 0;
		}
	}
}

static void emit_scan_entry(const void *payload, size_t length)
{
	send_frame(ALCUB3_FRAME_SCAN_ENTRY, payload, length, NULL, 0);
}

/* A host request while the command runs: SCAN (integrity baselines), EXEC (sandbox exec), RESYNC (a new host); others are ignored. */
static void serve_request(void)
{
	__u32 type, length;
	unsigned char *payload = receive_any(&type, &length);

	if (type == ALCUB3_FRAME_SCAN) {
		struct alcub3_guest_scan_end end = { 0 };
		int truncated = 0;
		long sent = alcub3_scan((const char *)payload, ALCUB3_GUEST_SCAN_LIMIT, emit_scan_entry, &truncated);
		if (sent < 0)
			end.error = (__s32)-sent;
		else
			end.entries = (__u32)sent;
		end.truncated = (__u32)truncated;
		send_frame(ALCUB3_FRAME_SCAN_END, &end, sizeof(end), NULL, 0);
		flush_out();
	} else if (type == ALCUB3_FRAME_EXEC) {
		start_exec(payload, length);
		flush_out();
	} else if (type == ALCUB3_FRAME_RESYNC) {
		/* A new host (after a service restart): its stream may begin inside a frame the old
		 * one half read; the token marks where whole frames begin again. */
		send_frame(ALCUB3_FRAME_SYNC, payload, length, NULL, 0);
		flush_out();
	}
	free(payload);
}

int main(void)
{
	struct bpf_object *obj;
	struct bpf_program *prog;
	struct ring_buffer *rb;
	struct alcub3_guest_run *run;
	__u32 object_len, run_len;
	unsigned char *object, *payload;
	int out_pipe[2], err_pipe[2];
	pid_t child;
	int status = -1, exited = 0;

	mount_or_fail("proc", "/proc", "proc", NULL);
	mount_or_fail("sysfs", "/sys", "sysfs", NULL);
	mount_or_fail("devtmpfs", "/dev", "devtmpfs", "mode=0755");
	mount_or_fail("tmpfs", "/tmp", "tmpfs", "mode=1777");
	mount_or_fail("bpf", "/sys/fs/bpf", "bpf", "mode=0700");
	mount_or_fail("cgroup2", CGROUP_ROOT, "cgroup2", NULL);
	/* The console for our own messages; the command's output goes over the channel. */
	int console = open("/dev/console", O_RDWR | O_CLOEXEC);
	if (console >= 0) {
		dup2(console, 1);
		dup2(console, 2);
		close(console);
	}
	load_modules("load");
	loopback_up();

	port = open_port();
	if (port < 0)
		fail("no virtio-serial port named %s (%s)", ALCUB3_GUEST_PORT_NAME, port_problem);
	struct alcub3_guest_hello hello = { .boot_ns = boot_ns(), .version = ALCUB3_GUEST_VERSION };
	struct utsname_like { char s[65]; } release = { { 0 } };
	int rfd = open("/proc/sys/kernel/osrelease", O_RDONLY | O_CLOEXEC);
	if (rfd >= 0) {
		if (read(rfd, release.s, sizeof(release.s) - 1) < 0) release.s[0] = 0;
		close(rfd);
		release.s[strcspn(release.s, "\n")] = 0;
	}
	send_frame(ALCUB3_FRAME_HELLO, &hello, sizeof(hello), release.s, strlen(release.s));
	flush_out();
	/* While the host sends the telemetry object; a failure is an ERROR frame the host reports. */
	if (cmdline_has("alcub3.net=user"))
		network_up();

	/* The hardware level measures first: nothing runs before the TPM holds the boot's hashes. */
	__u32 first_type;
	unsigned char *first = receive_any(&first_type, &object_len);
	if (first_type == ALCUB3_FRAME_MEASURE) {
		measure(first, object_len);
		free(first);
		object = receive(ALCUB3_FRAME_OBJECT, &object_len);
	} else if (first_type == ALCUB3_FRAME_OBJECT) {
		object = first;
	} else {
		fail("expected frame %u or %u from the host, got %u", ALCUB3_FRAME_MEASURE, ALCUB3_FRAME_OBJECT, first_type);
	}
	payload = receive(ALCUB3_FRAME_RUN, &run_len);
	if (run_len < sizeof(*run))
		fail("RUN frame of %u bytes", run_len);
	run = (struct alcub3_guest_run *)payload;
	/* argv then envp: NUL-terminated strings, all within the frame. */
	char **argv = calloc(run->argc + 1, sizeof(char *));
	char **envp = calloc(run->envc + 1, sizeof(char *));
	char *p = (char *)payload + sizeof(*run), *end = (char *)payload + run_len;
	if (!argv || !envp || run->argc == 0)
		fail("RUN frame without a command");
	for (__u32 i = 0; i < run->argc + run->envc; i++) {
		char *nul = memchr(p, 0, (size_t)(end - p));
		if (p >= end || !nul)
			fail("RUN frame cut short");
		if (i < run->argc) argv[i] = p; else envp[i - run->argc] = p;
		p = nul + 1;
	}

	if (mkdir(PARENT_CGROUP, 0755) != 0 && errno != EEXIST)
		fail("mkdir %s: %s", PARENT_CGROUP, strerror(errno));
	if (mkdir(AGENT_CGROUP, 0755) != 0 && errno != EEXIST)
		fail("mkdir %s: %s", AGENT_CGROUP, strerror(errno));
	__u64 parent_id = inode_of(PARENT_CGROUP), agent_id = inode_of(AGENT_CGROUP);
	__u32 level = 1;

	LIBBPF_OPTS(bpf_object_open_opts, opts, .object_name = "telemetry");
	obj = bpf_object__open_mem(object, object_len, &opts);
	if (!obj)
		fail("opening the telemetry object: %s", strerror(errno));
	set_rodata(obj, "alcub3_root_cgid", &parent_id, sizeof(parent_id));
	set_rodata(obj, "alcub3_root_level", &level, sizeof(level));
	/* The guest has little memory: smaller rings than the host's (drained every few ms anyway). */
	bpf_map__set_max_entries(bpf_object__find_map_by_name(obj, "syscalls"), 8u << 20);
	bpf_map__set_max_entries(bpf_object__find_map_by_name(obj, "events"), 2u << 20);
	int err = bpf_object__load(obj);
	if (err)
		fail("loading the telemetry object in the guest: %s", strerror(-err));
	bpf_object__for_each_program(prog, obj) {
		const char *sec = bpf_program__section_name(prog);
		size_t len = strlen(sec);
		if (len >= 9 && strcmp(sec + len - 9, "sys_enter") == 0 && !(run->flags & ALCUB3_SANDBOX_SYSCALL_ENTRY))
			continue;
		if (!bpf_program__attach(prog))
			fail("attaching %s: %s", bpf_program__name(prog), strerror(errno));
	}
	int sandboxes = bpf_object__find_map_fd_by_name(obj, "sandboxes");
	int write_stats = bpf_object__find_map_fd_by_name(obj, "write_stats");
	int counters = bpf_object__find_map_fd_by_name(obj, "counters");
	struct alcub3_sandbox_config config = { .flags = run->flags };
	if (bpf_map_update_elem(sandboxes, &agent_id, &config, BPF_ANY) != 0)
		fail("watching the agent cgroup: %s", strerror(errno));
	rb = ring_buffer__new(bpf_object__find_map_fd_by_name(obj, "events"), ring_record, NULL, NULL);
	if (!rb || ring_buffer__add(rb, bpf_object__find_map_fd_by_name(obj, "syscalls"), ring_record, NULL) != 0)
		fail("opening the ring buffers: %s", strerror(errno));

	if (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0)
		fail("pipe: %s", strerror(errno));
	mkdir("/root", 0700);
	struct alcub3_guest_started started = { .boot_ns = boot_ns() };
	child = fork();
	if (child < 0)
		fail("fork: %s", strerror(errno));
	if (child == 0)
		exec_in_agent_cgroup(argv, envp, out_pipe[1], err_pipe[1]);
	close(out_pipe[1]);
	close(err_pipe[1]);
	fcntl(out_pipe[0], F_SETFL, O_NONBLOCK);
	fcntl(err_pipe[0], F_SETFL, O_NONBLOCK);
	started.pid = (__u32)child;
	send_frame(ALCUB3_FRAME_STARTED, &started, sizeof(started), NULL, 0);
	flush_out();

	/* The command's stdout and stderr, the host's requests, then each exec session's two pipes. */
	struct pollfd fds[3 + 2 * ALCUB3_GUEST_EXEC_MAX] = { { out_pipe[0], POLLIN, 0 }, { err_pipe[0], POLLIN, 0 }, { port, POLLIN, 0 } };
	int open_pipes = 2;
	__u64 last_sweep = boot_ns();
	for (;;) {
		for (int i = 0; i < ALCUB3_GUEST_EXEC_MAX; i++) {
			fds[3 + 2 * i] = (struct pollfd){ sessions[i].pid ? sessions[i].out : -1, POLLIN, 0 };
			fds[4 + 2 * i] = (struct pollfd){ sessions[i].pid ? sessions[i].err : -1, POLLIN, 0 };
		}
		int n = poll(fds, 3 + 2 * ALCUB3_GUEST_EXEC_MAX, open_pipes ? 5 : 0);
		for (int i = 0; n > 0 && i < ALCUB3_GUEST_EXEC_MAX; i++) {
			if (fds[3 + 2 * i].fd >= 0 && (fds[3 + 2 * i].revents & (POLLIN | POLLHUP | POLLERR)))
				session_read(&sessions[i], 1);
			if (fds[4 + 2 * i].fd >= 0 && (fds[4 + 2 * i].revents & (POLLIN | POLLHUP | POLLERR)))
				session_read(&sessions[i], 2);
		}
		if (n > 0 && (fds[2].revents & (POLLHUP | POLLERR)))
			/* No host on the channel (the service restarting): QEMU reconnects to the next one.
			 * Frames wait in `out`; writing them blocks until a host is there again. The port
			 * also reads as readable then (a read would return 0): nothing is read. */
			usleep(50000);
		else if (n > 0 && (fds[2].revents & POLLIN))
			serve_request();
		for (int i = 0; n > 0 && i < 2; i++) {
			if (fds[i].fd >= 0 && (fds[i].revents & (POLLIN | POLLHUP | POLLERR))) {
				if (!forward(fds[i].fd, i == 0 ? ALCUB3_FRAME_STDOUT : ALCUB3_FRAME_STDERR)) {
					close(fds[i].fd);
					fds[i].fd = -1;
					open_pipes--;
				}
			}
		}
		ring_buffer__consume(rb);
		if (boot_ns() - last_sweep > 100000000ull) {
			sweep_write_stats(write_stats);
			last_sweep = boot_ns();
		}
		/* pid 1 reaps every orphan; the command's status is the one kept. */
		for (;;) {
			int st;
			pid_t pid = waitpid(-1, &st, WNOHANG);
			if (pid <= 0)
				break;
			if (pid == child) {
				status = st;
				exited = 1;
			}
			for (int i = 0; i < ALCUB3_GUEST_EXEC_MAX; i++)
				if (sessions[i].pid == pid) {
					sessions[i].exited = 1;
					sessions[i].status = st;
				}
		}
		sessions_finish();
		if (exited && !cgroup_empty()) {
			/* What the command left behind ends with it, as in the host's sandboxes. */
			int kfd = open(AGENT_CGROUP "/cgroup.kill", O_WRONLY | O_CLOEXEC);
			if (kfd >= 0) { if (write(kfd, "1", 1) < 0) {} close(kfd); }
		}
		if (exited && open_pipes == 0 && cgroup_empty())
			break;
		if (!open_pipes && !exited)
			usleep(5000);
		flush_out();
	}
	usleep(2000);
	ring_buffer__consume(rb);
	sweep_write_stats(write_stats);
	send_counters(counters);
	struct alcub3_guest_exit ex = { .status = status };
	send_frame(ALCUB3_FRAME_EXIT, &ex, sizeof(ex), NULL, 0);
	power_off();
	return 0;
}
