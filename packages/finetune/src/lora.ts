/**
 * LoRA (Hu et al. 2021, arXiv 2106.09685; official code microsoft/LoRA): a low-rank update around a
 * frozen Linear W0 ∈ R^{d_out×d_in},
 *
 *   y = W0 x (+ b) + (α/r) · B A dropout(x),   A ∈ R^{r×d_in},  B ∈ R^{d_out×r}
 *
 * A ~ U(±1/√d_in), B = 0 (identity at init). Trainable parameters per wrapped Linear: r·(d_in + d_out);
 * on W_q and W_v of every layer of a d-wide model (the MoE-agnostic baseline of PERFT): 2·r·2d per layer.
 * Mergeable: ΔW = (α/r) B A folds into W0 (`moelab merge-adapter`).
 */
import { Config, dropout, type ForwardContext, type Rng, Type, tf } from '@moelab/core';
import { type AdapterSite, defineAdapter, LinearWrapAdapter } from './adapter.js';
import { checkRank, type InitB, initBOption, initBValues, kaimingUniform } from './low-rank.js';

export interface LoRAOptions {
  rank: number;
  alpha: number;
  dropout: number;
  initB: InitB;
}

export class LoRA extends LinearWrapAdapter {
  readonly A: tf.Variable;
  readonly B: tf.Variable;
  readonly scale: number;

  constructor(
    site: AdapterSite<'linear-wrap'>,
    readonly options: LoRAOptions,
    rng: Rng,
  ) {
    super(site.path);
    const { inFeatures: dIn, outFeatures: dOut } = site.module;
    const r = options.rank;
    checkRank(r, dIn, dOut, site.path);
    this.scale = options.alpha / r;
    this.A = this.param('lora_A', kaimingUniform(rng, r * dIn, dIn), [r, dIn]);
    this.B = this.param('lora_B', initBValues(rng, dOut * r, options.initB), [dOut, r]);
  }

  delta(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
    const xd = dropout(x, this.options.dropout, ctx.rng, ctx.training) as tf.Tensor2D;
    return tf.mul(tf.matMul(tf.matMul(xd, this.A, false, true), this.B, false, true), this.scale);
  }

  mergedWeight(): tf.Tensor2D {
    return tf.mul(tf.matMul(this.B, this.A), this.scale);
  }
}

export const loraAdapter = defineAdapter({
  name: 'lora',
  description: 'LoRA: W0 x + (α/r) B A x around a frozen Linear (default: the attention query and value projections).',
  reference: 'arXiv 2106.09685; microsoft/LoRA; docs/finetune.md#lora',
  attachment: 'linear-wrap',
  targets: ['*.attention.q_proj', '*.attention.v_proj'],
  schema: Config({
    rank: Type.Integer({ minimum: 1, default: 8, description: 'r, the rank of B A' }),
    alpha: Type.Number({ exclusiveMinimum: 0, default: 16, description: 'α: the update is scaled by α/r' }),
    dropout: Type.Number({ minimum: 0, exclusiveMaximum: 1, default: 0, description: "dropout on the adapter's input" }),
    initB: initBOption(),
  }),
  build: (c, site, rng) => new LoRA(site, c, rng),
});
