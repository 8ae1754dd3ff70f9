// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * The telemetry programs as the vm level's guest agent loads them
 * (guest/alcub3-guest.c): the same source, built for guest kernels without
 * bpf_rdonly_cast to an untyped pointer (see in_alcub3_tree).
 */
#define ALCUB3_GUEST_KERNEL 1
#include "telemetry.bpf.c"
