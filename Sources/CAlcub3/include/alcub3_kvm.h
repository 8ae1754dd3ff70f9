/*
 * Whether KVM really runs guest code here, for the vm level's choice of
 * accelerator. /dev/kvm answering is not enough: on a PVM host it creates VMs
 * whose ordinary guests run fully emulated (DESIGN.md), so the probe times a
 * real loop in a one-page real-mode guest.
 */
#ifndef ALCUB3_KVM_H
#define ALCUB3_KVM_H

#include <stdint.h>

struct alcub3_kvm_result {
    int api_version;        /* KVM_GET_API_VERSION, or 0 when not reached */
    int error;              /* errno of the step that failed, 0 when the loop ran */
    const char *step;       /* that step ("open /dev/kvm", "KVM_CREATE_VM", ...), or NULL */
    uint64_t loop_ns;       /* time KVM_RUN took for `iterations` turns of a two-instruction loop */
    uint32_t iterations;
    int halted;             /* the guest reached its hlt (exit reason KVM_EXIT_HLT) */
};

/* Never throws or aborts: every failure is in the result. */
void alcub3_kvm_run_probe(struct alcub3_kvm_result *result);

#endif
