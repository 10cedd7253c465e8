// Operators along one axis of a tensor viewed as [outer, n, inner] (kdc-cpu's reduce.rs): a
// *lane* is x[o, 0..n, i]. One block per lane (blockIdx.x = o·inner + i), its threads striding
// over the lane's n elements and combining with block reductions; blockDim.x is a multiple of
// 32. For the last axis (inner = 1) a lane is a contiguous row.
//
// softmax, log-softmax and their backward; L2 normalisation and its backward; reductions (sum,
// mean, biased variance, max, min) with their backward and arg max/min.
#include "common.cuh"

#define KDC_SUM 0
#define KDC_MEAN 1
#define KDC_VAR 2
#define KDC_MAX 3
#define KDC_MIN 4

// The offset of element j of this block's lane.
struct KdcLane {
    long long base;
    int inner;
};

__device__ __forceinline__ long long kdc_at(const KdcLane& l, int j) {
    return l.base + (long long)j * l.inner;
}

__device__ __forceinline__ KdcLane kdc_lane(int n, int inner) {
    const long long lane = blockIdx.x;
    const long long o = lane / inner, i = lane % inner;
    KdcLane l;
    l.base = o * n * inner + i;
    l.inner = inner;
    return l;
}

// out[o, j, i] = exp(x − m) / Σ exp(x − m), m the lane's maximum.
extern "C" __global__ void kdc_softmax_f32(int outer, int n, int inner, const float* x,
                                           float* y) {
    const KdcLane l = kdc_lane(n, inner);
    float m = -KDC_INF;
    for (int j = threadIdx.x; j < n; j += blockDim.x) m = kdc_max_nan(m, x[kdc_at(l, j)]);
    m = kdc_block_max(m);
    float s = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) s += expf(x[kdc_at(l, j)] - m);
    const float inv = 1.0f / kdc_block_sum(s);
    for (int j = threadIdx.x; j < n; j += blockDim.x) y[kdc_at(l, j)] = expf(x[kdc_at(l, j)] - m) * inv;
}

// out = x − m − ln Σ exp(x − m).
extern "C" __global__ void kdc_log_softmax_f32(int outer, int n, int inner, const float* x,
                                               float* y) {
    const KdcLane l = kdc_lane(n, inner);
    float m = -KDC_INF;
    for (int j = threadIdx.x; j < n; j += blockDim.x) m = kdc_max_nan(m, x[kdc_at(l, j)]);
    m = kdc_block_max(m);
    float s = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) s += expf(x[kdc_at(l, j)] - m);
    const float shift = m + logf(kdc_block_sum(s));
    for (int j = threadIdx.x; j < n; j += blockDim.x) y[kdc_at(l, j)] = x[kdc_at(l, j)] - shift;
}

// dx = y·(dy − Σ dy·y), y the softmax output.
extern "C" __global__ void kdc_softmax_backward_f32(int outer, int n, int inner, const float* y,
                                                    const float* dy, float* dx) {
    const KdcLane l = kdc_lane(n, inner);
    float s = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) s += y[kdc_at(l, j)] * dy[kdc_at(l, j)];
    const float dot = kdc_block_sum(s);
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        dx[kdc_at(l, j)] = y[kdc_at(l, j)] * (dy[kdc_at(l, j)] - dot);
    }
}

// dx = dy − exp(y)·Σ dy, y the log-softmax output.
extern "C" __global__ void kdc_log_softmax_backward_f32(int outer, int n, int inner,
                                                        const float* y, const float* dy,
                                                        float* dx) {
    const KdcLane l = kdc_lane(n, inner);
    float s = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) s += dy[kdc_at(l, j)];
    const float total = kdc_block_sum(s);
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        dx[kdc_at(l, j)] = dy[kdc_at(l, j)] - expf(y[kdc_at(l, j)]) * total;
    }
}

// out = x / max(‖x‖₂, eps) (a NaN norm gives eps, as Rust's f32::max and fmaxf do).
extern "C" __global__ void kdc_normalize_f32(int outer, int n, int inner, float eps,
                                             const float* x, float* y) {
    const KdcLane l = kdc_lane(n, inner);
    float s = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) s += x[kdc_at(l, j)] * x[kdc_at(l, j)];
    const float inv = 1.0f / fmaxf(sqrtf(kdc_block_sum(s)), eps);
    for (int j = threadIdx.x; j < n; j += blockDim.x) y[kdc_at(l, j)] = x[kdc_at(l, j)] * inv;
}

