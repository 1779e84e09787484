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
// Flash tiling (FlashAttention, arXiv:2205.14135; its backward as in FlashAttention-2,
// arXiv:2307.08691): a block owns a tile of kTile query rows (forward, dq) or key rows (dk, dv) of
// one (batch, head) and kDo of its output channels (grid.y; wider heads recompute the scores per
// chunk). It walks the other side's rows kTile at a time: both tiles are staged in shared memory
// kDc channels at a time for the [kTile, kTile] score tile, which each thread holds kPer entries
// of in registers; the forward keeps each row's running max and sum (online softmax) and rescales
// its accumulators, so no [T, T] tensor exists. The backward recomputes P from the saved
// log-sum-exp: dq per query tile over its visible key tiles, dk and dv per key tile over the query
// tiles that see it, with no atomics. Causal tiles above the diagonal are never visited.
#pragma once

namespace mlc {
namespace {
constexpr int kAttnThreads = 128;
constexpr int kTile = 32;                                // rows of a query / key tile
constexpr int kDc = 64;                                  // channels per step of the score dot products
constexpr int kDo = 64;                                  // output channels of one block
constexpr int kPer = kTile * kTile / kAttnThreads;       // score entries per thread
constexpr int kAccPer = kTile * kDo / kAttnThreads;      // accumulator entries per thread
constexpr int kRowStride = kAttnThreads / kTile;         // score tile: row = tid / kTile + n kRowStride
constexpr int kAccRowStride = kAttnThreads / kDo;        // accumulators: row = tid / kDo + n kAccRowStride

// Where row t of head h of batch b starts in a [B, Hx, Tx, d] tensor, or [B, Tx, Hx, d] (bthd).
MLC_HD long head_row(int b, int h, int t, int Hx, int Tx, int d, bool bthd) {
  return bthd ? ((static_cast<long>(b) * Tx + t) * Hx + h) * d : ((static_cast<long>(b) * Hx + h) * Tx + t) * d;
}

// The rows of one (batch, head) of a tensor in either layout: row t starts at p + t step.
struct HeadRows {
  const float* p;
  long step;
  int rows, d;
  __device__ HeadRows(const float* base, int b, int h, int Hx, int Tx, int d_, bool bthd)
      : p(base + head_row(b, h, 0, Hx, Tx, d_, bthd)), step(bthd ? static_cast<long>(Hx) * d_ : d_), rows(Tx), d(d_) {}
};

// Stages rows [r0, r0 + kTile) and channels [c0, c0 + width) of x in tile[kTile][ld], zeros past
// the head's rows or channels. Every thread of the block calls it.
__device__ void stage_tile(float* tile, int ld, int width, const HeadRows& x, int r0, int c0) {
  for (int e = threadIdx.x; e < kTile * width; e += blockDim.x) {
    const int r = e / width, c = e - r * width, t = r0 + r, ch = c0 + c;
    tile[r * ld + c] = t < x.rows && ch < x.d ? x.p[t * x.step + ch] : 0.f;
  }
}

// acc[n] += a_r . b_c over the channels of two row tiles (rows r = tid / kTile + n kRowStride
// of a, c = tid % kTile of b), kDc channels at a time through shared memory. Ends with a barrier.
__device__ __forceinline__ void tile_dots(float (&acc)[kPer], float (*as)[kDc + 1], float (*bs)[kDc + 1], const HeadRows& a, int a0, const HeadRows& b,
                                          int b0) {
  const int col = threadIdx.x % kTile, row0 = threadIdx.x / kTile;
  for (int d0 = 0; d0 < a.d; d0 += kDc) {
    stage_tile(&as[0][0], kDc + 1, kDc, a, a0, d0);
    stage_tile(&bs[0][0], kDc + 1, kDc, b, b0, d0);
    __syncthreads();
    const int nc = min(kDc, a.d - d0);
    for (int c = 0; c < nc; c++) {
      const float bv = bs[col][c];
      MLC_UNROLL
      for (int n = 0; n < kPer; n++) acc[n] += as[row0 + n * kRowStride][c] * bv;
    }
    __syncthreads();
  }
}

// acc[n] = acc[n] rowScale[r] + sum_j w[r][j] x[j][c] for the block's accumulator entries
// (r = tid / kDo + n kAccRowStride, c = tid % kDo); rowScale null means 1.
__device__ __forceinline__ void tile_accumulate(float (&acc)[kAccPer], const float (*w)[kTile + 1], const float (*x)[kDo], const float* rowScale) {
  const int col = threadIdx.x % kDo, row0 = threadIdx.x / kDo;
  if (rowScale) {
    MLC_UNROLL
    for (int n = 0; n < kAccPer; n++) acc[n] *= rowScale[row0 + n * kAccRowStride];
  }
  for (int j = 0; j < kTile; j++) {
    const float xv = x[j][col];
    MLC_UNROLL
    for (int n = 0; n < kAccPer; n++) acc[n] += w[row0 + n * kAccRowStride][j] * xv;
  }
}

// The block's (batch, head) and first row: blockIdx.x = (b H + h) tiles + tile.
struct TileOf {
  int b, h, bh, t0;
  __device__ TileOf(int H, int T) {
    const int tiles = static_cast<int>(ceil_div(T, kTile));
    bh = static_cast<int>(blockIdx.x) / tiles;
    t0 = (static_cast<int>(blockIdx.x) - bh * tiles) * kTile;
    b = bh / H;
    h = bh - b * H;
  }
};

// The backward's operands for one (batch, head) (causal self-attention: H = Hkv).
struct BackwardRows {
  HeadRows Q, K, V, DY;
  __device__ BackwardRows(const float* q, const float* k, const float* v, const float* dy, const TileOf& t, const AttentionShape& s)
      : Q(q, t.b, t.h, s.H, s.Tq, s.dk, s.bthd),
        K(k, t.b, t.h, s.H, s.Tk, s.dk, s.bthd),
        V(v, t.b, t.h, s.H, s.Tk, s.dv, s.bthd),
        DY(dy, t.b, t.h, s.H, s.Tq, s.dv, s.bthd) {}
};

// lse and D of query rows [i0, i0 + kTile) of (batch, head) bh into the block's shared copies (0
// past the last row); published by the caller's next barrier.
__device__ void stage_row_stats(float* lseTile, float* dTile, const float* lse, const float* D, int bh, int Tq, int i0) {
  const int r = threadIdx.x, i = i0 + r;
  if (r >= kTile) return;
  const long at = static_cast<long>(bh) * Tq + i;
  lseTile[r] = i < Tq ? lse[at] : 0.f;
  dTile[r] = i < Tq ? D[at] : 0.f;
}

// out_i and lse_i for the tile's query rows i: keys j <= s.qOffset + i of key head h Hkv / H.
__global__ void attention_forward_k(const float* q, const float* k, const float* v, float* out, float* lse, AttentionShape s) {
  __shared__ float qs[kTile][kDc + 1];
  __shared__ float ks[kTile][kDc + 1];
  __shared__ float vs[kTile][kDo];
  __shared__ float ps[kTile][kTile + 1];
  __shared__ float rowM[kTile], rowL[kTile], rowC[kTile];
  const TileOf tq(s.H, s.Tq);
  const int hk = tq.h * s.Hkv / s.H, tid = threadIdx.x, c0 = static_cast<int>(blockIdx.y) * kDo;
  const HeadRows Q(q, tq.b, tq.h, s.H, s.Tq, s.dk, s.bthd), K(k, tq.b, hk, s.Hkv, s.Tk, s.dk, s.bthd), V(v, tq.b, hk, s.Hkv, s.Tk, s.dv, s.bthd);
  if (tid < kTile) {
    rowM[tid] = -INFINITY;
    rowL[tid] = 0.f;
  }
  float acc[kAccPer];
  MLC_UNROLL
  for (int n = 0; n < kAccPer; n++) acc[n] = 0.f;
  const int keyEnd = min(s.Tk, s.qOffset + min(s.Tq, tq.t0 + kTile));  // keys the tile's last row sees
  for (int j0 = 0; j0 < keyEnd; j0 += kTile) {
    __syncthreads();  // the previous tile's readers of ps / vs are done
    float sc[kPer];
    MLC_UNROLL
    for (int n = 0; n < kPer; n++) sc[n] = 0.f;
    tile_dots(sc, qs, ks, Q, tq.t0, K, j0);
    MLC_UNROLL
    for (int n = 0; n < kPer; n++) {
      const int r = tid / kTile + n * kRowStride, c = tid % kTile, i = tq.t0 + r, j = j0 + c;
      ps[r][c] = i < s.Tq && j < s.Tk && j <= s.qOffset + i ? s.scale * sc[n] : -INFINITY;
    }
    stage_tile(&vs[0][0], kDo, kDo, V, j0, c0);
    __syncthreads();
    if (tid < kTile) {  // one thread per query row: the online softmax's running max and sum
      float mx = -INFINITY;
      for (int j = 0; j < kTile; j++) mx = fmaxf(mx, ps[tid][j]);
      const float mOld = rowM[tid], mNew = fmaxf(mOld, mx);
      float corr = 1.f, sum = 0.f;
      if (mNew != -INFINITY) {  // a row with no visible key yet keeps p = 0
        corr = expf(mOld - mNew);  // 0 on the row's first visible tile (mOld = -inf)
        for (int j = 0; j < kTile; j++) {
          const float p = expf(ps[tid][j] - mNew);
          ps[tid][j] = p;
          sum += p;
        }
      } else {
        for (int j = 0; j < kTile; j++) ps[tid][j] = 0.f;
      }
      rowL[tid] = rowL[tid] * corr + sum;
      rowM[tid] = mNew;
      rowC[tid] = corr;
    }
    __syncthreads();
    tile_accumulate(acc, ps, vs, rowC);
  }
  __syncthreads();
  const int col = tid % kDo;
  if (c0 + col < s.dv) {
    MLC_UNROLL
    for (int n = 0; n < kAccPer; n++) {
      const int r = tid / kDo + n * kAccRowStride, i = tq.t0 + r;
      if (i < s.Tq) out[head_row(tq.b, tq.h, i, s.H, s.Tq, s.dv, s.bthd) + c0 + col] = acc[n] / rowL[r];
    }
  }
  if (lse && blockIdx.y == 0 && tid < kTile && tq.t0 + tid < s.Tq) lse[static_cast<long>(tq.bh) * s.Tq + tq.t0 + tid] = rowM[tid] + logf(rowL[tid]);
}

// D_i = dy_i . out_i, one block per row, rows in (b, h, t) order.
__global__ void attention_rowdot_k(const float* dy, const float* out, float* D, AttentionShape s) {
  __shared__ float red[kAttnThreads];
  const int T = s.Tq, bh = static_cast<int>(blockIdx.x) / T, t = static_cast<int>(blockIdx.x) - bh * T, b = bh / s.H, h = bh - b * s.H;
  const long o = head_row(b, h, t, s.H, s.Tq, s.dv, s.bthd);
  float a = 0.f;
  for (int c = threadIdx.x; c < s.dv; c += blockDim.x) a += dy[o + c] * out[o + c];
  a = block_sum(a, red);
  if (threadIdx.x == 0) D[blockIdx.x] = a;
}

// dq_i = scale sum_{j <= i} dS_ij k_j for the tile's query rows (causal self-attention: Tq = Tk,
// H = Hkv, qOffset = 0).
__global__ void attention_dq_k(const float* dy, const float* q, const float* k, const float* v, const float* lse, const float* D, float* dq,
                               AttentionShape s) {
  __shared__ float as[kTile][kDc + 1];
  __shared__ float bs[kTile][kDc + 1];
  __shared__ float ds[kTile][kTile + 1];
  __shared__ float kt[kTile][kDo];
  __shared__ float rowLse[kTile], rowD[kTile];
  const TileOf tq(s.H, s.Tq);
  const int tid = threadIdx.x, c0 = static_cast<int>(blockIdx.y) * kDo;
  const BackwardRows x(q, k, v, dy, tq, s);
  stage_row_stats(rowLse, rowD, lse, D, tq.bh, s.Tq, tq.t0);
  float acc[kAccPer];
  MLC_UNROLL
  for (int n = 0; n < kAccPer; n++) acc[n] = 0.f;
  const int keyEnd = min(s.Tq, tq.t0 + kTile);
  for (int j0 = 0; j0 < keyEnd; j0 += kTile) {
    __syncthreads();
    float sc[kPer], dp[kPer];
    MLC_UNROLL
    for (int n = 0; n < kPer; n++) sc[n] = dp[n] = 0.f;
    tile_dots(sc, as, bs, x.Q, tq.t0, x.K, j0);
    tile_dots(dp, as, bs, x.DY, tq.t0, x.V, j0);
    MLC_UNROLL
    for (int n = 0; n < kPer; n++) {
      const int r = tid / kTile + n * kRowStride, c = tid % kTile, i = tq.t0 + r, j = j0 + c;
      ds[r][c] = i < s.Tq && j <= i ? expf(s.scale * sc[n] - rowLse[r]) * (dp[n] - rowD[r]) : 0.f;
    }
    stage_tile(&kt[0][0], kDo, kDo, x.K, j0, c0);
    __syncthreads();
    tile_accumulate(acc, ds, kt, nullptr);
  }
  const int col = tid % kDo;
  if (c0 + col < s.dk) {
    MLC_UNROLL
    for (int n = 0; n < kAccPer; n++) {
      const int i = tq.t0 + tid / kDo + n * kAccRowStride;
      if (i < s.Tq) dq[head_row(tq.b, tq.h, i, s.H, s.Tq, s.dk, s.bthd) + c0 + col] = s.scale * acc[n];
    }
  }
}

// dk_j = scale sum_{i >= j} dS_ij q_i and dv_j = sum_{i >= j} P_ij dy_i for the tile's key rows
// (causal self-attention). Score tiles are held transposed: rows are keys, columns queries.
__global__ void attention_dkdv_k(const float* dy, const float* q, const float* k, const float* v, const float* lse, const float* D, float* dk,
                                 float* dv, AttentionShape s) {
  __shared__ float as[kTile][kDc + 1];
  __shared__ float bs[kTile][kDc + 1];
  __shared__ float ps[kTile][kTile + 1];
  __shared__ float ds[kTile][kTile + 1];
  __shared__ float it[kTile][kDo];
  __shared__ float colLse[kTile], colD[kTile];
  const TileOf tk(s.H, s.Tk);
  const int tid = threadIdx.x, c0 = static_cast<int>(blockIdx.y) * kDo;
  const BackwardRows x(q, k, v, dy, tk, s);
  float accK[kAccPer], accV[kAccPer];
  MLC_UNROLL
  for (int n = 0; n < kAccPer; n++) accK[n] = accV[n] = 0.f;
  for (int i0 = tk.t0; i0 < s.Tq; i0 += kTile) {  // query tiles at or below the key tile's diagonal
    __syncthreads();
    stage_row_stats(colLse, colD, lse, D, tk.bh, s.Tq, i0);
    float sc[kPer], dp[kPer];
    MLC_UNROLL
    for (int n = 0; n < kPer; n++) sc[n] = dp[n] = 0.f;
    tile_dots(sc, as, bs, x.K, tk.t0, x.Q, i0);  // its barriers publish colLse / colD
    tile_dots(dp, as, bs, x.V, tk.t0, x.DY, i0);
    __syncthreads();
    MLC_UNROLL
    for (int n = 0; n < kPer; n++) {
      const int r = tid / kTile + n * kRowStride, c = tid % kTile, j = tk.t0 + r, i = i0 + c;
      const float p = i < s.Tq && j <= i ? expf(s.scale * sc[n] - colLse[c]) : 0.f;
      ps[r][c] = p;
      ds[r][c] = p * (dp[n] - colD[c]);
    }
    stage_tile(&it[0][0], kDo, kDo, x.Q, i0, c0);
    __syncthreads();
    tile_accumulate(accK, ds, it, nullptr);
    __syncthreads();
    stage_tile(&it[0][0], kDo, kDo, x.DY, i0, c0);
    __syncthreads();
    tile_accumulate(accV, ps, it, nullptr);
  }
  const int col = tid % kDo;
  MLC_UNROLL
  for (int n = 0; n < kAccPer; n++) {
    const int j = tk.t0 + tid / kDo + n * kAccRowStride;
    if (j >= s.Tk) continue;
    if (c0 + col < s.dk) dk[head_row(tk.b, tk.h, j, s.H, s.Tk, s.dk, s.bthd) + c0 + col] = s.scale * accK[n];
    if (c0 + col < s.dv) dv[head_row(tk.b, tk.h, j, s.H, s.Tk, s.dv, s.bthd) + c0 + col] = accV[n];
  }
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
  const long tiles = static_cast<long>(B) * s.H * ceil_div(s.Tq, kTile);
  if (tiles == 0) return;
  launch(attention_forward_k, dim3(static_cast<unsigned>(tiles), std::max(1u, ceil_div(s.dv, kDo))), dim3(kAttnThreads), q, k, v, out, lse, s);
}

void attention_backward(const float* dy, const float* q, const float* k, const float* v, const float* out, const float* lse, float* dq,
                        float* dk, float* dv, int B, const AttentionShape& s) {
  const long rows = static_cast<long>(B) * s.H * s.Tq;
  if (rows == 0) return;
  const unsigned tiles = static_cast<unsigned>(static_cast<long>(B) * s.H * ceil_div(s.Tq, kTile));
  Scratch<float> D(static_cast<size_t>(rows));
  launch(attention_rowdot_k, dim3(static_cast<unsigned>(rows)), dim3(kAttnThreads), dy, out, D.p, s);
  launch(attention_dq_k, dim3(tiles, std::max(1u, ceil_div(s.dk, kDo))), dim3(kAttnThreads), dy, q, k, v, lse, static_cast<const float*>(D.p), dq, s);
  launch(attention_dkdv_k, dim3(tiles, std::max(1u, ceil_div(std::max(s.dk, s.dv), kDo))), dim3(kAttnThreads), dy, q, k, v, lse,
         static_cast<const float*>(D.p), dk, dv, s);
}

void rope(const float* x, const float* cosT, const float* sinT, float* out, long BH, int H, int T, int dh, int dims, bool inverse, bool bthd) {
  const long n = BH * T * dh;
  launch(rope_k, dim3(blocks_for(n, kThreads)), dim3(kThreads), x, cosT, sinT, out, n, H, T, dh, dims, inverse ? -1.f : 1.f, bthd);
}
}  // namespace mlc
