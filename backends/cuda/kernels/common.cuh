// Shared definitions of kdc's CUDA kernels: constants NVRTC does not provide, the dynamic
// shared memory accessor, and warp/block reductions.
//
// Conventions of every kernel file:
// - entry points are `extern "C" __global__`, named kdc_<what>_f32 (or _bf16), f32 data;
// - element counts and dimensions are `int` (the Rust side checks they fit);
// - block reductions need blockDim.x to be a multiple of 32 (the launch helpers in
//   src/launch.rs guarantee it; the emulator reports a violation as an absent lane read);
// - no <cstdint>, INFINITY, FLT_MAX: NVRTC has no standard headers.
#pragma once

#define KDC_INF __int_as_float(0x7f800000)
#define KDC_NAN __int_as_float(0x7fffffff)
#define KDC_FULL_MASK 0xffffffffu

// Dynamic shared memory (the launch's shared_bytes), 16-byte aligned. The emulator provides its
// own definition: this is the only place a kernel source differs between the two builds.
#ifndef KDC_EMULATE
__device__ __forceinline__ void* kdc_dynamic_shared() {
    extern __shared__ __align__(16) unsigned char kdc_dynamic_shared_bytes[];
    return kdc_dynamic_shared_bytes;
}
#endif

// A value rounded to bfloat16 and held in f32 (round to nearest even; a NaN stays a quiet
// NaN): kdc_backend::round_bf16, bit for bit.
__device__ __forceinline__ float kdc_round_bf16_value(float x) {
    const unsigned int bits = __float_as_uint(x);
    if (x != x) return __uint_as_float((bits | 0x00400000u) & 0xffff0000u);
    return __uint_as_float((bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u);
}

// What a kernel stores into its output: rounded to bf16 when the output is typed bf16
// (`round` != 0, the last parameter of the kernels that take it: src/kernels.rs,
// ROUNDING_KERNELS), so that no separate rounding pass reads and writes the output again.
__device__ __forceinline__ float kdc_out(float x, int round) {
    return round ? kdc_round_bf16_value(x) : x;
}

// The global index of this thread and the grid-stride step, for elementwise loops.
__device__ __forceinline__ long long kdc_global_index() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ long long kdc_grid_stride() {
    return (long long)gridDim.x * blockDim.x;
}

__device__ __forceinline__ float kdc_warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(KDC_FULL_MASK, v, offset);
    }
    return v;
}

__device__ __forceinline__ double kdc_warp_sum_f64(double v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(KDC_FULL_MASK, v, offset);
    }
    return v;
}

// Larger of two values, a NaN winning (as the CPU kernels' maximum for stability shifts
// would make the result NaN too).
__device__ __forceinline__ float kdc_max_nan(float a, float b) {
    return (a != a || a > b) ? a : b;
}

__device__ __forceinline__ float kdc_warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v = kdc_max_nan(v, __shfl_xor_sync(KDC_FULL_MASK, v, offset));
    }
    return v;
}

// The sum over the block of every thread's `v`, returned to every thread. Contains two
// __syncthreads: every thread of the block must call it, the same number of times.
__device__ __forceinline__ float kdc_block_sum(float v) {
    __shared__ float partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = (blockDim.x + 31) >> 5;
    v = kdc_warp_sum(v);
    __syncthreads();  // a previous call's readers are done with `partial`
    if (lane == 0) {
        partial[warp] = v;
    }
    __syncthreads();
    return kdc_warp_sum(lane < warps ? partial[lane] : 0.0f);
}

__device__ __forceinline__ double kdc_block_sum_f64(double v) {
    __shared__ double partial_f64[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = (blockDim.x + 31) >> 5;
    v = kdc_warp_sum_f64(v);
    __syncthreads();
    if (lane == 0) {
        partial_f64[warp] = v;
    }
    __syncthreads();
    return kdc_warp_sum_f64(lane < warps ? partial_f64[lane] : 0.0);
}

// The block's maximum (NaN if any thread holds a NaN), returned to every thread.
__device__ __forceinline__ float kdc_block_max(float v) {
    __shared__ float partial_max[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = (blockDim.x + 31) >> 5;
    v = kdc_warp_max(v);
    __syncthreads();
    if (lane == 0) {
        partial_max[warp] = v;
    }
    __syncthreads();
    return kdc_warp_max(lane < warps ? partial_max[lane] : -KDC_INF);
}

// Which of two (value, index) candidates is the extreme of a lane, as kdc-cpu's
// `extreme_index`: a NaN wins over any number, the first NaN over later ones; otherwise the
// larger (or smaller) value, the smaller index on ties.
__device__ __forceinline__ bool kdc_arg_better(float v, int i, float w, int j, bool largest) {
    const bool vn = v != v, wn = w != w;
    if (vn || wn) {
        return vn && (!wn || i < j);
    }
    if (v == w) {
        return i < j;
    }
    return largest ? v > w : v < w;
}

// The block's extreme value and its position (`index` is -1 for threads that had none),
// returned to every thread.
__device__ __forceinline__ void kdc_block_arg(float* value, int* index, bool largest) {
    __shared__ float arg_value[32];
    __shared__ int arg_index[32];
    float v = *value;
    int i = *index;
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float w = __shfl_xor_sync(KDC_FULL_MASK, v, offset);
        const int j = __shfl_xor_sync(KDC_FULL_MASK, i, offset);
        if (j >= 0 && (i < 0 || kdc_arg_better(w, j, v, i, largest))) {
            v = w;
            i = j;
        }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) {
        arg_value[warp] = v;
        arg_index[warp] = i;
    }
    __syncthreads();
    v = lane < warps ? arg_value[lane] : 0.0f;
    i = lane < warps ? arg_index[lane] : -1;
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float w = __shfl_xor_sync(KDC_FULL_MASK, v, offset);
        const int j = __shfl_xor_sync(KDC_FULL_MASK, i, offset);
        if (j >= 0 && (i < 0 || kdc_arg_better(w, j, v, i, largest))) {
            v = w;
            i = j;
        }
    }
    *value = v;
    *index = i;
}
