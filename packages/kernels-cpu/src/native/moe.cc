// Fused MoE expert ops: sort the assignments by expert (counting sort, stable), gather the rows of
// each expert, run its GEMMs on the gathered block, and scatter-add back. Scatter-adds go through
// a per-destination list (CSR) so threads own output rows: no atomics, and the result does not
// depend on the thread count.
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
namespace {

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
std::vector<long> positions(const Groups& g) {
  std::vector<long> pos(g.order.size());
  for (size_t p = 0; p < g.order.size(); p++) pos[g.order[p]] = static_cast<long>(p);
  return pos;
}

// A unit of per-expert work: rows [r0, r1) of expert e's block (in sorted positions).
struct Chunk {
  int e;
  long r0, r1;
};

// Chunks of at most `maxRows` rows; big experts are split so two threads can share them.
std::vector<Chunk> chunks(const Groups& g, int E, long N) {
  long target = std::max<long>(64, (N + pool_threads() * 4 - 1) / (pool_threads() * 4));
  std::vector<Chunk> out;
  for (int e = 0; e < E; e++) {
    long a = g.off[e], b = g.off[e + 1];
    if (a == b) continue;
    long n = b - a, pieces = (n + target - 1) / target, step = (n + pieces - 1) / pieces;
    for (long r = a; r < b; r += step) out.push_back({e, r, std::min(b, r + step)});
  }
  return out;
}

// The activation as a template parameter: the per-element loops below then compile to one
// branch-free (vectorised, for ReLU and ReLU^2) loop per activation instead of a switch per element.
template <int ACT>
inline float act_t(float v) {
  if constexpr (ACT == kRelu) return v > 0.f ? v : 0.f;
  if constexpr (ACT == kGelu) return 0.5f * v * (1.f + std::erf(v * 0.70710678118654752f));
  if constexpr (ACT == kSilu) return v / (1.f + std::exp(-v));
  if constexpr (ACT == kRelu2) return v > 0.f ? v * v : 0.f;
  return v;
}

template <int ACT>
inline float act_grad_t(float v) {
  if constexpr (ACT == kRelu) return v > 0.f ? 1.f : 0.f;
  if constexpr (ACT == kGelu)
    return 0.5f * (1.f + std::erf(v * 0.70710678118654752f)) + v * 0.39894228040143268f * std::exp(-0.5f * v * v);
  if constexpr (ACT == kSilu) {
    float s = 1.f / (1.f + std::exp(-v));
    return s * (1.f + v * (1.f - s));
  }
  if constexpr (ACT == kRelu2) return v > 0.f ? 2.f * v : 0.f;
  return 1.f;
}

// out[k] = act(in[k]) for k < n.
template <int ACT>
void act_rows(const float* in, float* out, long n) {
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

// The activation's backward over one expert block, row by row, from the saved pre-activation:
// a = act(pre) is stored (for dW2), dweight[n] = g . a (the routing weight's gradient), and g
// becomes dPre = weight * g * act'(pre), in place. Separate simple loops, so that they vectorise.
template <int ACT>
void act_backward_rows(const float* pre, float* g, float* a, long rows, int h, const long* order, const float* weight,
                       float* dweight) {
  for (long r = 0; r < rows; r++) {
    const long n = order[r];
    const float wn = weight[n];
    const float* pr = pre + r * h;
    float* gr = g + r * h;
    float* ar = a + r * h;
    for (int j = 0; j < h; j++) ar[j] = act_t<ACT>(pr[j]);
    dweight[n] = dot8(gr, ar, h);
    for (int j = 0; j < h; j++) gr[j] = wn * gr[j] * act_grad_t<ACT>(pr[j]);
  }
}

// The same from the saved activation itself, for ReLU (act' = [a > 0]) and identity (act' = 1):
// no activation to recompute and no second N x h buffer to write.
template <int ACT>
void act_backward_from_output(const float* a, float* g, long rows, int h, const long* order, const float* weight,
                              float* dweight) {
  static_assert(ACT == kRelu || ACT == kIdentity, "only activations whose derivative follows from the output");
  for (long r = 0; r < rows; r++) {
    const long n = order[r];
    const float wn = weight[n];
    const float* ar = a + r * h;
    float* gr = g + r * h;
    dweight[n] = dot8(gr, ar, h);
    for (int j = 0; j < h; j++) gr[j] = ACT == kRelu ? (ar[j] > 0.f ? wn * gr[j] : 0.f) : wn * gr[j];
  }
}

// Whether the forward saves act(pre) instead of pre (see moe_mlp_forward).
inline bool saves_output(int act) { return act == kRelu || act == kIdentity; }

// Calls f(std::integral_constant<int, ACT>{}) for the runtime activation code: one switch per
// expert block, not per element.
template <class F>
void with_act(int act, F&& f) {
  switch (act) {
    case kRelu:
      return f(std::integral_constant<int, kRelu>{});
    case kGelu:
      return f(std::integral_constant<int, kGelu>{});
    case kSilu:
      return f(std::integral_constant<int, kSilu>{});
    case kRelu2:
      return f(std::integral_constant<int, kRelu2>{});
    default:
      return f(std::integral_constant<int, kIdentity>{});
  }
}

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
      for (long q = byDst.off[r]; q < byDst.off[r + 1]; q++) {
        long n = byDst.order[q];
        float s = scale(n);
        const float* y = src + pos[n] * static_cast<long>(w);
        for (int j = 0; j < w; j++) o[j] += s * y[j];
      }
    }
  });
}

