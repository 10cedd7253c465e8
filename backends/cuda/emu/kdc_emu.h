/* The emulator's C ABI, called from Rust (src/emu.rs mirrors these declarations). */
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Schedules of a block's threads (see runtime.cpp). */
enum { KDC_EMU_PARALLEL = 0, KDC_EMU_FORWARD = 1, KDC_EMU_REVERSE = 2 };

/* Results of kdc_emu_launch. */
enum { KDC_EMU_OK = 0, KDC_EMU_FAILED = 1, KDC_EMU_BAD_LAUNCH = 2 };

typedef struct KdcEmuReport {
    uint64_t blocks;             /* blocks run */
    uint64_t threads_per_block;
    uint64_t barriers;           /* completed __syncthreads barriers, all blocks */
    uint64_t absent_lane_reads;  /* shuffles that read an absent lane */
    uint64_t divergent_barriers; /* barriers met on different source lines */
    double seconds;
    char message[512];           /* the first finding, or empty */
} KdcEmuReport;

int kdc_emu_kernel_count(void);
const char* kdc_emu_kernel_name(int i);

/* Runs `kernel` on a grid. `args[i]` points at the i-th argument's value (as cuLaunchKernel),
 * whose size must be `arg_sizes[i]`. Returns KDC_EMU_OK, KDC_EMU_FAILED (the kernel ran and the
 * emulator found a bug: report->message says which) or KDC_EMU_BAD_LAUNCH (unknown kernel,
 * wrong arguments, invalid configuration). */
int kdc_emu_launch(const char* kernel, const unsigned grid[3], const unsigned block[3],
                   size_t shared_bytes, void** args, size_t nargs, const size_t* arg_sizes,
                   int schedule, KdcEmuReport* report);

#ifdef __cplusplus
}
#endif
