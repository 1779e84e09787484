// Dequantization of packed expert rows (layout in quant.h), and the few-rows product straight from
// the codes. Rows decode to raw codes first (8, 4 and 2 bits by shifts within a byte, 3 bits from a
// 16-bit window per code), then one vectorisable pass applies the scales and zero points.
#include "quant.h"

#include <algorithm>

namespace moelab {

namespace {

// out[j] = u_j (the raw code as a float) for one row of n codes; BITS divides 8.
template <int BITS>
void codes_row_aligned(const uint8_t* row, float* out, int n) {
  constexpr int per = 8 / BITS;
  constexpr unsigned mask = (1u << BITS) - 1u;
  const int whole = n / per * per;
  for (int j = 0; j < whole; j += per) {
    const unsigned b = row[j / per];
    for (int l = 0; l < per; l++) out[j + l] = static_cast<float>((b >> (l * BITS)) & mask);
  }
  for (int j = whole; j < n; j++) out[j] = static_cast<float>((row[j / per] >> ((j % per) * BITS)) & mask);
}

// The same for any width (3 bits: each code from a 16-bit window).
void codes_row(const uint8_t* row, int bits, float* out, int n) {
  switch (bits) {
    case 8:
      return codes_row_aligned<8>(row, out, n);
    case 4:
      return codes_row_aligned<4>(row, out, n);
    case 2:
      return codes_row_aligned<2>(row, out, n);
    default: {
      const unsigned mask = (1u << bits) - 1u;
      for (int j = 0; j < n; j++) {
        const long bit = static_cast<long>(j) * bits;
        const int shift = static_cast<int>(bit & 7);
        // The second byte only when the code crosses into it (it may lie past the last row otherwise).
        unsigned v = row[bit >> 3];
        if (shift + bits > 8) v |= static_cast<unsigned>(row[(bit >> 3) + 1]) << 8;
        out[j] = static_cast<float>((v >> shift) & mask);
      }
    }
  }
}

}  // namespace

void packed_matmul_rows(const PackedWeights& w, int e, const float* A, int rows, float* C, long ldc, float* scratch) {
  const int din = w.din, dout = w.dout;
  const long rb = w.row_bytes();
  const long G = w.groups();
  float* u = scratch;            // one decoded row of codes
  float* acc = scratch + dout;   // rows x dout partial products on the raw codes
  float asum[kPackedFewRows];
  for (int r = 0; r < rows; r++) std::memset(C + r * ldc, 0, sizeof(float) * dout);
  for (long g = 0; g < G; g++) {
    const int i0 = static_cast<int>(g * w.group), i1 = std::min(din, i0 + w.group);
    std::memset(acc, 0, sizeof(float) * rows * dout);
    for (int r = 0; r < rows; r++) asum[r] = 0.f;
    for (int i = i0; i < i1; i++) {
      const uint8_t* row = w.codes + (static_cast<long>(e) * din + i) * rb;
      codes_row(row, w.bits, u, dout);
      for (int r = 0; r < rows; r++) {
        const float a = A[static_cast<long>(r) * din + i];
        asum[r] += a;
        float* ar = acc + static_cast<long>(r) * dout;
        for (int j = 0; j < dout; j++) ar[j] += a * u[j];
      }
    }
    const float* s = w.scale + (static_cast<long>(e) * G + g) * dout;
    const float* z = w.zero + (static_cast<long>(e) * G + g) * dout;
    for (int r = 0; r < rows; r++) {
      const float* ar = acc + static_cast<long>(r) * dout;
      float* cr = C + r * ldc;
      for (int j = 0; j < dout; j++) cr[j] += s[j] * (ar[j] - z[j] * asum[r]);
    }
  }
}

void dequant_rows(const PackedWeights& w, int e, int i0, int i1, float* dst, long ld) {
  const long rb = w.row_bytes();
  const long G = w.groups();
  for (int i = i0; i < i1; i++) {
    const long g = static_cast<long>(e) * G + i / w.group;
    const float* s = w.scale + g * w.dout;
    const float* z = w.zero + g * w.dout;
    float* out = dst + static_cast<long>(i - i0) * ld;
    codes_row(w.codes + (static_cast<long>(e) * w.din + i) * rb, w.bits, out, w.dout);
    for (int j = 0; j < w.dout; j++) out[j] = s[j] * (out[j] - z[j]);
  }
}

}  // namespace moelab
