// The emulator's runtime: the block scheduler behind __syncthreads and the warp shuffles, the
// kernel registry and the C ABI the Rust side calls (see kdc_emu.h for that ABI).
//
// Scheduling. A launch creates one OS thread per thread of a block and reuses them for every
// block; blocks run one after another (so `__shared__` can be plain statics). Within a block
// three schedules exist:
// - PARALLEL: all threads run at once, barriers block them (real concurrency: exposes races to
//   ThreadSanitizer and to chance);
// - FORWARD / REVERSE: exactly one thread runs at a time; at each barrier (or exit) it hands
//   over to the next runnable thread in increasing (decreasing) thread order. Between two
//   barriers the threads thus run in a fixed order, so a missing __syncthreads shows up
//   deterministically: a read of shared memory another thread has not written yet returns the
//   NaN poison in one of the two orders, or the two orders give different results.
// All three detect deadlocks (every live thread waiting, no barrier complete) at once; a
// watchdog catches a block that stops making progress (an endless loop).

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <semaphore>
#include <string>
#include <thread>
#include <vector>

#include "kdc_emu.h"
#include "kdc_emu.hpp"
#include "registry.hpp"

thread_local uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

extern "C" {
// Bounds of the linker section holding every `__shared__` static (weak: absent when no kernel
// linked in uses static shared memory).
extern char __start_kdc_emu_shared[] __attribute__((weak));
extern char __stop_kdc_emu_shared[] __attribute__((weak));
}

namespace kdc_emu {
namespace {

// Thrown inside a kernel's thread to unwind it when the launch is aborted.
struct Abort {};

enum Status { RUNNING, WAITING, DONE };
const int BLOCK_BARRIER = -1;

struct WarpState {
    int live = 0;      // lanes that exist and have not returned
    int arrived = 0;   // lanes waiting at the current warp barrier
    uint64_t gen = 0;  // completed warp barriers
    int line = 0;      // source line of the first arrival at the current barrier
    unsigned char slot[2][32][16];  // double-buffered exchange slots, by generation parity
    unsigned present[2] = {0, 0};    // lanes that published into each buffer
};

const size_t DYN_GUARD = 256;  // bytes of guard after the dynamic shared memory

struct Launch {
    std::mutex m;
    int nthreads = 0;
    int mode = KDC_EMU_PARALLEL;
    void* fn = nullptr;
    void (*invoke)(void*, void**) = nullptr;
    void** args = nullptr;

    std::vector<int> status;
    std::vector<int> waiting_on;  // BLOCK_BARRIER or a warp index
    std::vector<std::unique_ptr<std::counting_semaphore<>>> wake;
    std::vector<std::unique_ptr<std::counting_semaphore<>>> start;
    std::counting_semaphore<> finished{0};

    int block_live = 0, block_arrived = 0, block_line = 0;
    uint64_t block_gen = 0;
    std::vector<WarpState> warps;
    int done = 0, waiting = 0;
    bool aborting = false, stop_workers = false;

    // Findings.
    uint64_t absent_reads = 0, divergent = 0, barriers = 0;
    std::string first_error;
    std::vector<unsigned char> dynamic_shared;

