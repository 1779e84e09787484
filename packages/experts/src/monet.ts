/**
 * MONET (Park et al., ICLR 2025, "Mixture of Monosemantic Experts for Transformers"; code dmis-lab/Monet):
 * N = E² experts per layer composed from 2E shards, so parameters grow with √N. Router and experts are one
 * layer, registered as two `ffn` entries: `monet-hd` (horizontal decomposition) and `monet-vd` (vertical).
 * Docs: docs/monet.md (router, horizontal and vertical decomposition, auxiliary losses, expert masking);
 * arXiv 2412.04139.
 *
 * Router (one per routing group of G layers; layers L with L % G != 0 reuse the last router's g1, g2):
 *
 *   z_K = (w_K x) as [H, E]            zn = BatchNorm per head over all tokens and experts (no affine)
 *   σ = Φ⁻¹(1 − k/E)                   sel = zn ≥ min(max_e zn, σ)      (≥ 1 expert per head)
 *   g_K[h, e] = softmax of the raw z over the selected set, 0 elsewhere
 *
 * Train mode normalises with batch statistics and updates the running buffers (momentum 0.1, unbiased
 * variance); eval mode uses the buffers. BN only feeds the mask: no gradient flows through it.
 *
 * HD: E_ij(x) = V_j relu2(U_i x + bu_i) + c_j,   out = Σ_h Σ_ij g1[h,i] g2[h,j] E_ij(x), computed as
 *   a = relu2(U x + bu) [E, m];  s[h] = Σ_i g1[h,i] a_i;  y_j = Σ_h g2[h,j] s[h];  out = Σ_j V_j y_j + Σ_j w2_j c_j
 * VD: hidden halves a1_i (owned by i), a2_j (owned by j), output halves top (i) and bottom (j), six terms
 * (docs/monet.md#vertical-decomposition).
 *
 * Aux losses (docs/monet.md#auxiliary-losses, batch-mean reading): L_unif = −(1/2HE) Σ log p̄, L_amb = mean_t (1/2H) Σ_h (1 − max g),
 * pushed as `monet_unif` / `monet_amb` with coefficient λ (default 1e-3) by every routing layer.
 *
 * Expert masking (docs/monet.md#expert-masking): `ctx.expertMask.get(layerPath)` holds expert ids i·E + j; the layer then evaluates
 * from G' = (Σ_h g1 ⊗ g2) ⊙ M, so a removed expert's weights and biases vanish (no renormalisation).
 *
 * Parameter names follow the official state_dict relative to a decoder layer: `router.w1.weight`,
 * `router.w2.weight`, `router.norm{1,2}.running_{mean,var}`, `moe.u.weight`, `moe.u.bias`, `moe.v.weight`,
 * `moe.b` (HD) or `moe.u1/u2.{weight,bias}`, `moe.v11/v12/v21/v22.weight`, `moe.b1`, `moe.b2` (VD).
 */
export { normalQuantile } from './monet/quantile.js';
export { type MonetGroupRouting, MonetRouter, type MonetRouterOptions, type MonetRouting, RunningNorm } from './monet/router.js';
export { monetAmbiguityLoss, monetExpertScores, monetUniformityLoss } from './monet/losses.js';
export type { MonetExperts } from './monet/expert-bank.js';
export { MonetHDExperts } from './monet/hd.js';
export { MonetVDExperts } from './monet/vd.js';
export { MonetLayer, type MonetOptions, monetHD, monetVD } from './monet/layer.js';
