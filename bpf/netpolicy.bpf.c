// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * netpolicy.bpf.c: a sandbox's network destinations, enforced in the kernel.
 *
 * Attached to a sandbox's cgroup (cgroup/connect4, connect6, sendmsg4,
 * sendmsg6), so only its tasks pay for it. A destination is allowed when its
 * address falls in one of the sandbox's networks (an LPM trie keyed by the
 * sandbox's cgroup id, IPv4 stored as IPv4-mapped IPv6 so one trie serves
 * both families) and its port is listed, or every port is. Anything else gets
 * EPERM at connect() or sendmsg(), before a packet leaves; the telemetry then
 * reports the refused syscall with its destination. Rules change live through
 * the maps, without restarting the sandbox.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

const volatile __u32 alcub3_root_level = 1;  /* as in telemetry.bpf.c */

#define NETPOLICY_ALL_PORTS 0x1
#define NETPOLICY_BIND_LOOPBACK_ONLY 0x2 /* listening only on loopback: no service reachable from outside */

struct netpolicy_sandbox {
	__u32 flags;
	__u32 _pad;
};

/* LPM key: prefixlen counts the 64 bits of the sandbox id, then address bits. */
struct netpolicy_key {
	__u32 prefixlen;
	__u8 data[24]; /* cgroup id (8, little endian as stored), then the IPv6 or mapped IPv4 address (16) */
};

struct netpolicy_port {
	__u64 cgid;
	__u16 port; /* host byte order */
	__u16 _pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct netpolicy_sandbox);
} netpolicy_sandboxes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct netpolicy_key);
	__type(value, __u8);
} netpolicy_networks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct netpolicy_port);
	__type(value, __u8);
} netpolicy_ports SEC(".maps");

static __always_inline int allowed(__u8 addr[16], __u16 port)
{
	__u64 cgid = bpf_get_current_ancestor_cgroup_id(alcub3_root_level + 1);
	struct netpolicy_sandbox *sb = bpf_map_lookup_elem(&netpolicy_sandboxes, &cgid);
	struct netpolicy_key key = {};
	struct netpolicy_port p = {};
	__u8 *allow;

	/* Attached only to sandboxes with a policy: no entry means fail closed. */
	if (!sb)
		return 0;
	key.prefixlen = 64 + 128;
	__builtin_memcpy(key.data, &cgid, 8);
	__builtin_memcpy(key.data + 8, addr, 16);
	/* The longest matching prefix decides: 1 allows, 0 refuses (the metadata address inside 0.0.0.0/0). */
	allow = bpf_map_lookup_elem(&netpolicy_networks, &key);
	if (!allow || !*allow)
		return 0;
	if (sb->flags & NETPOLICY_ALL_PORTS)
		return 1;
	p.cgid = cgid;
	p.port = port;
	return bpf_map_lookup_elem(&netpolicy_ports, &p) ? 1 : 0;
}

/* The destination as 16 bytes: IPv4 as an IPv4-mapped IPv6 address, so one trie serves both. */
static __always_inline void address4(struct bpf_sock_addr *ctx, __u8 addr[16])
{
	__u32 ip = ctx->user_ip4; /* network byte order */

	__builtin_memset(addr, 0, 10);
	addr[10] = 0xff;
	addr[11] = 0xff;
	__builtin_memcpy(addr + 12, &ip, 4);
}

static __always_inline void address6(struct bpf_sock_addr *ctx, __u8 addr[16])
{
	__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];

	__builtin_memcpy(addr, &w0, 4);
	__builtin_memcpy(addr + 4, &w1, 4);
	__builtin_memcpy(addr + 8, &w2, 4);
	__builtin_memcpy(addr + 12, &w3, 4);
}

static __always_inline int check4(struct bpf_sock_addr *ctx)
{
	__u8 addr[16];

	address4(ctx, addr);
	return allowed(addr, bpf_ntohs((__u16)ctx->user_port));
}

static __always_inline int check6(struct bpf_sock_addr *ctx)
{
	__u8 addr[16];

	address6(ctx, addr);
	return allowed(addr, bpf_ntohs((__u16)ctx->user_port));
}

SEC("cgroup/connect4")
int alcub3_net_connect4(struct bpf_sock_addr *ctx) { return check4(ctx); }

SEC("cgroup/connect6")
int alcub3_net_connect6(struct bpf_sock_addr *ctx) { return check6(ctx); }

SEC("cgroup/sendmsg4")
int alcub3_net_sendmsg4(struct bpf_sock_addr *ctx) { return check4(ctx); }

SEC("cgroup/sendmsg6")
int alcub3_net_sendmsg6(struct bpf_sock_addr *ctx) { return check6(ctx); }

/* bind: anything when the sandbox may reach every network; else loopback only
   (127.0.0.0/8 as an IPv4-mapped address, or ::1). */
static __always_inline int bind_allowed(__u8 addr[16])
{
	__u64 cgid = bpf_get_current_ancestor_cgroup_id(alcub3_root_level + 1);
	struct netpolicy_sandbox *sb = bpf_map_lookup_elem(&netpolicy_sandboxes, &cgid);
	int zeros = 1;

	if (!sb)
		return 0;
	if (!(sb->flags & NETPOLICY_BIND_LOOPBACK_ONLY))
		return 1;
	for (int i = 0; i < 10; i++)
		if (addr[i])
			zeros = 0;
	if (zeros && addr[10] == 0xff && addr[11] == 0xff && addr[12] == 127)
		return 1;
	for (int i = 10; i < 15; i++)
		if (addr[i])
			zeros = 0;
	return zeros && addr[15] == 1;
}

SEC("cgroup/bind4")
int alcub3_net_bind4(struct bpf_sock_addr *ctx)
{
	__u8 addr[16];

	address4(ctx, addr);
	return bind_allowed(addr);
}

SEC("cgroup/bind6")
int alcub3_net_bind6(struct bpf_sock_addr *ctx)
{
	__u8 addr[16];

	address6(ctx, addr);
	return bind_allowed(addr);
}
