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
// Symmetric codes have zero = qmax, an exact integer (docs/compression.md#quantization).
#pragma once
#include <cstdint>
#include <cstring>

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

namespace moe_detail {

// The weights of one expert bank as the fused ops read them. `into(e, dst, ld)` writes expert e's
// [din, dout] block with row stride ld; `expert(e, scratch)` returns a pointer to the block, in
// `scratch` (of scratch_size() floats) when it has to be materialised.
struct DenseWeights {
  const float* w;
  int din, dout;
  long block() const { return static_cast<long>(din) * dout; }
  long scratch_size() const { return 0; }
  const float* expert(int e, float*) const { return w + e * block(); }
  void into(int e, float* dst, long ld) const {
    const float* src = w + e * block();
    for (int i = 0; i < din; i++) std::memcpy(dst + i * ld, src + static_cast<long>(i) * dout, sizeof(float) * dout);
  }
};

struct PackedSource {
  PackedWeights p;
  long scratch_size() const { return static_cast<long>(p.din) * p.dout; }
  const float* expert(int e, float* scratch) const {
    dequant_rows(p, e, 0, p.din, scratch, p.dout);
    return scratch;
  }
  void into(int e, float* dst, long ld) const { dequant_rows(p, e, 0, p.din, dst, ld); }
};

}  // namespace moe_detail
}  // namespace moelab
