// Layer normalisation over the last axis of x: [rows, d] (kdc-cpu's layer_norm.rs):
// μ = mean, σ² = biased variance, ρ = 1/√(σ² + eps), out = (x − μ)·ρ·gain + bias.
// Row kernels: one block per row (blockDim.x a multiple of 32).
#include "common.cuh"

// μ and ρ of this block's row, returned to every thread.
__device__ __forceinline__ void kdc_row_stats(const float* xr, int d, float eps, float* mean,
                                              float* rstd) {
    const float inv_d = 1.0f / (float)d;
    float s = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) s += xr[j];
    const float m = kdc_block_sum(s) * inv_d;
    float q = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float c = xr[j] - m;
        q += c * c;
    }
    const float var = kdc_block_sum(q) * inv_d;
    *mean = m;
    *rstd = 1.0f / sqrtf(var + eps);
}

// out = layer_norm(x)·gain + bias; also mean[r] = μ, rstd[r] = ρ.
extern "C" __global__ void kdc_layer_norm_f32(int rows, int d, float eps, const float* x,
                                              const float* gain, const float* bias, float* out,
                                              float* mean, float* rstd) {
    const long long r = blockIdx.x;
    const float* xr = x + r * d;
    float m, rho;
    kdc_row_stats(xr, d, eps, &m, &rho);
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        out[r * d + j] = (xr[j] - m) * rho * gain[j] + bias[j];
    }
    if (threadIdx.x == 0) {
        mean[r] = m;
        rstd[r] = rho;
    }
}

// mean[r] = μ, rstd[r] = ρ only (for the parameter gradients).
extern "C" __global__ void kdc_layer_norm_stats_f32(int rows, int d, float eps, const float* x,
                                                    float* mean, float* rstd) {
    const long long r = blockIdx.x;
    float m, rho;
    kdc_row_stats(x + r * d, d, eps, &m, &rho);
    if (threadIdx.x == 0) {
        mean[r] = m;
        rstd[r] = rho;
    }
}

// With x̂ = (x − μ)ρ and g = gain·dy (statistics recomputed from x):
// dx = ρ·(g − mean(g) − x̂·mean(g·x̂)).
extern "C" __global__ void kdc_layer_norm_backward_input_f32(int rows, int d, float eps,
                                                             const float* x, const float* gain,
                                                             const float* dy, float* dx) {
    const long long r = blockIdx.x;
    const float* xr = x + r * d;
    const float* gr = dy + r * d;
    float m, rho;
    kdc_row_stats(xr, d, eps, &m, &rho);
    float sg = 0.0f, sgx = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float gy = gr[j] * gain[j];
        sg += gy;
        sgx += gy * (xr[j] - m) * rho;
    }
    const float inv_d = 1.0f / (float)d;
    const float a = kdc_block_sum(sg) * inv_d;
    const float b = kdc_block_sum(sgx) * inv_d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float xhat = (xr[j] - m) * rho;
        dx[r * d + j] = rho * (gr[j] * gain[j] - a - xhat * b);
    }
}

#define KDC_LN_COLS 32
#define KDC_LN_ROW_GROUPS 8

// out[0, j] = Σ_r dy[r, j]·x̂[r, j] (gain), out[1, j] = Σ_r dy[r, j] (bias), from the saved
// statistics. Blocks of (32 columns × 8 row groups): each thread sums every 8th row of its
// column, then the 8 partial sums of a column are added in order through shared memory.
extern "C" __global__ void kdc_layer_norm_param_grads_f32(int rows, int d, const float* x,
                                                          const float* dy, const float* mean,
                                                          const float* rstd, float* out) {
    __shared__ float part_gain[KDC_LN_ROW_GROUPS][KDC_LN_COLS + 1];
    __shared__ float part_bias[KDC_LN_ROW_GROUPS][KDC_LN_COLS + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int j = blockIdx.x * KDC_LN_COLS + tx;
    float sgain = 0.0f, sbias = 0.0f;
    if (j < d) {
        for (int r = ty; r < rows; r += KDC_LN_ROW_GROUPS) {
            const float g = dy[(long long)r * d + j];
            sgain += g * ((x[(long long)r * d + j] - mean[r]) * rstd[r]);
            sbias += g;
        }
    }
    part_gain[ty][tx] = sgain;
    part_bias[ty][tx] = sbias;
    __syncthreads();
    if (ty == 0 && j < d) {
        float g = 0.0f, b = 0.0f;
        for (int k = 0; k < KDC_LN_ROW_GROUPS; k++) {
            g += part_gain[k][tx];
            b += part_bias[k][tx];
        }
        out[j] = g;
        out[d + j] = b;
    }
}
