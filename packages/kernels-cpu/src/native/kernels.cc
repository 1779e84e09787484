#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "pool.h"

namespace moelab {

void bias_act(float* out, long M, int N, const float* bias, int act, float alpha, const float* src) {
  parallel_range(M, std::max(1L, 32768L / std::max(1, N)), [&](long r0, long r1) {
    // A local copy: through the lambda's reference, `alpha` could alias the rows being written,
    // which keeps the compiler from vectorising the loops that read it (Step ran 5x slower).
    const float a = alpha;
    for (long r = r0; r < r1; r++) {
      float* row = out + r * N;
      if (src) std::memcpy(row, src + r * N, sizeof(float) * N);
      if (bias)
        for (int j = 0; j < N; j++) row[j] += bias[j];
      switch (act) {
        case kActRelu:
          for (int j = 0; j < N; j++) row[j] = row[j] > 0.f ? row[j] : 0.f;
          break;
        case kActRelu6:
          for (int j = 0; j < N; j++) row[j] = std::min(6.f, std::max(0.f, row[j]));
          break;
        case kActSigmoid:
          for (int j = 0; j < N; j++) row[j] = 1.f / (1.f + std::exp(-row[j]));
          break;
        case kActElu:
          for (int j = 0; j < N; j++) row[j] = row[j] >= 0.f ? row[j] : std::exp(row[j]) - 1.f;
          break;
        case kActLeakyrelu:
          for (int j = 0; j < N; j++) row[j] = row[j] >= 0.f ? row[j] : a * row[j];
          break;
        case kActReluNan:
          for (int j = 0; j < N; j++) row[j] = (row[j] > 0.f || row[j] != row[j]) ? row[j] : 0.f;
          break;
        case kActStep:
          for (int j = 0; j < N; j++) row[j] = row[j] != row[j] ? row[j] : (row[j] > 0.f ? 1.f : a);
          break;
        case kActExpDouble:
          // In double, rounded once, like tfjs-cpu's Math.exp into a Float32Array.
          for (int j = 0; j < N; j++) row[j] = static_cast<float>(std::exp(static_cast<double>(row[j])));
          break;
        case kActSigmoidDouble:
          // tfjs-cpu: 1 / (1 + Math.exp(-x)) in double, rounded once.
          for (int j = 0; j < N; j++) row[j] = static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(row[j]))));
          break;
        default:
          break;
      }
    }
  });
}

void transpose(const float* x, float* out, int rank, const int* shapeIn, const int* permIn) {
  // Drop size-1 axes and merge input axes that stay adjacent in the permutation: most transposes
  // in a model collapse to a (batched) 2-D transpose or a row copy.
  long total = 1;
  for (int i = 0; i < rank; i++) total *= shapeIn[i];
  if (total == 0) return;
  long inStr[8];
  {
    long s = 1;
    for (int i = rank - 1; i >= 0; i--) {
      inStr[i] = s;
      s *= shapeIn[i];
    }
  }
  // Output axes in order, as (size, input stride), skipping size-1 and merging runs.
  long sz[8], st[8];
  int r = 0;
  for (int o = 0; o < rank; o++) {
    int ax = permIn[o];
    if (shapeIn[ax] == 1) continue;
    if (r > 0 && st[r - 1] == inStr[ax] * shapeIn[ax]) {
      sz[r - 1] *= shapeIn[ax];
      st[r - 1] = inStr[ax];
      continue;
    }
    sz[r] = shapeIn[ax];
    st[r] = inStr[ax];
    r++;
  }
  if (r == 0 || (r == 1 && st[0] == 1)) {
    std::memcpy(out, x, sizeof(float) * total);
    return;
  }
  if (st[r - 1] == 1) {
    // Innermost output axis is contiguous in the input: copy rows.
    long inner = sz[r - 1];
    long rows = total / inner;
    parallel_range(rows, std::max(1L, 65536L / inner), [&](long a, long b) {
      for (long row = a; row < b; row++) {
        long rem = row, off = 0;
        for (int k = r - 2; k >= 0; k--) {
          off += (rem % sz[k]) * st[k];
          rem /= sz[k];
        }
        std::memcpy(out + row * inner, x + off, sizeof(float) * inner);
      }
    });
    return;
  }
  // Blocked 2-D copy over the two innermost output axes (rank >= 2 here unless a strided 1-D view).
  long ni = r >= 2 ? sz[r - 2] : 1, si = r >= 2 ? st[r - 2] : 0;
  long nj = sz[r - 1], sj = st[r - 1];
  long outer = total / (ni * nj);
  constexpr long B = 32;
  long iBlocks = (ni + B - 1) / B;
  parallel_range(outer * iBlocks, std::max(1L, 16384L / (B * nj) + 1), [&](long a, long b) {
    for (long t = a; t < b; t++) {
      long o = t / iBlocks, ib = (t % iBlocks) * B;
      long rem = o, off = 0;
      for (int k = r - 3; k >= 0; k--) {
        off += (rem % sz[k]) * st[k];
        rem /= sz[k];
      }
      const float* src = x + off;
      float* dst = out + o * ni * nj;
      long iEnd = std::min(ni, ib + B);
      for (long jb = 0; jb < nj; jb += B) {
        long jEnd = std::min(nj, jb + B);
        for (long i = ib; i < iEnd; i++)
          for (long j = jb; j < jEnd; j++) dst[i * nj + j] = src[i * si + j * sj];
      }
    }
  });
}

