// Fused scaled dot-product attention and its gradient (kdc-cpu's attention.rs): per batch item
// β, softmax(scale·q_β·k_βᵀ + bias)·v_β, q [batch, m, d], k [batch, n, d], v [batch, n, e]
// (contiguous), the bias broadcast to the scores [lead.., m, n] through its strides. The scores
// exist only in shared memory, one row per block; the backward recomputes them from each query
// row's log-sum-exp (flash attention's recomputation) instead of reading stored probabilities.
//
// Blocks: one per query row (forward, backward rows) or per key row (backward keys); blockDim.x
// a multiple of 32; dynamic shared memory of one or two rows (the launch sizes it).
#include "common.cuh"

#define KDC_ATTN_MAX_LEAD 3

struct KdcAttention {
    int batch, m, n, d, e;
    float scale;
    int has_bias;
    // The leading axes (batch = their product) and the bias's strides along them, then along
    // the query rows and the keys (0 where it broadcasts).
    int lead_rank;
    int lead_dims[KDC_ATTN_MAX_LEAD];
    int lead_strides[KDC_ATTN_MAX_LEAD];
    int si, sj;
};

__device__ __forceinline__ long long kdc_attn_bias_offset(const KdcAttention& a, long long beta) {
    long long offset = 0;
    for (int x = a.lead_rank - 1; x >= 0; x--) {
        offset += (beta % a.lead_dims[x]) * a.lead_strides[x];
        beta /= a.lead_dims[x];
    }
    return offset;
}

// scale·q[β, i]·k[β, j] + bias[β, i, j].
__device__ __forceinline__ float kdc_attn_score(const KdcAttention& a, const float* q,
                                                const float* k, const float* bias,
                                                long long beta, int i, int j, long long boff) {
    const float* qi = q + (beta * a.m + i) * a.d;
    const float* kj = k + (beta * a.n + j) * a.d;
    float s = 0.0f;
    for (int c = 0; c < a.d; c++) s += qi[c] * kj[c];
    s *= a.scale;
    if (a.has_bias) s += bias[boff + (long long)i * a.si + (long long)j * a.sj];
    return s;
}

// Row i of batch item β: p[j] = exp(s_j − max) for every key j (unnormalised; the block
// strides over j), the row's maximum in *mx and Σ_j p[j] in *sum, both on every thread.
__device__ __forceinline__ void kdc_attn_row(const KdcAttention& a, const float* q,
                                             const float* k, const float* bias, long long beta,
                                             int i, float* p, float* mx, float* sum) {
    const long long boff = kdc_attn_bias_offset(a, beta);
    float m = -KDC_INF;
    for (int j = threadIdx.x; j < a.n; j += blockDim.x) {
        p[j] = kdc_attn_score(a, q, k, bias, beta, i, j, boff);
        m = kdc_max_nan(m, p[j]);
    }
    m = kdc_block_max(m);
    float s = 0.0f;
    for (int j = threadIdx.x; j < a.n; j += blockDim.x) {
        p[j] = expf(p[j] - m);
        s += p[j];
    }
    *mx = m;
    *sum = kdc_block_sum(s);
}

// o[β, i] = Σ_j p_j v[β, j], p the softmax of row i's scores. Block per query row.
extern "C" __global__ void kdc_attention_f32(KdcAttention a, const float* q, const float* k,
                                             const float* v, const float* bias, float* o,
                                             int round) {
    float* s = (float*)kdc_dynamic_shared();
    const long long row = blockIdx.x;
    const long long beta = row / a.m;
    float mx, sum;
    kdc_attn_row(a, q, k, bias, beta, (int)(row % a.m), s, &mx, &sum);
    const float inv = 1.0f / sum;
    const float* vb = v + beta * a.n * a.e;
    for (int c = threadIdx.x; c < a.e; c += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < a.n; j++) acc += s[j] * vb[(long long)j * a.e + c];
        o[row * a.e + c] = kdc_out(acc * inv, round);
    }
}

