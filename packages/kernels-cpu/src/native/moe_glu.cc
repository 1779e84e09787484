// Fused gated (GLU) MoE experts: out[t] = sum_n weight[n] * (act(x_t W1[e]) * (x_t W3[e])) W2[e].
//
// Forward, per block of rows of one expert (rows sorted by expert, see moe_common.h; W1 and W3 are
// packed side by side per expert so that both projections are one GEMM):
//   [a | b] = xs [W1[e] | W3[e]]      (the two halves of each saved row)
//   u = act(a) * b,  y = u W2[e],     out[t] += weight[n] * y[n]   (CSR scatter-add)
// Backward, with G = dOut_rows W2[e]^T (the gradient of u before the routing weight):
//   dweight[n] = G[n] . u[n]
//   da = weight * G * b * act'(a),  db = weight * G * act(a)     (written over the saved layout)
//   dW2[e] = u^T (weight * dOut_rows),  dW1[e] = xs^T da,  dW3[e] = xs^T db
//   dx[t] += da W1[e]^T + db W3[e]^T
// The saved tensor holds [a | b] per assignment (N x 2h): u is recomputed from it in the backward,
// which costs one activation per element and saves an N x h buffer between the passes.
// Packed (weight-only quantized) experts run the same code: each task dequantizes its expert's
// blocks into its own scratch (quant.h), and the backward then computes dx and dweight only.
#include "moe_common.h"
#include "quant.h"

