// Weight-only quantized ("packed") expert weights and the two weight sources the fused MoE ops are
// written over: plain float experts, and packed experts that are dequantized just in time, one
// expert block per task, inside the expert GEMMs (the float copy lives only in that task's scratch).
//
// Packed layout of a weight W [E, din, dout] (x W convention: din inputs, dout output channels):
//   codes  uint8 bytes [E, din, rowBytes]: row (e, i) is a little-endian bit stream of dout unsigned
//          `bits`-bit codes u (code j at bits [j*bits, (j+1)*bits)), rowBytes = ceil(dout*bits/32)*4
//          (the JS side holds the rows as int32 words);
//   scale, zero float [E, G, dout], G = ceil(din / group): one pair per group of `group`
//          consecutive input rows and output channel;
//   W[e, i, j] = scale[e, i / group, j] * (u - zero[e, i / group, j]).
// Symmetric codes have zero = qmax, an exact integer (docs/kernel-contract.md).
#pragma once
#include <cstdint>
#include <cstring>

#include "gemm.h"

namespace moelab {

struct PackedWeights {
  const uint8_t* codes;
  const float* scale;
  const float* zero;
  int bits;   // 2, 3, 4 or 8
  int group;  // input rows per scale group (>= 1)
  int din;
  int dout;
  long row_bytes() const { return (static_cast<long>(dout) * bits + 31) / 32 * 4; }
  long groups() const { return (din + group - 1) / group; }
};

// Bytes of codes of a [E, din, dout] packed weight.
inline long packed_code_bytes(int E, int din, int dout, int bits) {
  return static_cast<long>(E) * din * ((static_cast<long>(dout) * bits + 31) / 32 * 4);
}

// dst[(i - i0) * ld + j] = W[e, i, j] for rows i in [i0, i1).
void dequant_rows(const PackedWeights& w, int e, int i0, int i1, float* dst, long ld);

// C[rows, dout] = A[rows, din] W[e] for a few rows (decoding: a token or two per expert), without
// materialising W: per scale group, acc = A_g U_g on the raw codes, then C += s (acc - z rowsum(A_g)).
// `scratch` holds (rows + 1) * dout floats.
void packed_matmul_rows(const PackedWeights& w, int e, const float* A, int rows, float* C, long ldc, float* scratch);

// Up to this many rows per expert block the packed ops use packed_matmul_rows; more rows amortise
// a dequantized copy of the block and a BLAS GEMM.
constexpr long kPackedFewRows = 4;

namespace moe_detail {

// The weights of one expert bank as the fused ops read them. `into(e, dst, ld)` writes expert e's
// [din, dout] block with row stride ld; `expert(e, scratch)` returns a pointer to the block, in
// `scratch` (of scratch_size() floats) when it has to be materialised; `matmul(e, A, rows, C,
// ldc, scratch)` is C = A W[e] (C [rows, dout] with row stride ldc, A [rows, din]). kDequantizes:
// whether blocks are materialised (then a few rows go through `matmul`, not a dequantized copy).
struct DenseWeights {
  static constexpr bool kDequantizes = false;
  const float* w;
  int din, dout;
  long block() const { return static_cast<long>(din) * dout; }
  long scratch_size() const { return 0; }
  const float* expert(int e, float*) const { return w + e * block(); }
  void into(int e, float* dst, long ld) const {
    const float* src = w + e * block();
    for (int i = 0; i < din; i++) std::memcpy(dst + i * ld, src + static_cast<long>(i) * dout, sizeof(float) * dout);
  }
  void matmul(int e, const float* A, long rows, float* C, long ldc, float*) const {
    sgemm_st(false, false, static_cast<int>(rows), dout, din, 1.f, A, din, w + e * block(), dout, 0.f, C,
             static_cast<int>(ldc));
  }
};

struct PackedSource {
  static constexpr bool kDequantizes = true;
  PackedWeights p;
  long scratch_size() const { return static_cast<long>(p.din > kPackedFewRows ? p.din : kPackedFewRows + 1) * p.dout; }
  const float* expert(int e, float* scratch) const {
    dequant_rows(p, e, 0, p.din, scratch, p.dout);
    return scratch;
  }
  void into(int e, float* dst, long ld) const { dequant_rows(p, e, 0, p.din, dst, ld); }
  void matmul(int e, const float* A, long rows, float* C, long ldc, float* scratch) const {
    if (rows <= kPackedFewRows) return packed_matmul_rows(p, e, A, static_cast<int>(rows), C, ldc, scratch);
    sgemm_st(false, false, static_cast<int>(rows), p.dout, p.din, 1.f, A, p.din, expert(e, scratch), p.dout, 0.f, C,
             static_cast<int>(ldc));
  }
};

}  // namespace moe_detail
}  // namespace moelab
