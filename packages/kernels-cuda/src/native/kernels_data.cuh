// Data movement and selection: one strided copy for Transpose, Slice, StridedSlice, Concat, Split,
// Pad, Pack and the KV-cache write (out[off_out(i)] = x[off_x(i)] over an index space of rank <= 6),
// Tile (out[i] = x[i mod shape]), the int32 and comparison binaries, Select with a broadcast
// condition, Range, and the scans Cumsum / Cumprod. Part of kernels.cu's translation unit.
#pragma once

namespace mlc {
namespace {
// Both operands' strides walk the same index space s.shape: x by s.a, out by s.b.
template <class T>
__global__ void strided_copy_k(const T* x, T* out, long n, Strides6 s) {
  const long i = global_index();
  if (i < n) out[offset6(i, s, s.b)] = x[offset6(i, s, s.a)];
}

// NaN in, NaN out (JavaScript's Math.max / Math.min).
MLC_HD float max_nan(float a, float b) { return (a != a || b != b) ? a + b : (a > b ? a : b); }
MLC_HD float min_nan(float a, float b) { return (a != a || b != b) ? a + b : (a < b ? a : b); }
MLC_HD int max_nan(int a, int b) { return a > b ? a : b; }
MLC_HD int min_nan(int a, int b) { return a < b ? a : b; }

// out = a (op) b with broadcast strides: the arithmetic codes (BINARY_OP_CODE 0..4 and the
// kernels' own maximum 11, minimum 12, pow 13) in T, the comparisons (5..10) as a 0 / 1 byte.
template <class T>
__global__ void arith_k(const T* a, const T* b, T* out, long n, Strides6 s, int op) {
  const long i = global_index();
  if (i >= n) return;
  const T x = a[offset6(i, s, s.a)], y = b[offset6(i, s, s.b)];
  T r;
  switch (op) {
    case 0: r = x * y; break;
    case 1: r = x + y; break;
    case 2: r = x - y; break;
    case 3: r = x / y; break;
    case 4: r = (x - y) * (x - y); break;
    case 11: r = max_nan(x, y); break;
    case 12: r = min_nan(x, y); break;
    default: r = static_cast<T>(powf(static_cast<float>(x), static_cast<float>(y))); break;
  }
  out[i] = r;
}
template <class T>
__global__ void compare_k(const T* a, const T* b, uint8_t* out, long n, Strides6 s, int op) {
  const long i = global_index();
  if (i >= n) return;
  const T x = a[offset6(i, s, s.a)], y = b[offset6(i, s, s.b)];
  bool r;
  switch (op) {
    case 5: r = x == y; break;
    case 6: r = x != y; break;
    case 7: r = x > y; break;
    case 8: r = x >= y; break;
    case 9: r = x < y; break;
    default: r = x <= y; break;
  }
  out[i] = r ? 1 : 0;
}

// out[i] = cond[c(i)] ? t[i] : e[i], c(i) the condition's offset over the values' index space (its
// strides s.a are 0 along the axes it is broadcast over).
template <class T>
__global__ void select_k(const uint8_t* cond, const T* t, const T* e, T* out, long n, Strides6 s) {
  const long i = global_index();
  if (i < n) out[i] = cond[offset6(i, s, s.a)] ? t[i] : e[i];
}

// Tile: out (index space s.shape) repeats x, whose shape is s.b and strides s.a.
template <class T>
__global__ void tile_k(const T* x, T* out, long n, Strides6 s) {
  const long i = global_index();
  if (i >= n) return;
  long rest = i, off = 0;
  for (int d = s.rank - 1; d >= 0; d--) {
    const long q = rest / s.shape[d];
    off += ((rest - q * s.shape[d]) % s.b[d]) * s.a[d];
    rest = q;
  }
  out[i] = x[off];
}

// One thread per line of x viewed as [outer, R, inner]: the running sum (or product) along R, in
// order or reversed, inclusive or exclusive (the line's first output is then 0, or 1 for a
// product), accumulated in T as tfjs-cpu does.
template <class T>
__global__ void scan_k(const T* x, T* out, long outer, long R, long inner, bool product, bool exclusive, bool reverse) {
  const long i = global_index();
  if (i >= outer * inner) return;
  const long o = i / inner, base = o * R * inner + (i - o * inner);
  T acc = product ? T(1) : T(0);
  for (long r = 0; r < R; r++) {
    const long at = base + (reverse ? R - 1 - r : r) * inner;
    const T v = x[at];
    if (exclusive) out[at] = acc;
    acc = product ? acc * v : acc + v;
    if (!exclusive) out[at] = acc;
  }
}

template <class T>
__global__ void range_k(T* out, long n, double start, double step) {
  const long i = global_index();
  if (i < n) out[i] = static_cast<T>(start + static_cast<double>(i) * step);
}
}  // namespace

void strided_copy(const void* x, void* out, long n, const Strides6& s, int elemBytes) {
  const dim3 g(blocks_for(n, kThreads)), b(kThreads);
  if (elemBytes == 4) launch(strided_copy_k<unsigned>, g, b, static_cast<const unsigned*>(x), static_cast<unsigned*>(out), n, s);
  else launch(strided_copy_k<uint8_t>, g, b, static_cast<const uint8_t*>(x), static_cast<uint8_t*>(out), n, s);
}

void binary_op(const void* a, const void* b, void* out, long n, const Strides6& s, int op, bool isInt) {
  const dim3 g(blocks_for(n, kThreads)), blk(kThreads);
  const bool cmp = op >= 5 && op <= 10;
  if (isInt) {
    const int* x = static_cast<const int*>(a);
    const int* y = static_cast<const int*>(b);
    if (cmp) launch(compare_k<int>, g, blk, x, y, static_cast<uint8_t*>(out), n, s, op);
    else launch(arith_k<int>, g, blk, x, y, static_cast<int*>(out), n, s, op);
  } else {
    const float* x = static_cast<const float*>(a);
    const float* y = static_cast<const float*>(b);
    if (cmp) launch(compare_k<float>, g, blk, x, y, static_cast<uint8_t*>(out), n, s, op);
    else launch(arith_k<float>, g, blk, x, y, static_cast<float*>(out), n, s, op);
  }
}

void select(const uint8_t* cond, const void* t, const void* e, void* out, long n, const Strides6& s, int elemBytes) {
  const dim3 g(blocks_for(n, kThreads)), b(kThreads);
  if (elemBytes == 4)
    launch(select_k<unsigned>, g, b, cond, static_cast<const unsigned*>(t), static_cast<const unsigned*>(e), static_cast<unsigned*>(out), n, s);
  else launch(select_k<uint8_t>, g, b, cond, static_cast<const uint8_t*>(t), static_cast<const uint8_t*>(e), static_cast<uint8_t*>(out), n, s);
}

void tile(const void* x, void* out, long n, const Strides6& s, int elemBytes) {
  const dim3 g(blocks_for(n, kThreads)), b(kThreads);
  if (elemBytes == 4) launch(tile_k<unsigned>, g, b, static_cast<const unsigned*>(x), static_cast<unsigned*>(out), n, s);
  else launch(tile_k<uint8_t>, g, b, static_cast<const uint8_t*>(x), static_cast<uint8_t*>(out), n, s);
}

void scan(const void* x, void* out, long outer, long R, long inner, bool product, bool exclusive, bool reverse, bool isInt) {
  const long lines = outer * inner;
  if (lines == 0 || R == 0) return;
  const dim3 g(blocks_for(lines, kThreads)), b(kThreads);
  if (isInt) launch(scan_k<int>, g, b, static_cast<const int*>(x), static_cast<int*>(out), outer, R, inner, product, exclusive, reverse);
  else launch(scan_k<float>, g, b, static_cast<const float*>(x), static_cast<float*>(out), outer, R, inner, product, exclusive, reverse);
}

void range(void* out, long n, double start, double step, bool isInt) {
  const dim3 g(blocks_for(n, kThreads)), b(kThreads);
  if (isInt) launch(range_k<int>, g, b, static_cast<int*>(out), n, start, step);
  else launch(range_k<float>, g, b, static_cast<float*>(out), n, start, step);
}
}  // namespace mlc
