// Broadcasting and data movement (kdc-cpu's binary.rs and movement.rs): binary functions with
// NumPy broadcasting, a strided copy (permute, broadcast, slice, concatenation), and sum_to
// (the gradient of broadcasting). Shapes and strides travel by value in small structs whose
// layout src/launch.rs mirrors; a stride of 0 repeats an operand along that dimension.
#include "common.cuh"

#define KDC_MAX_RANK 8

#define KDC_ADD 0
#define KDC_SUB 1
#define KDC_MUL 2
#define KDC_DIV 3
#define KDC_MAXIMUM 4
#define KDC_MINIMUM 5
#define KDC_GT 6
#define KDC_GE 7
#define KDC_LT 8
#define KDC_LE 9
#define KDC_EQ 10
#define KDC_NE 11

// An output of `rank` dimensions `dims` (row-major, contiguous) and, per operand, its element
// strides along each output dimension.
struct KdcBroadcast {
    int rank;
    int dims[KDC_MAX_RANK];
    int a_strides[KDC_MAX_RANK];
    int b_strides[KDC_MAX_RANK];
};

__device__ __forceinline__ float kdc_binary(int op, float x, float y) {
    switch (op) {
        case KDC_ADD: return x + y;
        case KDC_SUB: return x - y;
        case KDC_MUL: return x * y;
        case KDC_DIV: return x / y;
        // The first operand on ties and when it is NaN, as kdc-cpu.
        case KDC_MAXIMUM: return (x >= y || x != x) ? x : y;
        case KDC_MINIMUM: return (x <= y || x != x) ? x : y;
        case KDC_GT: return x > y ? 1.0f : 0.0f;
        case KDC_GE: return x >= y ? 1.0f : 0.0f;
        case KDC_LT: return x < y ? 1.0f : 0.0f;
        case KDC_LE: return x <= y ? 1.0f : 0.0f;
        case KDC_EQ: return x == y ? 1.0f : 0.0f;
        case KDC_NE: return x != y ? 1.0f : 0.0f;
        default: return KDC_NAN;
    }
}

// out[e] = a[·] ∘ b[·] for the n elements of the output.
extern "C" __global__ void kdc_binary_f32(int op, int n, KdcBroadcast s, const float* a,
                                          const float* b, float* out, int round) {
    for (long long e = kdc_global_index(); e < n; e += kdc_grid_stride()) {
        long long rest = e, oa = 0, ob = 0;
        for (int d = s.rank - 1; d >= 0; d--) {
            const long long i = rest % s.dims[d];
            rest /= s.dims[d];
            oa += i * s.a_strides[d];
            ob += i * s.b_strides[d];
        }
        out[e] = kdc_out(kdc_binary(op, a[oa], b[ob]), round);
    }
}

// Element e of the iteration space `dims` goes from x[in_offset + Σ i_d·in_strides[d]] to
// out[out_offset + Σ i_d·out_strides[d]].
struct KdcStrided {
    int rank;
    int dims[KDC_MAX_RANK];
    int in_strides[KDC_MAX_RANK];
    int out_strides[KDC_MAX_RANK];
    int in_offset;
    int out_offset;
};

extern "C" __global__ void kdc_strided_copy_f32(int n, KdcStrided s, const float* x, float* out,
                                                 int round) {
    for (long long e = kdc_global_index(); e < n; e += kdc_grid_stride()) {
        long long rest = e, oi = s.in_offset, oo = s.out_offset;
        for (int d = s.rank - 1; d >= 0; d--) {
            const long long i = rest % s.dims[d];
            rest /= s.dims[d];
            oi += i * s.in_strides[d];
            oo += i * s.out_strides[d];
        }
        out[oo] = kdc_out(x[oi], round);
    }
}

// Output element o (of `kept` dimensions, row-major) sums x over the `reduced` dimensions:
// x[Σ i_d·kept_strides[d] + Σ r_d·reduced_strides[d]].
struct KdcSumTo {
    int kept_rank;
    int kept_dims[KDC_MAX_RANK];
    int kept_strides[KDC_MAX_RANK];
    int reduced_rank;
    int reduced_dims[KDC_MAX_RANK];
    int reduced_strides[KDC_MAX_RANK];
    int reduced_count;
};

// One block per output element (blockIdx.x + blockIdx.y·gridDim.x), its threads striding over
// the reduced elements.
extern "C" __global__ void kdc_sum_to_f32(int n_out, KdcSumTo s, const float* x, float* out,
                                           int round) {
    const long long o = blockIdx.x + (long long)blockIdx.y * gridDim.x;
    if (o >= n_out) return;  // whole block: no barrier is skipped by part of it
    long long rest = o, base = 0;
    for (int d = s.kept_rank - 1; d >= 0; d--) {
        base += (rest % s.kept_dims[d]) * s.kept_strides[d];
        rest /= s.kept_dims[d];
    }
    float acc = 0.0f;
    for (int r = threadIdx.x; r < s.reduced_count; r += blockDim.x) {
        long long rr = r, off = base;
        for (int d = s.reduced_rank - 1; d >= 0; d--) {
            off += (rr % s.reduced_dims[d]) * s.reduced_strides[d];
            rr /= s.reduced_dims[d];
        }
        acc += x[off];
    }
    acc = kdc_block_sum(acc);
    if (threadIdx.x == 0) out[o] = kdc_out(acc, round);
}
