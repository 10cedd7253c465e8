// kdc's CUDA emulation layer: lets the CUDA C kernels under kernels/ compile as C++20 (g++)
// and run on the CPU, one OS thread per CUDA thread.
//
// The build force-includes this header before each kernel file (g++ -include), with
// -DKDC_EMULATE and emu/include/ on the include path (for <cuda_bf16.h>). The kernel sources
// themselves stay plain CUDA C: the only emulation-specific line in them is the `#ifndef
// KDC_EMULATE` around the dynamic shared memory accessor in kernels/common.cuh.
//
// Model (see runtime.cpp for the scheduler):
// - the blocks of a grid run one after another; a block's threads run as real threads;
// - `__shared__` variables are statics placed in one linker section, filled with NaN bytes
//   (0xFF) before every block, so a read of shared memory nobody wrote shows up as NaN;
// - `__syncthreads()` is a block barrier; a thread that returns drops out of it (as on
//   hardware since Volta); two threads meeting at barriers on different source lines are
//   reported as a divergent barrier;
// - warp shuffles exchange values through a per-warp barrier; reading a lane that does not
//   exist, has exited, or is outside the mask yields NaN bytes and is counted as an error;
// - atomics are std::atomic_ref operations.
#pragma once

#ifndef KDC_EMULATE
#error "kdc_emu.hpp is for the CPU emulation build only"
#endif

#include <math.h>
#include <stddef.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

// ---------------------------------------------------------------------------------------------
// Qualifiers.

#define __global__
#define __host__
// Internal linkage: a `__shared__` static inside an inline function with external linkage
// would go to a COMDAT section, which cannot share the one shared-memory section.
#define __device__ static inline
#define __forceinline__ __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ __attribute__((section("kdc_emu_shared"))) static

// ---------------------------------------------------------------------------------------------
// Built-in variables.

struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
        : x(x_), y(y_), z(z_) {}
};

extern thread_local uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;
constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------------
// Synchronisation and warp exchange (implemented in runtime.cpp).

namespace kdc_emu {

void syncthreads(int line);
void syncwarp(unsigned mask, int line);

// One warp-wide exchange: every live lane of the caller's warp publishes `size` bytes from
// `mine` and receives into `out` the bytes lane `src` published (NaN bytes, and an error
// counted, if `src` is absent or outside `mask`).
void warp_exchange(unsigned mask, const void* mine, void* out, size_t size, int src, int line);

int lane_id();

template <class T>
T shfl_from(unsigned mask, T v, int src, int line) {
    static_assert(std::is_trivially_copyable_v<T>, "shuffled values must be plain data");
    T out;
    warp_exchange(mask, &v, &out, sizeof(T), src, line);
    return out;
}

// The lane a shuffle reads, following the CUDA programming guide: `width` splits the warp in
// segments; a source outside the caller's segment reads the caller's own value.
inline int shfl_idx_src(int lane, int src_lane, int width) {
    return (lane & ~(width - 1)) + (src_lane & (width - 1));
}
inline int shfl_up_src(int lane, unsigned delta, int width) {
    return (lane & (width - 1)) >= (int)delta ? lane - (int)delta : lane;
}
inline int shfl_down_src(int lane, unsigned delta, int width) {
    return (lane & (width - 1)) + (int)delta < width ? lane + (int)delta : lane;
}
inline int shfl_xor_src(int lane, int lane_mask, int width) {
    int src = lane ^ lane_mask;
    return (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : lane;
}

}  // namespace kdc_emu

#define __syncthreads() ::kdc_emu::syncthreads(__LINE__)
#define __syncwarp(...) ::kdc_emu::syncwarp(kdc_emu_mask_or_all(__VA_ARGS__), __LINE__)
static inline unsigned kdc_emu_mask_or_all() { return 0xffffffffu; }
static inline unsigned kdc_emu_mask_or_all(unsigned m) { return m; }

#define __shfl_sync(mask, v, src, ...) \
    ::kdc_emu::shfl_from((mask), (v), ::kdc_emu::shfl_idx_src(::kdc_emu::lane_id(), (src), kdc_emu_width(__VA_ARGS__)), __LINE__)
#define __shfl_up_sync(mask, v, delta, ...) \
    ::kdc_emu::shfl_from((mask), (v), ::kdc_emu::shfl_up_src(::kdc_emu::lane_id(), (delta), kdc_emu_width(__VA_ARGS__)), __LINE__)
#define __shfl_down_sync(mask, v, delta, ...) \
    ::kdc_emu::shfl_from((mask), (v), ::kdc_emu::shfl_down_src(::kdc_emu::lane_id(), (delta), kdc_emu_width(__VA_ARGS__)), __LINE__)
#define __shfl_xor_sync(mask, v, lane_mask, ...) \
    ::kdc_emu::shfl_from((mask), (v), ::kdc_emu::shfl_xor_src(::kdc_emu::lane_id(), (lane_mask), kdc_emu_width(__VA_ARGS__)), __LINE__)
static inline int kdc_emu_width() { return 32; }
static inline int kdc_emu_width(int w) { return w; }

// ---------------------------------------------------------------------------------------------
// Atomics.

template <class T>
static inline T atomicAdd(T* p, T v) {
    return std::atomic_ref<T>(*p).fetch_add(v, std::memory_order_relaxed);
}
template <class T>
static inline T atomicExch(T* p, T v) {
    return std::atomic_ref<T>(*p).exchange(v, std::memory_order_relaxed);
}
template <class T>
static inline T atomicCAS(T* p, T expected, T desired) {
    std::atomic_ref<T>(*p).compare_exchange_strong(expected, desired, std::memory_order_relaxed);
    return expected;
}
template <class T>
static inline T atomicMax(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load(std::memory_order_relaxed);
    while (old < v && !a.compare_exchange_weak(old, v, std::memory_order_relaxed)) {
    }
    return old;
}
template <class T>
static inline T atomicMin(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load(std::memory_order_relaxed);
    while (v < old && !a.compare_exchange_weak(old, v, std::memory_order_relaxed)) {
    }
    return old;
}

static inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
static inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ---------------------------------------------------------------------------------------------
// Math intrinsics. The fast-math variants are the accurate functions here (a GPU's __expf is
// less accurate: the emulator cannot reproduce GPU rounding).

// glibc declares its own __expf & co., hence macros for these five.
#define __expf(x) expf(x)
#define __logf(x) logf(x)
#define __sinf(x) sinf(x)
#define __cosf(x) cosf(x)
#define __powf(x, y) powf((x), (y))
static inline float __fdividef(float x, float y) { return x / y; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __fsqrt_rn(float x) { return sqrtf(x); }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }

static inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, sizeof f);
    return f;
}
static inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, sizeof i);
    return i;
}
static inline float __uint_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
static inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}
static inline double __longlong_as_double(long long i) {
    double d;
    std::memcpy(&d, &i, sizeof d);
    return d;
}
static inline long long __double_as_longlong(double d) {
    long long i;
    std::memcpy(&i, &d, sizeof i);
    return i;
}

// CUDA's integer min/max overloads (device code calls them unqualified).
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
static inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }

// ---------------------------------------------------------------------------------------------
// Dynamic shared memory: kernels reach it through this one function (kernels/common.cuh
// declares the GPU version). The buffer is poisoned like static shared memory, and writes past
// the launch's dynamic shared size are detected through a guard zone.

void* kdc_dynamic_shared();
