/**
 * PERFT-E (Liu et al., arXiv 2411.08212, docs/finetune.md#perft): one LoRA expert embedded in each routed
 * expert of an MoE layer, gated by the frozen base router's own weights:
 *
 *   f_e(x) ← f_e(x) + (α/r) · B_e A_e x,   so   y_t ← y_t + Σ_{e∈S_t} g_{t,e} · (α/r) · B_e A_e x_t
 *
 * No new router and no aux loss; an adapter whose expert no token chose gets no gradient. Computed as
 * (α/r) · B_cat ((A_cat x) ⊙ G), with G [T, E] the gates of the plan scattered per token (capacity
 * drops and masked experts already removed from the plan, so they get no adapter either). Trainable per
 * layer: E·2·d·r; active per token: k·2·d·r.
 */
import { Config, type DispatchPlan, dropout, type ForwardContext, type Rng, tf } from '@moelab/core';
import { type AdapterSite, defineAdapter, type ExpertApply, InExpertAdapter } from './adapter.js';
import { type LoRAExpertOptions, loraExpertOptions, loraExpertParams } from './perft.js';
import { downProject, upProject, weightBottleneck } from './low-rank.js';

/** The gates of a dispatch plan as a dense [T, E] matrix (null weight: 1 per assignment). */
export function gateMatrix(plan: DispatchPlan, weight: tf.Tensor1D | null): tf.Tensor2D {
  const T = plan.numTokens;
  const E = plan.numExperts;
  const slot = Int32Array.from(plan.tokenIndex, (t, n) => t * E + plan.expertIndex[n]!);
  const w = weight ?? tf.ones([plan.size]);
  return tf.reshape(tf.unsortedSegmentSum(w, tf.tensor1d(slot, 'int32'), T * E), [T, E]);
}

export class PerftE extends InExpertAdapter {
  readonly A: tf.Variable;
  readonly B: tf.Variable;
  readonly scale: number;

  constructor(
    site: AdapterSite<'in-expert'>,
    readonly options: LoRAExpertOptions,
    rng: Rng,
  ) {
    super(site.path);
    const E = site.module.experts.numExperts;
    ({ A: this.A, B: this.B, scale: this.scale } = loraExpertParams((n, v, s) => this.param(n, v, s), E, site.dModel, options, rng, site.path));
  }

  apply(base: ExpertApply, x: tf.Tensor2D, plan: DispatchPlan, weight: tf.Tensor1D | null, ctx: ForwardContext): tf.Tensor2D {
    const y = base(x, plan, weight, ctx);
    const xd = dropout(x, this.options.dropout, ctx.rng, ctx.training) as tf.Tensor2D;
    const h = weightBottleneck(downProject(xd, this.A), gateMatrix(plan, weight), this.options.rank);
    return tf.add(y, tf.mul(upProject(h, this.B), this.scale));
  }
}

export const perftEAdapter = defineAdapter({
  name: 'perft-e',
  description: "PERFT-E: one LoRA expert inside each routed expert of an MoE layer, weighted by the base router's gates.",
  reference: 'arXiv 2411.08212; docs/finetune.md#perft',
  attachment: 'in-expert',
  targets: ['*.ffn'],
  schema: Config({ ...loraExpertOptions() }),
  build: (c, site, rng) => new PerftE(site, c, rng),
});
