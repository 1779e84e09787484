// The register-blocked GEMM micro-kernel for WebAssembly SIMD128, and SIMD packing of the slivers
// that gemm.cc's scalar loops packed slowly there (compiled only when __wasm_simd128__ is defined,
// i.e. by the @moelab/kernels-wasm build; gemm.cc includes it in place of its 256-bit vector kernel).
// Packing is a large share of the small GEMMs of a fused MoE op (a 256 x 128 x 256 expert block):
// SIMD packing of A (two rows interleaved) and of B^T (4 x 4 transposes) made them 5-13% faster
// and the E64 MoE forward and backward ~5%.
//
// C[0:mr, 0:nr] = alpha * sum_k a[k, 0:MR] (x) b[k, 0:NR] + beta * C, with a and b the packed
// slivers of gemm.cc (k-major, MR floats of A and NR floats of B per k).
//
// Why 2x16: the tile is chosen for the code the engines generate, not for the register count.
// V8 (Node, Chromium) keeps one of the host's 16 SSE/AVX registers as scratch and, without a fused
// multiply-add in SIMD128 (it is in the relaxed-SIMD proposal, newer than Emscripten 3.1.6), needs
// a temporary per product: a tile of 12 accumulators (6x8) spills in its inner loop. Measured in
// Node 20 on an AMD EPYC core (packed slivers in cache, best of 7): 2x16 ~52 GFLOP/s (the core's
// 128-bit mul + add peak), 4x8 27-43, 3x8 40, 6x8 12-28. Two rows also keep the packed A sliver
// small, and 16 columns are the native kernel's NR, so both builds pack B alike.
#pragma once
#include <wasm_simd128.h>

