#define _GNU_SOURCE
#include "alcub3_kvm.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* Variadic ioctl does not import into Swift, and the probe is a dozen of them in a row. */
void alcub3_kvm_run_probe(struct alcub3_kvm_result *r) {
    /* 16-bit code at 0x1000: mov ecx, N; 1: dec ecx; jnz 1b; hlt */
    const uint32_t n = 200000;
    uint8_t code[] = { 0x66, 0xb9, n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, n >> 24, 0x66, 0x49, 0x75, 0xfc, 0xf4 };
    int kvm = -1, vm = -1, vcpu = -1;
    void *mem = MAP_FAILED, *run = MAP_FAILED;
    long run_size = 0;
    struct timespec a, b;

    memset(r, 0, sizeof(*r));
    r->iterations = n;
#define STEP(name, expr) do { r->step = name; if ((expr) < 0) { r->error = errno; goto out; } } while (0)
    STEP("open /dev/kvm", kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC));
    STEP("KVM_GET_API_VERSION", r->api_version = ioctl(kvm, KVM_GET_API_VERSION, 0));
    STEP("KVM_CREATE_VM", vm = ioctl(kvm, KVM_CREATE_VM, 0));
    mem = mmap(NULL, 0x10000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    STEP("mmap guest memory", mem == MAP_FAILED ? -1 : 0);
    memcpy((uint8_t *)mem + 0x1000, code, sizeof(code));
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = 0x10000, .userspace_addr = (uint64_t)(uintptr_t)mem,
    };
    STEP("KVM_SET_USER_MEMORY_REGION", ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region));
    STEP("KVM_CREATE_VCPU", vcpu = ioctl(vm, KVM_CREATE_VCPU, 0));
    STEP("KVM_GET_VCPU_MMAP_SIZE", run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0));
    run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    STEP("mmap kvm_run", run == MAP_FAILED ? -1 : 0);
    struct kvm_sregs sregs;
    STEP("KVM_GET_SREGS", ioctl(vcpu, KVM_GET_SREGS, &sregs));
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    STEP("KVM_SET_SREGS", ioctl(vcpu, KVM_SET_SREGS, &sregs));
    struct kvm_regs regs = { .rip = 0x1000, .rflags = 2 };
    STEP("KVM_SET_REGS", ioctl(vcpu, KVM_SET_REGS, &regs));
    clock_gettime(CLOCK_MONOTONIC, &a);
    STEP("KVM_RUN", ioctl(vcpu, KVM_RUN, 0));
    clock_gettime(CLOCK_MONOTONIC, &b);
    r->loop_ns = (uint64_t)(b.tv_sec - a.tv_sec) * 1000000000ull + (uint64_t)b.tv_nsec - (uint64_t)a.tv_nsec;
    r->halted = ((struct kvm_run *)run)->exit_reason == KVM_EXIT_HLT;
    r->step = NULL;
#undef STEP
out:
    if (run != MAP_FAILED) munmap(run, (size_t)run_size);
    if (mem != MAP_FAILED) munmap(mem, 0x10000);
    if (vcpu >= 0) close(vcpu);
    if (vm >= 0) close(vm);
    if (kvm >= 0) close(kvm);
}