namespace {
template <int OP>
inline float bin(float a, float b) {
  if (OP == kBinEqual) return a == b;
  if (OP == kBinNotEqual) return a != b;
  if (OP == kBinGreater) return a > b;
  if (OP == kBinGreaterEqual) return a >= b;
  if (OP == kBinLess) return a < b;
  if (OP == kBinLessEqual) return a <= b;
  if (OP == kBinMul) return a * b;
  if (OP == kBinAdd) return a + b;
  if (OP == kBinSub) return a - b;
  if (OP == kBinDiv) return a / b;
  float t = a - b;  // kBinSquaredDifference
  return t * t;
}

// Columns per task when a binary op splits rows (see binary_broadcast_t).
constexpr long kBinaryPiece = 32768;

template <int OP, class O>
void binary_broadcast_t(const float* a, const float* b, O* out, int rank, const int* shape, const long* aStr,
                        const long* bStr) {
  long total = 1;
  for (int i = 0; i < rank; i++) total *= shape[i];
  if (total == 0) return;
  long inner = rank > 0 ? shape[rank - 1] : 1;
  long sa = rank > 0 ? aStr[rank - 1] : 0, sb = rank > 0 ? bStr[rank - 1] : 0;
  long rows = total / inner;
  // Tasks are pieces of rows: a whole row each, or, when there are too few rows to share (two
  // same-shape tensors merge into a single row of every element), blocks of one row's columns.
  const long piece = rows < 4L * pool_threads() && inner > 2 * kBinaryPiece ? kBinaryPiece : inner;
  const long pieces = (inner + piece - 1) / piece;
  parallel_range(rows * pieces, std::max(1L, 65536L / piece), [&](long t0, long t1) {
    for (long t = t0; t < t1; t++) {
      const long row = t / pieces, j0 = (t % pieces) * piece, j1 = std::min(inner, j0 + piece);
      long rem = row, oa = 0, ob = 0;
      for (int k = rank - 2; k >= 0; k--) {
        long idx = rem % shape[k];
        rem /= shape[k];
        oa += idx * aStr[k];
        ob += idx * bStr[k];
      }
      const float* pa = a + oa;
      const float* pb = b + ob;
      O* po = out + row * inner;
      if (sa == 1 && sb == 1) {
        for (long j = j0; j < j1; j++) po[j] = bin<OP>(pa[j], pb[j]);
      } else if (sa == 1 && sb == 0) {
        float v = pb[0];
        for (long j = j0; j < j1; j++) po[j] = bin<OP>(pa[j], v);
      } else if (sa == 0 && sb == 1) {
        float v = pa[0];
        for (long j = j0; j < j1; j++) po[j] = bin<OP>(v, pb[j]);
      } else {
        for (long j = j0; j < j1; j++) po[j] = bin<OP>(pa[j * sa], pb[j * sb]);
      }
    }
  });
}
}  // namespace

