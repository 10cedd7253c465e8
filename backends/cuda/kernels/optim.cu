// The optimiser's update and the gradient norm's partial sums (kdc-cpu's optim.rs).
#include "common.cuh"

// AdamW's per-update coefficients, computed on the host in f64 and rounded to f32 once, as
// kdc-cpu does (src/launch.rs `AdamWCoefficients` has the same layout).
struct KdcAdamW {
    float decay;          // 1 − lr·weight_decay
    float lerp_weight;    // 1 − β1
    float beta2;          // β2
    float one_minus_beta2;
    float neg_step_size;  // −lr / (1 − β1ᵗ)
    float bc2_sqrt;       // √(1 − β2ᵗ)
    float eps;
    int lerp_small;       // |lerp_weight| < ½: which of torch.lerp's two formulas
};

// One AdamW step in place (PyTorch's convention; see kdc-cpu's adamw_step).
extern "C" __global__ void kdc_adamw_f32(int n, KdcAdamW h, float* param, const float* grad,
                                         float* m, float* v) {
    for (long long i = kdc_global_index(); i < n; i += kdc_grid_stride()) {
        const float g = grad[i];
        float p = param[i] * h.decay;
        float mi = m[i];
        mi = h.lerp_small ? mi + h.lerp_weight * (g - mi)
                          : g - (g - mi) * (1.0f - h.lerp_weight);
        const float vi = v[i] * h.beta2 + h.one_minus_beta2 * g * g;
        const float denom = sqrtf(vi) / h.bc2_sqrt + h.eps;
        param[i] = p + h.neg_step_size * (mi / denom);
        m[i] = mi;
        v[i] = vi;
    }
}

// partial[blockIdx.x] = Σ x[i]² over the elements this block visits (grid-stride), in f64.
// The host adds the gridDim.x partial sums (in f64) for the global gradient norm.
extern "C" __global__ void kdc_sum_squares_f64(int n, const float* x, double* partial) {
    double s = 0.0;
    for (long long i = kdc_global_index(); i < n; i += kdc_grid_stride()) {
        const double v = x[i];
        s += v * v;
    }
    s = kdc_block_sum_f64(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}
