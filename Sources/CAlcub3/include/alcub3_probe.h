/*
 * Kernel probes for `alcub3 doctor`: calls with no glibc wrapper or whose
 * constants Debian's headers lack (Landlock ABI > 3, seccomp user-notify).
 */
#ifndef ALCUB3_PROBE_H
#define ALCUB3_PROBE_H

/* Landlock ABI version, or -errno. */
int alcub3_landlock_abi(void);
/* 0 when SECCOMP_RET_USER_NOTIF is available, else -errno. */
int alcub3_seccomp_user_notify_available(void);
/* KVM_GET_API_VERSION and KVM_CREATE_VM on /dev/kvm: the API version, or -errno. */
int alcub3_kvm_probe(void);

/* SO_PEERCRED: struct ucred needs _GNU_SOURCE, which Swift's Glibc module lacks. 0 or -errno. */
int alcub3_peer_credentials(int fd, int *pid, unsigned int *uid, unsigned int *gid);

#endif
