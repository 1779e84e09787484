// Fused MoE expert ops: sort the assignments by expert (counting sort, stable), gather the rows of
// each expert, run its GEMMs on the gathered block, and scatter-add back (helpers in moe_common.h).
// Packed (weight-only quantized) experts run the same code: each task dequantizes its expert's
// blocks into its own scratch (quant.h), and the backward then computes dx and dweight only.
#include "moe_common.h"
#include "quant.h"

namespace moelab {
namespace {

using namespace moe_detail;

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
  static_assert(ACT == kMoeRelu || ACT == kMoeIdentity, "only activations whose derivative follows from the output");
  for (long r = 0; r < rows; r++) {
    const long n = order[r];
    const float wn = weight[n];
    const float* ar = a + r * h;
    float* gr = g + r * h;
    dweight[n] = dot8(gr, ar, h);
    for (int j = 0; j < h; j++) gr[j] = ACT == kMoeRelu ? (ar[j] > 0.f ? wn * gr[j] : 0.f) : wn * gr[j];
  }
}

// Whether the forward saves act(pre) instead of pre (see moe_mlp_forward).
inline bool saves_output(int act) { return act == kMoeRelu || act == kMoeIdentity; }

// The forward over any weight source (quant.h): float experts, or packed ones dequantized per task.
template <class W>
void mlp_forward(const float* x, const W& w1, const W& w2, const int* tok, const int* exp, const float* weight,
                 float* out, float* hidden, int T, int d, int h, int E, long N, int act) {
  Groups byExp(exp, N, E);
  Groups byTok(tok, N, T);
  std::vector<long> pos = positions(byExp);
  // For ReLU (and identity) the saved tensor is the activation itself: the backward only needs its
  // sign, so ReLU is applied in place and no second N x h buffer is written and read.
  Scratch ha(saves_output(act) ? 0 : N * h), y(N * d);
  float* hact = saves_output(act) ? hidden : ha.get();
  std::vector<Chunk> cs = chunks(byExp, E, N);
  parallel_for_work(static_cast<int>(cs.size()), 4.0 * N * d * h, [&](int i) {
    const Chunk& c = cs[i];
    long rows = c.r1 - c.r0;
    // The gathered rows (and packed experts' dequantized blocks) are only read by this chunk: per
    // task, so they stay in cache.
    Scratch xs(rows * d + w1.scratch_size() + w2.scratch_size());
    gather_block(x, tok, byExp, c.r0, c.r1, d, xs.get());
    float* hp = hidden + c.r0 * h;
    w1.matmul(c.e, xs.get(), rows, hp, h, xs.get() + rows * d);
    // In place for ReLU (hact is hidden there).
    if (act != kMoeIdentity) with_act(act, [&](auto A) { act_rows<decltype(A)::value>(hp, hact + c.r0 * h, rows * h); });
    w2.matmul(c.e, hact + c.r0 * h, rows, y.get() + c.r0 * d, d, xs.get() + rows * d + w1.scratch_size());
  });
  scatter_rows(byTok, pos, y.get(), out, T, d, [&](long n) { return weight[n]; });
}

// The backward over any weight source; dw1 == dw2 == nullptr skips the weight gradients (packed
// experts are frozen).
template <class W>
void mlp_backward(const float* dout, const float* x, const W& w1, const W& w2, const int* tok, const int* exp,
                  const float* weight, const float* hidden, float* dx, float* dw1, float* dw2, float* dweight, int T,
                  int d, int h, int E, long N, int act) {
  Groups byExp(exp, N, E);
  Groups byTok(tok, N, T);
  std::vector<long> pos = positions(byExp);
  const bool fromOutput = saves_output(act);
  const bool wantW = dw1 != nullptr;
  std::vector<Chunk> cs = chunks(byExp, E, N);
  // Whole experts per task (the usual case for many small experts): the weight gradients are
  // computed in the task and every scratch block is the task's own. Otherwise the gathered rows,
  // G and the activations are kept for all N rows and the weight gradients reduce over them after.
  // Without weight gradients every block is per task.
  const bool fused = !wantW || whole_experts(cs, byExp);
  const long perRow = 2L * d + h + (fromOutput ? 0 : h);
  const long wScratch = w1.scratch_size() + w2.scratch_size();
  Scratch all(fused ? 0 : N * perRow), dxs(N * d);
  parallel_for_work(static_cast<int>(cs.size()), 8.0 * N * d * h, [&](int i) {
    const Chunk& c = cs[i];
    long rows = c.r1 - c.r0;
    Scratch own((fused ? rows * perRow : 0) + wScratch);
    // Blocks [xs rows*d | dy rows*d | g rows*h | activations rows*h], in `own` or in this chunk's
    // slice of each N-row region of `all`; then the dequantized experts, if any.
    float* xs = fused ? own.get() : all.get() + c.r0 * d;
    float* dy = fused ? xs + rows * d : all.get() + N * d + c.r0 * d;
    float* gp = fused ? dy + rows * d : all.get() + 2 * N * d + c.r0 * h;
    float* ha = fromOutput ? nullptr : fused ? gp + rows * h : all.get() + 2 * N * d + N * h + c.r0 * h;
    const float* acts = fromOutput ? hidden + c.r0 * h : ha;
    float* ws = own.get() + (fused ? rows * perRow : 0);
    gather_block(x, tok, byExp, c.r0, c.r1, d, xs);
    gather_block(dout, tok, byExp, c.r0, c.r1, d, dy);
    const float* w1e = w1.expert(c.e, ws);
    const float* w2e = w2.expert(c.e, ws + w1.scratch_size());
    // G = dOut_rows @ W2^T: the gradient w.r.t. the activation, before the routing weight.
    sgemm_st(false, true, rows, h, d, 1.f, dy, d, w2e, d, 0.f, gp, h);
    const long* order = byExp.order.data() + c.r0;
    if (act == kMoeRelu)
      act_backward_from_output<kMoeRelu>(hidden + c.r0 * h, gp, rows, h, order, weight, dweight);
    else if (act == kMoeIdentity)
      act_backward_from_output<kMoeIdentity>(hidden + c.r0 * h, gp, rows, h, order, weight, dweight);
    else
      with_act(act, [&](auto A) {
        act_backward_rows<decltype(A)::value>(hidden + c.r0 * h, gp, ha, rows, h, order, weight, dweight);
      });
    sgemm_st(false, true, rows, d, h, 1.f, gp, h, w1e, h, 0.f, dxs.get() + c.r0 * d, d);
    if (!wantW) return;
    for (long r = 0; r < rows; r++) {
      const float wn = weight[order[r]];
      float* dyr = dy + r * d;
      for (int j = 0; j < d; j++) dyr[j] *= wn;  // dY = weight * dOut (for dW2)
    }
    if (fused) {
      sgemm_st(true, false, h, d, rows, 1.f, acts, h, dy, d, 0.f, dw2 + static_cast<long>(c.e) * h * d, d);
      sgemm_st(true, false, d, h, rows, 1.f, xs, d, gp, h, 0.f, dw1 + static_cast<long>(c.e) * d * h, h);
    }
  });
  // Experts with no assignment still get (zero) weight gradients.
  if (wantW && fused) {
    zero_empty_experts(byExp, E, static_cast<long>(h) * d, dw2);
    zero_empty_experts(byExp, E, static_cast<long>(d) * h, dw1);
  } else if (wantW) {
    const float* acts = fromOutput ? hidden : all.get() + 2 * N * d + N * h;
    expert_weight_grads(byExp, E, acts, h, all.get() + N * d, d, d, dw2);
    expert_weight_grads(byExp, E, all.get(), d, all.get() + 2 * N * d, h, h, dw1);
  }
  scatter_rows(byTok, pos, dxs.get(), dx, T, d, [](long) { return 1.f; });
}

}  // namespace