namespace moelab {
namespace {

using namespace moe_detail;

// u = act(a) * b over one block; a and b are the halves of rows of width 2h.
template <int ACT>
void gate_rows(const float* ab, float* u, long rows, int h) {
  for (long r = 0; r < rows; r++) {
    const float* a = ab + r * 2L * h;
    const float* b = a + h;
    float* ur = u + r * h;
    for (int j = 0; j < h; j++) ur[j] = act_t<ACT>(a[j]) * b[j];
  }
}

// The gate's backward over one block. On entry the first half of each row of gab holds G (the
// gradient of u), the second half is unused; pre holds the saved [a | b]. On exit u = act(a) * b
// (for dW2), dweight[n] = G . u, and gab's row is [da | db] (routing weight included).
template <int ACT>
void gate_backward_rows(const float* pre, float* gab, float* u, long rows, int h, const long* order,
                        const float* weight, float* dweight) {
  for (long r = 0; r < rows; r++) {
    const long n = order[r];
    const float wn = weight[n];
    const float* a = pre + r * 2L * h;
    const float* b = a + h;
    float* g = gab + r * 2L * h;
    float* db = g + h;
    float* ur = u + r * h;
    // db first holds act(a) and ur act'(a), from one activation call per element (SiLU: one
    // exponential for both); the loops stay simple enough to vectorise.
    for (int j = 0; j < h; j++) act_and_grad_t<ACT>(a[j], db[j], ur[j]);
    dweight[n] = dot8x3(g, db, b, h);  // G . u with u = act(a) * b
    for (int j = 0; j < h; j++) {
      const float act = db[j];
      const float wg = wn * g[j];
      g[j] = wg * b[j] * ur[j];
      db[j] = wg * act;
      ur[j] = act * b[j];
    }
  }
}

// The forward over any weight source (quant.h): float experts, or packed ones dequantized per task.
template <class W>
void glu_forward(const float* x, const W& w1, const W& w3, const W& w2, const int* tok, const int* exp,
                 const float* weight, float* out, float* hidden, int T, int d, int h, int E, long N, int act) {
  Groups byExp(exp, N, E);
  Groups byTok(tok, N, T);
  std::vector<long> pos = positions(byExp);
  Scratch y(N * d);
  const long h2 = 2L * h;
  std::vector<Chunk> cs = chunks(byExp, E, N);
  parallel_for_work(static_cast<int>(cs.size()), 6.0 * N * d * h, [&](int i) {
    const Chunk& c = cs[i];
    const long rows = c.r1 - c.r0;
    // The gathered rows, the gate output and the expert's [W1 | W3] block (W1, W3 side by side per
    // row, so both projections are one GEMM) are only used inside this chunk: per task, in cache.
    Scratch own(rows * (d + h) + d * h2 + std::max(w1.scratch_size(), w2.scratch_size()));
    float* xr = own.get();
    float* u = xr + rows * d;
    float* w13 = u + rows * h;
    gather_block(x, tok, byExp, c.r0, c.r1, d, xr);
    float* ab = hidden + c.r0 * h2;
    float* ws = w13 + d * h2;
    if (W::kDequantizes && rows <= kPackedFewRows) {
      // A token or two: straight from the codes, no dequantized copy of the expert.
      w1.matmul(c.e, xr, rows, ab, h2, ws);
      w3.matmul(c.e, xr, rows, ab + h, h2, ws);
    } else {
      w1.into(c.e, w13, h2);
      w3.into(c.e, w13 + h, h2);
      sgemm_st(false, false, rows, h2, d, 1.f, xr, d, w13, h2, 0.f, ab, h2);
    }
    with_act(act, [&](auto A) { gate_rows<decltype(A)::value>(ab, u, rows, h); });
    w2.matmul(c.e, u, rows, y.get() + c.r0 * d, d, ws);
  });
  scatter_rows(byTok, pos, y.get(), out, T, d, [&](long n) { return weight[n]; });
}

// The backward over any weight source; null dw1, dw3, dw2 skip the weight gradients (packed experts
// are frozen).
template <class W>
void glu_backward(const float* dout, const float* x, const W& w1, const W& w3, const W& w2, const int* tok,
                  const int* exp, const float* weight, const float* hidden, float* dx, float* dw1, float* dw3,
                  float* dw2, float* dweight, int T, int d, int h, int E, long N, int act) {
  Groups byExp(exp, N, E);
  Groups byTok(tok, N, T);
  std::vector<long> pos = positions(byExp);
  const long h2 = 2L * h;
  const bool wantW = dw1 != nullptr;
  std::vector<Chunk> cs = chunks(byExp, E, N);
  // Whole experts per task (many small experts): weight gradients in the task, per-task scratch.
  // Otherwise the per-row blocks span all N rows and the weight gradients reduce over them after.
  // Without weight gradients every block is per task.
  const bool fused = !wantW || whole_experts(cs, byExp);
  const long perRow = 2L * d + h2 + h;
  Scratch all(fused ? 0 : N * perRow), dxs(N * d);
  parallel_for_work(static_cast<int>(cs.size()), 12.0 * N * d * h, [&](int i) {
    const Chunk& c = cs[i];
    const long rows = c.r1 - c.r0;
    const long we = static_cast<long>(c.e) * d * h;
    Scratch own((fused ? rows * perRow : 0) + d * h2 * (fused && wantW ? 2 : 1) + w2.scratch_size());
    // Blocks [xs rows*d | dy rows*d | [G|.] then [da|db] rows*2h | u rows*h].
    float* xs = fused ? own.get() : all.get() + c.r0 * d;
    float* dyr = fused ? xs + rows * d : all.get() + N * d + c.r0 * d;
    float* g = fused ? dyr + rows * d : all.get() + 2 * N * d + c.r0 * h2;
    float* u = fused ? g + rows * h2 : all.get() + 2 * N * d + N * h2 + c.r0 * h;
    float* w13 = own.get() + (fused ? rows * perRow : 0);
    w1.into(c.e, w13, h2);
    w3.into(c.e, w13 + h, h2);
    const float* w2e = w2.expert(c.e, w13 + d * h2 * (fused && wantW ? 2 : 1));
    gather_block(x, tok, byExp, c.r0, c.r1, d, xs);
    gather_block(dout, tok, byExp, c.r0, c.r1, d, dyr);
    // G = dOut_rows W2^T into the first half of each row.
    sgemm_st(false, true, rows, h, d, 1.f, dyr, d, w2e, d, 0.f, g, h2);
    const long* order = byExp.order.data() + c.r0;
    with_act(act, [&](auto A) {
      gate_backward_rows<decltype(A)::value>(hidden + c.r0 * h2, g, u, rows, h, order, weight, dweight);
    });
    float* dxr = dxs.get() + c.r0 * d;
    // dx rows = [da | db] [W1 | W3]^T: one GEMM over K = 2h.
    sgemm_st(false, true, rows, d, h2, 1.f, g, h2, w13, h2, 0.f, dxr, d);
    if (!wantW) return;
    for (long r = 0; r < rows; r++) {
      const float wn = weight[order[r]];
      float* row = dyr + r * d;
      for (int j = 0; j < d; j++) row[j] *= wn;  // weight * dOut (for dW2)
    }
    if (fused) {
      sgemm_st(true, false, h, d, rows, 1.f, u, h, dyr, d, 0.f, dw2 + we, d);
      // [dW1 | dW3] = xs^T [da | db] as one d x 2h GEMM into the packed block, then split.
      float* dw13 = w13 + d * h2;
      sgemm_st(true, false, d, h2, rows, 1.f, xs, d, g, h2, 0.f, dw13, h2);
      for (int i = 0; i < d; i++) {
        std::memcpy(dw1 + we + static_cast<long>(i) * h, dw13 + 2L * i * h, sizeof(float) * h);
        std::memcpy(dw3 + we + static_cast<long>(i) * h, dw13 + 2L * i * h + h, sizeof(float) * h);
      }
    }
  });
  // Experts with no assignment still get (zero) weight gradients.
  const long per = static_cast<long>(d) * h;
  if (wantW && fused) {
    zero_empty_experts(byExp, E, per, dw2);
    zero_empty_experts(byExp, E, per, dw1);
    zero_empty_experts(byExp, E, per, dw3);
  } else if (wantW) {
    const float* xsAll = all.get();
    const float* gAll = all.get() + 2 * N * d;
    expert_weight_grads(byExp, E, all.get() + 2 * N * d + N * h2, h, all.get() + N * d, d, d, dw2);
    expert_weight_grads(byExp, E, xsAll, d, gAll, h, h2, dw1);
    expert_weight_grads(byExp, E, xsAll, d, gAll + h, h, h2, dw3);
  }
  scatter_rows(byTok, pos, dxs.get(), dx, T, d, [](long) { return 1.f; });
}

}  // namespace

void moe_glu_forward(const float* x, const float* w1, const float* w3, const float* w2, const int* tok, const int* exp,
                     const float* weight, float* out, float* hidden, int T, int d, int h, int E, long N, int act) {
  glu_forward(x, DenseWeights{w1, d, h}, DenseWeights{w3, d, h}, DenseWeights{w2, h, d}, tok, exp, weight, out, hidden,
              T, d, h, E, N, act);
}

void moe_glu_backward(const float* dout, const float* x, const float* w1, const float* w3, const float* w2,
                      const int* tok, const int* exp, const float* weight, const float* hidden, float* dx, float* dw1,
                      float* dw3, float* dw2, float* dweight, int T, int d, int h, int E, long N, int act) {
  glu_backward(dout, x, DenseWeights{w1, d, h}, DenseWeights{w3, d, h}, DenseWeights{w2, h, d}, tok, exp, weight,
               hidden, dx, dw1, dw3, dw2, dweight, T, d, h, E, N, act);
}

void moe_glu_packed_forward(const float* x, const PackedWeights& w1, const PackedWeights& w3, const PackedWeights& w2,
                            const int* tok, const int* exp, const float* weight, float* out, float* hidden, int T,
                            int d, int h, int E, long N, int act) {
  glu_forward(x, PackedSource{w1}, PackedSource{w3}, PackedSource{w2}, tok, exp, weight, out, hidden, T, d, h, E, N,
              act);
}

void moe_glu_packed_backward(const float* dout, const float* x, const PackedWeights& w1, const PackedWeights& w3,
                             const PackedWeights& w2, const int* tok, const int* exp, const float* weight,
                             const float* hidden, float* dx, float* dweight, int T, int d, int h, int E, long N,
                             int act) {
  glu_backward(dout, x, PackedSource{w1}, PackedSource{w3}, PackedSource{w2}, tok, exp, weight, hidden, dx, nullptr,
               nullptr, nullptr, dweight, T, d, h, E, N, act);
}

}  // namespace moelab
