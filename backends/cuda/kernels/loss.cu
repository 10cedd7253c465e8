// Cross-entropy of row logits [rows, n] (rows ≤ n) against the diagonal: row i's target is
// column i (kdc-cpu's loss.rs). The loss is the mean of the per-row terms: this kernel writes
// the terms, and kdc_reduce_f32 (mean over one lane) averages them, so the result does not
// depend on the order blocks run in.
#include "common.cuh"

// logsumexp of this block's row, returned to every thread (−∞ for a row of −∞).
__device__ __forceinline__ float kdc_row_logsumexp(const float* row, int n) {
    float m = -KDC_INF;
    for (int j = threadIdx.x; j < n; j += blockDim.x) m = kdc_max_nan(m, row[j]);
    m = kdc_block_max(m);
    float s = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) s += expf(row[j] - m);
    s = kdc_block_sum(s);
    return m == -KDC_INF ? m : m + logf(s);
}

// terms[i] = logsumexp(logits[i, :]) − logits[i, i]; one block per row.
extern "C" __global__ void kdc_ce_diagonal_terms_f32(int rows, int n, const float* logits,
                                                     float* terms) {
    const long long i = blockIdx.x;
    const float* row = logits + i * n;
    const float lse = kdc_row_logsumexp(row, n);
    if (threadIdx.x == 0) terms[i] = lse - row[i];
}

// dlogits[i, j] = (g/rows)·(softmax(logits[i, :])_j − [i = j]), g = *dloss (a device
// scalar); one block per row.
extern "C" __global__ void kdc_ce_diagonal_backward_f32(int rows, int n, const float* logits,
                                                        const float* dloss, float* dlogits) {
    const long long i = blockIdx.x;
    const float* row = logits + i * n;
    const float lse = kdc_row_logsumexp(row, n);
    const float c = dloss[0] / (float)rows;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float d = c * expf(row[j] - lse);
        dlogits[i * n + j] = j == i ? d - c : d;
    }
}

// ---------------------------------------------------------------------------------------------
// The other losses (kdc-cpu's loss.rs). Their forward sums terms in f64, as kdc-cpu does: each
// block (or row) leaves its f64 sum as two floats, hi = (float)s and lo = (float)(s − hi) (an
// f64 does not fit an arbitrary float scratch offset's alignment; the pair keeps ~48 bits),
// and kdc_mean_of_split_f32 adds the pairs in f64 and divides. The result does not depend on
// the order blocks run in.

// Elementwise loss codes (src/kernels.rs `PairLossCode` mirrors them).
#define KDC_LOSS_MSE 0
#define KDC_LOSS_L1 1
#define KDC_LOSS_SMOOTH_L1 2

// Row loss codes (src/kernels.rs `RowLossCode`).
#define KDC_LOSS_KL 0
#define KDC_LOSS_CE_SOFT 1

__device__ __forceinline__ void kdc_store_split(float* out, double s) {
    const float hi = (float)s;
    out[0] = hi;
    out[1] = (float)(s - (double)hi);
}

__device__ __forceinline__ double kdc_pair_term(int kind, float x, float y, float beta) {
    const double d = (double)x - (double)y;
    if (kind == KDC_LOSS_MSE) return d * d;
    const double z = fabs(d);
    if (kind == KDC_LOSS_L1) return z;
    const double b = (double)beta;
    return z < b ? 0.5 * z * z / b : z - 0.5 * b;
}

// partial[2·blockIdx.x, +1] = the split f64 sum of this block's terms (grid-stride over n).
extern "C" __global__ void kdc_pair_loss_partials_f32(int kind, int n, float beta,
                                                      const float* a, const float* b,
                                                      float* partial) {
    double s = 0.0;
    for (long long i = kdc_global_index(); i < n; i += kdc_grid_stride()) {
        s += kdc_pair_term(kind, a[i], b[i], beta);
    }
    s = kdc_block_sum_f64(s);
    if (threadIdx.x == 0) kdc_store_split(partial + 2 * (long long)blockIdx.x, s);
}

