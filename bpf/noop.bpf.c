// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * noop.bpf.c: the benchmark floor. The same hooks (and attach type) as the
 * syscall programs of telemetry.bpf.c, doing nothing, so a benchmark can
 * separate the cost of running any BPF program there from the cost of ours.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("tp_btf/sys_enter")
int BPF_PROG(alcub3_noop_sys_enter, struct pt_regs *regs, long id)
{
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(alcub3_noop_sys_exit, struct pt_regs *regs, long ret)
{
	return 0;
}
