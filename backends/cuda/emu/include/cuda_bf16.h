// Stand-in for CUDA's <cuda_bf16.h> in the CPU emulation build: the bfloat16 type and the
// conversions kdc's kernels use, with the GPU's rounding (round to nearest even; every NaN
// becomes the canonical 0x7FFF, as the device's cvt.rn.bf16.f32 and CUDA's host path do).
#pragma once

#include <cstring>

struct __nv_bfloat16 {
    unsigned short x;
};

static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    unsigned int u;
    std::memcpy(&u, &f, sizeof u);
    __nv_bfloat16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        r.x = 0x7fff;
    } else {
        // Round to nearest, ties to even: add 0x7FFF plus the lowest kept bit.
        u += 0x7fffu + ((u >> 16) & 1u);
        r.x = (unsigned short)(u >> 16);
    }
    return r;
}

static inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }

static inline float __bfloat162float(__nv_bfloat16 h) {
    unsigned int u = (unsigned int)h.x << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
