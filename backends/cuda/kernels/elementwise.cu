// Elementwise kernels: unary functions and their backward, and the buffer operations of the
// Backend trait (fill, scale, clamp, lerp, add_into, select). Grid-stride loops over `n`
// elements; any launch shape works.
//
// The formulas are kdc-cpu's (backends/cpu/src/unary.rs), operation for operation.
#include "common.cuh"

// Unary function codes; src/kernels.rs (`UnaryCode`) mirrors them.
#define KDC_NEG 0
#define KDC_EXP 1
#define KDC_LOG 2
#define KDC_SQRT 3
#define KDC_ABS 4
#define KDC_GELU 5
#define KDC_QUICK_GELU 6
#define KDC_RELU 7
#define KDC_SIGMOID 8
#define KDC_TANH 9

#define KDC_FRAC_1_SQRT_2 0.70710678118654752f
#define KDC_FRAC_1_SQRT_2PI 0.39894228040143268f
#define KDC_QUICK_GELU_K 1.702f

__device__ __forceinline__ float kdc_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// The exact GELU, ½x(1 + erf(x/√2)).
__device__ __forceinline__ float kdc_gelu(float x) {
    return 0.5f * x * (1.0f + erff(x * KDC_FRAC_1_SQRT_2));
}

// Its derivative Φ(x) + x·φ(x).
__device__ __forceinline__ float kdc_gelu_grad(float x) {
    const float cdf = 0.5f * (1.0f + erff(x * KDC_FRAC_1_SQRT_2));
    const float pdf = expf(-0.5f * x * x) * KDC_FRAC_1_SQRT_2PI;
    return cdf + x * pdf;
}

__device__ __forceinline__ float kdc_quick_gelu_grad(float x) {
    const float s = kdc_sigmoid(x * KDC_QUICK_GELU_K);
    return s + KDC_QUICK_GELU_K * x * s * (1.0f - s);
}

__device__ __forceinline__ float kdc_unary(int op, float x) {
    switch (op) {
        case KDC_NEG: return -x;
        case KDC_EXP: return expf(x);
        case KDC_LOG: return logf(x);
        case KDC_SQRT: return sqrtf(x);
        case KDC_ABS: return fabsf(x);
        case KDC_GELU: return kdc_gelu(x);
        case KDC_QUICK_GELU: return x * kdc_sigmoid(x * KDC_QUICK_GELU_K);
        case KDC_RELU: return x > 0.0f ? x : 0.0f;
        case KDC_SIGMOID: return kdc_sigmoid(x);
        case KDC_TANH: return tanhf(x);
        default: return KDC_NAN;
    }
}

// dx from the input x, the forward output y and the upstream gradient g.
__device__ __forceinline__ float kdc_unary_backward(int op, float x, float y, float g) {
    switch (op) {
        case KDC_NEG: return -g;
        case KDC_EXP: return g * y;
        case KDC_LOG: return g / x;
        case KDC_SQRT: return g * 0.5f / y;
        case KDC_ABS: return g * (x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x));
        case KDC_GELU: return g * kdc_gelu_grad(x);
        case KDC_QUICK_GELU: return g * kdc_quick_gelu_grad(x);
        case KDC_RELU: return x > 0.0f ? g : 0.0f;
        case KDC_SIGMOID: return g * y * (1.0f - y);
        case KDC_TANH: return g * (1.0f - y * y);
        default: return KDC_NAN;
    }
}

// y[i] = f(x[i]).
extern "C" __global__ void kdc_unary_f32(int op, int n, const float* x, float* y, int round) {
    for (long long i = kdc_global_index(); i < n; i += kdc_grid_stride()) {
        y[i] = kdc_out(kdc_unary(op, x[i]), round);
    }
}

// dx[i] = dy[i]·f'(x[i]), written with x or the forward output y as kdc-cpu does.
extern "C" __global__ void kdc_unary_backward_f32(int op, int n, const float* x, const float* y,
                                                  const float* dy, float* dx, int round) {
    for (long long i = kdc_global_index(); i < n; i += kdc_grid_stride()) {
        dx[i] = kdc_out(kdc_unary_backward(op, x[i], y[i], dy[i]), round);
    }
}

// x[i] = value.
extern "C" __global__ void kdc_fill_f32(int n, float value, float* x) {
    for (long long i = kdc_global_index(); i < n; i += kdc_grid_stride()) {
        x[i] = value;
    }
}

// x[i] *= factor.
extern "C" __global__ void kdc_scale_f32(int n, float factor, float* x) {
    for (long long i = kdc_global_index(); i < n; i += kdc_grid_stride()) {
        x[i] = x[i] * factor;
    }
}

// x[i] = clamp(x[i], lo, hi) (a NaN stays NaN, as Rust's f32::clamp).
extern "C" __global__ void kdc_clamp_f32(int n, float lo, float hi, float* x) {
    for (long long i = kdc_global_index(); i < n; i += kdc_grid_stride()) {
        float v = x[i];
        v = v < lo ? lo : v;
        x[i] = v > hi ? hi : v;
    }
}

// dst[i] += weight·(src[i] − dst[i]): an exponential moving average step.
extern "C" __global__ void kdc_lerp_f32(int n, float weight, float* dst, const float* src) {
    for (long long i = kdc_global_index(); i < n; i += kdc_grid_stride()) {
        const float d = dst[i];
        dst[i] = d + weight * (src[i] - d);
    }
}

// dst[i] += src[i].
extern "C" __global__ void kdc_add_into_f32(int n, float* dst, const float* src) {
    for (long long i = kdc_global_index(); i < n; i += kdc_grid_stride()) {
        dst[i] = dst[i] + src[i];
    }
}

// out[i] = c[i] ≠ 0 ? a[i] : b[i] (the `Where` operation).
extern "C" __global__ void kdc_select_f32(int n, const float* c, const float* a, const float* b,
                                          float* out) {
    for (long long i = kdc_global_index(); i < n; i += kdc_grid_stride()) {
        out[i] = c[i] != 0.0f ? a[i] : b[i];
    }
}

// dst[i] = src[i].
extern "C" __global__ void kdc_copy_f32(int n, const float* src, float* dst) {
    for (long long i = kdc_global_index(); i < n; i += kdc_grid_stride()) {
        dst[i] = src[i];
    }
}

// The identity matrix [rows, cols]: 1 where the row equals the column, else 0.
extern "C" __global__ void kdc_eye_f32(int rows, int cols, float* out) {
    const long long total = (long long)rows * cols;
    for (long long e = kdc_global_index(); e < total; e += kdc_grid_stride()) {
        out[e] = e / cols == e % cols ? 1.0f : 0.0f;
    }
}

// The lowest finite f32 (Rust's f32::MIN, −FLT_MAX), the causal mask's "large negative".
#define KDC_LOWEST __int_as_float(0xff7fffff)

// The additive causal mask [l, l]: 0 on and below the diagonal, the lowest f32 above.
extern "C" __global__ void kdc_causal_mask_f32(int l, float* out) {
    const long long total = (long long)l * l;
    for (long long e = kdc_global_index(); e < total; e += kdc_grid_stride()) {
        out[e] = e % l <= e / l ? 0.0f : KDC_LOWEST;
    }
}
