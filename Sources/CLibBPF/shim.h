/* libbpf as a Swift module: the user-space API, the raw syscall wrappers and BTF. */
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
