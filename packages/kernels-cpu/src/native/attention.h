// Fused causal attention (forward and backward) and rotary position embedding on [B*H, T, d] blocks.
#pragma once

namespace moelab {

// out[bh, i] = sum_{j <= i} softmax_j(scale q[bh, i].k[bh, j]) v[bh, j]; lse[bh, i] is the row's
// log-sum-exp of the scaled scores (saved for the backward pass), lse [B*H, T]. q, k: [B, H, T, dk],
// v, out: [B, H, T, dv]; with bthd, q, k, v, out (and the gradients) are [B, T, H, d] instead.
void causal_attention_forward(const float* q, const float* k, const float* v, float* out, float* lse, int BH, int H,
                              int T, int dk, int dv, float scale, bool bthd);
// Gradients of the above given dout (the layout of out) and the forward's out and lse.
void causal_attention_backward(const float* dout, const float* q, const float* k, const float* v, const float* out,
                               const float* lse, float* dq, float* dk, float* dv, int BH, int H, int T, int dk_dim,
                               int dv_dim, float scale, bool bthd);
// Attention of m new query rows against n cached positions (the last m of them the new rows'
// own): out[b, h, i] = sum_{j <= n - m + i} softmax_j(scale q[b, h, i].k[b, g, j]) v[b, g, j] with
// g = h * Hkv / H (grouped-query attention: Hkv divides H). q [B, H, m, dk], out [B, H, m, dv];
// k [B, Hkv, Tk, dk] and v [B, Hkv, Tk, dv] hold Tk >= n positions per head (a preallocated
// cache), of which the first n are read.
void cached_attention_forward(const float* q, const float* k, const float* v, float* out, int B, int H, int Hkv, int m,
                              int n, int Tk, int dk, int dv, float scale);
// Rotate-half RoPE of the first `dims` channels of x [B, H, T, dh] (bthd: [B, T, H, dh]) with tables
// cos/sin [T, dims] (channel i pairs with i + dims/2); other channels are copied. inverse = the
// transpose (sin -> -sin).
void rope(const float* x, const float* cos, const float* sin, float* out, long BH, int H, int T, int dh, int dims,
          bool inverse, bool bthd);

}  // namespace moelab
