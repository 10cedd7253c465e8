// The k largest values along an axis of a tensor viewed as [outer, n, inner] (kdc-cpu's
// topk_axis), and the backward that routes each value's gradient back to its position.
//
// The order is kdc-cpu's: a NaN before any number (NaNs among themselves by position), larger
// values first, equal values (0 and −0 included) by position. It is a strict total order, so
// element j's rank — how many elements of its lane precede it — is unique: each thread takes
// one element, counts its predecessors (O(n) per element, no shared memory, no barrier) and,
// when the rank is below k, writes it there. Any launch shape works (grid-stride loops).
#include "common.cuh"

// Whether value v at position i comes before value w at position j.
__device__ __forceinline__ bool kdc_topk_before(float v, int i, float w, int j) {
    const bool vn = v != v, wn = w != w;
    if (vn != wn) return vn;
    if (vn || v == w) return i < j;
    return v > w;
}

// The rank of element j of lane (o, in) among the lane's n elements.
__device__ __forceinline__ int kdc_topk_rank(const float* x, long long base, int n, int inner,
                                             int j) {
    const float v = x[base + (long long)j * inner];
    int rank = 0;
    for (int l = 0; l < n; l++) {
        if (l != j && kdc_topk_before(x[base + (long long)l * inner], l, v, j)) rank++;
    }
    return rank;
}

// out[o, r, i] = the r-th of lane (o, i) in that order, r < k; one thread per element of x.
extern "C" __global__ void kdc_topk_f32(int outer, int n, int inner, int k, const float* x,
                                        float* out) {
    const long long total = (long long)outer * n * inner;
    for (long long e = kdc_global_index(); e < total; e += kdc_grid_stride()) {
        const long long i = e % inner, o = e / ((long long)n * inner);
        const int j = (int)((e / inner) % n);
        const long long base = o * n * inner + i;
        const int rank = kdc_topk_rank(x, base, n, inner, j);
        if (rank < k) out[(o * k + rank) * inner + i] = x[e];
    }
}

// dx[o, j, i] = dy[o, rank(j), i] where rank(j) < k, else 0; one thread per element of dx.
extern "C" __global__ void kdc_topk_backward_f32(int outer, int n, int inner, int k,
                                                 const float* x, const float* dy, float* dx) {
    const long long total = (long long)outer * n * inner;
    for (long long e = kdc_global_index(); e < total; e += kdc_grid_stride()) {
        const long long i = e % inner, o = e / ((long long)n * inner);
        const int j = (int)((e / inner) % n);
        const long long base = o * n * inner + i;
        const int rank = kdc_topk_rank(x, base, n, inner, j);
        dx[e] = rank < k ? dy[(o * k + rank) * inner + i] : 0.0f;
    }
}
