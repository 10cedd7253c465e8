// Conversions between f32 and bf16 (round to nearest even, as torch's .to(bfloat16)).
#include <cuda_bf16.h>

#include "common.cuh"

extern "C" __global__ void kdc_f32_to_bf16(int n, const float* x, __nv_bfloat16* y) {
    for (long long i = kdc_global_index(); i < n; i += kdc_grid_stride()) {
        y[i] = __float2bfloat16_rn(x[i]);
    }
}

extern "C" __global__ void kdc_bf16_to_f32(int n, const __nv_bfloat16* x, float* y) {
    for (long long i = kdc_global_index(); i < n; i += kdc_grid_stride()) {
        y[i] = __bfloat162float(x[i]);
    }
}

// Rounds f32 values to bf16 in place (the storage of a bf16-typed value under autocast).
extern "C" __global__ void kdc_round_bf16(int n, float* y) {
    for (long long i = kdc_global_index(); i < n; i += kdc_grid_stride()) {
        y[i] = __bfloat162float(__float2bfloat16_rn(y[i]));
    }
}
