/**
 * MAE — "A Mixture of h − 1 Heads is Better than h Heads" (Peng, Schwartz, Li, Smith, ACL 2020,
 * arXiv 2005.06537; no official code found). With H_i(x) = head_i(x) W_o^{(i)} the contribution of head i
 * of a multi-head attention, expert i is the attention without head i, rescaled:
 *
 *   f_i(x) = h/(h−1) · Σ_{j≠i} H_j(x)                  i = 1..h
 *   MHA(x) = Σ_i H_i(x) = Σ_i (1/h) f_i(x)              (every head is in h − 1 experts)
 *   MAE(x) = Σ_i g_i(x) f_i(x) = Σ_j c_j(x) H_j(x),     c_j = h (1 − g_j) / (h − 1)
 *   g(x) = softmax(u W_gᵀ)                               W_g = gate.weight [h, d], zero-initialised
 *
 * so a uniform gate (the zero init) gives exactly the dense attention, and a trained gate reweights the
 * heads per token. `granularity: "token"` gates from each token's input; `"sequence"` from the running
 * mean of the inputs up to the token (causal, so generation sees the same function). The paper trains
 * by block coordinate descent, updating a single expert per step; this module implements the mixture's
 * forward pass and trains it end to end (BCD training is not implemented). Parameter names are MHA's
 * (`q_proj`, `k_proj`, `v_proj`, `o_proj`) plus `gate.weight`, so dense weights load unchanged.
 */
import {
  applyRope,
  type AttentionModule,
  type AttentionSources,
  assertInference,
  cachedCausalAttention,
  type KVCache,
  attentionMixingFlops,
  Config,
  causalMixingMacs,
  defineEntry,
  type ForwardContext,
  Linear,
  Module,
  MoelabError,
  mergeHeads,
  type Rng,
  splitHeads,
  Type,
  tf,
} from '@moelab/core';
import { mergedCausalAttention, routingStatsOf } from './common.js';

export interface MAEOptions {
  heads: number;
  headDim: number;
  ropeDims: number;
  ropeBase: number;
  granularity: 'token' | 'sequence';
  gateStd: number;
}

export class MixtureOfHeadDroppedExperts extends Module implements AttentionModule {
  readonly q: Linear;
  readonly k: Linear;
  readonly v: Linear;
  readonly o: Linear;
  readonly gate: Linear;

  constructor(
    readonly dModel: number,
    readonly options: MAEOptions,
    rng: Rng,
  ) {
    super();
    const { heads: H, headDim: dh } = options;
    if (H < 2) throw new MoelabError(`MAE needs at least 2 heads (an expert drops one), got ${H}`);
    const inner = H * dh;
    this.q = this.child('q_proj', new Linear(dModel, inner, rng));
    this.k = this.child('k_proj', new Linear(dModel, inner, rng));
    this.v = this.child('v_proj', new Linear(dModel, inner, rng));
    this.o = this.child('o_proj', new Linear(inner, dModel, rng));
    this.gate = this.child('gate', new Linear(dModel, H, rng, { std: options.gateStd }));
  }

  /**
   * Expert weights g [B·m, h] of the last m rows of the gate input `u` [B, T, d] (default: all rows).
   * With `granularity: "sequence"` a row's gate reads the mean of u over that row and every earlier one.
   */
  weights(u: tf.Tensor, m = u.shape[1]!): tf.Tensor2D {
    const [B, T, d] = u.shape as [number, number, number];
    let src = tf.slice(u, [0, T - m, 0], [-1, m, -1]);
    if (this.options.granularity === 'sequence') {
      // Running mean as a product with the lower-triangular averaging matrix (tfjs's cumsum gradient
      // is wrong off the last axis); row i of the result is position T - m + i.
      const avg = new Float32Array(m * T);
      for (let i = 0; i < m; i++) for (let s = 0; s <= T - m + i; s++) avg[i * T + s] = 1 / (T - m + i + 1);
      const flat = tf.reshape(tf.transpose(u, [1, 0, 2]), [T, B * d]);
      src = tf.transpose(tf.reshape(tf.matMul(tf.tensor2d(avg, [m, T]), flat), [m, B, d]), [1, 0, 2]);
    }
    return tf.softmax(tf.reshape(this.gate.forward(tf.reshape(src, [B * m, d])), [B * m, this.options.heads])) as tf.Tensor2D;
  }