    void note(const std::string& what) {
        if (first_error.empty()) {
            first_error = what;
        }
    }
};

Launch* g_launch = nullptr;
thread_local int t_tid = -1;

std::string block_name() {
    char buf[96];
    std::snprintf(buf, sizeof buf, "block (%u,%u,%u)", blockIdx.x, blockIdx.y, blockIdx.z);
    return buf;
}

// The next thread to hand the token to in a serial schedule, or -1 if none can run.
int pick_next(Launch& L, int from) {
    int n = L.nthreads;
    for (int k = 1; k <= n; k++) {
        int t = L.mode == KDC_EMU_FORWARD ? (from + k) % n : ((from - k) % n + n) % n;
        if (L.status[t] == RUNNING) {
            return t;
        }
    }
    return -1;
}

void abort_launch(Launch& L, const std::string& why) {
    L.note(why);
    L.aborting = true;
    for (auto& s : L.wake) {
        s->release();
    }
}

// Wakes every thread waiting on `what` (called with the lock held when that barrier completes).
void release_waiters(Launch& L, int what, int self) {
    for (int t = 0; t < L.nthreads; t++) {
        if (L.status[t] == WAITING && L.waiting_on[t] == what) {
            L.status[t] = RUNNING;
            L.waiting--;
            if (L.mode == KDC_EMU_PARALLEL && t != self) {
                L.wake[t]->release();
            }
        }
    }
}

bool try_complete_block(Launch& L, int self) {
    if (L.block_arrived > 0 && L.block_arrived == L.block_live) {
        L.block_arrived = 0;
        L.block_gen++;
        L.barriers++;
        release_waiters(L, BLOCK_BARRIER, self);
        return true;
    }
    return false;
}

bool try_complete_warp(Launch& L, int w, int self) {
    WarpState& W = L.warps[w];
    if (W.arrived > 0 && W.arrived == W.live) {
        W.arrived = 0;
        W.gen++;
        release_waiters(L, w, self);
        return true;
    }
    return false;
}

// After the calling thread changed state (arrived at a barrier or returned): hands the token
// on in a serial schedule, reports deadlocks, and blocks the caller until it may run again.
// Called and returns with the lock held (unless the thread is done).
void reschedule(Launch& L, std::unique_lock<std::mutex>& lk, int self) {
    int live = L.nthreads - L.done;
    if (live > 0 && L.waiting == live) {
        abort_launch(L, block_name() + ": deadlock: every live thread waits at a barrier that "
                                       "cannot complete (threads at __syncthreads and at a warp "
                                       "operation, or a warp operation in divergent code)");
    }
    if (L.aborting) {
        if (L.status[self] != DONE) {
            throw Abort{};
        }
        return;
    }
    if (L.mode == KDC_EMU_PARALLEL) {
        if (L.status[self] == WAITING) {
            lk.unlock();
            L.wake[self]->acquire();
            lk.lock();
        }
    } else {
        int next = pick_next(L, self);
        if (next != self && next >= 0) {
            L.wake[next]->release();
            if (L.status[self] != DONE) {
                lk.unlock();
                L.wake[self]->acquire();
                lk.lock();
            }
        }
    }
    if (L.aborting && L.status[self] != DONE) {
        throw Abort{};
    }
}

void thread_exit(Launch& L, int self) {
    std::unique_lock<std::mutex> lk(L.m);
    if (L.status[self] == WAITING) {
        L.waiting--;  // unwound by an abort while waiting
    }
    L.status[self] = DONE;
    L.done++;
    L.block_live--;
    L.warps[self / 32].live--;
    try_complete_block(L, self);
    try_complete_warp(L, self / 32, self);
    if (L.done == L.nthreads) {
        L.finished.release();
        return;
    }
    if (!L.aborting) {
        reschedule(L, lk, self);
    }
}

void worker(Launch* L, int tid, uint3 idx) {
    t_tid = tid;
    threadIdx = idx;
    for (;;) {
        L->start[tid]->acquire();
        if (L->stop_workers) {
            return;
        }
        if (L->mode != KDC_EMU_PARALLEL) {
            L->wake[tid]->acquire();  // the token
        }
        try {
            if (!L->aborting) {
                L->invoke(L->fn, L->args);
            }
        } catch (const Abort&) {
        }
        thread_exit(*L, tid);
    }
}

void poison_shared(Launch& L) {
    if (__start_kdc_emu_shared && __stop_kdc_emu_shared) {
        std::memset(__start_kdc_emu_shared, 0xff,
                    (size_t)(__stop_kdc_emu_shared - __start_kdc_emu_shared));
    }
    std::memset(L.dynamic_shared.data(), 0xff, L.dynamic_shared.size());
}

bool dynamic_guard_intact(const Launch& L) {
    size_t n = L.dynamic_shared.size();
    for (size_t i = n - DYN_GUARD; i < n; i++) {
        if (L.dynamic_shared[i] != 0xff) {
            return false;
        }
    }
    return true;
}

std::mutex g_one_launch_at_a_time;

}  // namespace

// --------------------------------------------------------------------------------------------
// Called from kernel code.

void syncthreads(int line) {
    Launch& L = *g_launch;
    int self = t_tid;
    std::unique_lock<std::mutex> lk(L.m);
    if (L.aborting) {
        throw Abort{};
    }
    if (L.block_arrived == 0) {
        L.block_line = line;
    } else if (L.block_line != line) {
        L.divergent++;
        L.note(block_name() + ": threads meet at __syncthreads on different lines (" +
               std::to_string(L.block_line) + " and " + std::to_string(line) + ")");
    }
    L.block_arrived++;
    L.status[self] = WAITING;
    L.waiting_on[self] = BLOCK_BARRIER;
    L.waiting++;
    try_complete_block(L, self);
    reschedule(L, lk, self);
}

int lane_id() { return t_tid % 32; }

void warp_exchange(unsigned mask, const void* mine, void* out, size_t size, int src, int line) {
    Launch& L = *g_launch;
    int self = t_tid, w = self / 32, lane = self % 32;
    std::unique_lock<std::mutex> lk(L.m);
    if (L.aborting) {
        throw Abort{};
    }
    WarpState& W = L.warps[w];
    int parity = (int)(W.gen & 1);
    if (W.arrived == 0) {
        W.line = line;
        W.present[parity] = 0;
    } else if (W.line != line) {
        L.divergent++;
        L.note(block_name() + ": lanes of warp " + std::to_string(w) +
               " meet at warp operations on different lines (" + std::to_string(W.line) +
               " and " + std::to_string(line) + ")");
    }
    if (size > sizeof W.slot[0][0]) {
        abort_launch(L, "warp exchange of a value larger than 16 bytes");
        throw Abort{};
    }
    if (mine) {
        std::memcpy(W.slot[parity][lane], mine, size);
    }
    W.present[parity] |= 1u << lane;
    W.arrived++;
    L.status[self] = WAITING;
    L.waiting_on[self] = w;
    L.waiting++;
    try_complete_warp(L, w, self);
    reschedule(L, lk, self);
    if (!out) {
        return;
    }
    bool ok = src >= 0 && src < 32 && (W.present[parity] >> src & 1u) && (mask >> src & 1u);
    if (ok) {
        std::memcpy(out, W.slot[parity][src], size);
    } else {
        std::memset(out, 0xff, size);
        L.absent_reads++;
        L.note(block_name() + ": warp " + std::to_string(w) + " lane " + std::to_string(lane) +
               " reads lane " + std::to_string(src) +
               ", which is absent (does not exist, has returned, or is outside the mask), at "
               "line " + std::to_string(line));
    }
}

void syncwarp(unsigned mask, int line) { warp_exchange(mask, nullptr, nullptr, 0, 0, line); }

}  // namespace kdc_emu

