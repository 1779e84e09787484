// Building blocks shared by the fused MoE expert ops (moe.cc, moe_glu.cc): assignments grouped by
// expert with a stable counting sort, row gathers, per-destination (CSR) scatter-adds so threads
// own output rows (no atomics, results independent of the thread count), per-expert weight
// gradients, and the activations as template parameters.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "gemm.h"
#include "kernels.h"
#include "pool.h"

namespace moelab {
namespace moe_detail {

// Uninitialised float scratch, freed when the op returns (every element is written before read).
struct Scratch {
  std::unique_ptr<float[]> p;
  explicit Scratch(long n) : p(n > 0 ? new float[n] : nullptr) {}
  float* get() const { return p.get(); }
};

// Assignments grouped by key (expert, or destination row), stable in n: order[off[k]..off[k+1]).
struct Groups {
  std::vector<long> off;
  std::vector<long> order;
  Groups(const int* key, long n, int nkeys) : off(nkeys + 1, 0), order(n) {
    for (long i = 0; i < n; i++) off[key[i] + 1]++;
    for (int k = 0; k < nkeys; k++) off[k + 1] += off[k];
    std::vector<long> fill(off.begin(), off.end() - 1);
    for (long i = 0; i < n; i++) order[fill[key[i]]++] = i;
  }
};

// Rows of `by` sorted position: for destination-grouped sums we need, per destination row, the
// sorted positions of its assignments. pos[n] = sorted position of assignment n.
inline std::vector<long> positions(const Groups& g) {
  std::vector<long> pos(g.order.size());
  for (size_t p = 0; p < g.order.size(); p++) pos[g.order[p]] = static_cast<long>(p);
  return pos;
}

// A unit of per-expert work: rows [r0, r1) of expert e's block (in sorted positions).
struct Chunk {
  int e;
  long r0, r1;
};

// The per-expert tasks, largest first. Experts above ~N / (4 threads) rows are split so that the
// threads can share them, except when there are enough experts (4 per thread) and none has more
// than twice the mean: then every task is a whole expert, which lets the backward compute its
// weight gradients inside the task from rows still in cache (moe.cc, moe_glu.cc) instead of
// keeping N-row buffers for a second pass (E8 top-2 at 2 threads split about half its experts).
// Largest first: the tasks are claimed in order, so the small ones fill in at the end.
inline std::vector<Chunk> chunks(const Groups& g, int E, long N) {
  const int nt = pool_threads();
  long target = std::max<long>(64, (N + nt * 4 - 1) / (nt * 4));
  if (E >= nt * 4) {
    long big = 0;
    for (int e = 0; e < E; e++) big = std::max(big, g.off[e + 1] - g.off[e]);
    if (big * E <= 2 * N) target = std::max(target, big);
  }
  std::vector<Chunk> out;
  for (int e = 0; e < E; e++) {
    long a = g.off[e], b = g.off[e + 1];
    if (a == b) continue;
    long n = b - a, pieces = (n + target - 1) / target, step = (n + pieces - 1) / pieces;
    for (long r = a; r < b; r += step) out.push_back({e, r, std::min(b, r + step)});
  }
  std::stable_sort(out.begin(), out.end(), [](const Chunk& x, const Chunk& y) { return x.r1 - x.r0 > y.r1 - y.r0; });
  return out;
}

// The activation as a template parameter: the per-element loops below then compile to one
// branch-free (vectorised, for ReLU and ReLU^2) loop per activation instead of a switch per element.
template <int ACT>
inline float act_t(float v) {
  if constexpr (ACT == kMoeRelu) return v > 0.f ? v : 0.f;
  if constexpr (ACT == kMoeGelu) return 0.5f * v * (1.f + std::erf(v * 0.70710678118654752f));
  if constexpr (ACT == kMoeSilu) return v / (1.f + std::exp(-v));
  if constexpr (ACT == kMoeRelu2) return v > 0.f ? v * v : 0.f;
  return v;
}

template <int ACT>
inline float act_grad_t(float v) {
  if constexpr (ACT == kMoeRelu) return v > 0.f ? 1.f : 0.f;
  if constexpr (ACT == kMoeGelu)
    return 0.5f * (1.f + std::erf(v * 0.70710678118654752f)) + v * 0.39894228040143268f * std::exp(-0.5f * v * v);
  if constexpr (ACT == kMoeSilu) {
    float s = 1.f / (1.f + std::exp(-v));
    return s * (1.f + v * (1.f - s));
  }
  if constexpr (ACT == kMoeRelu2) return v > 0.f ? 2.f * v : 0.f;
  return 1.f;
}

// act(v) and act'(v) together: SiLU's sigmoid and GELU's erf term are computed once for both (a
// backward that needs both then pays one exponential or erf per element, not two).
template <int ACT>
inline void act_and_grad_t(float v, float& act, float& grad) {
  if constexpr (ACT == kMoeSilu) {
    const float s = 1.f / (1.f + std::exp(-v));
    act = v * s;
    grad = s * (1.f + v * (1.f - s));
  } else if constexpr (ACT == kMoeGelu) {
    const float cdf = 0.5f * (1.f + std::erf(v * 0.70710678118654752f));
    act = v * cdf;
    grad = cdf + v * 0.39894228040143268f * std::exp(-0.5f * v * v);
  } else {
    act = act_t<ACT>(v);
    grad = act_grad_t<ACT>(v);
  }
}

// out[k] = act(in[k]) for k < n; in place when in == out. The in-place loop is its own: through
// two pointers the compiler guards its vector loop with an overlap check, which exact aliasing
// fails, and the scalar fallback it then runs is a compare and branch per element in WebAssembly
// (V8 has no branch-free scalar select): ~45 ms of the E8 MoE forward's ~220 there.
template <int ACT>
void act_rows(const float* in, float* out, long n) {
  if (in == out) {
    for (long k = 0; k < n; k++) out[k] = act_t<ACT>(out[k]);
    return;
  }
  for (long k = 0; k < n; k++) out[k] = act_t<ACT>(in[k]);
}

// dot(a, b) over n floats with eight partial sums (a plain float sum would not vectorise).
inline float dot8(const float* a, const float* b, int n) {
  float part[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; l++) part[l] += a[j + l] * b[j + l];
  float s = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
  for (; j < n; j++) s += a[j] * b[j];
  return s;
}

// sum_j a[j] * (b[j] * c[j]) over n floats, summed like dot8.
inline float dot8x3(const float* a, const float* b, const float* c, int n) {
  float part[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; l++) part[l] += a[j + l] * (b[j + l] * c[j + l]);
  float s = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
  for (; j < n; j++) s += a[j] * (b[j] * c[j]);
  return s;
}

// Calls f(std::integral_constant<int, ACT>{}) for the runtime activation code: one switch per
// expert block, not per element.
template <class F>
void with_act(int act, F&& f) {
  switch (act) {
    case kMoeRelu:
      return f(std::integral_constant<int, kMoeRelu>{});
    case kMoeGelu:
      return f(std::integral_constant<int, kMoeGelu>{});
    case kMoeSilu:
      return f(std::integral_constant<int, kMoeSilu>{});
    case kMoeRelu2:
      return f(std::integral_constant<int, kMoeRelu2>{});
    default:
      return f(std::integral_constant<int, kMoeIdentity>{});
  }
}

// Requests the w floats at p into the cache. The gathers and scatter-adds read rows at random
// places (token rows, sorted positions): the hardware prefetcher only follows a row once it has
// started, so each row's first lines would otherwise cost a full memory latency. No-op where the
// compiler has no prefetch (WebAssembly).
inline void prefetch_row(const float* p, int w) {
  const char* c = reinterpret_cast<const char*>(p);
  for (long b = 0; b < static_cast<long>(sizeof(float)) * w; b += 64) __builtin_prefetch(c + b);
}

// How many rows ahead the gathers prefetch (measured at d = 256: 2-4 rows, ~2-4 KB in flight).
constexpr long kGatherAhead = 4;

// dst[row r] = sum over the assignments of r of scale(n) * src[pos[n]], rows [0, rows), width w.
template <class Scale>
void scatter_rows(const Groups& byDst, const std::vector<long>& pos, const float* src, float* dst, long rows, int w,
                  Scale scale) {
  int tasks = static_cast<int>(std::min<long>(pool_threads() * 4L, std::max<long>(1, rows * w / 16384)));
  long step = (rows + tasks - 1) / std::max(1, tasks);
  parallel_for(tasks, [&](int t) {
    long a = t * step, b = std::min(rows, a + step);
    for (long r = a; r < b; r++) {
      float* o = dst + r * w;
      std::memset(o, 0, sizeof(float) * w);
      // The next row's sources, while this row's are summed: they lie anywhere in src.
      if (r + 1 < b)
        for (long q = byDst.off[r + 1]; q < byDst.off[r + 2]; q++)
          prefetch_row(src + pos[byDst.order[q]] * static_cast<long>(w), w);
      for (long q = byDst.off[r]; q < byDst.off[r + 1]; q++) {
        long n = byDst.order[q];
        float s = scale(n);
        const float* y = src + pos[n] * static_cast<long>(w);
        for (int j = 0; j < w; j++) o[j] += s * y[j];
      }
    }
  });
}

// dst[p - r0] = src[row[order[p]]] for p in [r0, r1), width w: one chunk's rows into its own block.
inline void gather_block(const float* src, const int* row, const Groups& g, long r0, long r1, int w, float* dst) {
  for (long p = r0; p < r1; p++) {
    if (p + kGatherAhead < r1) prefetch_row(src + static_cast<long>(row[g.order[p + kGatherAhead]]) * w, w);
    std::memcpy(dst + (p - r0) * static_cast<long>(w), src + static_cast<long>(row[g.order[p]]) * w, sizeof(float) * w);
  }
}

// dst[p] = src[row[order[p]]] for p in [r0, r1), width w: the rows at their sorted positions.
inline void gather_rows(const float* src, const int* row, const Groups& g, long r0, long r1, int w, float* dst) {
  gather_block(src, row, g, r0, r1, w, dst + r0 * static_cast<long>(w));
}

// Whether every chunk is a whole expert. Then the task that runs an expert's backward can also
// compute that expert's weight gradients from its rows while they are still in cache, and all the
// per-row scratch of the backward is per task instead of N rows long.
inline bool whole_experts(const std::vector<Chunk>& cs, const Groups& g) {
  for (const Chunk& c : cs)
    if (c.r0 != g.off[c.e] || c.r1 != g.off[c.e + 1]) return false;
  return true;
}

// Zero weight gradients (each of `n` floats per expert) of the experts without any assignment.
inline void zero_empty_experts(const Groups& g, int E, long n, float* dW) {
  for (int e = 0; e < E; e++)
    if (g.off[e] == g.off[e + 1]) std::memset(dW + e * n, 0, sizeof(float) * n);
}

// Weight gradients dW[e] = A_e^T @ B_e for each expert (A rows width m, B rows width n with row
// stride ldb, dW[e] an m x n block): tasks over experts and, for few experts, over column blocks of
// dW so both threads have work.
inline void expert_weight_grads(const Groups& g, int E, const float* A, int m, const float* B, int n, int ldb,
                                float* dW) {
  int colSplit = E >= pool_threads() * 4 ? 1 : std::max(1, std::min(n / 64, (pool_threads() * 4 + E - 1) / E));
  int step = ((n + colSplit - 1) / colSplit + 15) / 16 * 16;
  int tiles = (n + step - 1) / step;
  parallel_for(E * tiles, [&](int t) {
    int e = t / tiles, c0 = (t % tiles) * step, nc = std::min(step, n - c0);
    if (nc <= 0) return;
    long a = g.off[e], rows = g.off[e + 1] - a;
    float* out = dW + static_cast<long>(e) * m * n + c0;
    if (rows == 0) {
      for (int i = 0; i < m; i++) std::memset(out + static_cast<long>(i) * n, 0, sizeof(float) * nc);
      return;
    }
    sgemm_st(true, false, m, nc, static_cast<int>(rows), 1.f, A + a * m, m, B + a * ldb + c0, ldb, 0.f, out, n);
  });
}

}  // namespace moe_detail
}  // namespace moelab