// dst[p] = src[row[order[p]]] for p in [r0, r1), width w.
inline void gather_rows(const float* src, const int* row, const Groups& g, long r0, long r1, int w, float* dst) {
  for (long p = r0; p < r1; p++)
    std::memcpy(dst + p * static_cast<long>(w), src + static_cast<long>(row[g.order[p]]) * w, sizeof(float) * w);
}

// Weight gradients dW[e] = A_e^T @ B_e for each expert (A rows width m, B rows width n): tasks
// over experts and, for few experts, over column blocks of dW so both threads have work.
void expert_weight_grads(const Groups& g, int E, const float* A, int m, const float* B, int n, float* dW) {
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
    sgemm_st(true, false, m, nc, static_cast<int>(rows), 1.f, A + a * m, m, B + a * n + c0, n, 0.f, out, n);
  });
}

}  // namespace

void moe_mlp_forward(const float* x, const float* w1, const float* w2, const int* tok, const int* exp,
                     const float* weight, float* out, float* hidden, int T, int d, int h, int E, long N, int act) {
  Groups byExp(exp, N, E);
  Groups byTok(tok, N, T);
  std::vector<long> pos = positions(byExp);
  // For ReLU (and identity) the saved tensor is the activation itself: the backward only needs its
  // sign, so ReLU is applied in place and no second N x h buffer is written and read.
  Scratch xs(N * d), ha(saves_output(act) ? 0 : N * h), y(N * d);
  float* hact = saves_output(act) ? hidden : ha.get();
  std::vector<Chunk> cs = chunks(byExp, E, N);
  parallel_for(static_cast<int>(cs.size()), [&](int i) {
    const Chunk& c = cs[i];
    long rows = c.r1 - c.r0;
    gather_rows(x, tok, byExp, c.r0, c.r1, d, xs.get());
    float* hp = hidden + c.r0 * h;
    sgemm_st(false, false, rows, h, d, 1.f, xs.get() + c.r0 * d, d, w1 + static_cast<long>(c.e) * d * h, h, 0.f, hp,
             h);
    // In place for ReLU (hact is hidden there).
    if (act != kIdentity) with_act(act, [&](auto A) { act_rows<decltype(A)::value>(hp, hact + c.r0 * h, rows * h); });
    sgemm_st(false, false, rows, d, h, 1.f, hact + c.r0 * h, h, w2 + static_cast<long>(c.e) * h * d, d, 0.f,
             y.get() + c.r0 * d, d);
  });
  scatter_rows(byTok, pos, y.get(), out, T, d, [&](long n) { return weight[n]; });
}