// Arithmetic ops write floats, comparisons bytes; one switch serves both output types.
template <class O>
void broadcast_op(int op, const float* a, const float* b, O* out, int rank, const int* shape, const long* aStr,
                  const long* bStr) {
#define MOELAB_BIN_CASE(OP) \
  case OP:                  \
    return binary_broadcast_t<OP>(a, b, out, rank, shape, aStr, bStr);
  switch (op) {
    MOELAB_BIN_CASE(kBinAdd)
    MOELAB_BIN_CASE(kBinSub)
    MOELAB_BIN_CASE(kBinDiv)
    MOELAB_BIN_CASE(kBinSquaredDifference)
    MOELAB_BIN_CASE(kBinEqual)
    MOELAB_BIN_CASE(kBinNotEqual)
    MOELAB_BIN_CASE(kBinGreater)
    MOELAB_BIN_CASE(kBinGreaterEqual)
    MOELAB_BIN_CASE(kBinLess)
    MOELAB_BIN_CASE(kBinLessEqual)
    default:
      return binary_broadcast_t<kBinMul>(a, b, out, rank, shape, aStr, bStr);
  }
#undef MOELAB_BIN_CASE
}

void binary_broadcast(int op, const float* a, const float* b, float* out, int rank, const int* shape, const long* aStr,
                      const long* bStr) {
  broadcast_op(op, a, b, out, rank, shape, aStr, bStr);
}

void compare_broadcast(int op, const float* a, const float* b, uint8_t* out, int rank, const int* shape,
                       const long* aStr, const long* bStr) {
  broadcast_op(op, a, b, out, rank, shape, aStr, bStr);
}

void mul_broadcast(const float* a, const float* b, float* out, int rank, const int* shape, const long* aStr,
                   const long* bStr) {
  binary_broadcast(kBinMul, a, b, out, rank, shape, aStr, bStr);
}

long gather(const float* x, const int* idx, long nIdx, float* out, long outer, long dim, long inner) {
  for (long i = 0; i < nIdx; i++)
    if (idx[i] < 0 || idx[i] >= dim) return i;
  parallel_range(outer * nIdx, std::max(1L, 65536L / std::max(1L, inner)), [&](long a, long b) {
    for (long t = a; t < b; t++) {
      long o = t / nIdx, i = t % nIdx;
      std::memcpy(out + t * inner, x + (o * dim + idx[i]) * inner, sizeof(float) * inner);
    }
  });
  return -1;
}

void softmax(const float* x, float* out, long rows, int cols) {
  parallel_range(rows, std::max(1L, 16384L / std::max(1, cols)), [&](long r0, long r1) {
    for (long r = r0; r < r1; r++) {
      const float* xr = x + r * cols;
      float* o = out + r * cols;
      float m = -INFINITY;
      for (int j = 0; j < cols; j++) m = std::max(m, xr[j]);
      float s = 0.f;
      for (int j = 0; j < cols; j++) {
        o[j] = std::exp(xr[j] - m);
        s += o[j];
      }
      float inv = 1.f / s;
      for (int j = 0; j < cols; j++) o[j] *= inv;
    }
  });
}