  /** y = Σ_j c_j H_j: heads [B, T, H·dh] scaled per row by c = h (1 − g) / (h − 1), then W_o. */
  private mix(heads: tf.Tensor, g: tf.Tensor2D, ctx: ForwardContext): tf.Tensor {
    const { heads: H, headDim: dh } = this.options;
    const [B, T] = heads.shape as [number, number];
    ctx.routing.push(routingStatsOf(this.path, g, H));
    const c = tf.mul(tf.sub(1, g), H / (H - 1)); // [B·T, H]
    const scaled = tf.mul(tf.reshape(heads, [B * T, H, dh]), tf.reshape(c, [B * T, H, 1]));
    return this.o.forward(tf.reshape(scaled, [B, T, H * dh]));
  }

  /**
   * Cached decoding (inference): MHA's cache (keys rotated at their positions, values) plus, with
   * `granularity: "sequence"`, the gate inputs of the cached rows (entry "u", [B, 1, T, d]) for the running mean.
   */
  forwardCached(x: tf.Tensor, ctx: ForwardContext, cache: KVCache, sources: AttentionSources = {}): tf.Tensor {
    assertInference(ctx, this.path);
    const { heads: H, ropeDims, ropeBase } = this.options;
    const qSrc = sources.q ?? x;
    const [B, m, d] = qSrc.shape as [number, number, number];
    const n0 = cache.length;
    const q = applyRope(splitHeads(this.q.forward(qSrc), H), ropeDims, ropeBase, n0);
    const rows: Record<string, tf.Tensor> = {
      k: applyRope(splitHeads(this.k.forward(sources.k ?? x), H), ropeDims, ropeBase, n0),
      v: splitHeads(this.v.forward(sources.v ?? x), H),
    };
    if (this.options.granularity === 'sequence') rows.u = tf.reshape(qSrc, [B, 1, m, d]);
    const all = cache.append(rows);
    const heads = mergeHeads(cachedCausalAttention(q, all.k!, all.v!));
    const g = this.options.granularity === 'sequence' ? this.weights(tf.reshape(all.u!, [B, n0 + m, d]), m) : this.weights(qSrc);
    return this.mix(heads, g, ctx);
  }

  forward(x: tf.Tensor, ctx: ForwardContext, sources: AttentionSources = {}): tf.Tensor {
    const { heads: H, ropeDims, ropeBase } = this.options;
    const qSrc = sources.q ?? x;
    const q = this.q.forward(qSrc);
    const k = this.k.forward(sources.k ?? x);
    const v = this.v.forward(sources.v ?? x);
    const heads = mergedCausalAttention(q, k, v, H, ropeDims, ropeBase); // [B, T, H·dh]
    return this.mix(heads, this.weights(qSrc), ctx);
  }

  override macsPerToken(seqLen: number): number {
    return super.macsPerToken(seqLen) + causalMixingMacs(this.options.heads, this.options.headDim, seqLen);
  }

  /** MHA's projections and mixing plus the gate (2 · h · d). */
  override flopsPerToken(seqLen: number): number {
    const { heads: H, headDim: dh } = this.options;
    return [this.q, this.k, this.v, this.o, this.gate].reduce((s, m) => s + m.flopsPerToken(seqLen), 0) + attentionMixingFlops(H, dh, seqLen);
  }
}

export const mae = defineEntry({
  kind: 'attention',
  name: 'mae',
  description: 'MAE: multi-head attention as a gated mixture of its h "drop one head" experts; zero gate = the dense attention.',
  reference: 'docs/attention-moe.md; MAE arXiv 2005.06537',
  schema: Config({
    heads: Type.Integer({ minimum: 2, default: 4, description: 'h heads = h experts' }),
    headDim: Type.Optional(Type.Integer({ minimum: 1, description: 'default dModel / heads' })),
    ropeDims: Type.Optional(Type.Integer({ minimum: 0, description: 'channels per head rotated by RoPE (default: all; 0 = none)' })),
    ropeBase: Type.Number({ exclusiveMinimum: 0, default: 10000 }),
    granularity: Type.Union([Type.Literal('token'), Type.Literal('sequence')], {
      default: 'token',
      description: "token: gate from each token's input; sequence: from the running mean of the inputs so far",
    }),
    gateStd: Type.Number({ minimum: 0, default: 0, description: 'init std of gate.weight (0 = zeros: exactly the dense attention at step 0)' }),
  }),
  create: (c, ctx) => {
    const d = ctx.need('dModel');
    if (c.headDim === undefined && d % c.heads !== 0)
      throw new MoelabError(`dModel ${d} is not divisible by heads ${c.heads}; set headDim`, `${ctx.path}.heads`);
    const headDim = c.headDim ?? d / c.heads;
    return new MixtureOfHeadDroppedExperts(
      d,
      { heads: c.heads, headDim, ropeDims: c.ropeDims ?? headDim, ropeBase: c.ropeBase, granularity: c.granularity, gateStd: c.gateStd },
      ctx.rng,
    );
  },
});
