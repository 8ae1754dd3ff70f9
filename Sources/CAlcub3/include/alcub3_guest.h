/*
 * alcub3_guest.h: the frames that cross the virtio-serial port between a vm
 * sandbox's guest agent (guest/alcub3-guest.c, static, in the initramfs) and
 * alcub3 on the host (Sources/Telemetry/GuestChannel.swift).
 *
 * A frame is a header (type, length of what follows; little-endian, the only
 * byte order both sides have) and `length` bytes. The host speaks first only
 * after the guest's HELLO; every other frame flows guest -> host.
 *
 *   guest -> host  HELLO        struct alcub3_guest_hello, then the kernel release
 *   host -> guest  OBJECT       the telemetry BPF object (ELF), as embedded in alcub3
 *   host -> guest  RUN          struct alcub3_guest_run, then argc + envc NUL-terminated strings
 *   guest -> host  STARTED      struct alcub3_guest_started: the command was exec'ed
 *   guest -> host  STDOUT/ERR   the command's output bytes
 *   guest -> host  EVENT        one raw ring buffer record (alcub3_events.h), as the guest kernel wrote it
 *   guest -> host  WRITE_STATS  struct alcub3_guest_write_stats: a write-volume entry's growth
 *   guest -> host  COUNTERS     struct alcub3_counters, summed over the guest's CPUs, before EXIT
 *   guest -> host  EXIT         struct alcub3_guest_exit: the command's wait status; the guest powers off
 *   guest -> host  ERROR        a message: the guest agent could not go on; it powers off
 *
 * The hardware level adds, between HELLO and OBJECT:
 *   host -> guest  MEASURE      struct alcub3_guest_measure: three SHA-256 digests (kernel,
 *                               initramfs, command line) and a fresh nonce of the host's
 *   guest -> host  QUOTE        struct alcub3_guest_quote, then a TPMS_ATTEST and a TPMT_SIGNATURE:
 *                               TPM2_Quote of PCR 9 (SHA-256 bank) after extending the digests,
 *                               qualifyingData = the nonce, signed by the attestation key
 *                               (alcub3_tpm2.h), which the host derived itself from the
 *                               sandbox's swtpm before the guest booted
 * and the host sends OBJECT and RUN only when the quote's signature is by that key, its
 * nonce is this boot's, and its PCR digest is what the host's own replay gives. (PCR,
 * the guest's own word for the PCR, is no longer accepted.)
 *
 * While the command runs, for integrity baselines of the guest's files:
 *   host -> guest  SCAN         a directory's path (NUL-terminated)
 *   guest -> host  SCAN_ENTRY   struct alcub3_guest_scan_entry, then the path relative to it and,
 *                               for a symlink, its target (each NUL-terminated); the directory itself is ""
 *   guest -> host  SCAN_END     struct alcub3_guest_scan_end
 *
 * `sandbox exec` while the command runs (at most ALCUB3_GUEST_EXEC_MAX at once):
 *   host -> guest  EXEC         struct alcub3_guest_exec, then argc + envc NUL-terminated strings
 *   guest -> host  EXEC_OUTPUT  struct alcub3_guest_exec_output, then the bytes
 *   guest -> host  EXEC_EXIT    struct alcub3_guest_exec_exit (after its output ended)
 *
 * A host that takes the channel over (the service restarted; QEMU reconnects):
 *   host -> guest  RESYNC       a token of ALCUB3_SYNC_TOKEN bytes
 *   guest -> host  SYNC         the same token: whole frames follow (what came before may be the
 *                               rest of a frame the previous host half read, and is skipped)
 */
#ifndef ALCUB3_GUEST_H
#define ALCUB3_GUEST_H

#include <linux/types.h>

/* The virtio-serial port's name (QEMU: -device virtserialport,name=...). */
#define ALCUB3_GUEST_PORT_NAME "org.alcub3.guest"
/* No frame is longer: a ring record is at most a few KiB, output is cut to this. */
#define ALCUB3_FRAME_MAX (4u << 20)