void* kdc_dynamic_shared() { return kdc_emu::g_launch->dynamic_shared.data(); }

// ---------------------------------------------------------------------------------------------
// C ABI.

using namespace kdc_emu;

extern "C" int kdc_emu_kernel_count(void) { return (int)kdc_emu_registry().size(); }

extern "C" const char* kdc_emu_kernel_name(int i) {
    auto& r = kdc_emu_registry();
    return i >= 0 && i < (int)r.size() ? r[i].name : nullptr;
}

extern "C" int kdc_emu_launch(const char* kernel, const unsigned grid[3], const unsigned block[3],
                              size_t shared_bytes, void** args, size_t nargs,
                              const size_t* arg_sizes, int schedule, KdcEmuReport* report) {
    std::memset(report, 0, sizeof *report);
    auto fail = [&](int code, const std::string& msg) {
        std::snprintf(report->message, sizeof report->message, "%s", msg.c_str());
        return code;
    };
    const KernelEntry* entry = nullptr;
    for (auto& e : kdc_emu_registry()) {
        if (std::strcmp(e.name, kernel) == 0) {
            entry = &e;
        }
    }
    if (!entry) {
        return fail(KDC_EMU_BAD_LAUNCH, std::string("no kernel named ") + kernel);
    }
    if (nargs != entry->nargs) {
        return fail(KDC_EMU_BAD_LAUNCH, std::string(kernel) + " takes " +
                                            std::to_string(entry->nargs) + " arguments, got " +
                                            std::to_string(nargs));
    }
    for (size_t i = 0; i < nargs; i++) {
        if (arg_sizes[i] != entry->sizes[i]) {
            return fail(KDC_EMU_BAD_LAUNCH, std::string(kernel) + ": argument " +
                                                std::to_string(i) + " has " +
                                                std::to_string(entry->sizes[i]) +
                                                " bytes, got " + std::to_string(arg_sizes[i]));
        }
    }
    unsigned long long nthreads = (unsigned long long)block[0] * block[1] * block[2];
    if (nthreads == 0 || nthreads > 1024 || block[2] > 64 || grid[0] == 0 || grid[1] == 0 ||
        grid[2] == 0 || grid[1] > 65535 || grid[2] > 65535) {
        return fail(KDC_EMU_BAD_LAUNCH, "invalid launch configuration (CUDA limits: 1..1024 "
                                        "threads a block, z <= 64, grid y, z <= 65535)");
    }
    if (schedule < KDC_EMU_PARALLEL || schedule > KDC_EMU_REVERSE) {
        return fail(KDC_EMU_BAD_LAUNCH, "unknown schedule");
    }

    std::lock_guard<std::mutex> one(g_one_launch_at_a_time);
    Launch L;
    L.nthreads = (int)nthreads;
    L.mode = schedule;
    L.fn = entry->fn;
    L.invoke = entry->invoke;
    L.args = args;
    L.status.assign(L.nthreads, RUNNING);
    L.waiting_on.assign(L.nthreads, 0);
    for (int t = 0; t < L.nthreads; t++) {
        L.wake.push_back(std::make_unique<std::counting_semaphore<>>(0));
        L.start.push_back(std::make_unique<std::counting_semaphore<>>(0));
    }
    L.warps.resize((L.nthreads + 31) / 32);
    L.dynamic_shared.assign(shared_bytes + DYN_GUARD, 0xff);
    g_launch = &L;
    blockDim = dim3(block[0], block[1], block[2]);
    gridDim = dim3(grid[0], grid[1], grid[2]);

    std::vector<std::thread> workers;
    for (int t = 0; t < L.nthreads; t++) {
        uint3 idx{t % block[0], (t / block[0]) % block[1], t / (block[0] * block[1])};
        workers.emplace_back(worker, &L, t, idx);
    }

    const char* env = std::getenv("KDC_EMU_WATCHDOG_SECS");
    double watchdog = env ? std::atof(env) : 60.0;
    auto t0 = std::chrono::steady_clock::now();
    int code = KDC_EMU_OK;
    uint64_t blocks = 0;
    for (unsigned bz = 0; bz < grid[2] && code == KDC_EMU_OK; bz++) {
        for (unsigned by = 0; by < grid[1] && code == KDC_EMU_OK; by++) {
            for (unsigned bx = 0; bx < grid[0] && code == KDC_EMU_OK; bx++) {
                blockIdx = uint3{bx, by, bz};
                poison_shared(L);
                L.status.assign(L.nthreads, RUNNING);
                L.done = 0;
                L.waiting = 0;
                L.block_live = L.nthreads;
                L.block_arrived = 0;
                for (size_t w = 0; w < L.warps.size(); w++) {
                    WarpState& W = L.warps[w];
                    W.live = std::min(32, L.nthreads - (int)w * 32);
                    W.arrived = 0;
                    W.present[0] = W.present[1] = 0;
                }
                for (int t = 0; t < L.nthreads; t++) {
                    L.start[t]->release();
                }
                if (L.mode != KDC_EMU_PARALLEL) {
                    L.wake[L.mode == KDC_EMU_FORWARD ? 0 : L.nthreads - 1]->release();
                }
                auto limit = std::chrono::duration<double>(watchdog);
                if (!L.finished.try_acquire_for(limit)) {
                    {
                        std::lock_guard<std::mutex> lk(L.m);
                        abort_launch(L, block_name() + ": watchdog: no progress for " +
                                            std::to_string(watchdog) +
                                            " s (an endless loop?); set KDC_EMU_WATCHDOG_SECS "
                                            "to change the limit");
                    }
                    if (!L.finished.try_acquire_for(std::chrono::seconds(5))) {
                        std::fprintf(stderr, "kdc-emu: %s did not stop after the watchdog "
                                             "fired; aborting the process\n", kernel);
                        std::abort();
                    }
                }
                blocks++;
                // Drain token semaphores left over from an aborted block.
                for (auto& s : L.wake) {
                    while (s->try_acquire()) {
                    }
                }
                if (L.aborting) {
                    code = KDC_EMU_FAILED;
                } else if (!dynamic_guard_intact(L)) {
                    L.note(block_name() + ": write past the end of the dynamic shared memory (" +
                           std::to_string(shared_bytes) + " bytes)");
                    code = KDC_EMU_FAILED;
                }
            }
        }
    }
    L.stop_workers = true;
    for (int t = 0; t < L.nthreads; t++) {
        L.start[t]->release();
    }
    for (auto& w : workers) {
        w.join();
    }
    g_launch = nullptr;

    report->blocks = blocks;
    report->threads_per_block = nthreads;
    report->barriers = L.barriers;
    report->absent_lane_reads = L.absent_reads;
    report->divergent_barriers = L.divergent;
    report->seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (code == KDC_EMU_OK && (L.absent_reads || L.divergent)) {
        code = KDC_EMU_FAILED;
    }
    if (!L.first_error.empty()) {
        std::snprintf(report->message, sizeof report->message, "%s: %s", kernel,
                      L.first_error.c_str());
    }
    return code;
}