void topk(const float* x, float* values, int32_t* indices, long rows, int cols, int k) {
  if (k <= 0) return;
  parallel_range(rows, std::max(1L, 8192L / std::max(1, cols)), [&](long r0, long r1) {
    std::vector<int> order;
    for (long r = r0; r < r1; r++) {
      const float* xr = x + r * cols;
      auto better = [&](int a, int b) { return xr[a] > xr[b] || (xr[a] == xr[b] && a < b); };
      float* vr = values + r * k;
      int32_t* ir = indices + r * k;
      if (k <= 32) {
        // Insertion into a sorted list of k: O(cols * k) worst case, one pass, no allocation.
        int n = 0;
        for (int j = 0; j < cols; j++) {
          if (n == k && !better(j, ir[k - 1])) continue;
          int p = n < k ? n++ : k - 1;
          while (p > 0 && better(j, ir[p - 1])) {
            ir[p] = ir[p - 1];
            p--;
          }
          ir[p] = j;
        }
      } else {
        order.resize(cols);
        for (int j = 0; j < cols; j++) order[j] = j;
        std::partial_sort(order.begin(), order.begin() + k, order.end(), better);
        for (int j = 0; j < k; j++) ir[j] = order[j];
      }
      for (int j = 0; j < k; j++) vr[j] = xr[ir[j]];
    }
  });
}

void segment_sum(const float* x, const int* ids, long n, long inner, float* out, long numSegments) {
  std::memset(out, 0, sizeof(float) * numSegments * inner);
  // Threads own column ranges, never rows: no two threads write the same output element, and the
  // summation order (by input row) is the same as the serial one.
  long colGrain = n * inner < (1L << 18) ? inner : std::max(64L, inner / (pool_threads() * 2));
  parallel_range(inner, colGrain, [&](long c0, long c1) {
    for (long i = 0; i < n; i++) {
      long s = ids[i];
      if (s < 0 || s >= numSegments) continue;
      const float* src = x + i * inner;
      float* dst = out + s * inner;
      for (long c = c0; c < c1; c++) dst[c] += src[c];
    }
  });
}

namespace {
constexpr long kSumSqBlock = 65536;
}

void reduce(const float* x, float* out, long outer, long R, long inner, int kind) {
  // Same arithmetic as tfjs-backend-cpu after its transpose: per output, the reduced elements in
  // order, accumulated in double (mean: each term x / R rounded to float first; max: NaN wins; sum
  // of squares: x * x rounded to float, Square's output, then summed in double, so the result
  // equals tf.sum(tf.square(x)) on cpu bit for bit, a single sum over many elements excepted: see below).
  auto term = [&](float v) -> double {
    if (kind == kReduceMean) return static_cast<double>(static_cast<float>(v / static_cast<float>(R)));
    if (kind == kReduceSumOfSquares) return static_cast<double>(static_cast<float>(v * v));
    return v;
  };
  if (kind == kReduceSumOfSquares && outer == 1 && inner == 1 && R > 2 * kSumSqBlock) {
    // One big sum (a gradient-norm term): one sequential chain of double adds would run at the adds'
    // latency on one core. Fixed blocks, each with independent accumulators, summed in block order:
    // the result does not depend on the thread count, and differs from the sequential sum only by
    // double rounding (it equals the cpu result to float32 in all but vanishingly rare cases).
    const long blocks = (R + kSumSqBlock - 1) / kSumSqBlock;
    std::vector<double> partial(blocks);
    parallel_range(blocks, 1, [&](long b0, long b1) {
      for (long b = b0; b < b1; b++) {
        const float* xb = x + b * kSumSqBlock;
        const long n = std::min(kSumSqBlock, R - b * kSumSqBlock);
        double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        long i = 0;
        for (; i + 8 <= n; i += 8)
          for (int l = 0; l < 8; l++) acc[l] += static_cast<double>(static_cast<float>(xb[i + l] * xb[i + l]));
        for (; i < n; i++) acc[0] += static_cast<double>(static_cast<float>(xb[i] * xb[i]));
        partial[b] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
      }
    });
    double total = 0;
    for (double v : partial) total += v;
    out[0] = static_cast<float>(total);
    return;
  }
  if (inner == 1) {
    parallel_range(outer, std::max(1L, 65536L / std::max(1L, R)), [&](long o0, long o1) {
      for (long o = o0; o < o1; o++) {
        const float* xr = x + o * R;
        if (kind == kReduceMax) {
          float m = R > 0 ? xr[0] : -INFINITY;
          for (long r = 1; r < R; r++)
            if (std::isnan(xr[r]) || xr[r] > m) m = xr[r];
          out[o] = m;
        } else {
          double acc = 0;
          for (long r = 0; r < R; r++) acc += term(xr[r]);
          out[o] = static_cast<float>(acc);
        }
      }
    });
    return;
  }
  // Reduce the middle axis of [outer, R, inner]: threads own blocks of output columns.
  constexpr long kCols = 256;
  const long blocks = (inner + kCols - 1) / kCols;
  parallel_range(outer * blocks, std::max(1L, 65536L / std::max(1L, R * kCols)), [&](long a, long b) {
    double acc[kCols];
    for (long t = a; t < b; t++) {
      const long o = t / blocks, c0 = (t % blocks) * kCols, nc = std::min(kCols, inner - c0);
      const float* base = x + o * R * inner + c0;
      float* dst = out + o * inner + c0;
      if (kind == kReduceMax) {
        for (long c = 0; c < nc; c++) dst[c] = R > 0 ? base[c] : -INFINITY;
        for (long r = 1; r < R; r++) {
          const float* xr = base + r * inner;
          for (long c = 0; c < nc; c++)
            if (std::isnan(xr[c]) || xr[c] > dst[c]) dst[c] = xr[c];
        }
        continue;
      }
      for (long c = 0; c < nc; c++) acc[c] = 0;
      for (long r = 0; r < R; r++) {
        const float* xr = base + r * inner;
        for (long c = 0; c < nc; c++) acc[c] += term(xr[c]);
      }
      for (long c = 0; c < nc; c++) dst[c] = static_cast<float>(acc[c]);
    }
  });
}

