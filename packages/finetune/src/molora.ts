/**
 * MoLoRA, Mixture of LoRA experts (Zadouri et al., ICLR 2024, arXiv 2309.05444; official code
 * for-ai/parameter-efficient-moe), docs/finetune.md#molora: E LoRA experts around a frozen Linear, mixed
 * per token by a router that reads the Linear's input,
 *
 *   π = softmax(W_r x),   y = W0 x + (α/r) Σ_i π_i B_i A_i x,   A_i ~ N(0, 0.02²),  B_i = 0,  W_r ~ N(0, 0.02²)
 *
 * Soft merging over all experts, no aux loss (the official configs). Trainable per site:
 * E·r·(d_in + d_out) + d_in·E.
 */
import { Config, dropout, type ForwardContext, type Rng, Type, tf } from '@moelab/core';
import { type AdapterSite, defineAdapter, LinearWrapAdapter } from './adapter.js';
import { checkRank, downProject, type InitB, initBOption, initBValues, upProject, weightBottleneck } from './low-rank.js';

export interface MoLoRAOptions {
  experts: number;
  rank: number;
  alpha: number;
  dropout: number;
  initB: InitB;
  routerStd: number;
}

export class MoLoRA extends LinearWrapAdapter {
  readonly A: tf.Variable;
  readonly B: tf.Variable;
  readonly router: tf.Variable;
  readonly scale: number;

  constructor(
    site: AdapterSite<'linear-wrap'>,
    readonly options: MoLoRAOptions,
    rng: Rng,
  ) {
    super(site.path);
    const { inFeatures: dIn, outFeatures: dOut } = site.module;
    const { experts: E, rank: r } = options;
    checkRank(r, dIn, dOut, site.path);
    this.scale = options.alpha / r;
    this.A = this.param('lora_A', rng.normalArray(E * r * dIn, 0.02), [E, r, dIn]);
    this.B = this.param('lora_B', initBValues(rng, E * dOut * r, options.initB), [E, dOut, r]);
    this.router = this.param('router', rng.normalArray(E * dIn, options.routerStd), [E, dIn]);
  }

  delta(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
    const pi = tf.softmax(tf.matMul(x, this.router, false, true)) as tf.Tensor2D;
    const xd = dropout(x, this.options.dropout, ctx.rng, ctx.training) as tf.Tensor2D;
    return tf.mul(upProject(weightBottleneck(downProject(xd, this.A), pi, this.options.rank), this.B), this.scale);
  }

  mergedWeight(): string {
    return 'MoLoRA mixes its experts per token (the router reads the input), so its update is not a fixed weight';
  }
}

export const moloraAdapter = defineAdapter({
  name: 'molora',
  description: 'MoLoRA: a per-token softmax mixture of LoRA experts around a frozen Linear (default: every attention projection).',
  reference: 'arXiv 2309.05444; for-ai/parameter-efficient-moe; docs/finetune.md#molora',
  attachment: 'linear-wrap',
  targets: ['*.attention.q_proj', '*.attention.k_proj', '*.attention.v_proj', '*.attention.o_proj'],
  schema: Config({
    experts: Type.Integer({ minimum: 1, default: 10, description: 'E, the number of LoRA experts' }),
    rank: Type.Integer({ minimum: 1, default: 4, description: 'r, the rank of each expert' }),
    alpha: Type.Number({ exclusiveMinimum: 0, default: 16, description: 'α: experts are scaled by α/r' }),
    dropout: Type.Number({ minimum: 0, exclusiveMaximum: 1, default: 0, description: "dropout on the adapter's input" }),
    initB: initBOption(),
    routerStd: Type.Number({ minimum: 0, default: 0.02, description: 'init std of the router' }),
  }),
  build: (c, site, rng) => new MoLoRA(site, c, rng),
});
