// A shared-memory tiled matrix product: the fallback and reference (the backend uses cuBLAS
// for real work). Row-major, as kdc-cpu's matmul, with leading dimensions and batch strides as
// cuBLAS's strided-batched GEMM takes them:
//
//   C_β[i, j] (+)= Σ_p A_β[i, p]·B_β[p, j]    for β < batch, i < m, j < n, p < k,
//
// A_β[i, p] = a[β·stride_a + i·lda + p] (a[β·stride_a + p·lda + i] when ta), B_β[p, j] =
// b[β·stride_b + p·ldb + j] (b[β·stride_b + j·ldb + p] when tb), C_β[i, j] =
// c[β·stride_c + i·ldc + j]. A stride of 0 shares the operand across the batch. Blocks of
// 16×16 threads, one output tile each; blockIdx.z walks the batch (grid-stride beyond 65535).
//
// kdc_matmul_bf16 reads A and B as bfloat16 and accumulates in f32 (the fallback and
// reference of bf16 autocast's products, which the backend runs with cublasGemmEx).
#include <cuda_bf16.h>

#include "common.cuh"

#define KDC_TILE 16

__device__ float kdc_load(const float* p, long long i) { return p[i]; }
__device__ float kdc_load(const __nv_bfloat16* p, long long i) { return __bfloat162float(p[i]); }

// The body of both kernels; `as`, `bs` are the block's shared tiles.
template <typename T>
__device__ void kdc_matmul_tiles(int batch, int m, int n, int k, int ta, int tb, int lda, int ldb,
                                 int ldc, int stride_a, int stride_b, int stride_c,
                                 int accumulate, const T* a, const T* b, float* c,
                                 float (*as)[KDC_TILE + 1], float (*bs)[KDC_TILE + 1]) {
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int row = blockIdx.y * KDC_TILE + ty, col = blockIdx.x * KDC_TILE + tx;
    for (long long beta = blockIdx.z; beta < batch; beta += gridDim.z) {
        const T* ab = a + beta * stride_a;
        const T* bb = b + beta * stride_b;
        float acc = 0.0f;
        for (int p0 = 0; p0 < k; p0 += KDC_TILE) {
            // as[ty][tx] = A[row, p0 + tx], bs[ty][tx] = B[p0 + ty, col] (0 outside).
            const int pa = p0 + tx, pb = p0 + ty;
            as[ty][tx] = (row < m && pa < k)
                             ? kdc_load(ab, ta ? (long long)pa * lda + row
                                               : (long long)row * lda + pa)
                             : 0.0f;
            bs[ty][tx] = (pb < k && col < n)
                             ? kdc_load(bb, tb ? (long long)col * ldb + pb
                                               : (long long)pb * ldb + col)
                             : 0.0f;
            __syncthreads();
            for (int q = 0; q < KDC_TILE; q++) acc += as[ty][q] * bs[q][tx];
            __syncthreads();
        }
        if (row < m && col < n) {
            float* o = c + beta * stride_c + (long long)row * ldc + col;
            *o = accumulate ? *o + acc : acc;
        }
    }
}

extern "C" __global__ void kdc_matmul_f32(int batch, int m, int n, int k, int ta, int tb,
                                          int lda, int ldb, int ldc, int stride_a,
                                          int stride_b, int stride_c, int accumulate,
                                          const float* a, const float* b, float* c) {
    __shared__ float as[KDC_TILE][KDC_TILE + 1];
    __shared__ float bs[KDC_TILE][KDC_TILE + 1];
    kdc_matmul_tiles(batch, m, n, k, ta, tb, lda, ldb, ldc, stride_a, stride_b, stride_c,
                     accumulate, a, b, c, as, bs);
}

extern "C" __global__ void kdc_matmul_bf16(int batch, int m, int n, int k, int ta, int tb,
                                           int lda, int ldb, int ldc, int stride_a,
                                           int stride_b, int stride_c, int accumulate,
                                           const __nv_bfloat16* a, const __nv_bfloat16* b,
                                           float* c) {
    __shared__ float as[KDC_TILE][KDC_TILE + 1];
    __shared__ float bs[KDC_TILE][KDC_TILE + 1];
    kdc_matmul_tiles(batch, m, n, k, ta, tb, lda, ldb, ldc, stride_a, stride_b, stride_c,
                     accumulate, a, b, c, as, bs);
}
