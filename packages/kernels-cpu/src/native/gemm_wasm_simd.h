// The register-blocked GEMM micro-kernel for WebAssembly SIMD128 (compiled only when
// __wasm_simd128__ is defined, i.e. by the @moelab/kernels-wasm build; gemm.cc includes it in
// place of its 256-bit vector kernel).
//
// C[0:mr, 0:nr] = alpha * sum_k a[k, 0:MR] (x) b[k, 0:NR] + beta * C, with a and b the packed
// slivers of gemm.cc (k-major, MR floats of A and NR floats of B per k).
//
// Why 6x8: the engine that runs the module (V8, SpiderMonkey) maps v128 values to the host's
// 16 SSE/NEON registers. 6x8 keeps 12 accumulators + 2 B vectors + 1 broadcast A value live (15),
// the largest tile that does not spill on x86-64; gemm.cc's 6x16 tile of 256-bit vectors would be
// 24 v128 accumulators here. SIMD128 has no fused multiply-add (it is in the relaxed-SIMD proposal),
// so each step is a mul and an add.
#pragma once
#include <wasm_simd128.h>

namespace moelab {
namespace wasm_gemm {

constexpr int MR = 6, NR = 8;

inline void micro_kernel(int kc, const float* __restrict a, const float* __restrict b, float* C, int ldc, float alpha,
                         float beta, int mr, int nr) {
  v128_t c00 = wasm_f32x4_splat(0.f), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
         c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int k = 0; k < kc; k++) {
    const v128_t b0 = wasm_v128_load(b), b1 = wasm_v128_load(b + 4);
    v128_t ak = wasm_v128_load32_splat(a + 0);
    c00 = wasm_f32x4_add(c00, wasm_f32x4_mul(ak, b0));
    c01 = wasm_f32x4_add(c01, wasm_f32x4_mul(ak, b1));
    ak = wasm_v128_load32_splat(a + 1);
    c10 = wasm_f32x4_add(c10, wasm_f32x4_mul(ak, b0));
    c11 = wasm_f32x4_add(c11, wasm_f32x4_mul(ak, b1));
    ak = wasm_v128_load32_splat(a + 2);
    c20 = wasm_f32x4_add(c20, wasm_f32x4_mul(ak, b0));
    c21 = wasm_f32x4_add(c21, wasm_f32x4_mul(ak, b1));
    ak = wasm_v128_load32_splat(a + 3);
    c30 = wasm_f32x4_add(c30, wasm_f32x4_mul(ak, b0));
    c31 = wasm_f32x4_add(c31, wasm_f32x4_mul(ak, b1));
    ak = wasm_v128_load32_splat(a + 4);
    c40 = wasm_f32x4_add(c40, wasm_f32x4_mul(ak, b0));
    c41 = wasm_f32x4_add(c41, wasm_f32x4_mul(ak, b1));
    ak = wasm_v128_load32_splat(a + 5);
    c50 = wasm_f32x4_add(c50, wasm_f32x4_mul(ak, b0));
    c51 = wasm_f32x4_add(c51, wasm_f32x4_mul(ak, b1));
    a += MR;
    b += NR;
  }
  const v128_t acc[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  if (mr == MR && nr == NR) {  // the hot path: a whole tile, stored with vector loads/stores
    const v128_t va = wasm_f32x4_splat(alpha), vb = wasm_f32x4_splat(beta);
    for (int i = 0; i < MR; i++) {
      float* crow = C + static_cast<long>(i) * ldc;
      for (int h = 0; h < 2; h++) {
        v128_t r = alpha == 1.f ? acc[i][h] : wasm_f32x4_mul(va, acc[i][h]);
        if (beta == 1.f) r = wasm_f32x4_add(r, wasm_v128_load(crow + 4 * h));
        else if (beta != 0.f) r = wasm_f32x4_add(r, wasm_f32x4_mul(vb, wasm_v128_load(crow + 4 * h)));
        wasm_v128_store(crow + 4 * h, r);
      }
    }
    return;
  }
  alignas(16) float tile[MR * NR];
  for (int i = 0; i < MR; i++) {
    wasm_v128_store(tile + i * NR, acc[i][0]);
    wasm_v128_store(tile + i * NR + 4, acc[i][1]);
  }
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

}  // namespace wasm_gemm
}  // namespace moelab