void moe_mlp_forward(const float* x, const float* w1, const float* w2, const int* tok, const int* exp,
                     const float* weight, float* out, float* hidden, int T, int d, int h, int E, long N, int act) {
  mlp_forward(x, DenseWeights{w1, d, h}, DenseWeights{w2, h, d}, tok, exp, weight, out, hidden, T, d, h, E, N, act);
}

void moe_mlp_backward(const float* dout, const float* x, const float* w1, const float* w2, const int* tok,
                      const int* exp, const float* weight, const float* hidden, float* dx, float* dw1, float* dw2,
                      float* dweight, int T, int d, int h, int E, long N, int act) {
  mlp_backward(dout, x, DenseWeights{w1, d, h}, DenseWeights{w2, h, d}, tok, exp, weight, hidden, dx, dw1, dw2,
               dweight, T, d, h, E, N, act);
}

void moe_mlp_packed_forward(const float* x, const PackedWeights& w1, const PackedWeights& w2, const int* tok,
                            const int* exp, const float* weight, float* out, float* hidden, int T, int d, int h, int E,
                            long N, int act) {
  mlp_forward(x, PackedSource{w1}, PackedSource{w2}, tok, exp, weight, out, hidden, T, d, h, E, N, act);
}

void moe_mlp_packed_backward(const float* dout, const float* x, const PackedWeights& w1, const PackedWeights& w2,
                             const int* tok, const int* exp, const float* weight, const float* hidden, float* dx,
                             float* dweight, int T, int d, int h, int E, long N, int act) {
  mlp_backward(dout, x, PackedSource{w1}, PackedSource{w2}, tok, exp, weight, hidden, dx, nullptr, nullptr, dweight,
               T, d, h, E, N, act);
}

void moe_linear_forward(const float* x, const float* w, const int* inRow, const int* outRow, const int* exp,
                        const float* weight, float* out, int R, int din, int dout, int E, long N, int outRows) {
  (void)R;
  Groups byExp(exp, N, E);
  Groups byOut(outRow, N, outRows);
  std::vector<long> pos = positions(byExp);
  Scratch xs(N * din), y(N * dout);
  std::vector<Chunk> cs = chunks(byExp, E, N);
  parallel_for_work(static_cast<int>(cs.size()), 2.0 * N * din * dout, [&](int i) {
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
  parallel_for_work(static_cast<int>(cs.size()), 2.0 * N * din * dout, [&](int i) {
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
  expert_weight_grads(byExp, E, xs.get(), din, dy.get(), dout, dout, dw);
  scatter_rows(byIn, pos, g.get(), dx, R, din, [](long) { return 1.f; });
}

}  // namespace moelab