namespace moelab {
namespace wasm_gemm {

constexpr int MR = 2, NR = 16;

inline void micro_kernel(int kc, const float* __restrict a, const float* __restrict b, float* C, int ldc, float alpha,
                         float beta, int mr, int nr) {
  v128_t c00 = wasm_f32x4_splat(0.f), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00, c13 = c00;
  for (int k = 0; k < kc; k++) {
    const v128_t b0 = wasm_v128_load(b), b1 = wasm_v128_load(b + 4), b2 = wasm_v128_load(b + 8),
                 b3 = wasm_v128_load(b + 12);
    const v128_t a0 = wasm_v128_load32_splat(a), a1 = wasm_v128_load32_splat(a + 1);
    c00 = wasm_f32x4_add(c00, wasm_f32x4_mul(a0, b0));
    c01 = wasm_f32x4_add(c01, wasm_f32x4_mul(a0, b1));
    c02 = wasm_f32x4_add(c02, wasm_f32x4_mul(a0, b2));
    c03 = wasm_f32x4_add(c03, wasm_f32x4_mul(a0, b3));
    c10 = wasm_f32x4_add(c10, wasm_f32x4_mul(a1, b0));
    c11 = wasm_f32x4_add(c11, wasm_f32x4_mul(a1, b1));
    c12 = wasm_f32x4_add(c12, wasm_f32x4_mul(a1, b2));
    c13 = wasm_f32x4_add(c13, wasm_f32x4_mul(a1, b3));
    a += MR;
    b += NR;
  }
  const v128_t acc[MR][4] = {{c00, c01, c02, c03}, {c10, c11, c12, c13}};
  if (mr == MR && nr == NR) {  // the hot path: a whole tile, stored with vector loads/stores
    const v128_t va = wasm_f32x4_splat(alpha), vb = wasm_f32x4_splat(beta);
    for (int i = 0; i < MR; i++) {
      float* crow = C + static_cast<long>(i) * ldc;
      for (int h = 0; h < 4; h++) {
        v128_t r = alpha == 1.f ? acc[i][h] : wasm_f32x4_mul(va, acc[i][h]);
        if (beta == 1.f) r = wasm_f32x4_add(r, wasm_v128_load(crow + 4 * h));
        else if (beta != 0.f) r = wasm_f32x4_add(r, wasm_f32x4_mul(vb, wasm_v128_load(crow + 4 * h)));
        wasm_v128_store(crow + 4 * h, r);
      }
    }
    return;
  }
  alignas(16) float tile[MR * NR];
  for (int i = 0; i < MR; i++)
    for (int h = 0; h < 4; h++) wasm_v128_store(tile + i * NR + 4 * h, acc[i][h]);
  for (int i = 0; i < mr; i++) {
    float* crow = C + static_cast<long>(i) * ldc;
    const float* trow = tile + i * NR;
    if (beta == 0.f) {
      for (int j = 0; j < nr; j++) crow[j] = alpha * trow[j];
    } else if (beta == 1.f) {
      for (int j = 0; j < nr; j++) crow[j] += alpha * trow[j];
    } else {
      for (int j = 0; j < nr; j++) crow[j] = alpha * trow[j] + beta * crow[j];
    }
  }
}

// op(B) = B^T, one whole sliver: dst[k * NR + j] = B[(col0 + j) * ldb + p0 + k] for k < kc, j < NR.
// Four columns of op(B) (rows of B) at a time, four k at a time, transposed in registers: the
// scalar loop gathered each float from another row.
inline void pack_b_transposed(const float* B, int ldb, int p0, int kc, int col0, float* dst) {
  for (int j = 0; j < NR; j += 4) {
    const float* r0 = B + static_cast<long>(col0 + j) * ldb + p0;
    const float* r1 = r0 + ldb;
    const float* r2 = r1 + ldb;
    const float* r3 = r2 + ldb;
    int k = 0;
    for (; k + 4 <= kc; k += 4) {
      const v128_t x0 = wasm_v128_load(r0 + k), x1 = wasm_v128_load(r1 + k), x2 = wasm_v128_load(r2 + k),
                   x3 = wasm_v128_load(r3 + k);
      const v128_t t0 = wasm_i32x4_shuffle(x0, x1, 0, 4, 1, 5), t1 = wasm_i32x4_shuffle(x2, x3, 0, 4, 1, 5),
                   t2 = wasm_i32x4_shuffle(x0, x1, 2, 6, 3, 7), t3 = wasm_i32x4_shuffle(x2, x3, 2, 6, 3, 7);
      float* d = dst + static_cast<long>(k) * NR + j;
      wasm_v128_store(d, wasm_i32x4_shuffle(t0, t1, 0, 1, 4, 5));
      wasm_v128_store(d + NR, wasm_i32x4_shuffle(t0, t1, 2, 3, 6, 7));
      wasm_v128_store(d + 2 * NR, wasm_i32x4_shuffle(t2, t3, 0, 1, 4, 5));
      wasm_v128_store(d + 3 * NR, wasm_i32x4_shuffle(t2, t3, 2, 3, 6, 7));
    }
    for (; k < kc; k++) {
      float* d = dst + static_cast<long>(k) * NR + j;
      d[0] = r0[k];
      d[1] = r1[k];
      d[2] = r2[k];
      d[3] = r3[k];
    }
  }
}

// op(A) = A, one whole sliver of two rows: dst[2k + i] = A[(row0 + i) * lda + p0 + k], four k at a
// time (the two rows interleaved in registers).
inline void pack_a_rows(const float* A, int lda, int row0, int p0, int kc, float* dst) {
  const float* r0 = A + static_cast<long>(row0) * lda + p0;
  const float* r1 = r0 + lda;
  int k = 0;
  for (; k + 4 <= kc; k += 4) {
    const v128_t x0 = wasm_v128_load(r0 + k), x1 = wasm_v128_load(r1 + k);
    wasm_v128_store(dst + 2 * k, wasm_i32x4_shuffle(x0, x1, 0, 4, 1, 5));
    wasm_v128_store(dst + 2 * k + 4, wasm_i32x4_shuffle(x0, x1, 2, 6, 3, 7));
  }
  for (; k < kc; k++) {
    dst[2 * k] = r0[k];
    dst[2 * k + 1] = r1[k];
  }
}

}  // namespace wasm_gemm
}  // namespace moelab
