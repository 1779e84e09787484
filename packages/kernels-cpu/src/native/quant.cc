// Dequantization of packed expert rows (layout in quant.h). Byte-aligned widths (8, 4, 2 bits) get
// their own loops, which the compiler vectorises; 3 bits reads each code from a 16-bit window.
#include "quant.h"

namespace moelab {

namespace {

template <int BITS>
void decode_row(const uint8_t* row, const float* s, const float* z, float* out, int n) {
  constexpr int per = 8 / BITS;
  constexpr unsigned mask = (1u << BITS) - 1u;
  const int whole = n / per * per;
  for (int j = 0; j < whole; j += per) {
    const unsigned b = row[j / per];
    for (int l = 0; l < per; l++) out[j + l] = s[j + l] * (static_cast<float>((b >> (l * BITS)) & mask) - z[j + l]);
  }
  for (int j = whole; j < n; j++) {
    const unsigned u = (row[j / per] >> ((j % per) * BITS)) & mask;
    out[j] = s[j] * (static_cast<float>(u) - z[j]);
  }
}

void decode_row_generic(const uint8_t* row, int bits, const float* s, const float* z, float* out, int n) {
  const unsigned mask = (1u << bits) - 1u;
  for (int j = 0; j < n; j++) {
    const long bit = static_cast<long>(j) * bits;
    const long byte = bit >> 3;
    const int shift = static_cast<int>(bit & 7);
    // The second byte only when the code crosses into it (it may lie past the last row otherwise).
    unsigned v = row[byte];
    if (shift + bits > 8) v |= static_cast<unsigned>(row[byte + 1]) << 8;
    out[j] = s[j] * (static_cast<float>((v >> shift) & mask) - z[j]);
  }
}

}  // namespace

void dequant_rows(const PackedWeights& w, int e, int i0, int i1, float* dst, long ld) {
  const long rb = w.row_bytes();
  const long G = w.groups();
  for (int i = i0; i < i1; i++) {
    const uint8_t* row = w.codes + (static_cast<long>(e) * w.din + i) * rb;
    const long g = static_cast<long>(e) * G + i / w.group;
    const float* s = w.scale + g * w.dout;
    const float* z = w.zero + g * w.dout;
    float* out = dst + static_cast<long>(i - i0) * ld;
    switch (w.bits) {
      case 8:
        decode_row<8>(row, s, z, out, w.dout);
        break;
      case 4:
        decode_row<4>(row, s, z, out, w.dout);
        break;
      case 2:
        decode_row<2>(row, s, z, out, w.dout);
        break;
      default:
        decode_row_generic(row, w.bits, s, z, out, w.dout);
    }
  }
}

}  // namespace moelab