// out[0] = (Σ_i parts[2i] + parts[2i + 1]) / divisor, in f64 (one block).
extern "C" __global__ void kdc_mean_of_split_f32(int count, int divisor, const float* parts,
                                                 float* out) {
    double s = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) {
        s += (double)parts[2 * i] + (double)parts[2 * i + 1];
    }
    s = kdc_block_sum_f64(s);
    if (threadIdx.x == 0) out[0] = (float)(s / (double)divisor);
}

__device__ __forceinline__ float kdc_sign0(float x) {
    return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f);
}

// d = ∂loss/∂a (which = 0) or ∂loss/∂b (which = 1), g = *dloss: mse 2g(a − b)/n; l1
// g·sign(a − b)/n; smooth_l1 (g/n)·(a − b)/β inside |a − b| < β, else (g/n)·sign(a − b).
extern "C" __global__ void kdc_pair_loss_backward_f32(int kind, int which, int n, float beta,
                                                      const float* a, const float* b,
                                                      const float* dloss, float* d) {
    const float g = dloss[0];
    const float c = kind == KDC_LOSS_MSE ? g * 2.0f / (float)n : g / (float)n;
    for (long long i = kdc_global_index(); i < n; i += kdc_grid_stride()) {
        const float diff = a[i] - b[i];
        float h;
        if (kind == KDC_LOSS_MSE) {
            h = c * diff;
        } else if (kind == KDC_LOSS_SMOOTH_L1 && fabsf(diff) < beta) {
            h = c * diff / beta;
        } else {
            h = c * kdc_sign0(diff);
        }
        d[i] = which == 0 ? h : -h;
    }
}

// terms[2r, +1] = the split f64 term of row r of [rows, n]; one block per row.
// KL: Σ_j p·(a − b), p = exp(a) (0 where p = 0); soft cross-entropy (a the logits, b the
// target): Σ_j −b·(a − logsumexp(a)).
extern "C" __global__ void kdc_row_loss_terms_f32(int kind, int rows, int n, const float* a,
                                                  const float* b, float* terms) {
    const long long r = blockIdx.x;
    const float* ar = a + r * n;
    const float* br = b + r * n;
    double s = 0.0;
    if (kind == KDC_LOSS_KL) {
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            const double p = exp((double)ar[j]);
            if (p != 0.0) s += p * ((double)ar[j] - (double)br[j]);
        }
    } else {
        const double lse = (double)kdc_row_logsumexp(ar, n);
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            s += -(double)br[j] * ((double)ar[j] - lse);
        }
    }
    s = kdc_block_sum_f64(s);
    if (threadIdx.x == 0) kdc_store_split(terms + 2 * r, s);
}

// The gradients of the row losses, c = *dloss/rows; one block per row.
// KL: ∂/∂a = c·p·(a − b + 1) (0 where p = 0), ∂/∂b = −c·p.
// Soft cross-entropy: ∂/∂logits = c·(softmax·Σ target − target), ∂/∂target = c·(lse − logits).
extern "C" __global__ void kdc_row_loss_backward_f32(int kind, int which, int rows, int n,
                                                     const float* a, const float* b,
                                                     const float* dloss, float* d) {
    const long long r = blockIdx.x;
    const float* ar = a + r * n;
    const float* br = b + r * n;
    float* dr = d + r * n;
    const float c = dloss[0] / (float)rows;
    if (kind == KDC_LOSS_KL) {
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            const float p = expf(ar[j]);
            if (which == 0) {
                dr[j] = p == 0.0f ? 0.0f : c * p * (ar[j] - br[j] + 1.0f);
            } else {
                dr[j] = -c * p;
            }
        }
        return;
    }
    const float lse = kdc_row_logsumexp(ar, n);
    if (which == 0) {
        float t = 0.0f;
        for (int j = threadIdx.x; j < n; j += blockDim.x) t += br[j];
        const float tsum = kdc_block_sum(t);
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            dr[j] = c * (expf(ar[j] - lse) * tsum - br[j]);
        }
    } else {
        for (int j = threadIdx.x; j < n; j += blockDim.x) dr[j] = c * (lse - ar[j]);
    }
}