namespace {
// Contraction into FMAs would round differently from the op-by-op update (core's generic AdamW),
// so GCC keeps every product and sum separately rounded here (a lambda would not inherit this).
// The update is written over p, m and v; the restrict qualifiers are what lets GCC vectorise it.
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
void adamw_inplace_range(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v,
                         long a, long b, const AdamWScalars& sc) {
  // A local copy: read through the reference, the scalars could alias the arrays, which keeps the
  // compiler from vectorising the loop.
  const AdamWScalars s = sc;
  for (long i = a; i < b; i++) {
    const float m2 = m[i] * s.beta1 + g[i] * s.oneMinusBeta1;
    const float v2 = v[i] * s.beta2 + (g[i] * g[i]) * s.oneMinusBeta2;
    const float update = (m2 / s.bc1) / (std::sqrt(v2 / s.bc2) + s.eps);
    float next = p[i] - update * s.lr;
    if (s.decay) next = next - p[i] * s.lrTimesDecay;
    m[i] = m2;
    v[i] = v2;
    p[i] = next;
  }
}
}  // namespace

void adamw(const float* p, const float* g, const float* m, const float* v, float* pOut, float* mOut, float* vOut, long n,
           const AdamWScalars& s) {
  const bool inPlace = pOut == p && mOut == m && vOut == v;
  parallel_range(n, 16384, [&](long a, long b) {
    if (!inPlace) {
      // Fresh outputs: copy this block in, then update it there while it is still in cache.
      const size_t bytes = sizeof(float) * static_cast<size_t>(b - a);
      std::memcpy(pOut + a, p + a, bytes);
      std::memcpy(mOut + a, m + a, bytes);
      std::memcpy(vOut + a, v + a, bytes);
    }
    adamw_inplace_range(pOut, g, mOut, vOut, a, b, s);
  });
}

std::string check_index(const int* idx, long n, long limit, const char* what) {
  for (long i = 0; i < n; i++)
    if (idx[i] < 0 || idx[i] >= limit)
      return std::string(what) + "[" + std::to_string(i) + "] = " + std::to_string(idx[i]) + " is outside [0, " +
             std::to_string(limit) + ")";
  return "";
}

}  // namespace moelab
