/**
 * PERFT-R (Liu et al., arXiv 2411.08212, docs/finetune.md#perft): M LoRA experts beside each feed-forward
 * block behind a new router W_g ∈ R^{M×d} (no bias, N(0, 0.02²)):
 *
 *   q_t = softmax(W_g x_t),   T_t = TopK(q_t, K'),   w_{t,m} = q_{t,m} (÷ Σ_{j∈T_t} q_{t,j} with renormalize)
 *   y_t ← y_t + Σ_{m∈T_t} w_{t,m} · (α/r) · B_m A_m x_t
 *
 * plus the pooled balance loss M · Σ_m F_m P_m of perft.ts (coefficient `auxCoef`, 0.01). The weights
 * are the adapter router's own (the reference code's OLMoE path multiplies by the base router's gates
 * instead, which we do not copy). Trainable per layer: M·2·d·r + M·d; active per token: K'·2·d·r + M·d.
 */
import { Config, type ForwardContext, MoelabError, type Rng, Type, tf } from '@moelab/core';
import { type AdapterGroup, type AdapterSite, defineAdapter } from './adapter.js';
import { finishBalance, type LoRAExpertOptions, loraExpertOptions, PerftBlockAdapter, recordBalance } from './perft.js';

export interface PerftROptions extends LoRAExpertOptions {
  experts: number;
  topK: number;
  renormalize: boolean;
  auxCoef: number;
  routerStd: number;
}

export class PerftR extends PerftBlockAdapter {
  readonly router: tf.Variable;

  constructor(
    site: AdapterSite<'block-parallel'>,
    readonly routing: PerftROptions,
    rng: Rng,
    readonly group: AdapterGroup,
  ) {
    super(site, routing.experts, routing, rng);
    if (routing.topK > routing.experts)
      throw new MoelabError(`topK ${routing.topK} exceeds the number of PEFT experts (${routing.experts})`, `${site.path}: topK`);
    this.router = this.param('router', rng.normalArray(routing.experts * site.dModel, routing.routerStd), [routing.experts, site.dModel]);
  }

  /** q_t = softmax(W_g x_t) [N, M]. */
  probs(x: tf.Tensor2D): tf.Tensor2D {
    return tf.softmax(tf.matMul(x, this.router, false, true)) as tf.Tensor2D;
  }

  protected weights(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
    const { experts: M, topK: K, renormalize } = this.routing;
    const q = this.probs(x);
    const { indices } = tf.topk(q, K);
    const selected = indices.dataSync() as Int32Array;
    const N = x.shape[0];
    const chosen = new Float32Array(N * M);
    for (let i = 0; i < N * K; i++) chosen[Math.floor(i / K) * M + selected[i]!] = 1;
    const mask = tf.tensor2d(chosen, [N, M]);
    let w = tf.mul(q, mask) as tf.Tensor2D;
    if (renormalize) w = tf.div(w, tf.sum(w, 1, true));
    if (ctx.training) recordBalance(ctx, this.group, this.path, q, selected, K);
    return w;
  }

  override finalizeForward(ctx: ForwardContext): void {
    finishBalance(ctx, this.group, this.path, this.routing.auxCoef);
  }
}

export const perftRAdapter = defineAdapter({
  name: 'perft-r',
  description: "PERFT-R: M LoRA experts beside each feed-forward block behind a new top-K' router, with a balance loss.",
  reference: 'arXiv 2411.08212; docs/finetune.md#perft',
  attachment: 'block-parallel',
  targets: ['*.ffn'],
  schema: Config({
    experts: Type.Integer({ minimum: 1, default: 4, description: 'M, the number of PEFT experts' }),
    topK: Type.Integer({ minimum: 1, default: 2, description: "K', experts per token" }),
    renormalize: Type.Boolean({ default: true, description: 'renormalise the K′ selected probabilities to sum to 1 (Mixtral; OLMoE does not)' }),
    auxCoef: Type.Number({ minimum: 0, default: 0.01, description: "weight of the adapter router's balance loss" }),
    routerStd: Type.Number({ minimum: 0, default: 0.02, description: 'init std of the router W_g' }),
    ...loraExpertOptions(),
  }),
  build: (c, site, rng, group) => new PerftR(site, c, rng, group),
});
