// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * devfilter.bpf.c: the devices a sandbox may open or create, enforced in the
 * kernel (cgroup/dev, BPF_CGROUP_DEVICE).
 *
 * Attached to a sandbox's cgroup v2 directory. The kernel runs it for every
 * open (read or write) and mknod of a character or block device by a task
 * whose default-hierarchy cgroup is at or below that directory, whatever the
 * v1 devices controller says (both must allow). Only the devices of a minimal
 * /dev pass: null, zero, full, random, urandom, tty, ptmx and the pty slaves;
 * anything else (a disk, a loop device, the consoles and VTs, /dev/kmsg,
 * /dev/mem) gets EPERM. Each refusal is counted per sandbox and sent as a
 * struct alcub3_device_event on the telemetry's events ring buffer (user
 * space hands this object that map), so it is reported like any refusal.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "alcub3_events.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

const volatile __u32 alcub3_root_level = 1; /* as in telemetry.bpf.c */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); /* sandbox cgroup id */
	__type(value, struct alcub3_device_sandbox);
} devfilter_sandboxes SEC(".maps");

/* Replaced by the telemetry's own map before load (bpf_map__reuse_fd). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

/* Referenced so that clang emits BTF for the shared structs (the layout test). */
struct alcub3_device_event *alcub3_btf_device __attribute__((unused));
struct alcub3_device_sandbox *alcub3_btf_device_sandbox __attribute__((unused));

#define MEM_MAJOR 1       /* 1:3 null, 1:5 zero, 1:7 full, 1:8 random, 1:9 urandom */
#define TTYAUX_MAJOR 5    /* 5:0 tty, 5:2 ptmx (5:1 console is refused) */
/*
 * Unix98 pty slaves. include/uapi/linux/major.h still reserves 136-143 (8
 * majors of 256 minors, from before 20-bit minors), but the pts driver
 * registers major 136 alone, with up to 1 << 20 minors (/proc/devices lists
 * "136 pts"), so nothing else is needed.
 */
#define UNIX98_PTY_SLAVE_MAJOR 136
#define MISC_MAJOR 10
#define KVM_MINOR 232

static __always_inline int allowed(__u32 type, __u32 major, __u32 minor, __u32 flags)
{
	if (type != ALCUB3_DEVICE_CHAR)
		return 0;
	switch (major) {
	case MEM_MAJOR:
		return minor == 3 || minor == 5 || minor == 7 || minor == 8 || minor == 9;
	case TTYAUX_MAJOR:
		return minor == 0 || minor == 2;
	case UNIX98_PTY_SLAVE_MAJOR:
		return 1;
	case MISC_MAJOR:
		return minor == KVM_MINOR && (flags & ALCUB3_DEVICE_ALLOW_KVM);
	default:
		return 0;
	}
}

SEC("cgroup/dev")
int alcub3_device_filter(struct bpf_cgroup_dev_ctx *ctx)
{
	__u32 type = ctx->access_type & 0xffff, access = ctx->access_type >> 16;
	__u64 cgid = bpf_get_current_ancestor_cgroup_id(alcub3_root_level + 1);
	struct alcub3_device_sandbox *sb = bpf_map_lookup_elem(&devfilter_sandboxes, &cgid);
	struct alcub3_device_event *e;
	__u64 pid_tgid;

	if (allowed(type, ctx->major, ctx->minor, sb ? sb->flags : 0))
		return 1;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (sb) {
		__sync_fetch_and_add(&sb->refused, 1);
		if (!e)
			__sync_fetch_and_add(&sb->unreported, 1);
	}
	if (!e)
		return 0;
	pid_tgid = bpf_get_current_pid_tgid();
	e->hdr.ts_ns = bpf_ktime_get_boot_ns();
	e->hdr.sandbox_cgid = cgid;
	e->hdr.pid = pid_tgid >> 32;
	e->hdr.tid = (__u32)pid_tgid;
	e->hdr.kind = ALCUB3_KIND_DEVICE;
	e->hdr.flags = 0;
	e->hdr.uid = (__u32)bpf_get_current_uid_gid();
	e->type = type;
	e->access = access;
	e->major = ctx->major;
	e->minor = ctx->minor;
	/*
	 * The consumer drains every millisecond or so: no wakeup, as the
	 * telemetry's records. (The thread's staged syscall batch is not flushed
	 * first: this record may come before syscalls the thread made just before.)
	 */
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}
