// Fused causal attention and rotary position embedding (see attention.h).
//
// One task per (batch, head): the scores of that head live in a per-task [T, T] scratch, so the
// [B, H, T, T] score / probability tensors of the op-by-op version (several fresh allocations of
// B*H*T*T floats per layer and pass) never exist. Rows are processed in blocks of kBlock queries;
// a block only multiplies against the keys it can see (columns < its last row + 1), which skips
// about half of the causal GEMM work.
#include "attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "gemm.h"
#include "pool.h"

namespace moelab {

namespace {

constexpr int kBlock = 64;

// Per-thread scratch that only grows: a fresh [T, T] buffer per task would be a fresh mmap (and its
// page faults) every time. Every entry a kernel reads was written by it first, so no zeroing.
float* scratch(int slot, size_t n) {
  MOELAB_THREAD_LOCAL std::vector<float> buf[2];
  if (buf[slot].size() < n) buf[slot].resize(n);
  return buf[slot].data();
}

// scores[r0:r1, 0:r1] = scale * q[r0:r1] k[0:r1]^T for every row block (entries above the diagonal
// inside a block are computed too and masked by the caller).
void causal_scores(const float* q, const float* k, float* s, int T, int dk, long ld, float scale) {
  for (int r0 = 0; r0 < T; r0 += kBlock) {
    int r1 = std::min(T, r0 + kBlock);
    sgemm_st(false, true, r1 - r0, r1, dk, scale, q + r0 * ld, static_cast<int>(ld), k, static_cast<int>(ld), 0.f,
             s + static_cast<long>(r0) * T, T);
  }
}

// Where head bh's rows start and how far apart they are: [B, H, T, d] (rows contiguous per head) or
// [B, T, H, d] (the projections' own layout: no head split / merge transposes around the kernel).
struct HeadView {
  long base, ld;
  HeadView(int bh, int H, int T, int d, bool bthd)
      : base(bthd ? (static_cast<long>(bh / H) * T * H + bh % H) * d : static_cast<long>(bh) * T * d),
        ld(bthd ? static_cast<long>(H) * d : d) {}
};

}  // namespace

void causal_attention_forward(const float* q, const float* k, const float* v, float* out, float* lse, int BH, int H,
                              int T, int dk, int dv, float scale, bool bthd) {
  if (BH <= 0 || T <= 0) return;
  parallel_for_work(BH, static_cast<double>(BH) * T * T * (dk + dv), [&](int bh) {
    float* p = scratch(0, static_cast<size_t>(T) * T);
    const HeadView hq(bh, H, T, dk, bthd), hv(bh, H, T, dv, bthd);
    const float* qb = q + hq.base;
    const float* kb = k + hq.base;
    const float* vb = v + hv.base;
    float* ob = out + hv.base;
    float* lb = lse + static_cast<long>(bh) * T;
    causal_scores(qb, kb, p, T, dk, hq.ld, scale);
    for (int i = 0; i < T; i++) {
      float* row = p + static_cast<long>(i) * T;
      float m = -INFINITY;
      for (int j = 0; j <= i; j++) m = std::max(m, row[j]);
      float sum = 0.f;
      for (int j = 0; j <= i; j++) {
        row[j] = std::exp(row[j] - m);
        sum += row[j];
      }
      const float inv = 1.f / sum;
      for (int j = 0; j <= i; j++) row[j] *= inv;
      // Zero the masked tail of the row up to the block's edge: the P.V product reads it.
      int edge = std::min(T, (i / kBlock + 1) * kBlock);
      for (int j = i + 1; j < edge; j++) row[j] = 0.f;
      lb[i] = m + std::log(sum);
    }
    for (int r0 = 0; r0 < T; r0 += kBlock) {
      int r1 = std::min(T, r0 + kBlock);
      sgemm_st(false, false, r1 - r0, dv, r1, 1.f, p + static_cast<long>(r0) * T, T, vb, static_cast<int>(hv.ld), 0.f,
               ob + r0 * hv.ld, static_cast<int>(hv.ld));
    }
  });
}

void cached_attention_forward(const float* q, const float* k, const float* v, float* out, int B, int H, int Hkv, int m,
                              int n, int Tk, int dk, int dv, float scale) {
  if (B <= 0 || H <= 0 || m <= 0) return;
  const int n0 = n - m, group = H / Hkv, BH = B * H;
  parallel_for_work(BH, 2.0 * BH * m * n * (dk + dv), [&](int bh) {
    float* p = scratch(0, static_cast<size_t>(m) * n);
    const long kvh = static_cast<long>(bh / H) * Hkv + (bh % H) / group;
    const float* qb = q + static_cast<long>(bh) * m * dk;
    const float* kb = k + kvh * Tk * dk;
    const float* vb = v + kvh * Tk * dv;
    sgemm_st(false, true, m, n, dk, scale, qb, dk, kb, dk, 0.f, p, n);
    for (int i = 0; i < m; i++) {
      float* row = p + static_cast<long>(i) * n;
      const int seen = n0 + i + 1;  // row i sees keys 0 .. n0 + i
      float mx = -INFINITY;
      for (int j = 0; j < seen; j++) mx = std::max(mx, row[j]);
      float sum = 0.f;
      for (int j = 0; j < seen; j++) {
        row[j] = std::exp(row[j] - mx);
        sum += row[j];
      }
      const float inv = 1.f / sum;
      for (int j = 0; j < seen; j++) row[j] *= inv;
      for (int j = seen; j < n; j++) row[j] = 0.f;
    }
    sgemm_st(false, false, m, dv, n, 1.f, p, n, vb, dv, 0.f, out + static_cast<long>(bh) * m * dv, dv);
  });
}

void causal_attention_backward(const float* dout, const float* q, const float* k, const float* v, const float* out,
                               const float* lse, float* dq, float* dk_out, float* dv_out, int BH, int H, int T, int dk,
                               int dv, float scale, bool bthd) {
  if (BH <= 0 || T <= 0) return;
  parallel_for(BH, [&](int bh) {
    const size_t TT = static_cast<size_t>(T) * T;
    float* p = scratch(0, TT);
    float* ds = scratch(1, TT);
    const HeadView hq(bh, H, T, dk, bthd), hv(bh, H, T, dv, bthd);
    const long qo = hq.base, vo = hv.base, lq = hq.ld, lv = hv.ld;
    const int iq = static_cast<int>(lq), iv = static_cast<int>(lv);
    const float *qb = q + qo, *kb = k + qo, *vb = v + vo, *ob = out + vo, *gb = dout + vo;
    const float* lb = lse + static_cast<long>(bh) * T;
    // P again from the saved log-sum-exp: P[i, j] = exp(scale q_i.k_j - lse_i) for j <= i.
    causal_scores(qb, kb, p, T, dk, lq, scale);
    // dP = dO V^T, same causal row blocks.
    for (int r0 = 0; r0 < T; r0 += kBlock) {
      int r1 = std::min(T, r0 + kBlock);
      sgemm_st(false, true, r1 - r0, r1, dv, 1.f, gb + r0 * lv, iv, vb, iv, 0.f, ds + static_cast<long>(r0) * T, T);
    }
    for (int i = 0; i < T; i++) {
      float* pr = p + static_cast<long>(i) * T;
      float* dr = ds + static_cast<long>(i) * T;
      // D_i = sum_c dO[i, c] O[i, c] = sum_j P[i, j] dP[i, j]
      float D = 0.f;
      for (int c = 0; c < dv; c++) D += gb[i * lv + c] * ob[i * lv + c];
      for (int j = 0; j <= i; j++) {
        pr[j] = std::exp(pr[j] - lb[i]);
        dr[j] = pr[j] * (dr[j] - D);
      }
      int edge = std::min(T, (i / kBlock + 1) * kBlock);
      for (int j = i + 1; j < edge; j++) pr[j] = dr[j] = 0.f;
    }
    // dQ = scale dS K (row blocks see keys < r1); dK = scale dS^T Q and dV = P^T dO (column blocks:
    // keys in [c0, c1) are seen by queries >= c0 only).
    for (int r0 = 0; r0 < T; r0 += kBlock) {
      int r1 = std::min(T, r0 + kBlock);
      sgemm_st(false, false, r1 - r0, dk, r1, scale, ds + static_cast<long>(r0) * T, T, kb, iq, 0.f, dq + qo + r0 * lq,
               iq);
    }
    for (int c0 = 0; c0 < T; c0 += kBlock) {
      int c1 = std::min(T, c0 + kBlock);
      const long rows = T - c0;
      sgemm_st(true, false, c1 - c0, dk, rows, scale, ds + static_cast<long>(c0) * T + c0, T, qb + c0 * lq, iq, 0.f,
               dk_out + qo + c0 * lq, iq);
      sgemm_st(true, false, c1 - c0, dv, rows, 1.f, p + static_cast<long>(c0) * T + c0, T, gb + c0 * lv, iv, 0.f,
               dv_out + vo + c0 * lv, iv);
    }
  });
}

void rope(const float* x, const float* cos, const float* sin, float* out, long BH, int H, int T, int dh, int dims,
          bool inverse, bool bthd) {
  const int half = dims / 2;
  const float sgn = inverse ? -1.f : 1.f;
  parallel_range(BH * T, std::max(1L, 16384L / std::max(1, dh)), [&](long a, long b) {
    const float sg = sgn;  // local: through the lambda's reference it could alias `out`
    for (long r = a; r < b; r++) {
      // Rows in memory order: (b, h, t) or, for [B, T, H, d], (b, t, h).
      const int t = static_cast<int>(bthd ? (r / H) % T : r % T);
      const float* xr = x + r * dh;
      float* o = out + r * dh;
      const float* c = cos + static_cast<long>(t) * dims;
      const float* s = sin + static_cast<long>(t) * dims;
      for (int i = 0; i < half; i++) {
        // rotate-half: out = x * cos + [-x2, x1] * sin (inverse: sin -> -sin, the transpose)
        o[i] = xr[i] * c[i] - sg * xr[i + half] * s[i];
        o[i + half] = xr[i + half] * c[i + half] + sg * xr[i] * s[i + half];
      }
      for (int i = dims; i < dh; i++) o[i] = xr[i];
    }
  });
}

}  // namespace moelab
