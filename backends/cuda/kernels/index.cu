// Index operations (kdc-cpu's movement.rs): embedding lookup and row gathers, with their
// scatter-add backward (atomicAdd: the order of additions into one row is not fixed).
// Indices arrive as exact integers held in f32 tensors. An index that is negative, not an
// integer, or out of range gives NaN in the forward and is skipped in the backward (kdc-cpu
// panics; a kernel cannot).
#include "common.cuh"

// The row an index value names, or −1 if it names none of 0..limit.
__device__ __forceinline__ int kdc_row_index(float v, int limit) {
    const int i = (int)v;
    return (v >= 0.0f && v < (float)limit && (float)i == v) ? i : -1;
}

// out[i, :] = table[ids[i], :]; table [v, w], ids [n], out [n, w].
extern "C" __global__ void kdc_embedding_f32(int n, int v, int w, const float* table,
                                             const float* ids, float* out) {
    const long long total = (long long)n * w;
    for (long long e = kdc_global_index(); e < total; e += kdc_grid_stride()) {
        const long long i = e / w, c = e % w;
        const int id = kdc_row_index(ids[i], v);
        out[e] = id < 0 ? KDC_NAN : table[(long long)id * w + c];
    }
}

// dtable[ids[i], :] += dout[i, :] (dtable zeroed first).
extern "C" __global__ void kdc_embedding_backward_f32(int n, int v, int w, const float* ids,
                                                      const float* dout, float* dtable) {
    const long long total = (long long)n * w;
    for (long long e = kdc_global_index(); e < total; e += kdc_grid_stride()) {
        const long long i = e / w, c = e % w;
        const int id = kdc_row_index(ids[i], v);
        if (id >= 0) atomicAdd(&dtable[(long long)id * w + c], dout[e]);
    }
}

// out[b, j, :] = x[b, index[b, j], :]; x [batch, t, w], index [batch, k], out [batch, k, w].
extern "C" __global__ void kdc_gather_rows_f32(int batch, int t, int k, int w, const float* x,
                                               const float* index, float* out) {
    const long long total = (long long)batch * k * w;
    for (long long e = kdc_global_index(); e < total; e += kdc_grid_stride()) {
        const long long row = e / w, c = e % w, b = row / k;
        const int src = kdc_row_index(index[row], t);
        out[e] = src < 0 ? KDC_NAN : x[(b * t + src) * w + c];
    }
}

// dx[b, index[b, j], :] += dout[b, j, :] (dx zeroed first).
extern "C" __global__ void kdc_scatter_rows_f32(int batch, int t, int k, int w,
                                                const float* index, const float* dout,
                                                float* dx) {
    const long long total = (long long)batch * k * w;
    for (long long e = kdc_global_index(); e < total; e += kdc_grid_stride()) {
        const long long row = e / w, c = e % w, b = row / k;
        const int dst = kdc_row_index(index[row], t);
        if (dst >= 0) atomicAdd(&dx[(b * t + dst) * w + c], dout[e]);
    }
}
