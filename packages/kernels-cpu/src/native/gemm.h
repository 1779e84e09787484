// Single-precision GEMM, row-major: C = alpha * op(A) * op(B) + beta * C, op(X) = X or X^T.
// beta == 0 means C is write-only (its old contents, even NaN, are ignored).
#pragma once

namespace moelab {

// Name of the GEMM in use: "openblas" or "builtin".
const char* gemm_name();
// True when the addon was linked against OpenBLAS.
bool have_blas();
// Choose OpenBLAS (when linked) or the builtin packed kernel; returns the name now in use.
const char* set_gemm(bool use_blas);

// On the calling thread only (kernels that parallelise at a coarser grain call this from tasks).
void sgemm_st(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
              int ldb, float beta, float* C, int ldc);

// A batch of same-shape GEMMs spread over the thread pool. Matrix b of the batch uses
// A + aOff[b], B + bOff[b], C + b * strideC (aOff/bOff may be null: then b * strideA / b * strideB).
void sgemm_batched(bool ta, bool tb, int batch, int M, int N, int K, const float* A, long strideA,
                   const int* aIdx, const float* B, long strideB, const int* bIdx, float* C, long strideC);

// One GEMM spread over the thread pool.
inline void sgemm(bool ta, bool tb, int M, int N, int K, const float* A, const float* B, float* C) {
  sgemm_batched(ta, tb, 1, M, N, K, A, 0, nullptr, B, 0, nullptr, C, 0);
}

}  // namespace moelab