// With r = ‖x‖₂: dx = dy/r − x·⟨x, dy⟩/r³ if r > eps, else dy/eps.
extern "C" __global__ void kdc_normalize_backward_f32(int outer, int n, int inner, float eps,
                                                      const float* x, const float* dy,
                                                      float* dx) {
    const KdcLane l = kdc_lane(n, inner);
    float ss = 0.0f, sd = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float v = x[kdc_at(l, j)];
        ss += v * v;
        sd += v * dy[kdc_at(l, j)];
    }
    ss = kdc_block_sum(ss);
    sd = kdc_block_sum(sd);
    const float r = sqrtf(ss);
    float a, c;
    if (r > eps) {
        a = 1.0f / r;
        c = sd * a * a * a;
    } else {
        a = 1.0f / eps;
        c = 0.0f;
    }
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        dx[kdc_at(l, j)] = a * dy[kdc_at(l, j)] - c * x[kdc_at(l, j)];
    }
}

// The lane's extreme (largest if `largest`) and its first position, NaN counting as extreme.
__device__ __forceinline__ void kdc_lane_arg(const KdcLane& l, int n, const float* x,
                                             bool largest, float* value, int* index) {
    float v = 0.0f;
    int at = -1;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float w = x[kdc_at(l, j)];
        if (at < 0 || kdc_arg_better(w, j, v, at, largest)) {
            v = w;
            at = j;
        }
    }
    kdc_block_arg(&v, &at, largest);
    *value = v;
    *index = at;
}

// out[o, i] = reduction of x[o, ·, i]; `kind` is KDC_SUM … KDC_MIN.
extern "C" __global__ void kdc_reduce_f32(int kind, int outer, int n, int inner, const float* x,
                                          float* out) {
    const KdcLane l = kdc_lane(n, inner);
    float result;
    if (kind == KDC_MAX || kind == KDC_MIN) {
        int at;
        kdc_lane_arg(l, n, x, kind == KDC_MAX, &result, &at);
    } else {
        float s = 0.0f;
        for (int j = threadIdx.x; j < n; j += blockDim.x) s += x[kdc_at(l, j)];
        s = kdc_block_sum(s);
        const float inv_n = 1.0f / (float)n;
        if (kind == KDC_SUM) {
            result = s;
        } else if (kind == KDC_MEAN) {
            result = s * inv_n;
        } else {
            const float mu = s * inv_n;
            float q = 0.0f;
            for (int j = threadIdx.x; j < n; j += blockDim.x) {
                const float d = x[kdc_at(l, j)] - mu;
                q += d * d;
            }
            result = kdc_block_sum(q) * inv_n;
        }
    }
    if (threadIdx.x == 0) out[blockIdx.x] = result;
}

// dx[o, j, i] from x and dy[o, i]: dy (sum), dy/n (mean), dy·2(x − μ)/n (variance), dy at the
// first extreme and 0 elsewhere (max, min).
extern "C" __global__ void kdc_reduce_backward_f32(int kind, int outer, int n, int inner,
                                                   const float* x, const float* dy, float* dx) {
    const KdcLane l = kdc_lane(n, inner);
    const float g = dy[blockIdx.x];
    const float inv_n = 1.0f / (float)n;
    if (kind == KDC_MAX || kind == KDC_MIN) {
        float v;
        int at;
        kdc_lane_arg(l, n, x, kind == KDC_MAX, &v, &at);
        for (int j = threadIdx.x; j < n; j += blockDim.x) dx[kdc_at(l, j)] = j == at ? g : 0.0f;
    } else if (kind == KDC_VAR) {
        float s = 0.0f;
        for (int j = threadIdx.x; j < n; j += blockDim.x) s += x[kdc_at(l, j)];
        const float mu = kdc_block_sum(s) * inv_n;
        const float c = g * (inv_n + inv_n);
        for (int j = threadIdx.x; j < n; j += blockDim.x) dx[kdc_at(l, j)] = c * (x[kdc_at(l, j)] - mu);
    } else {
        const float c = kind == KDC_MEAN ? inv_n * g : g;
        for (int j = threadIdx.x; j < n; j += blockDim.x) dx[kdc_at(l, j)] = c;
    }
}

// out[o, i] = the first position of the lane's extreme, as a float.
extern "C" __global__ void kdc_arg_f32(int largest, int outer, int n, int inner, const float* x,
                                       float* out) {
    const KdcLane l = kdc_lane(n, inner);
    float v;
    int at;
    kdc_lane_arg(l, n, x, largest != 0, &v, &at);
    if (threadIdx.x == 0) out[blockIdx.x] = (float)at;
}
