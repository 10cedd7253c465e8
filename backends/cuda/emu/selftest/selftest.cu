// Deliberately buggy kernels (and one correct twin) with which the tests check that the
// emulator catches each kind of bug it claims to. Compiled into the emulator only: kdc does not
// ship them and the NVRTC check does not compile them.
#include "../../kernels/common.cuh"

// Each thread stores its value in shared memory and reads its right neighbour's, with the
// barrier between the two steps only if `with_barrier`.
extern "C" __global__ void kdc_selftest_neighbour(int with_barrier, const float* x, float* y) {
    __shared__ float s[256];
    const int t = threadIdx.x;
    s[t] = x[t];
    if (with_barrier) {
        __syncthreads();
    }
    y[t] = s[(t + 1) % blockDim.x];
}

// Half the block waits at one __syncthreads, the other half at another.
extern "C" __global__ void kdc_selftest_divergent_barrier(float* y) {
    if (threadIdx.x < 16) {
        __syncthreads();
        y[threadIdx.x] = 1.0f;
    } else {
        __syncthreads();
        y[threadIdx.x] = 2.0f;
    }
}

// Half a warp shuffles (with a full mask) while the other half waits at __syncthreads: a hang
// on a GPU.
extern "C" __global__ void kdc_selftest_deadlock(float* y) {
    float v = (float)threadIdx.x;
    if ((threadIdx.x & 31) < 16) {
        v = __shfl_down_sync(KDC_FULL_MASK, v, 1);
    }
    __syncthreads();
    y[threadIdx.x] = v;
}

// An off-by-one bound: writes y[0..=n].
extern "C" __global__ void kdc_selftest_off_by_one(int n, float* y) {
    for (int i = threadIdx.x; i <= n; i += blockDim.x) {
        y[i] = 1.0f;
    }
}

// Only even threads initialise their shared slot; every thread reads its own.
extern "C" __global__ void kdc_selftest_uninitialised_shared(float* y) {
    __shared__ float s[256];
    if (threadIdx.x % 2 == 0) {
        s[threadIdx.x] = 1.0f;
    }
    __syncthreads();
    y[threadIdx.x] = s[threadIdx.x];
}

// Writes one float past the end of the dynamic shared memory it was given (n floats).
extern "C" __global__ void kdc_selftest_dynamic_overflow(int n, float* y) {
    float* s = (float*)kdc_dynamic_shared();
    if (threadIdx.x == 0) {
        for (int i = 0; i <= n; i++) s[i] = (float)i;
        y[0] = s[0];
    }
}

// A warp sum over blockDim.x threads, correct only when blockDim.x is a multiple of 32.
extern "C" __global__ void kdc_selftest_block_sum(const float* x, float* y) {
    const float s = kdc_block_sum(x[threadIdx.x]);
    if (threadIdx.x == 0) y[0] = s;
}