enum alcub3_frame_type {
    ALCUB3_FRAME_HELLO = 1,
    ALCUB3_FRAME_OBJECT = 2,
    ALCUB3_FRAME_RUN = 3,
    ALCUB3_FRAME_STARTED = 4,
    ALCUB3_FRAME_STDOUT = 5,
    ALCUB3_FRAME_STDERR = 6,
    ALCUB3_FRAME_EVENT = 7,
    ALCUB3_FRAME_WRITE_STATS = 8,
    ALCUB3_FRAME_COUNTERS = 9,
    ALCUB3_FRAME_EXIT = 10,
    ALCUB3_FRAME_ERROR = 11,
    ALCUB3_FRAME_MEASURE = 12,
    ALCUB3_FRAME_PCR = 13,
    ALCUB3_FRAME_SCAN = 14,
    ALCUB3_FRAME_SCAN_ENTRY = 15,
    ALCUB3_FRAME_SCAN_END = 16,
    ALCUB3_FRAME_RESYNC = 17,
    ALCUB3_FRAME_SYNC = 18,
    ALCUB3_FRAME_EXEC = 19,
    ALCUB3_FRAME_EXEC_OUTPUT = 20,
    ALCUB3_FRAME_EXEC_EXIT = 21,
    ALCUB3_FRAME_QUOTE = 22,
};

struct alcub3_frame_header {
    __u32 type;                 /* enum alcub3_frame_type */
    __u32 length;               /* bytes after the header, <= ALCUB3_FRAME_MAX */
};

struct alcub3_guest_hello {
    __u64 boot_ns;              /* the guest's CLOCK_BOOTTIME when it sent HELLO */
    __u32 version;              /* ALCUB3_GUEST_VERSION */
    __u32 _pad;
};
#define ALCUB3_GUEST_VERSION 1

struct alcub3_guest_measure {
    __u8 digests[3][32];        /* extended into PCR 9 in this order */
    __u8 nonce[32];             /* the quote's qualifyingData */
};

struct alcub3_guest_quote {
    __u32 attest_size;          /* the TPMS_ATTEST's bytes after this header */
    __u32 signature_size;       /* then the TPMT_SIGNATURE's */
};
/* The most a QUOTE's payload may hold (a P-256 quote of PCR 9 is about 250 bytes). */
#define ALCUB3_GUEST_QUOTE_MAX 2048u

struct alcub3_guest_run {
    __u32 flags;                /* ALCUB3_SANDBOX_* of alcub3_events.h for the agent's cgroup */
    __u32 argc;                 /* >= 1 */
    __u32 envc;
    __u32 _pad;
};

struct alcub3_guest_scan_entry {
    __u64 size;
    __u64 device;               /* a device node's st_rdev, else 0 */
    __u32 mode;                 /* st_mode: the type and the permission bits */
    __u32 uid;
    __u32 gid;
    __s32 read_error;           /* a regular file whose content could not be read: its errno, else 0 */
    __u8 sha256[32];            /* a regular file's content */
};

struct alcub3_guest_scan_end {
    __u32 entries;              /* SCAN_ENTRY frames sent */
    __s32 error;                /* the directory could not be read: its errno, else 0 */
    __u32 truncated;            /* 1 when the walk stopped at its entry or depth limit */
    __u32 _pad;
};
#define ALCUB3_SYNC_TOKEN 16

/* A walk stops here (a baseline of more is not a guest workspace's). */
#define ALCUB3_GUEST_SCAN_LIMIT 200000u

#define ALCUB3_GUEST_EXEC_MAX 8

struct alcub3_guest_exec {
    __u32 id;                   /* chosen by the host, echoed in the answers */
    __u32 argc;                 /* >= 1 */
    __u32 envc;
    __u32 _pad;
};

struct alcub3_guest_exec_output {
    __u32 id;
    __u32 stream;               /* 1 stdout, 2 stderr */
};

struct alcub3_guest_exec_exit {
    __u32 id;
    __s32 status;               /* wait status; -1: not started (the reason was sent on stderr) */
};

struct alcub3_guest_started {
    __u64 boot_ns;              /* guest CLOCK_BOOTTIME just before execve */
    __u32 pid;                  /* the command's pid in the guest */
    __u32 _pad;
};

struct alcub3_guest_write_stats {
    __u64 file_id;              /* the write_stats map key */
    __u64 sandbox_cgid;         /* the guest's cgroup id: the host substitutes its own */
    __u64 total_bytes;
    __u64 total_writes;
    __u64 new_bytes;
    __u32 pid;
    __u32 _pad;
};

struct alcub3_guest_exit {
    __s32 status;               /* wait status: (code << 8) | signal; -1: the command could not start */
    __u32 _pad;
};

#endif
