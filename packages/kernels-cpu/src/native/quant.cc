// Dequantization of packed expert rows (layout in quant.h), and the few-rows product straight from
// the codes. Rows decode to raw codes first (4 and 2 bits eight codes at a time by per-lane shifts,
// 8 bits by widening bytes, 3 bits from a 16-bit window per code), then one vectorisable pass
// applies the scales and zero points.
#include "quant.h"

#include <algorithm>
#include <cstring>

namespace moelab {

namespace {

typedef uint32_t v8u __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef float v8f __attribute__((vector_size(32)));

// out[j] = u_j (the raw code as a float) for one row of n codes; BITS divides 8. For 4 and 2 bits,
// eight codes at a time: the little-endian word holding them (4 bits: 4 bytes, 2 bits: 2) is
// broadcast to eight lanes, each lane shifts its own code down and masks it, and the lanes convert
// to float together (per-lane shifts: vpsrlvd with AVX2) instead of one code per step (4 bits:
// ~4x faster on a 128 x 256 expert block). Bytes (8 bits) widen in a plain loop, which vectorises.
template <int BITS>
void codes_row_aligned(const uint8_t* row, float* out, int n) {
  constexpr int per = 8 / BITS;
  constexpr unsigned mask = (1u << BITS) - 1u;
  int j = 0;
  if constexpr (BITS == 8) {
    for (; j < n; j++) out[j] = static_cast<float>(row[j]);
  } else {
    constexpr unsigned bytes = 8 / per;  // bytes holding eight codes: 4 (4 bits) or 2 (2 bits)
    for (; j + 8 <= n; j += 8) {
      uint32_t x = 0;
      std::memcpy(&x, row + j / per, bytes);
      const v8u w = {x, x, x, x, x, x, x, x};
      const v8u sh = {0, BITS, 2 * BITS, 3 * BITS, 4 * BITS, 5 * BITS, 6 * BITS, 7 * BITS};
      const v8f f = __builtin_convertvector((v8i)((w >> sh) & mask), v8f);
      std::memcpy(out + j, &f, sizeof f);
    }
  }
  for (; j < n; j++) out[j] = static_cast<float>((row[j / per] >> ((j % per) * BITS)) & mask);
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

// Eight codes from the little-endian word at p (BITS 4: 4 bytes, 2: 2 bytes) as floats, by
// per-lane shifts (see codes_row_aligned).
template <int BITS>
inline v8f decode8(const uint8_t* p) {
  constexpr unsigned mask = (1u << BITS) - 1u;
  uint32_t x = 0;
  std::memcpy(&x, p, BITS);  // 8 codes of BITS bits take BITS bytes
  const v8u w = {x, x, x, x, x, x, x, x};
  const v8u sh = {0, BITS, 2 * BITS, 3 * BITS, 4 * BITS, 5 * BITS, 6 * BITS, 7 * BITS};
  return __builtin_convertvector((v8i)((w >> sh) & mask), v8f);
}

// One token (BITS 4 or 2): acc[j] = sum over rows i in [i0, i1) of a[i] * u_ij, 32 columns at a
// time in four vector accumulators that stay in registers over the rows (as a matrix-vector product
// streams its matrix once), decoding each group of eight codes right where it is used.
template <int BITS>
void gemv_codes(const uint8_t* codes, long rb, const float* a, int i0, int i1, float* acc, int n) {
  constexpr int per = 8 / BITS;
  int j = 0;
  for (; j + 32 <= n; j += 32) {
    v8f c0 = {}, c1 = {}, c2 = {}, c3 = {};
    for (int i = i0; i < i1; i++) {
      const uint8_t* p = codes + i * rb + j / per;
      const float ai = a[i];
      c0 += ai * decode8<BITS>(p);
      c1 += ai * decode8<BITS>(p + BITS);
      c2 += ai * decode8<BITS>(p + 2 * BITS);
      c3 += ai * decode8<BITS>(p + 3 * BITS);
    }
    std::memcpy(acc + j, &c0, sizeof c0);
    std::memcpy(acc + j + 8, &c1, sizeof c1);
    std::memcpy(acc + j + 16, &c2, sizeof c2);
    std::memcpy(acc + j + 24, &c3, sizeof c3);
  }
  for (; j + 8 <= n; j += 8) {
    v8f c = {};
    for (int i = i0; i < i1; i++) c += a[i] * decode8<BITS>(codes + i * rb + j / per);
    std::memcpy(acc + j, &c, sizeof c);
  }
  constexpr unsigned mask = (1u << BITS) - 1u;
  for (; j < n; j++) {
    float c = 0.f;
    for (int i = i0; i < i1; i++)
      c += a[i] * static_cast<float>((codes[i * rb + j / per] >> ((j % per) * BITS)) & mask);
    acc[j] = c;
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
    if (rows == 1 && (w.bits == 4 || w.bits == 2)) {
      const uint8_t* codes = w.codes + static_cast<long>(e) * din * rb;
      for (int i = i0; i < i1; i++) asum[0] += A[i];
      if (w.bits == 4) gemv_codes<4>(codes, rb, A, i0, i1, acc, dout);
      else gemv_codes<2>(codes, rb, A, i0, i1, acc, dout);
    } else {
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
