// Fused causal attention, cached (decoding) attention with grouped-query heads, and RoPE. Part of
// kernels.cu's translation unit (included at its end: nvcc compiles device code without separate
// linking, so every kernel family shares the one unit and its helpers).
//
//   out_i = sum_{j <= off + i} softmax_j(scale q_i.k_j) v_j,   lse_i = log sum_j exp(scale q_i.k_j)
//   backward (off = 0), with P = exp(S - lse), D_i = dy_i . out_i:
//     dS = P (dy v^T - D),  dq = scale dS k,  dk = scale dS^T q,  dv = P^T dy
//   RoPE (rotate-half, arXiv:2104.09864): out = x cos + [-x2, x1] sin over the first `dims`
//   channels; the inverse rotates by -sin (the transpose, hence the gradient).
//
// One block per query row (forward, dq) or key row (dk, dv) and chunk of kMaxHead output channels
// (grid.y; heads wider than that recompute the scores per chunk): the row's keys are taken 128 at a
// time, one per thread, with an online softmax (running max and sum, arXiv:2205.14135) so no
// [T, T] score tensor exists; the block's accumulators (one per channel of its chunk) live in
// shared memory.
#pragma once

namespace mlc {
namespace {
constexpr int kAttnThreads = 128;

// Where row t of head h of batch b starts in a [B, Hx, Tx, d] tensor, or [B, Tx, Hx, d] (bthd).
MLC_HD long head_row(int b, int h, int t, int Hx, int Tx, int d, bool bthd) {
  return bthd ? ((static_cast<long>(b) * Tx + t) * Hx + h) * d : ((static_cast<long>(b) * Hx + h) * Tx + t) * d;
}

// The block's query (or key) row: which batch, head and position blockIdx.x stands for, with
// rows ordered (b, h, t).
struct RowOf {
  int b, h, t;
  __device__ RowOf(int H, int T) {
    const int bh = blockIdx.x / T;
    t = blockIdx.x - bh * T;
    b = bh / H;
    h = bh - b * H;
  }
};

// The block's chunk of a row's d channels: [c0, c0 + n), c0 = blockIdx.y kMaxHead (n may be 0
// for the shorter of dk and dv: the block still takes part in every barrier).
struct Chunk {
  int c0, n;
  __device__ explicit Chunk(int d) : c0(static_cast<int>(blockIdx.y) * kMaxHead), n(min(kMaxHead, max(0, d - c0))) {}
};

// out_i and lse_i for query row i: keys j <= s.qOffset + i of key head h * Hkv / H.
__global__ void attention_forward_k(const float* q, const float* k, const float* v, float* out, float* lse, AttentionShape s) {
  __shared__ float acc[kMaxHead];
  __shared__ float ps[kAttnThreads];
  __shared__ float red[kAttnThreads];
  const RowOf r(s.H, s.Tq);
  const int hk = r.h * s.Hkv / s.H, tid = threadIdx.x, nt = blockDim.x;
  const Chunk ch(s.dv);
  const float* qs = q + head_row(r.b, r.h, r.t, s.H, s.Tq, s.dk, s.bthd);
  for (int c = tid; c < ch.n; c += nt) acc[c] = 0.f;
  __syncthreads();
  const int last = s.qOffset + r.t;
  float m = -INFINITY, l = 0.f;
  for (int j0 = 0; j0 <= last; j0 += nt) {
    const int j = j0 + tid;
    float sc = -INFINITY;
    if (j <= last) {
      const float* kr = k + head_row(r.b, hk, j, s.Hkv, s.Tk, s.dk, s.bthd);
      float dot = 0.f;
      for (int c = 0; c < s.dk; c++) dot += qs[c] * kr[c];
      sc = s.scale * dot;
    }
    const float mNew = fmaxf(m, block_max(sc, red));
    const float p = j <= last ? expf(sc - mNew) : 0.f;
    ps[tid] = p;
    const float corr = expf(m - mNew);  // 0 on the first chunk (m = -inf)
    l = l * corr + block_sum(p, red);   // its barriers also publish ps
    m = mNew;
    const int cnt = min(nt, last + 1 - j0);
    const float* vr = v + head_row(r.b, hk, j0, s.Hkv, s.Tk, s.dv, s.bthd);
    const long vstep = s.bthd ? static_cast<long>(s.Hkv) * s.dv : s.dv;
    for (int c = tid; c < ch.n; c += nt) {
      float a = acc[c] * corr;
      for (int jj = 0; jj < cnt; jj++) a += ps[jj] * vr[jj * vstep + ch.c0 + c];
      acc[c] = a;
    }
    __syncthreads();
  }
  float* orow = out + head_row(r.b, r.h, r.t, s.H, s.Tq, s.dv, s.bthd) + ch.c0;
  for (int c = tid; c < ch.n; c += nt) orow[c] = acc[c] / l;
  if (lse && tid == 0 && blockIdx.y == 0) lse[blockIdx.x] = m + logf(l);
}

// D_i = dy_i . out_i, rows in (b, h, t) order.
__global__ void attention_rowdot_k(const float* dy, const float* out, float* D, AttentionShape s) {
  __shared__ float red[kAttnThreads];
  const RowOf r(s.H, s.Tq);
  const long o = head_row(r.b, r.h, r.t, s.H, s.Tq, s.dv, s.bthd);
  float a = 0.f;
  for (int c = threadIdx.x; c < s.dv; c += blockDim.x) a += dy[o + c] * out[o + c];
  a = block_sum(a, red);
  if (threadIdx.x == 0) D[blockIdx.x] = a;
}

// dq_i = scale sum_{j <= i} dS_ij k_j (causal self-attention: Tq = Tk, H = Hkv, qOffset = 0).
__global__ void attention_dq_k(const float* dy, const float* q, const float* k, const float* v, const float* lse, const float* D, float* dq,
                               AttentionShape s) {
  __shared__ float acc[kMaxHead];
  __shared__ float ds[kAttnThreads];
  const RowOf r(s.H, s.Tq);
  const int tid = threadIdx.x, nt = blockDim.x;
  const Chunk ch(s.dk);
  const long qo = head_row(r.b, r.h, r.t, s.H, s.Tq, s.dk, s.bthd);
  const float* qs = q + qo;
  const float* dys = dy + head_row(r.b, r.h, r.t, s.H, s.Tq, s.dv, s.bthd);
  for (int c = tid; c < ch.n; c += nt) acc[c] = 0.f;
  __syncthreads();
  const float li = lse[blockIdx.x], Di = D[blockIdx.x];
  const long kstep = s.bthd ? static_cast<long>(s.H) * s.dk : s.dk;
  for (int j0 = 0; j0 <= r.t; j0 += nt) {
    const int j = j0 + tid;
    float g = 0.f;
    if (j <= r.t) {
      const float* kr = k + head_row(r.b, r.h, j, s.H, s.Tk, s.dk, s.bthd);
      const float* vr = v + head_row(r.b, r.h, j, s.H, s.Tk, s.dv, s.bthd);
      float sc = 0.f, dp = 0.f;
      for (int c = 0; c < s.dk; c++) sc += qs[c] * kr[c];
      for (int c = 0; c < s.dv; c++) dp += dys[c] * vr[c];
      g = expf(s.scale * sc - li) * (dp - Di);
    }
    ds[tid] = g;
    __syncthreads();
    const int cnt = min(nt, r.t + 1 - j0);
    const float* kr = k + head_row(r.b, r.h, j0, s.H, s.Tk, s.dk, s.bthd);
    for (int c = tid; c < ch.n; c += nt) {
      float a = acc[c];
      for (int jj = 0; jj < cnt; jj++) a += ds[jj] * kr[jj * kstep + ch.c0 + c];
      acc[c] = a;
    }
    __syncthreads();
  }
  for (int c = tid; c < ch.n; c += nt) dq[qo + ch.c0 + c] = s.scale * acc[c];
}

// dk_j = scale sum_{i >= j} dS_ij q_i and dv_j = sum_{i >= j} P_ij dy_i (causal self-attention).
__global__ void attention_dkdv_k(const float* dy, const float* q, const float* k, const float* v, const float* lse, const float* D, float* dk,
                                 float* dv, AttentionShape s) {
  __shared__ float accK[kMaxHead];
  __shared__ float accV[kMaxHead];
  __shared__ float ps[kAttnThreads];
  __shared__ float ds[kAttnThreads];
  const RowOf r(s.H, s.Tk);
  const int tid = threadIdx.x, nt = blockDim.x;
  const Chunk chK(s.dk), chV(s.dv);
  const long ko = head_row(r.b, r.h, r.t, s.H, s.Tk, s.dk, s.bthd), vo = head_row(r.b, r.h, r.t, s.H, s.Tk, s.dv, s.bthd);
  const float* ks = k + ko;
  const float* vs = v + vo;
  for (int c = tid; c < chK.n; c += nt) accK[c] = 0.f;
  for (int c = tid; c < chV.n; c += nt) accV[c] = 0.f;
  __syncthreads();
  const long rowBase = blockIdx.x - r.t;  // (b, h, 0) in lse / D
  const long qstep = s.bthd ? static_cast<long>(s.H) * s.dk : s.dk, vstep = s.bthd ? static_cast<long>(s.H) * s.dv : s.dv;
  for (int i0 = r.t; i0 < s.Tq; i0 += nt) {
    const int i = i0 + tid;
    float p = 0.f, g = 0.f;
    if (i < s.Tq) {
      const float* qr = q + head_row(r.b, r.h, i, s.H, s.Tq, s.dk, s.bthd);
      const float* dyr = dy + head_row(r.b, r.h, i, s.H, s.Tq, s.dv, s.bthd);
      float sc = 0.f, dp = 0.f;
      for (int c = 0; c < s.dk; c++) sc += qr[c] * ks[c];
      for (int c = 0; c < s.dv; c++) dp += dyr[c] * vs[c];
      p = expf(s.scale * sc - lse[rowBase + i]);
      g = p * (dp - D[rowBase + i]);
    }
    ps[tid] = p;
    ds[tid] = g;
    __syncthreads();
    const int cnt = min(nt, s.Tq - i0);
    const float* qr = q + head_row(r.b, r.h, i0, s.H, s.Tq, s.dk, s.bthd);
    const float* dyr = dy + head_row(r.b, r.h, i0, s.H, s.Tq, s.dv, s.bthd);
    for (int c = tid; c < chK.n; c += nt) {
      float a = accK[c];
      for (int ii = 0; ii < cnt; ii++) a += ds[ii] * qr[ii * qstep + chK.c0 + c];
      accK[c] = a;
    }
    for (int c = tid; c < chV.n; c += nt) {
      float a = accV[c];
      for (int ii = 0; ii < cnt; ii++) a += ps[ii] * dyr[ii * vstep + chV.c0 + c];
      accV[c] = a;
    }
    __syncthreads();
  }
  for (int c = tid; c < chK.n; c += nt) dk[ko + chK.c0 + c] = s.scale * accK[c];
  for (int c = tid; c < chV.n; c += nt) dv[vo + chV.c0 + c] = accV[c];
}

// One thread per element of x (rows of dh channels in memory order; t from the layout).
__global__ void rope_k(const float* x, const float* cosT, const float* sinT, float* out, long n, int H, int T, int dh, int dims, float sg,
                       bool bthd) {
  const long i = global_index();
  if (i >= n) return;
  const long row = i / dh;
  const int c = static_cast<int>(i - row * dh), half = dims / 2;
  const long t = bthd ? (row / H) % T : row % T;
  const float* xr = x + row * dh;
  const float* ct = cosT + t * dims;
  const float* st = sinT + t * dims;
  float o;
  if (c < half) o = xr[c] * ct[c] - sg * xr[c + half] * st[c];
  else if (c < dims) o = xr[c] * ct[c] + sg * xr[c - half] * st[c];
  else o = xr[c];
  out[i] = o;
}
}  // namespace

void attention_forward(const float* q, const float* k, const float* v, float* out, float* lse, int B, const AttentionShape& s) {
  const long rows = static_cast<long>(B) * s.H * s.Tq;
  if (rows == 0) return;
  launch(attention_forward_k, dim3(static_cast<unsigned>(rows), ceil_div(s.dv, kMaxHead)), dim3(kAttnThreads), q, k, v, out, lse, s);
}

void attention_backward(const float* dy, const float* q, const float* k, const float* v, const float* out, const float* lse, float* dq,
                        float* dk, float* dv, int B, const AttentionShape& s) {
  const long rows = static_cast<long>(B) * s.H * s.Tq;
  if (rows == 0) return;
  Scratch<float> D(static_cast<size_t>(rows));
  launch(attention_rowdot_k, dim3(static_cast<unsigned>(rows)), dim3(kAttnThreads), dy, out, D.p, s);
  launch(attention_dq_k, dim3(static_cast<unsigned>(rows), ceil_div(s.dk, kMaxHead)), dim3(kAttnThreads), dy, q, k, v, lse,
         static_cast<const float*>(D.p), dq, s);
  launch(attention_dkdv_k, dim3(static_cast<unsigned>(rows), ceil_div(std::max(s.dk, s.dv), kMaxHead)), dim3(kAttnThreads), dy, q, k, v, lse,
         static_cast<const float*>(D.p), dk, dv, s);
}

void rope(const float* x, const float* cosT, const float* sinT, float* out, long BH, int H, int T, int dh, int dims, bool inverse, bool bthd) {
  const long n = BH * T * dh;
  launch(rope_k, dim3(blocks_for(n, kThreads)), dim3(kThreads), x, cosT, sinT, out, n, H, T, dh, dims, inverse ? -1.f : 1.f, bthd);
}
}  // namespace mlc