void moe_mlp_backward(const float* dout, const float* x, const float* w1, const float* w2, const int* tok,
                      const int* exp, const float* weight, const float* hidden, float* dx, float* dw1, float* dw2,
                      float* dweight, int T, int d, int h, int E, long N, int act) {
  Groups byExp(exp, N, E);
  Groups byTok(tok, N, T);
  std::vector<long> pos = positions(byExp);
  const bool fromOutput = saves_output(act);
  Scratch xs(N * d), dy(N * d), g(N * h), ha(fromOutput ? 0 : N * h), dxs(N * d);
  const float* acts = fromOutput ? hidden : ha.get();
  std::vector<Chunk> cs = chunks(byExp, E, N);
  parallel_for(static_cast<int>(cs.size()), [&](int i) {
    const Chunk& c = cs[i];
    long rows = c.r1 - c.r0;
    gather_rows(x, tok, byExp, c.r0, c.r1, d, xs.get());
    gather_rows(dout, tok, byExp, c.r0, c.r1, d, dy.get());
    float* gp = g.get() + c.r0 * h;
    // G = dOut_rows @ W2^T: the gradient w.r.t. the activation, before the routing weight.
    sgemm_st(false, true, rows, h, d, 1.f, dy.get() + c.r0 * d, d, w2 + static_cast<long>(c.e) * h * d, d, 0.f, gp,
             h);
    const long* order = byExp.order.data() + c.r0;
    if (act == kRelu)
      act_backward_from_output<kRelu>(hidden + c.r0 * h, gp, rows, h, order, weight, dweight);
    else if (act == kIdentity)
      act_backward_from_output<kIdentity>(hidden + c.r0 * h, gp, rows, h, order, weight, dweight);
    else
      with_act(act, [&](auto A) {
        act_backward_rows<decltype(A)::value>(hidden + c.r0 * h, gp, ha.get() + c.r0 * h, rows, h, order, weight,
                                              dweight);
      });
    for (long r = 0; r < rows; r++) {
      const float wn = weight[byExp.order[c.r0 + r]];
      float* dyr = dy.get() + (c.r0 + r) * d;
      for (int j = 0; j < d; j++) dyr[j] *= wn;  // dY = weight * dOut (for dW2)
    }
    sgemm_st(false, true, rows, d, h, 1.f, gp, h, w1 + static_cast<long>(c.e) * d * h, h, 0.f, dxs.get() + c.r0 * d,
             d);
  });
  // Experts with no assignment still get (zero) weight gradients.
  expert_weight_grads(byExp, E, acts, h, dy.get(), d, dw2);
  expert_weight_grads(byExp, E, xs.get(), d, g.get(), h, dw1);
  scatter_rows(byTok, pos, dxs.get(), dx, T, d, [](long) { return 1.f; });
}

void moe_linear_forward(const float* x, const float* w, const int* inRow, const int* outRow, const int* exp,
                        const float* weight, float* out, int R, int din, int dout, int E, long N, int outRows) {
  (void)R;
  Groups byExp(exp, N, E);
  Groups byOut(outRow, N, outRows);
  std::vector<long> pos = positions(byExp);
  Scratch xs(N * din), y(N * dout);
  std::vector<Chunk> cs = chunks(byExp, E, N);
  parallel_for(static_cast<int>(cs.size()), [&](int i) {
    const Chunk& c = cs[i];
    gather_rows(x, inRow, byExp, c.r0, c.r1, din, xs.get());
    sgemm_st(false, false, c.r1 - c.r0, dout, din, 1.f, xs.get() + c.r0 * din, din,
             w + static_cast<long>(c.e) * din * dout, dout, 0.f, y.get() + c.r0 * dout, dout);
  });
  scatter_rows(byOut, pos, y.get(), out, outRows, dout, [&](long n) { return weight[n]; });
}

void moe_linear_backward(const float* dyIn, const float* x, const float* w, const int* inRow, const int* outRow,
                         const int* exp, const float* weight, float* dx, float* dw, float* dweight, int R, int din,
                         int dout, int E, long N, int outRows) {
  (void)outRows;
  Groups byExp(exp, N, E);
  Groups byIn(inRow, N, R);
  std::vector<long> pos = positions(byExp);
  Scratch xs(N * din), dy(N * dout), g(N * din);
  std::vector<Chunk> cs = chunks(byExp, E, N);
  parallel_for(static_cast<int>(cs.size()), [&](int i) {
    const Chunk& c = cs[i];
    long rows = c.r1 - c.r0;
    gather_rows(x, inRow, byExp, c.r0, c.r1, din, xs.get());
    gather_rows(dyIn, outRow, byExp, c.r0, c.r1, dout, dy.get());
    float* gp = g.get() + c.r0 * din;
    sgemm_st(false, true, rows, din, dout, 1.f, dy.get() + c.r0 * dout, dout, w + static_cast<long>(c.e) * din * dout,
             dout, 0.f, gp, din);
    for (long r = 0; r < rows; r++) {
      long n = byExp.order[c.r0 + r];
      float wn = weight[n];
      const float* xr = xs.get() + (c.r0 + r) * din;
      float* gr = gp + r * din;
      float dot = 0.f;
      for (int j = 0; j < din; j++) {
        dot += gr[j] * xr[j];
        gr[j] *= wn;
      }
      dweight[n] = dot;
      float* dyr = dy.get() + (c.r0 + r) * dout;
      for (int j = 0; j < dout; j++) dyr[j] *= wn;
    }
  });
  expert_weight_grads(byExp, E, xs.get(), din, dy.get(), dout, dw);
  scatter_rows(byIn, pos, g.get(), dx, R, din, [](long) { return 1.f; });
}

}  // namespace moelab