// Per query row: dq[β, i] = Σ_j ds_j k[β, j] with ds_j = scale·p_j·(dp_j − D), dp_j =
// do[β, i]·v[β, j], D = Σ_j p_j dp_j; and the row's statistics (log-sum-exp, D) for the keys'
// pass. Block per query row; shared memory 2n floats.
extern "C" __global__ void kdc_attention_backward_rows_f32(KdcAttention a, const float* q,
                                                           const float* k, const float* v,
                                                           const float* bias, const float* dout,
                                                           float* dq, float* stats, int round) {
    float* p = (float*)kdc_dynamic_shared();
    float* ds = p + a.n;
    const long long row = blockIdx.x;
    const long long beta = row / a.m;
    float mx, sum;
    kdc_attn_row(a, q, k, bias, beta, (int)(row % a.m), p, &mx, &sum);
    const float inv = 1.0f / sum;
    const float* doi = dout + row * a.e;
    const float* vb = v + beta * a.n * a.e;
    float dot = 0.0f;
    for (int j = threadIdx.x; j < a.n; j += blockDim.x) {
        p[j] *= inv;
        float dp = 0.0f;
        for (int c = 0; c < a.e; c++) dp += doi[c] * vb[(long long)j * a.e + c];
        ds[j] = dp;
        dot += p[j] * dp;
    }
    dot = kdc_block_sum(dot);
    for (int j = threadIdx.x; j < a.n; j += blockDim.x) ds[j] = a.scale * p[j] * (ds[j] - dot);
    __syncthreads();
    const float* kb = k + beta * a.n * a.d;
    for (int c = threadIdx.x; c < a.d; c += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < a.n; j++) acc += ds[j] * kb[(long long)j * a.d + c];
        dq[row * a.d + c] = kdc_out(acc, round);
    }
    if (threadIdx.x == 0) {
        stats[2 * row] = mx + logf(sum);
        stats[2 * row + 1] = dot;
    }
}

// Per key row: dk[β, j] = Σ_i ds_ij q[β, i] and dv[β, j] = Σ_i p_ij do[β, i], the
// probabilities recomputed from the rows' log-sum-exp. Block per key row; shared memory 2m
// floats.
extern "C" __global__ void kdc_attention_backward_keys_f32(KdcAttention a, const float* q,
                                                           const float* k, const float* v,
                                                           const float* bias, const float* dout,
                                                           const float* stats, float* dk,
                                                           float* dv, int round) {
    float* p = (float*)kdc_dynamic_shared();
    float* ds = p + a.m;
    const long long key = blockIdx.x;
    const long long beta = key / a.n;
    const int j = (int)(key % a.n);
    const long long boff = kdc_attn_bias_offset(a, beta);
    const float* vj = v + key * a.e;
    for (int i = threadIdx.x; i < a.m; i += blockDim.x) {
        const long long row = beta * a.m + i;
        const float pij = expf(kdc_attn_score(a, q, k, bias, beta, i, j, boff) - stats[2 * row]);
        const float* doi = dout + row * a.e;
        float dp = 0.0f;
        for (int c = 0; c < a.e; c++) dp += doi[c] * vj[c];
        p[i] = pij;
        ds[i] = a.scale * pij * (dp - stats[2 * row + 1]);
    }
    __syncthreads();
    const float* qb = q + beta * a.m * a.d;
    for (int c = threadIdx.x; c < a.d; c += blockDim.x) {
        float acc = 0.0f;
        for (int i = 0; i < a.m; i++) acc += ds[i] * qb[(long long)i * a.d + c];
        dk[key * a.d + c] = kdc_out(acc, round);
    }
    const float* dob = dout + beta * a.m * a.e;
    for (int c = threadIdx.x; c < a.e; c += blockDim.x) {
        float acc = 0.0f;
        for (int i = 0; i < a.m; i++) acc += p[i] * dob[(long long)i * a.e + c];
        dv[key * a.e + c] = kdc_out(acc, round);
    }
}
